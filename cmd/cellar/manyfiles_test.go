package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
)

// TestManyFiles: a cluster of many relations (CELLARTEST_MANY_FILES
// tables, 20,000 by default: about 80,000 files, as a schema per tenant
// makes) is backed up, listed, verified and restored to a server that
// starts with every table and the rows written into the first and last.
func TestManyFiles(t *testing.T) {
	tables := 20000
	if v := os.Getenv("CELLARTEST_MANY_FILES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CELLARTEST_MANY_FILES=%q: want a number of tables", v)
		}
		tables = n
	}
	c, conf, env := backupCluster(t, "file", "")
	// One transaction per thousand tables: a transaction takes a lock per
	// table it creates.
	c.Exec(t, fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP
		EXECUTE format('CREATE TABLE tenant%%s (id int PRIMARY KEY, v text)', i);
		IF i %% 1000 = 0 THEN COMMIT; END IF;
	END LOOP; END $$`, tables))
	c.Exec(t, "INSERT INTO tenant1 VALUES (1, 'first')")
	c.Exec(t, fmt.Sprintf("INSERT INTO tenant%d VALUES (2, 'last')", tables))

	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	r := cellar(t, env, "--config", conf, "--format", "json", "list-backups", "main")
	var rows []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Files  int    `json:"files"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 || rows[0].Status != "DONE" {
		t.Fatalf("list-backups: %v\n%s%s", err, r.stdout, r.stderr)
	}
	// A table with a primary key is at least its heap and its index.
	if rows[0].Files < 2*tables {
		t.Fatalf("the backup has %d files, fewer than two for each of %d tables", rows[0].Files, tables)
	}
	// The catalog's read of a backup does not grow with its files.
	store := openRepository(t, conf, env)
	info, err := store.Stat(context.Background(), catalog.ManifestKey("main", rows[0].ID))
	if err != nil || info.Size >= 64<<10 {
		t.Fatalf("the manifest of a backup of %d files: %d bytes, %v", rows[0].Files, info.Size, err)
	}
	m, err := catalog.ReadManifest(context.Background(), store, "main", rows[0].ID)
	if err != nil || m.PartCount < 2 || m.FileCount != rows[0].Files {
		t.Fatalf("manifest: %v, %d parts, %d files", err, m.PartCount, m.FileCount)
	}
	if r := cellar(t, env, "--config", conf, "verify", "main", "latest"); r.code != 0 {
		t.Fatalf("verify: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	dir := restoreDir(t)
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir, "--quiet"); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	restored := startRestored(t, c, dir, env)
	if n := restored.QueryInt64(t, "SELECT count(*) FROM pg_class WHERE relname LIKE 'tenant%' AND relkind = 'r'"); n != int64(tables) {
		t.Fatalf("the restored server has %d tenant tables, want %d", n, tables)
	}
	if v := restored.QueryString(t, fmt.Sprintf("SELECT (SELECT v FROM tenant1) || (SELECT v FROM tenant%d)", tables)); v != "firstlast" {
		t.Fatalf("rows of the first and last table: %q", v)
	}
}
