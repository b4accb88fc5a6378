package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/internal/pgtest"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/restore"
)

// restoreDir returns a new, missing directory that PostgreSQL's user may
// reach, for cellar restore.
func restoreDir(t *testing.T) string {
	t.Helper()
	base := openTempDir(t, "cellar-restore")
	return filepath.Join(base, "data")
}

// startRestored starts PostgreSQL on a directory cellar restored (with its
// recovery settings and signal) and waits until recovery has ended.
func startRestored(t *testing.T, src *pgtest.Cluster, dir string, env []string) *pgtest.Cluster {
	t.Helper()
	src.Chown(dir)
	c := pgtest.Restore(t, dir, "", pgtest.Options{Conf: map[string]string{"archive_mode": "off"}, Env: env})
	c.WaitPromoted(t, 3*time.Minute)
	return c
}

// markers commits n marker rows one by one and returns, for each, a time
// just after its commit.
func markers(t *testing.T, c *pgtest.Cluster, from, n int) []time.Time {
	t.Helper()
	var out []time.Time
	for i := from; i < from+n; i++ {
		c.Exec(t, fmt.Sprintf("INSERT INTO marker VALUES (%d)", i))
		var ts time.Time
		c.Scan(t, "SELECT clock_timestamp()", nil, &ts)
		out = append(out, ts)
		time.Sleep(30 * time.Millisecond)
	}
	return out
}

func TestRestoreToTargets(t *testing.T) {
	for _, kind := range repoKinds {
		t.Run(kind, func(t *testing.T) {
			c, conf, env := backupCluster(t, kind, "")
			c.Pgbench(t, "-i", "-s", "2", "-q")
			c.Exec(t, "CREATE TABLE marker (id int primary key)")
			if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
				t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
			}
			times := markers(t, c, 1, 10)
			lsn := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text")
			markers(t, c, 11, 5)
			c.Exec(t, "SELECT pg_create_restore_point('before_16')")
			var xid string
			c.Scan(t, "INSERT INTO marker VALUES (16) RETURNING txid_current()::text", nil, &xid)
			markers(t, c, 17, 3)
			c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

			// A time between marker 5 and marker 6.
			target := times[4].Add(10 * time.Millisecond).UTC().Format("2006-01-02 15:04:05.000000+00")
			cases := []struct {
				name string
				args []string
				want int64
			}{
				{"time", []string{"--target-time", target}, 5},
				{"lsn", []string{"--target-lsn", lsn}, 10},
				{"name", []string{"--target-name", "before_16"}, 15},
				{"xid", []string{"--target-xid", xid}, 16},
				{"xid exclusive", []string{"--target-xid", xid, "--exclusive"}, 15},
				{"immediate", []string{"--target-immediate"}, 0},
				{"end", nil, 19},
			}
			if kind != "file" {
				cases = cases[:1] // the other targets differ only in PostgreSQL's settings
			}
			for _, tc := range cases {
				dir := restoreDir(t)
				args := append([]string{"--config", conf, "restore", "main", "latest", dir}, tc.args...)
				r := cellar(t, env, args...)
				if r.code != 0 {
					t.Fatalf("%s: restore: exit %d: %s", tc.name, r.code, r.stderr)
				}
				if _, err := os.Stat(filepath.Join(dir, restore.IncompleteMarker)); err == nil {
					t.Fatalf("%s: the restored directory is still marked incomplete", tc.name)
				}
				rc := startRestored(t, c, dir, env)
				got := rc.QueryInt64(t, "SELECT count(*) FROM marker")
				maxID := rc.QueryInt64(t, "SELECT coalesce(max(id), 0) FROM marker")
				if got != tc.want || maxID != tc.want {
					t.Fatalf("%s: %d markers (max %d) after recovery, want exactly 1..%d", tc.name, got, maxID, tc.want)
				}
				if n := rc.QueryInt64(t, "SELECT count(*) FROM pgbench_accounts"); n != 200000 {
					t.Fatalf("%s: pgbench_accounts has %d rows", tc.name, n)
				}
				rc.Stop(t)
				t.Logf("%s %s: %d markers", kind, tc.name, got)
			}
		})
	}
}

func TestRestoreRefusals(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	before := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", restoreDir(t)); r.code != 1 || !strings.Contains(r.stderr, "no finished backup") {
		t.Fatalf("restore with no backup: exit %d: %s", r.code, r.stderr)
	}
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	times := markers(t, c, 1, 2)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	nonEmpty := restoreDir(t)
	os.MkdirAll(nonEmpty, 0o700)
	os.WriteFile(filepath.Join(nonEmpty, "x"), []byte("x"), 0o600)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"latest", restoreDir(t), "--target-time", before}, 1, "is before the end of backup"},
		{[]string{"latest", restoreDir(t), "--target-time", future}, 1, "is after the last archived WAL"},
		{[]string{"auto", restoreDir(t), "--target-time", before}, 1, "no backup of server main ended before"},
		{[]string{"latest", restoreDir(t), "--target-lsn", "0/1"}, 1, "is before the end of backup"},
		{[]string{"latest", nonEmpty}, 1, "is not empty"},
		{[]string{"latest", c.DataDir(), "--delta"}, 1, "is running on"},
		{[]string{"latest", restoreDir(t), "--target-time", "yesterday"}, 2, "is not a time"},
		{[]string{"latest", restoreDir(t), "--target-xid", "1", "--target-name", "x"}, 2, "at most one"},
		{[]string{"latest", restoreDir(t), "--target-action", "explode", "--target-immediate"}, 2, "use pause, promote or shutdown"},
		{[]string{"latest", restoreDir(t), "--tablespace", "nosuch:/tmp/x"}, 1, "has no such tablespace"},
		{[]string{"20200101T000000", restoreDir(t)}, 1, "no backup 20200101T000000"},
		{[]string{restoreDir(t)}, 2, "BACKUP_ID may be left out only with --target-time"},
	} {
		r := cellar(t, env, append([]string{"--config", conf, "restore", "main"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("restore %v: exit %d, want %d with %q: %s", tc.args, r.code, tc.code, tc.want, r.stderr)
		}
	}
	// auto picks the newest backup that ended before the target.
	dir := restoreDir(t)
	r := cellar(t, env, "--config", conf, "restore", "main", dir, "--target-time", times[1].UTC().Format(time.RFC3339Nano))
	if r.code != 0 {
		t.Fatalf("restore with an automatic backup: exit %d: %s", r.code, r.stderr)
	}
}

// damage flips one byte in the middle of an object.
func damage(t *testing.T, store cloud.Storage, key string) {
	t.Helper()
	ctx := context.Background()
	rc, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x55
	if err := store.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	for _, kind := range repoKinds {
		t.Run(kind, func(t *testing.T) {
			c, conf, env := backupCluster(t, kind, "")
			c.Pgbench(t, "-i", "-s", "2", "-q")
			if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
				t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
			}
			_, last := makeSegments(t, c, 3)
			c.WaitArchived(t, last, 2*time.Minute)
			r := cellar(t, env, "--config", conf, "verify", "main", "latest", "--to-latest")
			if r.code != 0 || !strings.Contains(r.stdout, ": OK") {
				t.Fatalf("verify of an intact backup: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			store := openRepository(t, conf, env)
			m, err := catalog.ReadManifest(context.Background(), store, "main", listBackups(t, env, conf)[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			// One byte of a part.
			parts, _ := pgtest.Contents(t, store, m)
			part := parts[0].Key
			damage(t, store, part)
			r = cellar(t, env, "--config", conf, "verify", "main", "latest")
			if r.code != 1 || !strings.Contains(r.stdout, "FAILED "+part) {
				t.Fatalf("verify after damaging %s: exit %d: %s%s", part, r.code, r.stdout, r.stderr)
			}
			dir := restoreDir(t)
			r = cellar(t, env, "--config", conf, "restore", "main", "latest", dir)
			if r.code != 1 || !strings.Contains(r.stderr, "marked incomplete") {
				t.Fatalf("restore of a damaged backup: exit %d: %s", r.code, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
				t.Fatal("a failed restore left global/pg_control in place")
			}
			// One WAL segment missing (before the last), found by
			// --to-latest.
			lw, _ := pg.ParseWALName(last)
			gap := pg.SegmentNameOf(1, lw.SegNo(m.WALSegmentSize)-1, m.WALSegmentSize)
			w, _ := pg.ParseWALName(gap)
			if err := store.Delete(context.Background(), catalog.WALKey("main", w)); err != nil {
				t.Fatal(err)
			}
			r = cellar(t, env, "--config", conf, "--format", "json", "verify", "main", "latest", "--to-latest")
			if r.code != 1 || !strings.Contains(r.stdout, `"object": "`+gap+`"`) || !strings.Contains(r.stdout, "missing") {
				t.Fatalf("verify with %s deleted: exit %d: %s%s", gap, r.code, r.stdout, r.stderr)
			}
		})
	}
}

// TestRestoreTablespaceDeltaAndIncomplete restores a tablespace to a new
// place, re-syncs a damaged copy with --delta, and finishes a killed
// restore with --delta.
func TestRestoreTablespaceDeltaAndIncomplete(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	spc := c.MakeDir("tablespace")
	c.Exec(t, "CREATE TABLESPACE extra LOCATION '"+spc+"'")
	c.Exec(t, "CREATE TABLE spread (id int, note text) TABLESPACE extra")
	c.Exec(t, "INSERT INTO spread SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
	c.Pgbench(t, "-i", "-s", "5", "-q")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

	dir := restoreDir(t)
	moved := filepath.Join(filepath.Dir(dir), "moved-tablespace")
	args := []string{"--config", conf, "restore", "main", "latest", dir, "--tablespace", "extra:" + moved, "--target-immediate"}
	if r := cellar(t, env, args...); r.code != 0 {
		t.Fatalf("restore with a moved tablespace: exit %d: %s", r.code, r.stderr)
	}
	if link, err := os.Readlink(filepath.Join(dir, "pg_tblspc", fmt.Sprint(c.QueryInt64(t, "SELECT oid::bigint FROM pg_tablespace WHERE spcname = 'extra'")))); err != nil || link != moved {
		t.Fatalf("pg_tblspc link: %q %v, want %s", link, err, moved)
	}
	c.Chown(moved)
	rc := startRestored(t, c, dir, env)
	if n := rc.QueryInt64(t, "SELECT count(*) FROM spread"); n != 50000 {
		t.Fatalf("the moved tablespace's table has %d rows", n)
	}
	if loc := rc.QueryString(t, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"); loc != moved {
		t.Fatalf("the tablespace is at %s, want %s", loc, moved)
	}
	rc.Stop(t)

	// A damaged copy: a file changed, one removed, one added.
	accounts := filepath.Join(dir, c.QueryString(t, "SELECT pg_relation_filepath('pgbench_accounts')"))
	if err := os.WriteFile(accounts, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "PG_VERSION"))
	os.WriteFile(filepath.Join(dir, "base", "stray"), []byte("x"), 0o600)
	r := cellar(t, env, "--config", conf, "--format", "json", "restore", "main", "latest", dir, "--delta", "--tablespace", "extra:"+moved, "--target-immediate")
	if r.code != 0 {
		t.Fatalf("restore --delta: exit %d: %s", r.code, r.stderr)
	}
	var res struct{ Files, Fetched, Kept, Removed int }
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("restore --delta output: %v: %s", err, r.stdout)
	}
	// The changed and removed files, pg_control (always fetched), and
	// what the server changed while it ran (backup_label, the recovery
	// settings, a few catalog files); everything else is kept.
	if res.Fetched < 3 || res.Fetched > 30 || res.Removed < 1 || res.Kept != res.Files-res.Fetched {
		t.Fatalf("restore --delta: %+v, want a few files fetched, the rest kept and the stray file removed", res)
	}
	if _, err := os.Stat(filepath.Join(dir, "base", "stray")); err == nil {
		t.Fatal("restore --delta kept a file the backup does not have")
	}
	rc = startRestored(t, c, dir, env)
	if n := rc.QueryInt64(t, "SELECT count(*) FROM pgbench_accounts"); n != 500000 {
		t.Fatalf("after restore --delta, pgbench_accounts has %d rows", n)
	}
	rc.Stop(t)

	// A restore killed halfway leaves the directory marked incomplete,
	// without pg_control; --delta finishes it.
	dir2 := restoreDir(t)
	cmd := exec.Command(cellarBin, "--config", conf, "restore", "main", "latest", dir2, "--tablespace", "extra:"+filepath.Join(filepath.Dir(dir2), "ts"), "--parallel", "1")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(dir2, "base")); err == nil {
			break
		}
		if i > 20000 {
			t.Fatal("the restore never started writing")
		}
		time.Sleep(time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if _, err := os.Stat(filepath.Join(dir2, restore.IncompleteMarker)); err != nil {
		t.Fatalf("a killed restore left no incomplete marker: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "global", "pg_control")); err == nil {
		t.Fatal("a killed restore left global/pg_control in place")
	}
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir2); r.code != 1 || !strings.Contains(r.stderr, "is not empty") {
		t.Fatalf("restore onto a half-restored directory without --delta: exit %d: %s", r.code, r.stderr)
	}
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir2, "--delta", "--tablespace", "extra:"+filepath.Join(filepath.Dir(dir2), "ts")); r.code != 0 {
		t.Fatalf("restore --delta of a half-restored directory: exit %d: %s", r.code, r.stderr)
	}
	c.Chown(filepath.Join(filepath.Dir(dir2), "ts"))
	rc = startRestored(t, c, dir2, env)
	if n := rc.QueryInt64(t, "SELECT count(*) FROM spread"); n != 50000 {
		t.Fatalf("after finishing a killed restore, spread has %d rows", n)
	}
}

// TestRestoreFollowsTimelines restores, promotes (timeline 2), archives on
// timeline 2 without a new backup, and restores the first backup again
// with --target-timeline latest: the data of timeline 2 is there.
func TestRestoreFollowsTimelines(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	markers(t, c, 1, 3)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	c.Stop(t) // the old primary is gone

	dir := restoreDir(t)
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	c.Chown(dir)
	promoted := pgtest.Restore(t, dir, "", pgtest.Options{Conf: map[string]string{
		"archive_mode":    "on",
		"archive_command": fmt.Sprintf("%s --config %s wal-push main %%p", cellarBin, conf),
	}, Env: env})
	promoted.WaitPromoted(t, 3*time.Minute)
	if tl := promoted.QueryInt64(t, "SELECT timeline_id::bigint FROM pg_control_checkpoint()"); tl < 1 {
		t.Fatalf("timeline %d", tl)
	}
	markers(t, promoted, 4, 3)
	promoted.WaitArchived(t, promoted.SwitchWAL(t), 2*time.Minute)
	promoted.Stop(t)

	dir2 := restoreDir(t)
	if r := cellar(t, env, "--config", conf, "restore", "main", "oldest", dir2, "--target-timeline", "latest"); r.code != 0 {
		t.Fatalf("restore again: exit %d: %s", r.code, r.stderr)
	}
	rc := startRestored(t, c, dir2, env)
	if n := rc.QueryInt64(t, "SELECT count(*) FROM marker"); n != 6 {
		t.Fatalf("the second restore has %d markers, want the 6 of timelines 1 and 2", n)
	}
	if tl := rc.QueryInt64(t, "SELECT timeline_id::bigint FROM pg_control_checkpoint()"); tl < 3 {
		t.Fatalf("the second restore ended on timeline %d, want 3 (after 2)", tl)
	}
}

// TestRestoreToTimeWhilePgbenchWrites restores to a time between two
// markers committed while pgbench writes: exactly the earlier markers are
// there, and pgbench's tables are consistent (every balance sum equals
// the history's).
func TestRestoreToTimeWhilePgbenchWrites(t *testing.T) {
	c, conf, env := backupCluster(t, "file", "")
	c.Pgbench(t, "-i", "-s", "2", "-q")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	stop := backgroundPgbench(t, c)
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	times := markers(t, c, 1, 20)
	stop()
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	target := times[11].Add(10 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	dir := restoreDir(t)
	if r := cellar(t, env, "--config", conf, "restore", "main", dir, "--target-time", target); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	rc := startRestored(t, c, dir, env)
	if n, maxID := rc.QueryInt64(t, "SELECT count(*) FROM marker"), rc.QueryInt64(t, "SELECT max(id) FROM marker"); n != 12 || maxID != 12 {
		t.Fatalf("%d markers (max %d), want exactly 1..12", n, maxID)
	}
	row := rc.QueryRow(t, `SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint, (SELECT sum(bbalance) FROM pgbench_branches)::bigint,
		(SELECT sum(tbalance) FROM pgbench_tellers)::bigint, (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, (SELECT count(*) FROM pgbench_history)`)
	if row[0] != row[1] || row[1] != row[2] || row[2] != row[3] || row[4].(int64) == 0 {
		t.Fatalf("pgbench's tables after recovery: accounts %v, branches %v, tellers %v, history %v (%v transactions)", row[0], row[1], row[2], row[3], row[4])
	}
	t.Logf("recovered to %s: 12 markers, %v pgbench transactions, balances consistent", target, row[4])
}

// TestDemo runs the first-run demo, as `make demo` does.
func TestDemo(t *testing.T) {
	cmd := exec.Command("bash", "../../testdata/demo.sh", cellarBin)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PROVEN: the restore reached exactly the target time") {
		t.Fatalf("testdata/demo.sh: %v\n%s", err, out)
	}
}

// TestRetentionEndToEnd backs up on four (moved) days with WAL between,
// applies RECOVERY WINDOW OF 7 DAYS, and restores the oldest retained
// backup to the end of the WAL.
func TestRetentionEndToEnd(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			c, conf, env := backupCluster(t, kind, "retention_policy = RECOVERY WINDOW OF 7 DAYS\nminimum_redundancy = 1\n")
			c.Exec(t, "CREATE TABLE marker (id int primary key)")
			day := func(d int) []string {
				return append(append([]string(nil), env...), "CELLAR_NOW="+time.Date(2026, 3, 1+d, 12, 0, 0, 0, time.UTC).Format(time.RFC3339))
			}
			var ids []string
			for i, d := range []int{0, 5, 10, 15} {
				markers(t, c, 10*i+1, 3)
				c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
				args := []string{"--config", conf, "backup", "main", "--fast", "--quiet"}
				if d == 10 {
					args = append(args, "--keep")
				}
				if r := cellar(t, day(d), args...); r.code != 0 {
					t.Fatalf("backup on day %d: exit %d: %s", d, r.code, r.stderr)
				}
				ids = append(ids, time.Date(2026, 3, 1+d, 12, 0, 0, 0, time.UTC).Format("20060102T150405"))
			}
			markers(t, c, 100, 3)
			c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
			now := day(16)
			rows := listBackups(t, now, conf)
			status := map[string]string{}
			for _, r := range rows {
				status[r.ID] = r.Retention
			}
			if status[ids[0]] != "OBSOLETE" || status[ids[1]] != "VALID" || status[ids[3]] != "VALID" {
				t.Fatalf("retention statuses before: %v", status)
			}
			store := openRepository(t, conf, env)
			count := func() (n int) {
				store.List(context.Background(), "main/", func(cloud.ObjectInfo) error { n++; return nil })
				return n
			}
			before := count()
			r := cellar(t, now, "--config", conf, "retention", "main", "--dry-run")
			if r.code != 0 || !strings.Contains(r.stdout, "Would remove backup "+ids[0]) || count() != before {
				t.Fatalf("retention --dry-run: exit %d, %d objects of %d left: %s%s", r.code, count(), before, r.stdout, r.stderr)
			}
			r = cellar(t, now, "--config", conf, "--format", "json", "retention", "main")
			if r.code != 0 {
				t.Fatalf("retention: exit %d: %s", r.code, r.stderr)
			}
			var out struct {
				Retained []string
				Removed  struct {
					Backups  []struct{ ID string }
					WALFiles int `json:"wal_files"`
				}
			}
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out.Removed.Backups) != 1 || out.Removed.Backups[0].ID != ids[0] || out.Removed.WALFiles == 0 {
				t.Fatalf("retention removed %+v (%v): %s", out.Removed, err, r.stdout)
			}
			rows = listBackups(t, now, conf)
			if len(rows) != 3 || rows[2].ID != ids[1] {
				t.Fatalf("after retention: %+v", rows)
			}
			// Nothing before the oldest retained backup's WAL is left; its
			// WAL on is complete, so it restores to the end.
			r = cellar(t, now, "--config", conf, "--format", "json", "list-wal", "main")
			if r.code != 0 || !strings.Contains(r.stdout, `"first": "`+rows[2].BeginWAL+`"`) || !strings.Contains(r.stdout, `"gaps": []`) {
				t.Fatalf("list-wal after retention (oldest backup begins at %s): %s", rows[2].BeginWAL, r.stdout)
			}
			dir := restoreDir(t)
			if r := cellar(t, now, "--config", conf, "restore", "main", ids[1], dir); r.code != 0 {
				t.Fatalf("restore of the oldest retained backup: exit %d: %s", r.code, r.stderr)
			}
			rc := startRestored(t, c, dir, env)
			if n := rc.QueryInt64(t, "SELECT count(*) FROM marker"); n != 15 {
				t.Fatalf("restored from the oldest retained backup to the end: %d markers, want 15", n)
			}
			rc.Stop(t)

			// keep (backup --keep made day 10's), delete, minimum redundancy.
			if got := listBackups(t, now, conf); got[1].ID != ids[2] || got[1].Retention != "KEEP:STANDALONE" {
				t.Fatalf("backup --keep: %+v", got[1])
			}
			if r := cellar(t, now, "--config", conf, "delete", "main", ids[2]); r.code != 1 || !strings.Contains(r.stderr, "is kept") {
				t.Fatalf("delete of a kept backup: exit %d: %s", r.code, r.stderr)
			}
			if r := cellar(t, day(40), "--config", conf, "retention", "main"); r.code != 0 {
				t.Fatalf("retention much later: exit %d: %s", r.code, r.stderr)
			}
			rows = listBackups(t, day(40), conf)
			got := map[string]string{}
			for _, r := range rows {
				got[r.ID] = r.Retention
			}
			if got[ids[2]] != "KEEP:STANDALONE" || len(rows) != 2 {
				t.Fatalf("a month later, with %s kept: %v", ids[2], got)
			}
			if r := cellar(t, now, "--config", conf, "keep", "main", ids[2], "--release"); r.code != 0 {
				t.Fatalf("keep --release: exit %d: %s", r.code, r.stderr)
			}
			if r := cellar(t, now, "--config", conf, "delete", "main", ids[2]); r.code != 0 {
				t.Fatalf("delete: exit %d: %s", r.code, r.stderr)
			}
			if r := cellar(t, now, "--config", conf, "delete", "main", "latest"); r.code != 1 || !strings.Contains(r.stderr, "below minimum_redundancy = 1") {
				t.Fatalf("delete of the last backup under minimum_redundancy = 1: exit %d: %s", r.code, r.stderr)
			}

			// check --nagios: one backup under minimum_redundancy = 3, and
			// the last backup's end WAL gone from the repository.
			if r := cellar(t, now, "--config", conf, "check", "main", "--nagios"); r.code != 0 || !strings.HasPrefix(r.stdout, "CELLAR OK") {
				t.Fatalf("check --nagios before: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			appendConf(t, conf, "minimum_redundancy = 3\n")
			last := listBackups(t, now, conf)[0]
			w, _ := pg.ParseWALName(last.EndWAL)
			if err := store.Delete(context.Background(), catalog.WALKey("main", w)); err != nil {
				t.Fatal(err)
			}
			r = cellar(t, now, "--config", conf, "check", "main", "--nagios")
			if r.code != 2 || !strings.HasPrefix(r.stdout, "CELLAR CRITICAL - server main has 2 failed checks") ||
				!strings.Contains(r.stdout, "minimum redundancy requirements: have 1 backups, expected at least 3") ||
				!strings.Contains(r.stdout, "WAL continuity: WAL is missing after backup "+last.ID+": "+last.EndWAL) {
				t.Fatalf("check --nagios with too few backups and a WAL file missing: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// TestRetentionDeletesAcrossPages: retention on a repository of synthetic
// backups and 3,000 WAL objects removes exactly what the policy says,
// across list pages and delete batches, on MinIO and the filesystem.
func TestRetentionDeletesAcrossPages(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			conf, env, store := syntheticRepository(t, kind, "retention_policy = REDUNDANCY 2\n")
			ctx := context.Background()
			keys := make(chan string)
			var wg sync.WaitGroup
			for range 32 {
				wg.Go(func() {
					for k := range keys {
						if err := store.Put(ctx, k, strings.NewReader("w"), 1); err != nil {
							t.Error(err)
						}
					}
				})
			}
			for n := range 3200 {
				w, _ := pg.ParseWALName(pg.SegmentNameOf(1, uint64(n), segSize))
				keys <- catalog.WALKey("main", w)
			}
			close(keys)
			wg.Wait()
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, begin := range []uint64{0, 1000, 3000, 3100} {
				id := catalog.NewBackupID(t0.Add(time.Duration(i) * 24 * time.Hour))
				m := &catalog.Manifest{Version: catalog.ManifestVersion, ID: id, Server: "main", Status: catalog.StatusDone, Timeline: 1,
					WALSegmentSize: segSize, BeginWAL: pg.SegmentNameOf(1, begin, segSize), EndWAL: pg.SegmentNameOf(1, begin+1, segSize),
					BeginTime: t0.Add(time.Duration(i) * 24 * time.Hour), EndTime: t0.Add(time.Duration(i)*24*time.Hour + time.Hour)}
				store.Put(ctx, catalog.PartKey("main", id, 1, "zstd"), strings.NewReader("part"), 4)
				if err := catalog.WriteManifest(ctx, store, m); err != nil {
					t.Fatal(err)
				}
			}
			r := cellar(t, env, "--config", conf, "--format", "json", "retention", "main")
			if r.code != 0 {
				t.Fatalf("retention: exit %d: %s", r.code, r.stderr)
			}
			wal, parts := 0, 0
			store.List(ctx, "main/", func(o cloud.ObjectInfo) error {
				switch {
				case strings.HasPrefix(o.Key, "main/wal/"):
					wal++
				case strings.HasPrefix(o.Key, "main/base/"):
					parts++
				}
				return nil
			})
			if wal != 200 || parts != 2 {
				t.Fatalf("after retention: %d WAL objects (want 200, from segment 3000 on) and %d parts (want 2): %s", wal, parts, r.stdout)
			}
		})
	}
}
