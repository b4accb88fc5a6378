package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/internal/pgtest"
)

// appendConf adds lines to the configuration file (whose last section is
// [main]).
func appendConf(t *testing.T, conf, lines string) {
	t.Helper()
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(lines); err != nil {
		t.Fatal(err)
	}
}

func checkLines(r result) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		name, status, _ := strings.Cut(l, ": ")
		out[name] = status
	}
	return out
}

func TestCheckSwitchAndListWALWithPostgreSQL(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "")
	appendConf(t, conf, "conninfo = "+c.ConnString()+"\n")

	r := cellar(t, env, "--config", conf, "check", "main")
	lines := checkLines(r)
	for _, name := range []string{"configuration", "repository reachable", "repository writable", "PostgreSQL", "wal_level", "archive_mode", "archive_command", "continuous archiving", "system identifier"} {
		if lines[name] != "OK" {
			t.Errorf("check %s = %q", name, lines[name])
		}
	}
	if r.code != 0 {
		t.Fatalf("check exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	r = cellar(t, env, "--config", conf, "switch-wal", "main", "--archive")
	if r.code != 0 || !strings.Contains(r.stdout, "has been archived") {
		t.Fatalf("switch-wal --archive: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	_, last := makeSegments(t, c, 5)
	c.WaitArchived(t, last, time.Minute)

	r = cellar(t, env, "--config", conf, "--format", "json", "list-wal", "main")
	var tls []struct {
		Timeline uint32
		First    string
		Last     string
		Segments int
		Gaps     []struct{ From, To string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &tls); err != nil || len(tls) != 1 {
		t.Fatalf("list-wal json: %v\n%s", err, r.stdout)
	}
	if tls[0].Last != last || tls[0].Segments < 6 || len(tls[0].Gaps) != 0 {
		t.Fatalf("list-wal = %+v, want up to %s without gaps", tls[0], last)
	}
	// Remove one segment from the repository: list-wal shows the gap.
	victim := ""
	_ = filepath.WalkDir(filepath.Join(filepath.Dir(conf), "repo"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Base(p) > tls[0].First && filepath.Base(p) < tls[0].Last && victim == "" && len(filepath.Base(p)) == 24 {
			victim = p
		}
		return nil
	})
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	r = cellar(t, env, "--config", conf, "list-wal", "main")
	if !strings.Contains(r.stdout, "GAP "+filepath.Base(victim)+" .. "+filepath.Base(victim)+" (1 segments)") {
		t.Fatalf("list-wal after removing %s:\n%s", filepath.Base(victim), r.stdout)
	}

	// archive_command is judged by its effect. A wrapper script that runs
	// cellar, and a chain of commands, archive as well as the plain one:
	// check passes, with a hint for the wrapper.
	wrapper := filepath.Join(filepath.Dir(conf), "archive.sh")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+cellarBin+" --config "+conf+" wal-push main \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	newSegment := func(id int) string {
		c.Exec(t, fmt.Sprintf("INSERT INTO marker VALUES (%d, 'x')", id))
		seg := c.SwitchWAL(t)
		c.WaitArchived(t, seg, time.Minute)
		return seg
	}
	for i, command := range []string{wrapper + " %p", fmt.Sprintf("%s --config %s wal-push main %%p && true", cellarBin, conf)} {
		c.SetConf(t, "archive_command", command)
		newSegment(900 + i)
		r = cellar(t, env, "--config", conf, "check", "main")
		lines = checkLines(r)
		if r.code != 0 || lines["archive_command"] != "OK" || lines["WAL archive"] != "OK" {
			t.Fatalf("check with archive_command = %q: exit %d\n%s%s", command, r.code, r.stdout, r.stderr)
		}
		if command == wrapper+" %p" && !strings.Contains(r.stderr, "hint: archive_command does not name cellar wal-push main") {
			t.Errorf("check with a wrapper gives no hint:\n%s", r.stderr)
		}
	}

	// A command that succeeds but stores WAL elsewhere: PostgreSQL's last
	// archived file is not in the repository.
	c.SetConf(t, "archive_command", "true")
	last = newSegment(999)
	r = cellar(t, env, "--config", conf, "check", "main")
	lines = checkLines(r)
	if r.code != 1 || lines["archive_command"] != "OK" || !strings.Contains(lines["WAL archive"], "PostgreSQL archived "+last) {
		t.Fatalf("check with archive_command = true: exit %d\n%s", r.code, r.stdout)
	}

	// A command that fails: the archiver's failures fail the check.
	c.SetConf(t, "archive_command", "false")
	c.Exec(t, "INSERT INTO marker VALUES (1000, 'x')")
	c.SwitchWAL(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, failed, _, _ := c.ArchiverStats(t); failed > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r = cellar(t, env, "--config", conf, "check", "main")
	lines = checkLines(r)
	if r.code != 1 || lines["archive_command"] != "OK" || !strings.HasPrefix(lines["continuous archiving"], "FAILED (the archiver is failing") {
		t.Fatalf("check with a failing archive_command: exit %d\n%s", r.code, r.stdout)
	}

	// No command at all: archive_command fails, naming the fix.
	c.SetConf(t, "archive_command", "")
	r = cellar(t, env, "--config", conf, "check", "main")
	if lines = checkLines(r); r.code != 1 || !strings.Contains(lines["archive_command"], "archive_command is empty: set archive_command = 'cellar wal-push main %p'") {
		t.Fatalf("check with an empty archive_command: exit %d\n%s", r.code, r.stdout)
	}

	// A PostgreSQL of another cluster against this server's repository.
	other := pgtest.New(t, pgtest.Options{Conf: map[string]string{"archive_mode": "on", "archive_command": "false"}})
	cfg := writeConfig(t, "[main]\n"+repoLine(t, conf)+"conninfo = "+other.ConnString()+"\n")
	r = cellar(t, env, "--config", cfg, "check", "main")
	lines = checkLines(r)
	if r.code != 1 || !strings.Contains(lines["system identifier"], "belongs to the cluster") {
		t.Fatalf("check against another cluster: exit %d\n%s", r.code, r.stdout)
	}

	// PostgreSQL not reachable: one FAILED line for it.
	cfg = writeConfig(t, "[main]\n"+repoLine(t, conf)+"conninfo = host=127.0.0.1 port=1 user=postgres password=pg-secret-pw connect_timeout=3\n")
	r = cellar(t, env, "--config", cfg, "check", "main")
	if r.code != 1 || !strings.HasPrefix(checkLines(r)["PostgreSQL"], "FAILED (") || strings.Contains(r.stdout+r.stderr, "pg-secret-pw") {
		t.Fatalf("check with PostgreSQL down: exit %d\n%s", r.code, r.stdout)
	}
}

// repoLine returns the repository line of a configuration file.
func repoLine(t *testing.T, conf string) string {
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "repository") {
			return l + "\n"
		}
	}
	t.Fatal("no repository line")
	return ""
}
