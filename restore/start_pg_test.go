package restore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/internal/pgtest"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/restore"
)

// verifyCase is a base backup of a server that archives with cp into a
// directory, and the WAL it archived after it.
type verifyCase struct {
	src      *pgtest.Cluster
	archive  string
	firstWAL string
}

func newVerifyCase(t *testing.T) verifyCase {
	t.Helper()
	c := pgtest.New(t, pgtest.Options{})
	archive := c.MakeDir("archive")
	c.SetConf(t, "archive_mode", "on")
	c.SetConf(t, "archive_command", "cp %p "+archive+"/%f")
	c.Restart(t)
	c.Exec(t, "CREATE TABLE t (id int)")
	dir := c.BaseBackup(t)
	c.Exec(t, "INSERT INTO t SELECT generate_series(1, 1000)")
	c.WaitArchived(t, c.SwitchWAL(t), time.Minute)
	c.Exec(t, "INSERT INTO t SELECT generate_series(1001, 2000)")
	c.WaitArchived(t, c.SwitchWAL(t), time.Minute)
	label, err := os.ReadFile(filepath.Join(dir, "backup_label"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)`).FindSubmatch(label)
	if m == nil {
		t.Fatalf("backup_label names no start segment:\n%s", label)
	}
	return verifyCase{src: c, archive: archive, firstWAL: string(m[1])}
}

// restored copies the base backup into a new directory with recovery.signal
// and restore_command.
func (v verifyCase) restored(t *testing.T, name, restoreCommand string) string {
	t.Helper()
	dir := filepath.Join(v.src.Base(), "basebackup", "data")
	dest := filepath.Join(v.src.MakeDir(name), "data")
	if out, err := pgtest.RunAsServerUser(t, "cp", "-a", dir, dest); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	conf := fmt.Sprintf("restore_command = '%s'\n", restoreCommand)
	for name, text := range map[string]string{"postgresql.auto.conf": conf, "recovery.signal": ""} {
		p := filepath.Join(dest, name)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(text)
		f.Close()
		v.src.Chown(p)
	}
	return dest
}

func (v verifyCase) options(t *testing.T, dest, work string) restore.StartOptions {
	t.Helper()
	bin, err := pg.FindBinaries(context.Background(), "", 15)
	if err != nil {
		t.Fatal(err)
	}
	return restore.StartOptions{
		Bin: bin, DataDir: dest, Owner: restore.StartOwner(dest), WorkDir: v.src.MakeDir(work), Users: []string{"nobody_here", v.src.User()},
		Query: "SELECT count(*) FROM t", Timeout: time.Minute, FirstWAL: v.firstWAL, SegmentSize: 16 << 20,
	}
}

func TestVerifyStart(t *testing.T) {
	v := newVerifyCase(t)
	ctx := context.Background()

	// To the end of the archive: promoted, every row there. On the port
	// the source server listens on: the started server listens on no TCP
	// port, and its socket is in a directory of its own.
	dest := v.restored(t, "ok", "cp "+v.archive+"/%f %p")
	o := v.options(t, dest, "ok-work")
	o.Port = v.src.Port()
	res, err := restore.VerifyStart(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Answer != "2000" || !res.Promoted || res.Timeline != 2 || res.Version == "" || res.LastRestored == "" {
		t.Fatalf("VerifyStart: %+v", res)
	}

	// The archive lacks the last segment that VerifyStart is told the
	// repository holds: the recovery stops short, and that is a failure.
	archived, _ := filepath.Glob(filepath.Join(v.archive, "0000000100000000000000??"))
	sort.Strings(archived)
	last := filepath.Base(archived[len(archived)-1])
	missing := filepath.Base(archived[len(archived)-2])
	hidden := v.src.MakeDir("hidden")
	if err := os.Rename(filepath.Join(v.archive, missing), filepath.Join(hidden, missing)); err != nil {
		t.Fatal(err)
	}
	dest = v.restored(t, "short", "cp "+v.archive+"/%f %p")
	o = v.options(t, dest, "short-work")
	o.LastWAL = last
	_, err = restore.VerifyStart(ctx, o)
	var se *restore.StartError
	if !errors.As(err, &se) || se.Segment != missing || !strings.Contains(se.Msg, last) {
		t.Fatalf("VerifyStart with %s missing: %v", missing, err)
	}

	// A restore_command that hangs: the start fails after the timeout,
	// naming the segment it waited for, and the server is stopped.
	dest = v.restored(t, "hang", "sleep 30")
	o = v.options(t, dest, "hang-work")
	o.Timeout = 3 * time.Second
	began := time.Now()
	_, err = restore.VerifyStart(ctx, o)
	if !errors.As(err, &se) || se.Segment != v.firstWAL || !strings.Contains(se.Msg, "did not finish within drill_timeout") {
		t.Fatalf("VerifyStart with a hanging restore_command: %v", err)
	}
	if took := time.Since(began); took > o.Timeout+30*time.Second {
		t.Fatalf("VerifyStart with a 3 s timeout returned after %s", took)
	}
	if _, err := os.Stat(filepath.Join(dest, "postmaster.pid")); err == nil {
		t.Fatal("the server of a failed VerifyStart still runs")
	}
}
