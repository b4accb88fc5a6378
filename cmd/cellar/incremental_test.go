package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/internal/pgtest"
)

// The end-to-end tests of incremental backups (issue 16): a chain of full,
// incr and diff backups of a real PostgreSQL 15 under DDL and writes, each
// restored and compared row for row with the source at backup time, and
// the refusals (damaged parents, deleting a parent, bad input).

// incrCluster is backupCluster with data checksums (for pg_checksums on
// the restores). It also returns the directory of a file:// repository.
func incrCluster(t *testing.T, kind string) (c *pgtest.Cluster, conf string, env []string, repoDir string) {
	t.Helper()
	c, conf, env = backupCluster(t, kind, "")
	c.Stop(t)
	if out, err := serverTool(t, "pg_checksums", "--enable", "--no-sync", "-D", c.DataDir()); err != nil {
		t.Fatalf("pg_checksums --enable: %v\n%s", err, out)
	}
	c.Start(t)
	return c, conf, env, filepath.Join(filepath.Dir(conf), "repo")
}

// incrSeed fills a new cluster: tablespace extra (whose location it
// returns), pgbench's tables at scale, an empty table marker, a table cold
// of coldRows rows and a table spread in tablespace extra.
func incrSeed(t *testing.T, c *pgtest.Cluster, scale, coldRows int) string {
	t.Helper()
	spc := c.MakeDir("tablespace")
	c.Exec(t, "CREATE TABLESPACE extra LOCATION '"+spc+"'")
	c.Pgbench(t, "-i", "-s", strconv.Itoa(scale), "-q")
	c.Exec(t, fmt.Sprintf(`CREATE TABLE marker (id int PRIMARY KEY);
		CREATE TABLE cold (id int PRIMARY KEY, amount numeric, note text);
		INSERT INTO cold SELECT g, g * 1.5, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, %d) g;
		CREATE TABLE spread (id int PRIMARY KEY, v int, note text) TABLESPACE extra;
		INSERT INTO spread SELECT g, g, md5(g::text) FROM generate_series(1, 20000) g`, coldRows))
	return spc
}

// incrBackup runs `cellar backup main --fast` with args and returns the new
// backup as list-backups shows it, and the command's output.
func incrBackup(t *testing.T, env []string, conf string, args ...string) (backupRow, result) {
	t.Helper()
	before := listBackups(t, env, conf)
	r := cellar(t, env, append([]string{"--config", conf, "backup", "main", "--fast"}, args...)...)
	if r.code != 0 {
		t.Fatalf("backup %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	rows := listBackups(t, env, conf)
	if len(rows) != len(before)+1 || rows[0].Status != catalog.StatusDone {
		t.Fatalf("after backup %v, list-backups shows %+v (before: %+v)", args, rows, before)
	}
	return rows[0], r
}

// wantShown checks the fields of incrementals in show-backup --format json:
// type, parent (absent for a full backup), chain_length and the sizes.
func wantShown(t *testing.T, env []string, conf, id, typ, parent string, chain int) {
	t.Helper()
	r := cellar(t, env, "--config", conf, "show-backup", "main", id, "--format", "json")
	var f map[string]any
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &f) != nil {
		t.Fatalf("show-backup %s: exit %d: %s%s", id, r.code, r.stdout, r.stderr)
	}
	p, hasParent := f["parent"]
	if f["type"] != typ || hasParent != (parent != "") || (parent != "" && p != parent) || f["chain_length"] != float64(chain) ||
		f["data_size"] == nil || f["stored_size"] == nil {
		t.Fatalf("show-backup %s: type %v, parent %v (present: %v), chain_length %v, data_size %v, stored_size %v; want %s on %q, chain of %d",
			id, f["type"], p, hasParent, f["chain_length"], f["data_size"], f["stored_size"], typ, parent, chain)
	}
}

// wantBackup checks a backup's type, parent and chain length as
// list-backups shows them.
func wantBackup(t *testing.T, what string, row backupRow, typ, parent string, chain int) {
	t.Helper()
	if row.Type != typ || row.Parent != parent || row.ChainLength != chain {
		t.Fatalf("%s: backup %s is type %q, parent %q, chain_length %d; want type %q, parent %q, chain_length %d",
			what, row.ID, row.Type, row.Parent, row.ChainLength, typ, parent, chain)
	}
	if typ != "full" && (row.StoredSize <= 0 || row.StoredSize >= row.DataSize) {
		t.Fatalf("%s: incremental %s stores %d bytes of %d: want 0 < stored_size < data_size", what, row.ID, row.StoredSize, row.DataSize)
	}
}

// incrRestored is a restored backup: its directory, the place of its
// tablespace extra, and the server running on it (a copy of dir).
type incrRestored struct {
	dir, spc, out string // out is what restore printed
	pg            *pgtest.Cluster
}

// incrRestore restores backup id into a new directory, with tablespace
// extra moved beside it, and starts PostgreSQL there (until recovery ends).
func incrRestore(t *testing.T, c *pgtest.Cluster, env []string, conf, id string, args ...string) incrRestored {
	t.Helper()
	dir := restoreDir(t)
	spc := filepath.Join(filepath.Dir(dir), "extra")
	full := append([]string{"--config", conf, "restore", "main", id, dir, "--tablespace", "extra:" + spc}, args...)
	r := cellar(t, env, full...)
	if r.code != 0 {
		t.Fatalf("restore %s %v: exit %d: %s%s", id, args, r.code, r.stdout, r.stderr)
	}
	c.Chown(spc)
	return incrRestored{dir: dir, spc: spc, out: r.stdout, pg: startRestored(t, c, dir, env)}
}

// pgbenchWhile starts pgbench writing with two clients until the returned
// function is called. Unlike backgroundPgbench it does not truncate
// pgbench_history first (-n), so that pgbench's invariant (see
// pgbenchConsistent) holds across several runs.
func pgbenchWhile(t *testing.T, c *pgtest.Cluster) (stop func()) {
	t.Helper()
	bench := pgtest.Command(t, pgtest.Bin("pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", c.User(), "-c", "2", "-T", "600", "postgres")
	bench.Dir = "/"
	bench.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = syscall.Kill(-bench.Process.Pid, syscall.SIGKILL)
			_ = bench.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// incrUnderPgbench takes an incremental backup while pgbench writes, and
// returns it with the fingerprint of the source's other tables just
// before it; pgbench's tables are checked for consistency instead
// (pgbenchConsistent) after a restore.
func incrUnderPgbench(t *testing.T, c *pgtest.Cluster, env []string, conf string) (backupRow, map[string]string) {
	t.Helper()
	stop := pgbenchWhile(t, c)
	time.Sleep(time.Second)
	fp := c.Fingerprint(t, pgbenchTables)
	b, _ := incrBackup(t, env, conf, "--type", "incr")
	stop()
	return b, fp
}

// pgbenchTables are the tables a running pgbench writes to.
func pgbenchTables(db, table string) bool {
	return db == "postgres" && strings.HasPrefix(table, "public.pgbench_")
}

// pgbenchConsistent checks pgbench's invariant: the balances of accounts,
// branches and tellers and the deltas of the history add up to the same.
func pgbenchConsistent(t *testing.T, what string, c *pgtest.Cluster) {
	t.Helper()
	row := c.QueryRow(t, `SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint, (SELECT sum(bbalance) FROM pgbench_branches)::bigint,
		(SELECT sum(tbalance) FROM pgbench_tellers)::bigint, (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, (SELECT count(*) FROM pgbench_history)`)
	if row[0] != row[1] || row[1] != row[2] || row[2] != row[3] || row[4].(int64) == 0 {
		t.Fatalf("%s: pgbench's tables are inconsistent: accounts %v, branches %v, tellers %v, history %v (%v transactions)", what, row[0], row[1], row[2], row[3], row[4])
	}
}

// serverTool runs one of PostgreSQL's programs as the server user.
func serverTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := pgtest.Command(t, pgtest.Bin(name), args...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// schemaDump is pg_dumpall --schema-only of c without what differs between
// two dumps of the same cluster (comments, \restrict keys, setval) and with
// the location of tablespace extra replaced by a placeholder.
func schemaDump(t *testing.T, c *pgtest.Cluster, spc string) string {
	t.Helper()
	out, err := serverTool(t, "pg_dumpall", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", c.User(), "--schema-only")
	if err != nil {
		t.Fatalf("pg_dumpall: %v\n%s", err, out)
	}
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "--") || strings.HasPrefix(line, `\restrict`) || strings.HasPrefix(line, `\unrestrict`) ||
			strings.HasPrefix(line, "SELECT pg_catalog.setval") {
			continue
		}
		keep = append(keep, strings.ReplaceAll(line, spc, "<extra>"))
	}
	return strings.Join(keep, "\n")
}

// firstDifference shows where two texts part.
func firstDifference(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(la) || i < len(lb); i++ {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			return fmt.Sprintf("line %d: %q vs %q", i+1, x, y)
		}
	}
	return "none"
}

// checkFingerprint compares a restored server's tables with the source's
// at backup time.
func checkFingerprint(t *testing.T, what string, want map[string]string, rc *pgtest.Cluster, skip func(db, table string) bool) {
	t.Helper()
	got := rc.Fingerprint(t, skip)
	if diff := pgtest.FingerprintDiff(want, got); diff != "" {
		t.Fatalf("%s: the restored tables differ from the source's at backup time:\n%s", what, diff)
	}
}

// partFile is the first part of a backup in a file:// repository.
func partFile(t *testing.T, repoDir, id string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(repoDir, "main", "base", id, "part-00001.tar*"))
	if len(m) != 1 {
		t.Fatalf("part 1 of backup %s in %s: found %v", id, repoDir, m)
	}
	return m[0]
}

// failedRestore restores backup id, one of whose ancestors (parent) has a
// damaged part: the restore must fail, naming the part or a file, and leave
// no global/pg_control.
func failedRestore(t *testing.T, env []string, conf, id, parent, part string) {
	t.Helper()
	dir := restoreDir(t)
	r := cellar(t, env, "--config", conf, "restore", "main", id, dir, "--tablespace", "extra:"+filepath.Join(filepath.Dir(dir), "extra"))
	if r.code == 0 || !namesDamage(r.stderr, parent, part) {
		t.Fatalf("restore of %s with %s damaged: exit %d, want a failure naming the part or a file: %s%s", id, part, r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
		t.Fatalf("the failed restore of %s left global/pg_control in %s", id, dir)
	}
	t.Logf("restore of %s with %s damaged: exit %d: %s", id, filepath.Base(part), r.code, strings.TrimSpace(r.stderr))
}

// namesDamage says whether a failure message names the damaged part (by
// its key, or its backup and part number) or a file of the data directory.
func namesDamage(msg, id, part string) bool {
	if strings.Contains(msg, filepath.Base(part)) && strings.Contains(msg, id) {
		return true
	}
	return dataFilePath.MatchString(msg)
}

// dataFilePath matches the path of a relation file of a data directory
// (not the key of a part, main/base/ID/...).
var dataFilePath = regexp.MustCompile(`(base/[0-9]+/[0-9]+|global/[0-9a-z_]+|pg_tblspc/[0-9]+/PG_)`)

// TestIncrementalChain: full, incr, incr, incr (by backup_type) and diff
// backups of a cluster with data checksums and a second tablespace, under
// CREATE DATABASE (both strategies), DROP DATABASE, TRUNCATE, VACUUM FULL,
// ALTER TABLE SET TABLESPACE, dropped and new relations, shrinking and
// growing files, and pgbench writing between backups and during one. Each
// backup is restored to its end and compared table by table with the
// source as it was when the backup was taken; the last restores pass
// pg_checksums, pg_amcheck and a pg_dumpall --schema-only comparison. Then
// a point in time between two incrementals, a --delta restore over an
// older restore, verify, delete of a parent, and damaged parent parts.
func TestIncrementalChain(t *testing.T) {
	began := time.Now()
	c, conf, env, repoDir := incrCluster(t, "file")
	spc := incrSeed(t, c, 5, 150000)
	c.Exec(t, `CREATE TABLE trunc_me (id int, v int, note text);
		INSERT INTO trunc_me SELECT g, g, md5(g::text) FROM generate_series(1, 20000) g;
		CREATE TABLE vac_full (id int PRIMARY KEY, v int, note text);
		INSERT INTO vac_full SELECT g, g % 1000, md5(g::text) FROM generate_series(1, 40000) g;
		CREATE TABLE mover (id int PRIMARY KEY, v int, note text);
		INSERT INTO mover SELECT g, g, md5(g::text) FROM generate_series(1, 30000) g;
		CREATE TABLE doomed (id int, note text);
		INSERT INTO doomed SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
		CREATE TABLE shrink (id int PRIMARY KEY, v int, note text);
		INSERT INTO shrink SELECT g, g, md5(g::text) FROM generate_series(1, 50000) g;
		CREATE TABLE grow (id int PRIMARY KEY, v int, note text);
		INSERT INTO grow SELECT g, g, md5(g::text) FROM generate_series(1, 1000) g;
		CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g`)
	c.Exec(t, "CREATE DATABASE tmpl")
	c.ExecIn(t, "tmpl", "CREATE TABLE items (id int PRIMARY KEY, qty int, note text); INSERT INTO items SELECT g, g % 97, md5(g::text) FROM generate_series(1, 20000) g")
	c.Exec(t, "CREATE DATABASE olddb")
	c.ExecIn(t, "olddb", "CREATE TABLE legacy AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g")

	// The chain, each backup with the source's fingerprint just before it.
	fps := map[string]map[string]string{}
	fps["full"] = c.Fingerprint(t, nil)
	full, _ := incrBackup(t, env, conf, "--type", "full")
	wantBackup(t, "full", full, "full", "", 1)

	c.Exec(t, "CREATE DATABASE fc TEMPLATE tmpl STRATEGY FILE_COPY TABLESPACE extra")
	c.Exec(t, "CREATE DATABASE wl TEMPLATE tmpl STRATEGY WAL_LOG")
	c.ExecIn(t, "fc", "INSERT INTO items SELECT g, g % 89, md5(g::text) FROM generate_series(20001, 30000) g; UPDATE items SET qty = qty + 1 WHERE id % 10 = 0")
	c.ExecIn(t, "wl", "CREATE TABLE extra_items AS SELECT g AS id, g * 3 AS qty FROM generate_series(1, 8000) g; DELETE FROM items WHERE id % 3 = 0")
	c.Exec(t, "TRUNCATE trunc_me; INSERT INTO trunc_me SELECT g, -g, 'after truncate' FROM generate_series(1, 500) g")
	c.Exec(t, "DELETE FROM vac_full WHERE id % 2 = 0")
	c.Exec(t, "VACUUM FULL vac_full")
	c.Exec(t, "ALTER TABLE mover SET TABLESPACE extra")
	c.Exec(t, "DROP TABLE doomed; CREATE TABLE newborn AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 7000) g")
	c.Exec(t, "DELETE FROM shrink WHERE id > 5000")
	c.Exec(t, "VACUUM shrink")
	c.Pgbench(t, "-n", "-c", "2", "-T", "3")
	incr1, fp1 := incrUnderPgbench(t, c, env, conf)
	fps["incr1"] = fp1
	wantBackup(t, "incr1", incr1, "incr", full.ID, 2)

	// A named restore point between incr1 and incr2.
	c.Exec(t, "INSERT INTO marker VALUES (1)")
	c.Exec(t, "SELECT pg_create_restore_point('between_incr1_incr2')")
	c.Exec(t, "INSERT INTO marker VALUES (2)")

	c.Exec(t, "DROP DATABASE olddb")
	c.Exec(t, "CREATE DATABASE newdb")
	c.ExecIn(t, "newdb", "CREATE TABLE fresh (id int PRIMARY KEY, v bigint, note text); INSERT INTO fresh SELECT g, g * g, md5(g::text) FROM generate_series(1, 15000) g")
	c.Exec(t, `INSERT INTO grow SELECT g, g, md5(g::text) FROM generate_series(1001, 100000) g;
		UPDATE spread SET v = v + 1 WHERE id % 7 = 0; UPDATE mover SET v = -v WHERE id < 100`)
	c.ExecIn(t, "fc", "DELETE FROM items WHERE id > 25000")
	c.Pgbench(t, "-n", "-c", "2", "-T", "3")
	fps["incr2"] = c.Fingerprint(t, nil)
	incr2, _ := incrBackup(t, env, conf, "--type", "incr")
	wantBackup(t, "incr2", incr2, "incr", incr1.ID, 3)

	c.Exec(t, `INSERT INTO marker VALUES (3); CREATE INDEX grow_v ON grow (v); UPDATE trunc_me SET v = v * 2;
		DROP TABLE newborn; CREATE TABLE newborn2 AS SELECT g AS id, g % 13 AS v FROM generate_series(1, 3000) g`)
	c.ExecIn(t, "wl", "UPDATE extra_items SET qty = 0 WHERE id % 5 = 0")
	c.Pgbench(t, "-n", "-c", "2", "-T", "2")
	// backup_type gives the type of a backup without --type.
	appendConf(t, conf, "backup_type = incr\n")
	fps["incr3"] = c.Fingerprint(t, nil)
	incr3, _ := incrBackup(t, env, conf)
	wantBackup(t, "incr3 (backup_type = incr)", incr3, "incr", incr2.ID, 4)

	c.Exec(t, "INSERT INTO marker VALUES (4); DELETE FROM grow WHERE id % 4 = 0")
	c.Pgbench(t, "-n", "-c", "2", "-T", "2")
	fps["diff"] = c.Fingerprint(t, nil)
	sourceSchema := schemaDump(t, c, spc)
	diff, _ := incrBackup(t, env, conf, "--type", "diff")
	wantBackup(t, "diff", diff, "diff", full.ID, 2)
	t.Logf("chain taken after %s", time.Since(began).Round(time.Second))

	// The catalog as a user sees it.
	rows := listBackups(t, env, conf)
	var listed []string
	for _, r := range rows {
		listed = append(listed, r.ID+":"+r.Type)
	}
	wantListed := []string{diff.ID + ":diff", incr3.ID + ":incr", incr2.ID + ":incr", incr1.ID + ":incr", full.ID + ":full"}
	if strings.Join(listed, " ") != strings.Join(wantListed, " ") {
		t.Fatalf("list-backups: %v, want %v", listed, wantListed)
	}
	for _, r := range rows {
		t.Logf("%s %s parent %q chain %d: data %s, stored %s", r.ID, r.Type, r.Parent, r.ChainLength, humanSize(r.DataSize), humanSize(r.StoredSize))
	}
	if incr3.StoredSize >= full.StoredSize || incr2.StoredSize >= full.StoredSize {
		t.Fatalf("incrementals store %d and %d bytes, the full backup %d: want less", incr2.StoredSize, incr3.StoredSize, full.StoredSize)
	}
	wantShown(t, env, conf, full.ID, "full", "", 1)
	wantShown(t, env, conf, incr3.ID, "incr", incr2.ID, 4)
	wantShown(t, env, conf, diff.ID, "diff", full.ID, 2)

	// The fingerprints tell the backups apart, so that equal ones below
	// mean the right data.
	labels := []string{"full", "incr1", "incr2", "incr3", "diff"}
	for i := 1; i < len(labels); i++ {
		if pgtest.FingerprintDiff(fps[labels[i-1]], fps[labels[i]]) == "" {
			t.Fatalf("the source's fingerprints before %s and %s are equal: the test changes nothing between them", labels[i-1], labels[i])
		}
	}
	if !strings.Contains(sourceSchema, "CREATE TABLE public.newborn2") || !strings.Contains(sourceSchema, "CREATE DATABASE fc") {
		t.Fatalf("pg_dumpall --schema-only of the source lacks what the test made:\n%s", sourceSchema)
	}

	// Every backup restored to its end equals the source when it was taken.
	var fullRestore incrRestored
	for _, b := range []struct {
		label string
		id    string
	}{{"full", full.ID}, {"incr1", incr1.ID}, {"incr2", incr2.ID}, {"incr3", incr3.ID}, {"diff", diff.ID}} {
		step := time.Now()
		rs := incrRestore(t, c, env, conf, b.id, "--target-immediate")
		skip := func(db, table string) bool { return false }
		if b.label == "incr1" {
			skip = pgbenchTables
			pgbenchConsistent(t, "restore of incr1", rs.pg)
		}
		checkFingerprint(t, "restore of "+b.label+" "+b.id, fps[b.label], rs.pg, skip)
		if b.label == "diff" {
			if got := schemaDump(t, rs.pg, rs.spc); got != sourceSchema {
				t.Fatalf("pg_dumpall --schema-only of the restore of the diff backup differs from the source's: first difference at %s", firstDifference(sourceSchema, got))
			}
		}
		if b.label == "incr3" || b.label == "diff" {
			if out, err := serverTool(t, "pg_amcheck", "-h", "127.0.0.1", "-p", strconv.Itoa(rs.pg.Port()), "-U", rs.pg.User(),
				"--all", "--heapallindexed", "--install-missing"); err != nil {
				t.Fatalf("pg_amcheck on the restore of %s: %v\n%s", b.label, err, out)
			}
		}
		rs.pg.Stop(t)
		if out, err := serverTool(t, "pg_checksums", "--check", "-D", rs.pg.DataDir()); err != nil {
			t.Fatalf("pg_checksums --check on the restore of %s: %v\n%s", b.label, err, out)
		}
		if b.label == "full" {
			fullRestore = rs
		}
		t.Logf("restore of %s %s: %d tables equal (%s)", b.label, b.id, len(fps[b.label]), time.Since(step).Round(100*time.Millisecond))
	}

	// Point in time between incr1 and incr2, from incr1.
	rs := incrRestore(t, c, env, conf, incr1.ID, "--target-name", "between_incr1_incr2")
	if ids := rs.pg.QueryString(t, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM marker"); ids != "1" {
		t.Fatalf("restore of incr1 to the restore point between incr1 and incr2: markers %q, want exactly 1", ids)
	}
	pgbenchConsistent(t, "restore of incr1 to a restore point", rs.pg)
	rs.pg.Stop(t)

	// --delta over the (started, so changed) restore of the full backup.
	r := cellar(t, env, "--config", conf, "--format", "json", "restore", "main", incr3.ID, fullRestore.dir, "--delta",
		"--tablespace", "extra:"+fullRestore.spc, "--target-immediate")
	if r.code != 0 {
		t.Fatalf("restore --delta of incr3 over the restore of the full backup: exit %d: %s", r.code, r.stderr)
	}
	var delta struct{ Files, Fetched, Kept, Removed int }
	if err := json.Unmarshal([]byte(r.stdout), &delta); err != nil {
		t.Fatalf("restore --delta output: %v: %s", err, r.stdout)
	}
	// cold and the template's files stayed; olddb's and doomed's went.
	if delta.Kept == 0 || delta.Fetched == 0 || delta.Removed == 0 || delta.Kept+delta.Fetched != delta.Files {
		t.Fatalf("restore --delta of incr3 over the full backup's restore: %+v, want files kept, fetched and removed", delta)
	}
	c.Chown(fullRestore.spc)
	rc := startRestored(t, c, fullRestore.dir, env)
	checkFingerprint(t, "restore --delta of incr3 over the full backup's restore", fps["incr3"], rc, nil)
	rc.Stop(t)
	t.Logf("restore --delta of incr3: %+v", delta)

	// verify checks the chain.
	r = cellar(t, env, "--config", conf, "verify", "main", incr3.ID)
	if r.code != 0 || !strings.Contains(r.stdout, "OK") {
		t.Fatalf("verify %s: exit %d: %s%s", incr3.ID, r.code, r.stdout, r.stderr)
	}
	for _, a := range []string{full.ID, incr1.ID, incr2.ID} {
		if !strings.Contains(r.stdout, a) {
			t.Fatalf("verify of incr3 %s does not name its ancestor %s: %s", incr3.ID, a, r.stdout)
		}
	}
	if r = cellar(t, env, "--config", conf, "verify", "main", diff.ID); r.code != 0 || !strings.Contains(r.stdout, full.ID) {
		t.Fatalf("verify of the diff %s (on %s): exit %d: %s%s", diff.ID, full.ID, r.code, r.stdout, r.stderr)
	}

	// A parent may not be deleted.
	if r = cellar(t, env, "--config", conf, "delete", "main", incr2.ID); r.code == 0 || !strings.Contains(r.stderr, incr3.ID) {
		t.Fatalf("delete of incr2 %s, the parent of %s: exit %d: %s%s", incr2.ID, incr3.ID, r.code, r.stdout, r.stderr)
	}
	if r = cellar(t, env, "--config", conf, "delete", "main", full.ID); r.code == 0 || !(strings.Contains(r.stderr, incr1.ID) || strings.Contains(r.stderr, diff.ID)) {
		t.Fatalf("delete of the full backup %s, the parent of %s and %s: exit %d: %s%s", full.ID, incr1.ID, diff.ID, r.code, r.stdout, r.stderr)
	}
	if n := len(listBackups(t, env, conf)); n != 5 {
		t.Fatalf("after refused deletes, %d backups are left, want 5", n)
	}
	// Retention keeps what a retained backup builds on: with REDUNDANCY 1
	// the diff and the full backup stay and the incrementals go; with
	// REDUNDANCY 2 incr3 stays, and with it everything.
	r = cellar(t, env, "--config", writeConfig(t, readFile(t, conf)+"retention_policy = REDUNDANCY 1\n"), "retention", "main", "--dry-run")
	for _, b := range []backupRow{full, incr1, incr2, incr3, diff} {
		if removed := strings.Contains(r.stdout, "Would remove backup "+b.ID); r.code != 0 || removed != (b.Type == "incr") {
			t.Fatalf("retention --dry-run with REDUNDANCY 1 (removes %s: %v, want only the incrementals gone): exit %d: %s%s", b.ID, removed, r.code, r.stdout, r.stderr)
		}
	}
	r = cellar(t, env, "--config", writeConfig(t, readFile(t, conf)+"retention_policy = REDUNDANCY 2\n"), "retention", "main", "--dry-run")
	if r.code != 0 || strings.Contains(r.stdout, "Would remove backup") {
		t.Fatalf("retention --dry-run with REDUNDANCY 2 (incr3 needs all but the diff): exit %d: %s%s", r.code, r.stdout, r.stderr)
	}

	// One byte of incr2's part changed: verify and restore of incr3 fail,
	// naming it; verify of the full backup, which does not need it, passes.
	part := partFile(t, repoDir, incr2.ID)
	orig, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), orig...)
	bad[len(bad)/2] ^= 0x55
	if err := os.WriteFile(part, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	r = cellar(t, env, "--config", conf, "verify", "main", incr3.ID)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, filepath.Base(part)) || !strings.Contains(r.stdout+r.stderr, incr2.ID) {
		t.Fatalf("verify of incr3 %s with a byte of %s changed: exit %d, want 1 naming the part: %s%s", incr3.ID, part, r.code, r.stdout, r.stderr)
	}
	t.Logf("verify of incr3 with a byte of incr2's part changed: %s", strings.TrimSpace(r.stdout+r.stderr))
	if r = cellar(t, env, "--config", conf, "verify", "main", full.ID); r.code != 0 {
		t.Fatalf("verify of the full backup with incr2's part damaged: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	failedRestore(t, env, conf, incr3.ID, incr2.ID, part)
	if err := os.WriteFile(part, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if r = cellar(t, env, "--config", conf, "verify", "main", incr3.ID); r.code != 0 {
		t.Fatalf("verify of incr3 with incr2's part put back: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}

	// The full backup's part cut in half: verify and restore of the diff
	// fail, naming it.
	part = partFile(t, repoDir, full.ID)
	if err := os.Truncate(part, int64(len(mustRead(t, part))/2)); err != nil {
		t.Fatal(err)
	}
	r = cellar(t, env, "--config", conf, "verify", "main", diff.ID)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, filepath.Base(part)) || !strings.Contains(r.stdout+r.stderr, full.ID) {
		t.Fatalf("verify of the diff %s with %s truncated: exit %d, want 1 naming the part: %s%s", diff.ID, part, r.code, r.stdout, r.stderr)
	}
	t.Logf("verify of the diff with the full backup's part truncated: %s", strings.TrimSpace(r.stdout+r.stderr))
	failedRestore(t, env, conf, diff.ID, full.ID, part)
	// Nor may a new incremental build on it, truncated or missing
	// ("a missing or damaged piece of the chain stops the incremental
	// before it uploads anything").
	noIncrementalOn := func(what string) {
		t.Helper()
		n := len(listBackups(t, env, conf))
		r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--type", "diff")
		if r.code == 0 || !strings.Contains(r.stderr, filepath.Base(part)) {
			t.Errorf("a diff backup on the full backup %s whose %s is %s: exit %d, want a failure naming the part: %s%s", full.ID, part, what, r.code, r.stdout, r.stderr)
		}
		if rows := listBackups(t, env, conf); len(rows) > n && rows[0].Status == catalog.StatusDone {
			t.Errorf("a diff backup on a full backup whose part is %s finished: %s %s on %s", what, rows[0].ID, rows[0].Type, rows[0].Parent)
		}
	}
	noIncrementalOn("truncated")
	if err := os.Rename(part, part+".away"); err != nil {
		t.Fatal(err)
	}
	noIncrementalOn("missing")

	// A backup nothing depends on may go.
	if r = cellar(t, env, "--config", conf, "delete", "main", diff.ID); r.code != 0 {
		t.Fatalf("delete of the diff %s, on which nothing depends: exit %d: %s", diff.ID, r.code, r.stderr)
	}
	t.Logf("done in %s", time.Since(began).Round(time.Second))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIncrementalOnMinIO: a shorter chain on S3 (MinIO): a full backup, an
// incremental taken while pgbench writes, one on it and a diff; a point in
// time after the first incremental, and the restores of the others to
// their end, compared with the source.
func TestIncrementalOnMinIO(t *testing.T) {
	began := time.Now()
	c, conf, env, _ := incrCluster(t, "s3")
	incrSeed(t, c, 3, 50000)
	fps := map[string]map[string]string{}
	full, _ := incrBackup(t, env, conf, "--type", "full")
	wantBackup(t, "full", full, "full", "", 1)

	c.Exec(t, "CREATE DATABASE fc STRATEGY FILE_COPY")
	c.ExecIn(t, "fc", "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 10000) g")
	c.Exec(t, "UPDATE spread SET v = -v WHERE id % 3 = 0")
	c.Exec(t, "VACUUM FULL spread")
	incr1, fp1 := incrUnderPgbench(t, c, env, conf)
	fps["incr1"] = fp1
	wantBackup(t, "incr1", incr1, "incr", full.ID, 2)

	c.Exec(t, "INSERT INTO marker VALUES (1)")
	var target time.Time
	c.Scan(t, "SELECT clock_timestamp()", nil, &target)
	time.Sleep(50 * time.Millisecond)
	c.Exec(t, "INSERT INTO marker VALUES (2)")

	c.Exec(t, "DROP TABLE cold; CREATE TABLE warm AS SELECT g AS id, g % 17 AS v FROM generate_series(1, 30000) g")
	c.Pgbench(t, "-n", "-c", "2", "-T", "2")
	fps["incr2"] = c.Fingerprint(t, nil)
	incr2, _ := incrBackup(t, env, conf, "--type", "incr")
	wantBackup(t, "incr2", incr2, "incr", incr1.ID, 3)

	c.Exec(t, "DROP DATABASE fc")
	c.Exec(t, "INSERT INTO marker VALUES (3); UPDATE warm SET v = 0 WHERE id % 2 = 0")
	fps["diff"] = c.Fingerprint(t, nil)
	diff, _ := incrBackup(t, env, conf, "--type", "diff")
	wantBackup(t, "diff", diff, "diff", full.ID, 2)

	// auto: the newest backup that ended before the target, incr1.
	rs := incrRestore(t, c, env, conf, "auto", "--target-time", target.UTC().Format(time.RFC3339Nano))
	if !strings.Contains(rs.out, "Restored backup "+incr1.ID) {
		t.Fatalf("restore auto --target-time %s did not choose incr1 %s: %s", target, incr1.ID, rs.out)
	}
	if ids := rs.pg.QueryString(t, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM marker"); ids != "1" {
		t.Fatalf("restore of incr1 to %s: markers %q, want exactly 1", target, ids)
	}
	pgbenchConsistent(t, "restore of incr1 to a time", rs.pg)
	rs.pg.Stop(t)
	for _, b := range []struct{ label, id string }{{"incr2", incr2.ID}, {"diff", diff.ID}} {
		rs := incrRestore(t, c, env, conf, b.id, "--target-immediate")
		checkFingerprint(t, "restore of "+b.label+" "+b.id, fps[b.label], rs.pg, nil)
		rs.pg.Stop(t)
		if out, err := serverTool(t, "pg_checksums", "--check", "-D", rs.pg.DataDir()); err != nil {
			t.Fatalf("pg_checksums --check on the restore of %s: %v\n%s", b.label, err, out)
		}
	}
	if r := cellar(t, env, "--config", conf, "verify", "main", incr2.ID); r.code != 0 || !strings.Contains(r.stdout, full.ID) || !strings.Contains(r.stdout, incr1.ID) {
		t.Fatalf("verify of incr2 %s: exit %d: %s%s", incr2.ID, r.code, r.stdout, r.stderr)
	}
	t.Logf("done in %s", time.Since(began).Round(time.Second))
}

// TestIncrementalBadInput: the type and parent rules (backup_type,
// incremental_max_chain, incr with nothing to build on, --parent) and the
// refusals: an unknown type, an unknown parent, a parent with --type full,
// and incrementals with backup_method = stream.
func TestIncrementalBadInput(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10000) g")
	refused := func(t *testing.T, conf string, code int, want []string, args ...string) {
		t.Helper()
		n := len(listBackups(t, env, conf))
		r := cellar(t, env, append([]string{"--config", conf, "backup", "main", "--fast"}, args...)...)
		ok := r.code == code || (code < 0 && r.code > 0)
		for _, w := range want {
			ok = ok && strings.Contains(r.stderr, w)
		}
		if !ok || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Fatalf("backup %v: exit %d, want %d with %q in one line: %s", args, r.code, code, want, r.stderr)
		}
		rows := listBackups(t, env, conf)
		for _, row := range rows[:len(rows)-n] {
			if row.Status == catalog.StatusDone {
				t.Fatalf("the refused backup %v left a finished backup: %+v", args, row)
			}
		}
	}
	refused(t, conf, 2, []string{"bogus"}, "--type", "bogus")

	// Nothing to build on: incr is a full backup.
	first, _ := incrBackup(t, env, conf, "--type", "incr")
	wantBackup(t, "incr with no backup", first, "full", "", 1)
	wantShown(t, env, conf, first.ID, "full", "", 1)

	// An unknown parent (a well-formed id), and a parent with --type full.
	refused(t, conf, -1, []string{"20200101T000000"}, "--type", "incr", "--parent", "20200101T000000")
	refused(t, conf, 2, []string{"--parent"}, "--type", "full", "--parent", first.ID)
	refused(t, conf, 2, []string{"no-such-backup"}, "--type", "incr", "--parent", "no-such-backup")

	// backup_type = incr: on the newest backup.
	text := readFile(t, conf)
	incrConf := writeConfig(t, text+"backup_type = incr\n")
	c.Exec(t, "UPDATE t SET v = v + 1 WHERE id % 10 = 0")
	second, _ := incrBackup(t, env, incrConf)
	wantBackup(t, "backup_type = incr", second, "incr", first.ID, 2)
	c.Exec(t, "INSERT INTO t SELECT g, g FROM generate_series(10001, 11000) g")
	third, _ := incrBackup(t, env, conf, "--type", "incr")
	wantBackup(t, "incr on an incr", third, "incr", second.ID, 3)
	// diff: on the newest full one; --parent: on the one named.
	diff, _ := incrBackup(t, env, conf, "--type", "diff")
	wantBackup(t, "diff", diff, "diff", first.ID, 2)
	onDiff, _ := incrBackup(t, env, conf, "--type", "incr")
	wantBackup(t, "incr on a diff", onDiff, "incr", diff.ID, 3)
	named, _ := incrBackup(t, env, conf, "--type", "incr", "--parent", second.ID)
	wantBackup(t, "--parent", named, "incr", second.ID, 3)

	// incremental_max_chain = 3: an incr on named (chain 3) is a full
	// backup, and says why.
	capped, r := incrBackup(t, env, writeConfig(t, text+"incremental_max_chain = 3\n"), "--type", "incr")
	wantBackup(t, "incr beyond incremental_max_chain", capped, "full", "", 1)
	if !strings.Contains(r.stdout+r.stderr, "incremental_max_chain") {
		t.Fatalf("a backup made full by incremental_max_chain does not say so: %s%s", r.stdout, r.stderr)
	}
	wantShown(t, env, conf, named.ID, "incr", second.ID, 3)
	wantShown(t, env, conf, capped.ID, "full", "", 1)

	// backup_method = stream takes full backups only.
	stream := text + "backup_method = stream\nstreaming_conninfo = " + c.ConnString() + "\n"
	refused(t, writeConfig(t, stream), 2, []string{"backup_method", "stream"}, "--type", "incr")
	refused(t, writeConfig(t, stream), 2, []string{"backup_method", "stream"}, "--type", "diff")
	refused(t, writeConfig(t, stream+"backup_type = incr\n"), 2, []string{"backup_method", "backup_type"})
}
