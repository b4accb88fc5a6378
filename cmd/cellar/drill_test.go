package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/internal/pgtest"
	"github.com/cellar-backup/cellar/pg"
)

// drillCluster is a backup cluster whose drills go to a private
// drill_directory, with a marker table: drill_query counts its rows.
func drillCluster(t *testing.T, kind, extraConf string) (c *pgtest.Cluster, conf string, env []string, drillDir string) {
	t.Helper()
	drillDir = openTempDir(t, "cellar-drills")
	c, conf, env = backupCluster(t, kind, "drill_directory = "+drillDir+"\ndrill_timeout = 3m\n"+
		"drill_query = select count(*), max(id) from marker\n"+extraConf)
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	return c, conf, env, drillDir
}

func listDrills(t *testing.T, env []string, conf string) []catalog.Drill {
	t.Helper()
	r := cellar(t, env, "--config", conf, "--format", "json", "list-drills", "main")
	if r.code != 0 {
		t.Fatalf("list-drills: exit %d: %s", r.code, r.stderr)
	}
	var out []catalog.Drill
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("list-drills --format json: %v\n%s", err, r.stdout)
	}
	return out
}

// emptyDir fails the test when dir holds anything.
func emptyDir(t *testing.T, what, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) > 0 {
		t.Fatalf("%s: %s still holds %s", what, dir, ents[0].Name())
	}
}

func mustCellar(t *testing.T, env []string, conf string, args ...string) result {
	t.Helper()
	r := cellar(t, env, append([]string{"--config", conf}, args...)...)
	if r.code != 0 {
		t.Fatalf("cellar %s: exit %d:\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func TestDrill(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			c, conf, env, drillDir := drillCluster(t, kind, "")
			markers(t, c, 1, 3)
			mustCellar(t, env, conf, "backup", "main", "--fast", "--quiet")
			id := listBackups(t, env, conf)[0].ID
			times := markers(t, c, 4, 6)
			c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

			// The latest backup, to the end of WAL: every marker.
			r := mustCellar(t, env, conf, "drill", "main")
			for _, want := range []string{"Drill ", ": OK", "Backup: " + id, "Target: end of WAL", "Query answered: 9 | 9", "(promoted)", "file restore"} {
				if !strings.Contains(r.stdout, want) {
					t.Fatalf("drill output lacks %q:\n%s", want, r.stdout)
				}
			}
			emptyDir(t, "after a drill", drillDir)

			// A point in time: between markers 6 and 7.
			target := times[2].Add(10 * time.Millisecond).UTC().Format("2006-01-02 15:04:05.000000+00")
			r = mustCellar(t, env, conf, "--format", "json", "drill", "main", "--target-time", target, "--backup", "oldest")
			var d catalog.Drill
			if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
				t.Fatalf("drill --format json: %v\n%s", err, r.stdout)
			}
			if d.Result != catalog.DrillOK || d.Answer != "6 | 6" || d.Backup != id || !strings.Contains(d.Target, "time "+target[:19]) {
				t.Fatalf("PITR drill: %+v", d)
			}
			if d.ReachedTime.IsZero() || d.ReachedTime.After(times[3]) || d.ReachedTime.Before(times[1]) {
				t.Fatalf("PITR drill reached %s, want between markers 5 and 7 (%s, %s)", d.ReachedTime, times[1], times[3])
			}
			emptyDir(t, "after a PITR drill", drillDir)

			drills := listDrills(t, env, conf)
			if len(drills) != 2 || drills[0].ID != d.ID || drills[1].Answer != "9 | 9" {
				t.Fatalf("list-drills: %+v", drills)
			}
			for _, d := range drills {
				if d.Result != catalog.DrillOK || d.ReachedLSN == "" || d.RestoreSeconds <= 0 || d.ReplaySeconds <= 0 ||
					d.TotalSeconds < d.RestoreSeconds+d.ReplaySeconds || d.ReachedTimeline == 0 {
					t.Fatalf("a recorded drill lacks its figures: %+v", d)
				}
			}
			// Any finished backup, at random (there is one); a backup that
			// does not exist is an error, not a failed drill.
			if r := mustCellar(t, env, conf, "--format", "json", "--quiet", "drill", "main", "--backup", "random"); !strings.Contains(r.stdout, `"backup": "`+id+`"`) {
				t.Fatalf("drill --backup random:\n%s", r.stdout)
			}
			if r := cellar(t, env, "--config", conf, "drill", "main", "--backup", "20200101T000000"); r.code != 1 || !strings.Contains(r.stderr, "20200101T000000") {
				t.Fatalf("drill of a backup that does not exist: exit %d: %s", r.code, r.stderr)
			}
			if r := cellar(t, env, "--config", conf, "drill", "main", "--target-time", "yesterday"); r.code != 2 {
				t.Fatalf("drill --target-time yesterday: exit %d: %s", r.code, r.stderr)
			}
			drills = listDrills(t, env, conf)
			if len(drills) != 3 || drills[0].Result != catalog.DrillOK {
				t.Fatalf("list-drills after drills of a random and a missing backup: %+v", drills)
			}
			r = mustCellar(t, env, conf, "list-drills", "main")
			if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 3 || !strings.Contains(lines[1], d.ID) || !strings.Contains(lines[1], "OK") {
				t.Fatalf("list-drills text:\n%s", r.stdout)
			}
			if kind == "file" {
				// The drill's record is an object of the repository.
				store := openRepository(t, conf, env)
				defer store.Close()
				var stored catalog.Drill
				if err := catalog.GetJSON(context.Background(), store, catalog.DrillKey("main", d.ID), "drill", &stored); err != nil || stored.Answer != d.Answer {
					t.Fatalf("the drill's record: %+v, %v", stored, err)
				}
			}
		})
	}
}

func TestRestoreVerifyStart(t *testing.T) {
	c, conf, env, _ := drillCluster(t, "file", "drill_amcheck = on\n")
	c.Pgbench(t, "-i", "-s", "1", "-q")
	c.Exec(t, "CREATE EXTENSION amcheck")
	markers(t, c, 1, 2)
	mustCellar(t, env, conf, "backup", "main", "--fast", "--quiet")
	times := markers(t, c, 3, 4)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

	// To the end of WAL: promoted, and ready to start as it is.
	dir := c.MakeDir("verify-end")
	r := mustCellar(t, env, conf, "restore", "main", "latest", dir, "--verify-start")
	for _, want := range []string{"Started PostgreSQL 15", "answered: 6 | 6", "pg_amcheck: OK", "promoted to timeline 2", "WAL replay"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("restore --verify-start output lacks %q:\n%s", want, r.stdout)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err == nil {
		t.Fatal("a promoted directory still has recovery.signal")
	}
	if _, err := os.Stat(filepath.Join(dir, "pg_wal", "archive_status", "00000002.history.ready")); err != nil {
		t.Fatalf("the new timeline's history file is not marked for archiving: %v", err)
	}
	if state := clusterState(t, dir); state != "shut down" {
		t.Fatalf("pg_controldata after --verify-start: cluster state %q, want shut down", state)
	}
	rc := pgtest.Restore(t, dir, "", pgtest.Options{Conf: map[string]string{"archive_mode": "off"}, Env: env})
	if n := rc.QueryInt64(t, "SELECT count(*) FROM marker"); n != 6 {
		t.Fatalf("the verified directory has %d markers, want 6", n)
	}
	rc.Stop(t)

	// To a time, pausing: stopped in recovery, with its settings kept.
	target := times[1].Add(10 * time.Millisecond).UTC().Format("2006-01-02 15:04:05.000000+00")
	dir = c.MakeDir("verify-pause")
	r = mustCellar(t, env, conf, "--format", "json", "restore", "main", "latest", dir, "--verify-start", "--target-time", target, "--target-action", "pause")
	var out struct {
		VerifyStart struct {
			Answer   string  `json:"answer"`
			Promoted bool    `json:"promoted"`
			LSN      string  `json:"reached_lsn"`
			Replay   float64 `json:"replay_seconds"`
			Amcheck  string  `json:"amcheck"`
		} `json:"verify_start"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("restore --verify-start --format json: %v\n%s", err, r.stdout)
	}
	if v := out.VerifyStart; v.Answer != "4 | 4" || v.Promoted || v.LSN == "" || v.Replay <= 0 || v.Amcheck == "" {
		t.Fatalf("paused --verify-start: %+v", v)
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err != nil {
		t.Fatalf("a directory paused at its target lost recovery.signal: %v", err)
	}
	if state := clusterState(t, dir); state != "shut down in recovery" {
		t.Fatalf("pg_controldata after a paused --verify-start: cluster state %q", state)
	}
	auto := readFile(t, filepath.Join(dir, "postgresql.auto.conf"))
	if !strings.Contains(auto, "recovery_target_time") || !strings.Contains(auto, "wal-fetch") {
		t.Fatalf("postgresql.auto.conf lost its recovery settings:\n%s", auto)
	}
	// Started for real, it recovers to the same point.
	os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte(strings.ReplaceAll(auto, "'pause'", "'promote'")), 0o600)
	rc = startRestored(t, c, dir, env)
	if n := rc.QueryInt64(t, "SELECT count(*) FROM marker"); n != 4 {
		t.Fatalf("recovered for real: %d markers, want 4", n)
	}
	rc.Stop(t)
}

// clusterState is pg_controldata's "Database cluster state" of dir.
func clusterState(t *testing.T, dir string) string {
	t.Helper()
	out, err := serverTool(t, "pg_controldata", dir)
	if err != nil {
		t.Fatalf("pg_controldata %s: %v\n%s", dir, err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Database cluster state:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("pg_controldata %s says no cluster state:\n%s", dir, out)
	return ""
}

// fakePostgres makes a directory whose postgres says it is version major.
func fakePostgres(t *testing.T, major int) string {
	t.Helper()
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\necho 'postgres (PostgreSQL) %d.9'\n", major)
	if err := os.WriteFile(filepath.Join(dir, "postgres"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestDrillFailures(t *testing.T) {
	c, conf, env, drillDir := drillCluster(t, "file", "")
	markers(t, c, 1, 2)
	mustCellar(t, env, conf, "backup", "main", "--fast", "--quiet")
	markers(t, c, 3, 2)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	store := openRepository(t, conf, env)
	defer store.Close()
	ctx := context.Background()
	m, err := catalog.ReadManifest(ctx, store, "main", listBackups(t, env, conf)[0].ID)
	if err != nil {
		t.Fatal(err)
	}

	// PostgreSQL binaries of the wrong major version: refused before
	// anything is restored, naming the setting.
	wrong := withSetting(t, conf, "pg_bin_dir", "pg_bin_dir = "+fakePostgres(t, 14))
	dest := filepath.Join(c.MakeDir("wrong-major"), "data")
	r := cellar(t, env, "--config", wrong, "restore", "main", "latest", dest, "--verify-start")
	if r.code != 1 || !strings.Contains(r.stderr, "pg_bin_dir") || !strings.Contains(r.stderr, "PostgreSQL 14.9") {
		t.Fatalf("--verify-start with PostgreSQL 14's binaries: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("a refused --verify-start restored something")
	}
	r = cellar(t, env, "--config", wrong, "drill", "main")
	if r.code != 1 || !strings.Contains(r.stderr, "pg_bin_dir") || !strings.Contains(r.stdout, "FAILED") {
		t.Fatalf("a drill with PostgreSQL 14's binaries: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	// A drill killed halfway: its server stops with it, and the next
	// drill removes its scratch directory and records it FAILED.
	killWhen(t, env, filepath.Join(drillDir, "cellar-drill-main-*", "data", "postmaster.pid"), 2*time.Minute,
		"the drill did not start PostgreSQL within 2 minutes", "--config", conf, "drill", "main")
	mustCellar(t, env, conf, "drill", "main")
	emptyDir(t, "after a drill that followed a killed one", drillDir)
	drills := listDrills(t, env, conf)
	if len(drills) != 3 || drills[0].Result != catalog.DrillOK || drills[1].Result != catalog.DrillFailed || !strings.Contains(drills[1].Error, "interrupted") ||
		drills[2].Result != catalog.DrillFailed || !strings.Contains(drills[2].Error, "pg_bin_dir") {
		t.Fatalf("drills after a killed one: %+v", drills)
	}

	// A full scratch disk.
	full := c.MakeDir("full")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", full).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs for drill_directory: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", full).Run() })
	c.Chown(full)
	r = cellar(t, env, "--config", withSetting(t, conf, "drill_directory", "drill_directory = "+full), "drill", "main")
	if r.code != 1 || !strings.Contains(r.stderr, "no space left on device") || !strings.Contains(r.stderr, "drill_directory") {
		t.Fatalf("a drill on a full disk: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("a drill on a full disk:\n%s%s", r.stdout, r.stderr)
	emptyDir(t, "after a drill on a full disk", full)

	// A WAL segment the restored server needs is gone: the drill fails,
	// naming it, and check sees the failure.
	if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 1 || !strings.Contains(r.stdout, "drill: FAILED (the last drill") {
		t.Fatalf("check after a failed drill: exit %d: %s", r.code, r.stdout)
	}
	mustCellar(t, env, conf, "drill", "main")
	mustCellar(t, env, conf, "check", "main")
	begin, err := pg.ParseWALName(m.BeginWAL)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, catalog.WALKey("main", begin)); err != nil {
		t.Fatal(err)
	}
	r = cellar(t, env, "--config", conf, "drill", "main")
	if r.code != 1 || !strings.Contains(r.stderr, m.BeginWAL) || !strings.Contains(r.stdout, "FAILED") {
		t.Fatalf("a drill with a missing WAL segment: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("a drill with a missing WAL segment:\n%s%s", r.stdout, r.stderr)
	drills = listDrills(t, env, conf)
	if drills[0].Result != catalog.DrillFailed || !strings.Contains(drills[0].Error, m.BeginWAL) || drills[0].Backup != m.ID {
		t.Fatalf("the failed drill's record: %+v", drills[0])
	}
	emptyDir(t, "after a failed drill", drillDir)
	r = cellar(t, env, "--config", conf, "check", "main", "--nagios")
	if r.code != 2 || !strings.Contains(r.stdout, "drill") || !strings.Contains(r.stdout, drills[0].ID) {
		t.Fatalf("check --nagios after a failed drill: exit %d: %s", r.code, r.stdout)
	}
}

func TestCronDrill(t *testing.T) {
	// drill_amcheck: the source has no amcheck extension, and the drill,
	// whose directory is thrown away, installs it to run pg_amcheck.
	c, conf, env, drillDir := drillCluster(t, "file", "drill_schedule = 7 DAYS\ndrill_maximum_age = 8 DAYS\ndrill_amcheck = on\n")
	markers(t, c, 1, 2)
	// No drill yet: check says one is missing.
	mustCellar(t, env, conf, "backup", "main", "--fast", "--quiet")
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 1 || !strings.Contains(r.stdout, "drill: FAILED") {
		t.Fatalf("check before any drill, with drill_maximum_age: exit %d: %s", r.code, r.stdout)
	}
	// cron starts the due drill, once: a second cron while it runs, and a
	// third after it, start none.
	mustCellar(t, env, conf, "cron")
	mustCellar(t, env, conf, "cron")
	deadline := time.Now().Add(3 * time.Minute)
	var drills []catalog.Drill
	for {
		drills = listDrills(t, env, conf)
		if len(drills) > 0 && drills[0].Result != catalog.DrillRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the drill cron started has not finished: %+v", drills)
		}
		time.Sleep(500 * time.Millisecond)
	}
	mustCellar(t, env, conf, "cron")
	time.Sleep(time.Second)
	drills = listDrills(t, env, conf)
	if len(drills) != 1 || drills[0].Result != catalog.DrillOK || drills[0].Answer != "2 | 2" || drills[0].Amcheck != "OK" {
		t.Fatalf("drills after three cron runs: %+v", drills)
	}
	emptyDir(t, "after cron's drill", drillDir)
	if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 0 || !strings.Contains(r.stdout, "drill: OK") {
		t.Fatalf("check after a good drill: exit %d: %s", r.code, r.stdout)
	}

	// Nine days on: the good drill is too old for check, and cron starts
	// the next one.
	later := append(slices.Clone(env), "CELLAR_NOW="+time.Now().Add(9*24*time.Hour).UTC().Format(time.RFC3339))
	if r := cellar(t, later, "--config", conf, "check", "main"); r.code != 1 || !strings.Contains(r.stdout, "more than drill_maximum_age") {
		t.Fatalf("check nine days after the last drill: exit %d: %s", r.code, r.stdout)
	}
	mustCellar(t, later, conf, "cron")
	deadline = time.Now().Add(3 * time.Minute)
	for {
		drills = listDrills(t, env, conf)
		if len(drills) == 2 && drills[0].Result != catalog.DrillRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cron nine days later started no drill, or it has not finished: %+v", drills)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if drills[0].Result != catalog.DrillOK {
		t.Fatalf("the second scheduled drill: %+v", drills[0])
	}
}
