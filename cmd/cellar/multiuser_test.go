package main

import (
	"bytes"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/internal/pgtest"
)

// multiUserHost is one PostgreSQL server archiving to a file:// repository
// owned by PostgreSQL's user, as on a real host, and the two users who run
// cellar there: root (monitoring, cron) and PostgreSQL's user (wal-push,
// backup).
type multiUserHost struct {
	c      *pgtest.Cluster
	name   string // the server's name in the configuration
	base   string
	pgUser *user.User
	conf   string // the configuration with the default lock_directory
}

func newMultiUserHost(t *testing.T) *multiUserHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs cellar as two users: it runs as root, as the test suite does")
	}
	pgUser, err := user.Lookup(pgtest.ServerUserName)
	if err != nil {
		t.Fatalf("the test needs the user %s (make test adds it): %v", pgtest.ServerUserName, err)
	}
	base := openTempDir(t, "cellar-multiuser")
	// A server name of this run's own: the default lock directory is the
	// host's /tmp.
	h := &multiUserHost{name: fmt.Sprintf("multiuser%d", os.Getpid()), base: base, pgUser: pgUser}
	t.Cleanup(func() {
		for _, p := range tmpLeftovers() {
			if strings.HasPrefix(filepath.Base(p), "cellar-"+h.name+".") {
				os.Remove(p)
			}
		}
	})
	repo := filepath.Join(base, "repo")
	if err := os.Mkdir(repo, 0o700); err != nil {
		t.Fatal(err)
	}
	h.conf = filepath.Join(base, "cellar.conf")
	h.writeConf(t, h.conf, "")
	h.c = pgtest.New(t, pgtest.Options{Conf: map[string]string{
		"archive_mode":    "on",
		"archive_command": fmt.Sprintf("%s --config %s wal-push %s %%p", cellarBin, h.conf, h.name),
		"wal_keep_size":   "1GB",
	}})
	h.c.Chown(repo)
	h.writeConf(t, h.conf, "")
	return h
}

// writeConf writes a configuration for the server, with lockDir as its
// lock_directory ("" for the default).
func (h *multiUserHost) writeConf(t *testing.T, path, lockDir string) {
	t.Helper()
	text := "[cellar]\nrepository = file://" + filepath.Join(h.base, "repo") + "\n"
	if lockDir != "" {
		text += "lock_directory = " + lockDir + "\n"
	}
	text += "\n[" + h.name + "]\n"
	if h.c != nil {
		text += "pgdata = " + h.c.DataDir() + "\nconninfo = " + h.c.ConnString() + "\n"
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// asRoot and asPG run cellar as root and as PostgreSQL's user.
func (h *multiUserHost) asRoot(t *testing.T, conf string, args ...string) result {
	t.Helper()
	return cellar(t, nil, append([]string{"--config", conf}, args...)...)
}

func (h *multiUserHost) asPG(t *testing.T, conf string, args ...string) result {
	t.Helper()
	return cellarAs(t, h.pgUser, nil, append([]string{"--config", conf}, args...)...)
}

// must fails the test unless r exited 0.
func must(t *testing.T, who, what string, r result) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s as %s: exit %d\n%s%s", what, who, r.code, r.stdout, r.stderr)
	}
}

// monitor runs check, list-backups and cron as run does, all of which
// must pass, and returns list-backups' output.
func (h *multiUserHost) monitor(t *testing.T, who string, run func(*testing.T, string, ...string) result, conf string) string {
	t.Helper()
	must(t, who, "check", run(t, conf, "check", h.name))
	must(t, who, "check --nagios", run(t, conf, "check", h.name, "--nagios"))
	r := run(t, conf, "list-backups", h.name)
	must(t, who, "list-backups", r)
	must(t, who, "cron", run(t, conf, "cron"))
	return r.stdout
}

// archivedSegment returns a segment that is archived and still in pg_wal.
func (h *multiUserHost) archivedSegment(t *testing.T) string {
	t.Helper()
	seg := h.c.SwitchWAL(t)
	h.c.WaitArchived(t, seg, time.Minute)
	return filepath.Join(h.c.DataDir(), "pg_wal", seg)
}

// TestSeveralUsersOneHost: root runs check, list-backups and cron while
// PostgreSQL's user runs backup and wal-push, then the reverse, against one
// configuration with the default lock directory and one with a directory
// shared by a group. Nothing either leaves behind (lock files, the
// repository's files, the WAL spool) stops the other, and the lock files
// are open to the users the directory is open to.
func TestSeveralUsersOneHost(t *testing.T) {
	h := newMultiUserHost(t)
	pgGID, _ := strconv.Atoi(h.pgUser.Gid)
	group := filepath.Join(h.base, "locks")
	if err := os.Mkdir(group, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(group, 0, pgGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(group, 0o770|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	groupConf := filepath.Join(h.base, "group.conf")
	h.writeConf(t, groupConf, group)

	backups := 0
	for _, c := range []struct {
		conf, lockDir string
		lockMode      os.FileMode
	}{
		{h.conf, "/tmp", 0o666},
		{groupConf, group, 0o660},
	} {
		t.Logf("lock_directory %s", c.lockDir)
		// Root monitors first (its looks must create nothing, its cron
		// lock must not stand in the way), then PostgreSQL's user works.
		h.monitor(t, "root", h.asRoot, c.conf)
		must(t, "postgres", "backup", h.asPG(t, c.conf, "backup", h.name, "--fast", "--quiet"))
		must(t, "postgres", "wal-push", h.asPG(t, c.conf, "wal-push", h.name, h.archivedSegment(t)))
		backups++
		out := h.monitor(t, "root", h.asRoot, c.conf)
		if strings.Count(out, "DONE") != backups {
			t.Fatalf("list-backups as root after %d backups:\n%s", backups, out)
		}
		// The reverse: PostgreSQL's user monitors, root backs up and
		// pushes by hand, then PostgreSQL's user backs up again over
		// root's lock file and repository files.
		h.monitor(t, "postgres", h.asPG, c.conf)
		must(t, "root", "backup", h.asRoot(t, c.conf, "backup", h.name, "--fast", "--quiet"))
		must(t, "root", "wal-push", h.asRoot(t, c.conf, "wal-push", h.name, h.archivedSegment(t)))
		must(t, "postgres", "backup", h.asPG(t, c.conf, "backup", h.name, "--fast", "--quiet"))
		backups += 2
		h.monitor(t, "postgres", h.asPG, c.conf)
		h.monitor(t, "root", h.asRoot, c.conf)

		for _, what := range []string{"backup", "retention"} {
			p := filepath.Join(c.lockDir, "cellar-"+h.name+"."+what+".lock")
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("lock file %s: %v", p, err)
			}
			if fi.Mode().Perm() != c.lockMode {
				t.Errorf("lock file %s has mode %v, want %v", p, fi.Mode().Perm(), c.lockMode)
			}
		}
	}
	// Everything root wrote under pg_wal and in the repository belongs to
	// PostgreSQL's user.
	pgUID, _ := strconv.Atoi(h.pgUser.Uid)
	for _, dir := range []string{filepath.Join(h.c.DataDir(), "pg_wal", "cellar"), filepath.Join(h.base, "repo")} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if fi, err := os.Lstat(p); err == nil && int(fi.Sys().(*syscall.Stat_t).Uid) != pgUID {
				t.Errorf("%s belongs to uid %d, not to PostgreSQL's user", p, fi.Sys().(*syscall.Stat_t).Uid)
			}
			return nil
		})
	}
}

// TestLockHeldByAnotherUser: a spread-checkpoint backup by PostgreSQL's
// user says what it waits for, root's check and list-backups see it
// running without disturbing it, and root's backup is refused naming the
// holder.
func TestLockHeldByAnotherUser(t *testing.T) {
	h := newMultiUserHost(t)
	// Enough dirty pages that a spread checkpoint takes a while.
	h.c.SetConf(t, "checkpoint_timeout", "300s")
	h.c.Exec(t, "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g")
	cmd := cellarCommandAs(t, h.pgUser, nil, "--config", h.conf, "backup", h.name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	const says = "waiting for PostgreSQL's checkpoint (spread; --fast or immediate_checkpoint = on for an immediate one)"
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), says) {
		if time.Now().After(deadline) {
			t.Fatalf("a spread-checkpoint backup does not say what it waits for:\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := h.asRoot(t, h.conf, "list-backups", h.name)
	if r.code != 0 || !strings.Contains(r.stdout, "STARTED") && !strings.Contains(r.stdout, "RUNNING") {
		t.Errorf("list-backups as root while a backup runs: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	h.asRoot(t, h.conf, "check", h.name)
	r = h.asRoot(t, h.conf, "backup", h.name, "--fast")
	if r.code != 1 || !strings.Contains(r.stderr, "another backup of server "+h.name+" is running (pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("a second backup by root: exit %d\n%s", r.code, r.stderr)
	}
	select {
	case err := <-done:
		t.Fatalf("the backup ended while others looked at its lock: %v\n%s", err, stderr.String())
	default:
	}
	_ = cmd.Process.Kill()
	<-done
	done <- nil // for the cleanup

	// immediate_checkpoint = on is --fast without the flag; --fast=false
	// still asks for a spread checkpoint.
	conf := filepath.Join(h.base, "immediate.conf")
	h.writeConf(t, conf, "")
	appendConf(t, conf, "immediate_checkpoint = on\n")
	r = h.asRoot(t, conf, "backup", h.name)
	if r.code != 0 || !strings.Contains(r.stderr, "fast_checkpoint=true") || strings.Contains(r.stderr, says) {
		t.Fatalf("backup with immediate_checkpoint = on: exit %d\n%s", r.code, r.stderr)
	}
	r = h.asRoot(t, conf, "backup", h.name, "--fast=false")
	if r.code != 0 || !strings.Contains(r.stderr, "fast_checkpoint=false") || !strings.Contains(r.stderr, says) {
		t.Fatalf("backup --fast=false with immediate_checkpoint = on: exit %d\n%s", r.code, r.stderr)
	}
}

// TestLockDirectoryBadInput: a lock_directory that does not exist or that
// the user may not write is one line naming the setting, exit 1, and no
// backup in the catalog; check names it too.
func TestLockDirectoryBadInput(t *testing.T) {
	h := newMultiUserHost(t)
	missing := filepath.Join(h.base, "no-such-dir")
	closed := filepath.Join(h.base, "root-only")
	if err := os.Mkdir(closed, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dir, want string
		as        func(*testing.T, string, ...string) result
	}{
		{missing, "lock_directory " + missing + " does not exist: create it", h.asRoot},
		{closed, "lock_directory " + closed + " is not writable by this user", h.asPG},
	} {
		conf := filepath.Join(h.base, "bad.conf")
		h.writeConf(t, conf, c.dir)
		r := c.as(t, conf, "backup", h.name, "--fast")
		if r.code != 1 || !strings.Contains(r.stderr, c.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("backup with lock_directory %s: exit %d, want 1 and one line with %q:\n%s", c.dir, r.code, c.want, r.stderr)
		}
		r = c.as(t, conf, "cron")
		if r.code != 1 || !strings.Contains(r.stderr, "lock_directory "+c.dir) {
			t.Errorf("cron with lock_directory %s: exit %d\n%s", c.dir, r.code, r.stderr)
		}
	}
	if out := h.asRoot(t, h.conf, "list-backups", h.name).stdout; !strings.HasPrefix(out, "No backups of server") {
		t.Errorf("a refused backup is in the catalog:\n%s", out)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("the missing lock_directory was created")
	}
	conf := filepath.Join(h.base, "bad.conf")
	h.writeConf(t, conf, missing)
	r := h.asRoot(t, conf, "check", h.name)
	if r.code != 1 || !strings.Contains(checkLines(r)["lock directory"], "lock_directory "+missing+" does not exist") {
		t.Errorf("check with a missing lock_directory: exit %d\n%s", r.code, r.stdout)
	}
}
