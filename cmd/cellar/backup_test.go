package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/internal/pgtest"
	"github.com/cellar-backup/cellar/pg"
)

// backupCluster is an archiving cluster whose configuration also names its
// data directory and connection, ready for `cellar backup main`.
func backupCluster(t *testing.T, kind, extraConf string) (*pgtest.Cluster, string, []string) {
	t.Helper()
	locks := t.TempDir()
	c, conf, env := archivingCluster(t, kind, "lock_directory = "+locks+"\n"+extraConf)
	appendConf(t, conf, fmt.Sprintf("pgdata = %s\nconninfo = %s\n", c.DataDir(), c.ConnString()))
	return c, conf, env
}

// openRepository opens the repository of server main as cellar does.
func openRepository(t *testing.T, conf string, env []string) cloud.Storage {
	t.Helper()
	cfg, err := config.Load(conf, env)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := cfg.Server("main")
	if err != nil {
		t.Fatal(err)
	}
	// The SDKs read their own variables from the process environment.
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st := &state{env: env}
	store, err := repo.Open(context.Background(), st.repoOptions(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// listBackups runs list-backups --format json.
func listBackups(t *testing.T, env []string, conf string) []backupRow {
	t.Helper()
	r := cellar(t, env, "--config", conf, "list-backups", "main", "--format", "json")
	if r.code != 0 {
		t.Fatalf("list-backups: exit %d: %s", r.code, r.stderr)
	}
	var rows []backupRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("list-backups output: %v\n%s", err, r.stdout)
	}
	return rows
}

// extractParts downloads every part of a backup and unpacks it with the
// standard tools, tar and zstd, into a new directory.
func extractParts(t *testing.T, store cloud.Storage, m *catalog.Manifest) string {
	t.Helper()
	// Open to PostgreSQL's user, which may start a server on it.
	dir := openTempDir(t, "cellar-extract")
	out := filepath.Join(dir, "data")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	parts, _ := pgtest.Contents(t, store, m)
	for _, p := range parts {
		rc, err := store.Get(context.Background(), p.Key)
		if err != nil {
			t.Fatalf("part %s: %v", p.Key, err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != p.Size || hex.EncodeToString(sum[:]) != p.SHA256 {
			t.Fatalf("part %s: %d bytes sha256 %x, the manifest records %d bytes %s", p.Key, len(data), sum, p.Size, p.SHA256)
		}
		file := filepath.Join(dir, filepath.Base(p.Key))
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", `zstd -d -q -c "$1" | tar -x -C "$2"`, "sh", file, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("zstd -d | tar -x %s: %v\n%s", p.Key, err, b)
		}
		os.Remove(file)
	}
	return out
}

// checkExtracted compares an unpacked backup with its manifest: exactly
// the files it names, with their sizes and checksums.
func checkExtracted(t *testing.T, store cloud.Storage, dir string, m *catalog.Manifest) {
	t.Helper()
	want := map[string]catalog.File{}
	_, files := pgtest.Contents(t, store, m)
	for _, f := range files {
		want[f.Path] = f
	}
	seen := 0
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		f, ok := want[rel]
		if !ok {
			return fmt.Errorf("%s was extracted but is not in the manifest", rel)
		}
		seen++
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			if f.Type != catalog.TypeSymlink {
				return fmt.Errorf("%s: a symlink, the manifest says %s", rel, f.Type)
			}
		case info.IsDir():
			if f.Type != catalog.TypeDir {
				return fmt.Errorf("%s: a directory, the manifest says %s", rel, f.Type)
			}
		default:
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			if f.Type != catalog.TypeFile || int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
				return fmt.Errorf("%s: %d bytes sha256 %x, the manifest records %s of %d bytes %s", rel, len(data), sum, f.Type, f.Size, f.SHA256)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(want) {
		t.Fatalf("extracted %d entries, the manifest names %d", seen, len(want))
	}
}

func TestBackupEveryRepositoryKind(t *testing.T) {
	for _, kind := range repoKinds {
		t.Run(kind, func(t *testing.T) {
			c, conf, env := backupCluster(t, kind, "")
			spc := c.MakeDir("tablespace")
			c.Exec(t, "CREATE TABLESPACE extra LOCATION '"+spc+"'")
			c.Exec(t, "CREATE TABLE spread (id int, note text) TABLESPACE extra")
			c.Exec(t, "INSERT INTO spread SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
			c.Exec(t, "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g")
			c.Pgbench(t, "-i", "-s", "5", "-q")
			c.Exec(t, "CREATE TABLE marker (id int primary key)")
			c.Exec(t, "INSERT INTO marker SELECT generate_series(1, 100)")
			// pgbench writes during the whole backup.
			stopBench := backgroundPgbench(t, c)
			time.Sleep(time.Second)
			r := cellar(t, env, "--config", conf, "backup", "main", "--fast")
			stopBench()
			if r.code != 0 {
				t.Fatalf("backup: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, "done") {
				t.Fatalf("backup printed %q", r.stdout)
			}
			rows := listBackups(t, env, conf)
			if len(rows) != 1 || rows[0].Status != catalog.StatusDone {
				t.Fatalf("list-backups after one backup: %+v", rows)
			}
			store := openRepository(t, conf, env)
			m, err := catalog.ReadManifest(context.Background(), store, "main", rows[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			if m.SystemIdentifier != c.SystemIdentifier(t) || m.PGVersion < 150000 || m.Timeline != 1 || m.Standby {
				t.Fatalf("manifest: system identifier %d, version %d, timeline %d, standby %v", m.SystemIdentifier, m.PGVersion, m.Timeline, m.Standby)
			}
			if len(m.Tablespaces) != 1 || m.Tablespaces[0].Name != "extra" || m.Tablespaces[0].Location != spc || m.Tablespaces[0].Size == 0 {
				t.Fatalf("manifest tablespaces: %+v", m.Tablespaces)
			}
			if !strings.Contains(m.TablespaceMap, spc) || !strings.Contains(m.BackupLabel, "START WAL LOCATION") {
				t.Fatalf("manifest labels: %q %q", m.BackupLabel, m.TablespaceMap)
			}
			// Excluded and kept-empty entries.
			paths := map[string]catalog.File{}
			parts, files := pgtest.Contents(t, store, m)
			for _, f := range files {
				paths[f.Path] = f
			}
			for _, p := range []string{"postmaster.pid", "postmaster.opts", "pg_wal/" + m.BeginWAL} {
				if _, ok := paths[p]; ok {
					t.Errorf("the backup holds %s", p)
				}
			}
			for _, p := range []string{"pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_notify", "pg_subtrans", "global/pg_control", "PG_VERSION", "backup_label", "tablespace_map"} {
				if _, ok := paths[p]; !ok {
					t.Errorf("the backup lacks %s", p)
				}
			}
			scratch := c.QueryString(t, "SELECT pg_relation_filepath('scratch')")
			if _, ok := paths[scratch]; ok {
				t.Errorf("the backup holds the main fork of an unlogged table, %s", scratch)
			}
			if _, ok := paths[scratch+"_init"]; !ok {
				t.Errorf("the backup lacks the init fork of an unlogged table, %s_init", scratch)
			}
			// The WAL from begin to end is archived.
			segSize := m.WALSegmentSize
			b, _ := pg.ParseWALName(m.BeginWAL)
			e, _ := pg.ParseWALName(m.EndWAL)
			for n := b.SegNo(segSize); n <= e.SegNo(segSize); n++ {
				w, _ := pg.ParseWALName(pg.SegmentNameOf(m.Timeline, n, segSize))
				if _, err := store.Stat(context.Background(), catalog.WALKey("main", w)); err != nil {
					t.Fatalf("WAL %s of the backup: %v", w.Name, err)
				}
			}
			// Plain tar + zstd give exactly the files the manifest names.
			dir := extractParts(t, store, m)
			checkExtracted(t, store, dir, m)
			// show-backup agrees.
			r = cellar(t, env, "--config", conf, "show-backup", "main", "latest", "--format", "json")
			var row backupRow
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &row) != nil || row.ID != m.ID || row.DataSize != m.DataSize || row.WALFiles == 0 {
				t.Fatalf("show-backup latest: exit %d %s %s", r.code, r.stdout, r.stderr)
			}
			t.Logf("%s: backup %s, %d files, %d parts, %s stored %s", kind, m.ID, m.FileCount, len(parts), humanSize(m.DataSize), humanSize(m.StoredSize))
		})
	}
}

// TestBackupStartsAServer unpacks a backup with tar and zstd, and starts
// PostgreSQL on it with restore_command = cellar wal-fetch: it reaches the
// state of the end of the backup.
func TestBackupStartsAServer(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	c.Pgbench(t, "-i", "-s", "2", "-q")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	c.Exec(t, "INSERT INTO marker SELECT generate_series(1, 500)")
	r := cellar(t, env, "--config", conf, "backup", "main", "--fast")
	if r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	c.Exec(t, "INSERT INTO marker SELECT generate_series(501, 600)") // after the backup
	rows := listBackups(t, env, conf)
	store := openRepository(t, conf, env)
	m, err := catalog.ReadManifest(context.Background(), store, "main", rows[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	dir := extractParts(t, store, m)
	c.Chown(dir)
	restored := pgtest.Restore(t, dir, "recovery", pgtest.Options{
		Conf: map[string]string{
			"archive_mode":           "off",
			"restore_command":        fmt.Sprintf("%s --config %s wal-fetch main %%f %%p", cellarBin, conf),
			"recovery_target":        "immediate",
			"recovery_target_action": "promote",
		},
		Env: env,
	})
	restored.WaitPromoted(t, 2*time.Minute)
	if n := restored.QueryInt64(t, "SELECT count(*) FROM marker"); n != 500 {
		t.Fatalf("the restored server has %d markers, want the 500 committed before the backup", n)
	}
	if a, b := restored.QueryInt64(t, "SELECT count(*) FROM pgbench_accounts"), c.QueryInt64(t, "SELECT count(*) FROM pgbench_accounts"); a != b {
		t.Fatalf("pgbench_accounts: %d rows restored, %d in the source", a, b)
	}
}

func TestBackupKilledAndConcurrent(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "parallel = 1\n")
	c.Pgbench(t, "-i", "-s", "20", "-q")
	repoDir := filepath.Join(filepath.Dir(conf), "repo")

	// A second backup while one runs is refused, naming the holder.
	cfg, err := config.Load(conf, env)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := cfg.Server("main")
	held, err := lockServer(srv, "backup")
	if err != nil {
		t.Fatal(err)
	}
	held.setBackup("20990101T000000")
	r := cellar(t, env, "--config", conf, "backup", "main")
	if r.code == 0 || !strings.Contains(r.stderr, "another backup of server main is running") || !strings.Contains(r.stderr, strconv.Itoa(os.Getpid())) {
		t.Fatalf("backup while another runs: exit %d: %s", r.code, r.stderr)
	}
	held.release()

	// A backup killed halfway is not DONE, and the next one works.
	killWhen(t, env, filepath.Join(repoDir, "main", "base", "*", ".cellar-tmp-*"), time.Minute, "the backup never started writing a part",
		"--config", conf, "backup", "main", "--fast")
	rows := listBackups(t, env, conf)
	if len(rows) != 1 || rows[0].Status != catalog.StatusFailed {
		t.Fatalf("after a killed backup, list-backups shows %+v, want one FAILED", rows)
	}
	r = cellar(t, env, "--config", conf, "show-backup", "main", "latest")
	if r.code == 0 {
		t.Fatalf("show-backup latest with no finished backup: exit 0: %s", r.stdout)
	}
	r = cellar(t, env, "--config", conf, "backup", "main", "--quiet", "--fast")
	if r.code != 0 {
		t.Fatalf("backup after a killed one: exit %d: %s", r.code, r.stderr)
	}
	rows = listBackups(t, env, conf)
	var statuses []string
	for _, r := range rows {
		statuses = append(statuses, r.Status)
	}
	sort.Strings(statuses)
	if strings.Join(statuses, ",") != "DONE,FAILED" || rows[0].Status != catalog.StatusDone {
		t.Fatalf("after a killed backup and a good one: %v", statuses)
	}
	// Text output names both.
	r = cellar(t, env, "--config", conf, "list-backups", "main")
	if r.code != 0 || !strings.Contains(r.stdout, "FAILED") || !strings.Contains(r.stdout, "DONE") {
		t.Fatalf("list-backups: exit %d: %s", r.code, r.stdout)
	}
	// check counts the failed backup; cron removes it, parts and all.
	if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 1 || !strings.HasPrefix(checkLines(r)["failed backups"], "FAILED (there are 1 failed") {
		t.Fatalf("check with a failed backup: exit %d: %s", r.code, r.stdout)
	}
	// A half-written file of a killed process (as the file backend
	// writes them), besides whatever the killed backup left.
	planted := filepath.Join(repoDir, "main", "wal", ".cellar-tmp-killed")
	if err := os.WriteFile(planted, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := append(append([]string(nil), env...), "CELLAR_NOW="+time.Now().Add(48*time.Hour).UTC().Format(time.RFC3339))
	if r := cellar(t, later, "--config", conf, "cron"); r.code != 0 {
		t.Fatalf("cron: exit %d: %s", r.code, r.stderr)
	}
	var temps []string
	filepath.WalkDir(filepath.Join(repoDir, "main"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".cellar-tmp-") {
			temps = append(temps, p)
		}
		return nil
	})
	if len(temps) != 0 {
		t.Fatalf("after cron, temporary files of killed writes are left: %v", temps)
	}
	rows = listBackups(t, env, conf)
	if len(rows) != 1 || rows[0].Status != catalog.StatusDone {
		t.Fatalf("after cron: %+v", rows)
	}
	parts, _ := filepath.Glob(filepath.Join(repoDir, "main", "base", "*", "part-*"))
	for _, p := range parts {
		if !strings.Contains(p, rows[0].ID) {
			t.Fatalf("after cron, these parts are left: %v (want those of %s only)", parts, rows[0].ID)
		}
	}
	if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 0 || checkLines(r)["WAL continuity"] != "OK" {
		t.Fatalf("check after cron: exit %d: %s", r.code, r.stdout)
	}
}

func TestBackupBadInput(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	empty := func(t *testing.T, conf string) {
		t.Helper()
		if rows := listBackups(t, env, conf); len(rows) != 0 {
			t.Fatalf("a refused backup left %+v in the catalog", rows)
		}
	}
	check := func(t *testing.T, conf string, code int, want string, args ...string) {
		t.Helper()
		r := cellar(t, env, append([]string{"--config", conf}, args...)...)
		if r.code != code || !strings.Contains(r.stderr, want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Fatalf("%v: exit %d, want %d with %q: %s", args, r.code, code, want, r.stderr)
		}
	}
	t.Run("unknown server", func(t *testing.T) {
		check(t, conf, 2, "unknown server", "backup", "nosuch")
	})
	t.Run("pgdata not a data directory", func(t *testing.T) {
		bad := strings.Replace(readFile(t, conf), "pgdata = "+c.DataDir(), "pgdata = "+t.TempDir(), 1)
		conf2 := writeConfig(t, bad)
		check(t, conf2, 1, "not a PostgreSQL data directory", "backup", "main")
		empty(t, conf2)
	})
	t.Run("no privileges", func(t *testing.T) {
		c.Exec(t, "CREATE ROLE weak LOGIN")
		bad := strings.Replace(readFile(t, conf), "user="+c.User(), "user=weak", 1)
		conf2 := writeConfig(t, bad)
		check(t, conf2, 1, "may not run backups", "backup", "main")
		empty(t, conf2)
	})
	t.Run("server not running", func(t *testing.T) {
		c.Stop(t)
		defer c.Start(t)
		check(t, conf, 1, "connecting to PostgreSQL", "backup", "main")
		empty(t, conf)
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBackupFromStandby backs up a streaming standby of an archiving
// primary; primary_conninfo lets Cellar close the last segment.
func TestBackupFromStandby(t *testing.T) {
	primary, conf, env := archivingCluster(t, "file", "lock_directory = "+t.TempDir()+"\n")
	primary.Exec(t, "CREATE TABLE marker (id int primary key)")
	primary.Exec(t, "INSERT INTO marker SELECT generate_series(1, 100)")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	src := primary.BaseBackup(t)
	standby := pgtest.Restore(t, src, "standby", pgtest.Options{
		Conf: map[string]string{
			"primary_conninfo": primary.ConnString(),
			"archive_mode":     "off",
		},
	})
	// Wait until the standby has replayed the markers.
	deadline := time.Now().Add(time.Minute)
	for standby.QueryInt64(t, "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the standby did not catch up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	appendConf(t, conf, fmt.Sprintf("pgdata = %s\nconninfo = %s\nprimary_conninfo = %s\n", standby.DataDir(), standby.ConnString(), primary.ConnString()))
	r := cellar(t, env, "--config", conf, "backup", "main", "--fast")
	if r.code != 0 {
		t.Fatalf("backup of a standby: exit %d: %s", r.code, r.stderr)
	}
	rows := listBackups(t, env, conf)
	if len(rows) != 1 || rows[0].Status != catalog.StatusDone || !rows[0].Standby || rows[0].Timeline != 1 {
		t.Fatalf("list-backups after a standby backup: %+v", rows)
	}
	if !bytes.Contains([]byte(rows[0].PGData), []byte(filepath.Base(standby.DataDir()))) {
		t.Fatalf("the backup records pgdata %s", rows[0].PGData)
	}
}

// TestCheckBackupPreconditions covers what check adds for backups: the
// version, the privileges, pgdata, and the age of the latest backup.
func TestCheckBackupPreconditions(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	appendConf(t, conf, "last_backup_maximum_age = 1 DAYS\n")
	r := cellar(t, env, "--config", conf, "check", "main")
	lines := checkLines(r)
	for _, name := range []string{"PostgreSQL version supported", "superuser or backup privileges", "data directory"} {
		if lines[name] != "OK" {
			t.Errorf("check %s = %q", name, lines[name])
		}
	}
	if !strings.HasPrefix(lines["backup maximum age"], "FAILED (there is no finished backup") || r.code != 1 {
		t.Fatalf("check with no backup: exit %d\n%s", r.code, r.stdout)
	}
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	r = cellar(t, env, "--config", conf, "check", "main")
	if r.code != 0 || checkLines(r)["backup maximum age"] != "OK" {
		t.Fatalf("check after a backup: exit %d\n%s", r.code, r.stdout)
	}
	r = cellar(t, env, "--config", conf, "check", "main", "--nagios")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "CELLAR OK") {
		t.Fatalf("check --nagios: exit %d %s", r.code, r.stdout)
	}
	// A user without the backup privileges, and a pgdata that is not the
	// server's.
	c.Exec(t, "CREATE ROLE weak LOGIN")
	bad := strings.Replace(readFile(t, conf), "user="+c.User(), "user=weak", 1)
	bad = strings.Replace(bad, "pgdata = "+c.DataDir(), "pgdata = "+t.TempDir(), 1)
	r = cellar(t, env, "--config", writeConfig(t, bad), "check", "main")
	lines = checkLines(r)
	if r.code != 1 || !strings.Contains(lines["superuser or backup privileges"], "may not run backups") ||
		!strings.HasPrefix(lines["data directory"], "FAILED") {
		t.Fatalf("check as a weak user: exit %d\n%s", r.code, r.stdout)
	}
}

// backgroundPgbench starts pgbench writing to c with two clients, and
// returns what stops it (also registered as a cleanup).
func backgroundPgbench(t *testing.T, c *pgtest.Cluster) (stop func()) {
	t.Helper()
	bench := pgtest.Command(t, pgtest.Bin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", c.User(), "-c", "2", "-T", "600", "postgres")
	bench.Dir = "/"
	bench.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	stop = func() {
		if bench.Process != nil {
			_ = syscall.Kill(-bench.Process.Pid, syscall.SIGKILL)
			_ = bench.Wait()
			bench.Process = nil
		}
	}
	t.Cleanup(stop)
	return stop
}
