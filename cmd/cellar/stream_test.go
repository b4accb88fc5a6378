package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
	"github.com/cellar-backup/cellar/internal/pgtest"
)

// receiver is a cellar receive-wal running in the background.
type receiver struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	code int
}

// startReceiveWAL starts cellar receive-wal main and waits until it
// streams.
func startReceiveWAL(t *testing.T, env []string, conf string, args ...string) *receiver {
	t.Helper()
	cmd := exec.Command(cellarBin, append([]string{"--config", conf, "receive-wal", "main"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &receiver{cmd: cmd, done: make(chan struct{})}
	streaming := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			r.mu.Lock()
			r.out.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			if strings.HasPrefix(sc.Text(), "Streaming WAL") {
				once.Do(func() { close(streaming) })
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		r.code = cmd.ProcessState.ExitCode()
		_ = err
		close(r.done)
	}()
	t.Cleanup(func() { r.kill() })
	select {
	case <-streaming:
	case <-r.done:
		t.Fatalf("receive-wal exited with %d before streaming:\n%s", r.code, r.output())
	case <-time.After(time.Minute):
		t.Fatalf("receive-wal did not start streaming within a minute:\n%s", r.output())
	}
	return r
}

func (r *receiver) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

// stop sends SIGTERM and waits for the exit code.
func (r *receiver) stop(t *testing.T) int {
	t.Helper()
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		t.Fatalf("receive-wal did not stop within a minute of SIGTERM:\n%s", r.output())
	}
	return r.code
}

func (r *receiver) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// restoreLatest restores the latest backup of server main to the end of
// its WAL in a new directory and starts a server there (c gives the
// owner).
func restoreLatest(t *testing.T, c *pgtest.Cluster, conf string, env []string) *pgtest.Cluster {
	t.Helper()
	dir := restoreDir(t)
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	return startRestored(t, c, dir, env)
}

// streamingCluster is a backupCluster whose server main also has
// streaming_conninfo and the replication slot.
func streamingCluster(t *testing.T, kind, extraConf string) (*pgtest.Cluster, string, []string) {
	t.Helper()
	c, conf, env := backupCluster(t, kind, extraConf)
	appendConf(t, conf, "streaming_conninfo = "+c.ConnString()+"\n")
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--create-slot"); r.code != 0 || !strings.Contains(r.stdout, `Replication slot "cellar" created`) {
		t.Fatalf("receive-wal --create-slot: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	return c, conf, env
}

// TestReceiveWALSynchronousLosesNothing: with receive-wal named in
// synchronous_standby_names, every commit that returned is in the
// repository when the database host is lost right after it.
func TestReceiveWALSynchronousLosesNothing(t *testing.T) {
	synchronousLosesNothing(t, "s3", "", nil)
}

// TestReceiveWALEncrypted: the same with encryption = age, on a
// receive-wal host that holds the private key: what it streams (the
// .partial segment, the chunks) is sealed, and restore reads it.
func TestReceiveWALEncrypted(t *testing.T) {
	keys := openTempDir(t, "cellar-keys")
	key, pub := keygen(t, keys, "restore.key")
	giveToServerUser(t, key) // archive_command reads this configuration too
	synchronousLosesNothing(t, "file", "encryption = age\nencryption_recipients = "+pub+"\nencryption_identity_file = "+key+"\n",
		func(c *pgtest.Cluster, raw cloud.Storage, key string) {
			if strings.HasPrefix(key, "main/wal-stream/") || strings.HasSuffix(key, ".partial") {
				h, err := catalog.ClearHeader(context.Background(), raw, key)
				if err != nil || h.Encryption != catalog.EncryptionAge {
					t.Fatalf("%s: %+v, %v; want it encrypted", key, h, err)
				}
			}
		})
}

// synchronousLosesNothing runs the synchronous receive-wal case on a
// repository of kind with extraConf; each stored object's key is passed
// to check, when given, before the restore.
func synchronousLosesNothing(t *testing.T, kind, extraConf string, check func(*pgtest.Cluster, cloud.Storage, string)) {
	c, conf, env := streamingCluster(t, kind, extraConf)
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--create-slot"); r.code != 0 || !strings.Contains(r.stdout, "already exists") {
		t.Fatalf("receive-wal --create-slot again: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	c.SetConf(t, "synchronous_commit", "on")
	c.SetConf(t, "synchronous_standby_names", "cellar_receive_wal")
	rw := startReceiveWAL(t, env, conf)
	if !strings.Contains(rw.output(), "synchronous") {
		t.Fatalf("receive-wal does not see itself as synchronous:\n%s", rw.output())
	}
	const n = 40
	for i := 1; i <= n; i++ {
		c.Exec(t, fmt.Sprintf("INSERT INTO marker VALUES (%d)", i))
	}
	// The database host is lost, receive-wal with it (killed first, so it
	// cannot store anything more when the connection drops): the server
	// stops dead and its data directory is gone.
	rw.kill()
	c.Crash(t)
	if err := os.RemoveAll(c.DataDir()); err != nil {
		t.Fatal(err)
	}
	// The last markers are in no archived segment: only in the streamed
	// segment in progress, its .partial and the chunks stored since.
	partials, chunks := 0, 0
	store := openRepository(t, conf, env)
	store.List(context.Background(), "main/", func(o cloud.ObjectInfo) error {
		if check != nil {
			check(c, catalog.Unsealed(store), o.Key)
		}
		switch {
		case strings.HasPrefix(o.Key, "main/wal/") && strings.HasSuffix(o.Key, ".partial"):
			partials++
		case strings.HasPrefix(o.Key, "main/wal-stream/"):
			chunks++
		}
		return nil
	})
	if partials != 1 || chunks == 0 {
		t.Fatalf("the repository holds %d streamed .partial segments (want 1) and %d chunks (want some)\n%s", partials, chunks, rw.output())
	}
	rc := restoreLatest(t, c, conf, env)
	if got := rc.QueryInt64(t, "SELECT count(*) FROM marker"); got != n {
		t.Fatalf("restored %d of the %d committed markers\nreceive-wal:\n%s", got, n, rw.output())
	}
}

// TestReceiveWALBadInput: each refusal names its fix.
func TestReceiveWALBadInput(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "lock_directory = "+t.TempDir()+"\n")
	// Neither streaming_conninfo nor conninfo.
	if r := cellar(t, env, "--config", conf, "receive-wal", "main"); r.code != 2 || !strings.Contains(r.stderr, "streaming_conninfo") {
		t.Fatalf("receive-wal without streaming_conninfo: exit %d: %s", r.code, r.stderr)
	}
	// conninfo serves when streaming_conninfo is not set, as in Barman.
	appendConf(t, conf, "conninfo = "+c.ConnString()+"\n")
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--create-slot"); r.code != 0 || !strings.Contains(r.stdout, "created") {
		t.Fatalf("receive-wal --create-slot over conninfo: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--drop-slot"); r.code != 0 {
		t.Fatalf("receive-wal --drop-slot: exit %d: %s", r.code, r.stderr)
	}
	appendConf(t, conf, "streaming_conninfo = "+c.ConnString()+"\n")
	// The slot is missing (created and dropped again first).
	for _, step := range []struct{ flag, says string }{
		{"--create-slot", `Replication slot "cellar" created on server main`},
		{"--drop-slot", `Replication slot "cellar" dropped from server main`},
		{"--drop-slot", `Replication slot "cellar" does not exist on server main`},
	} {
		if r := cellar(t, env, "--config", conf, "receive-wal", "main", step.flag); r.code != 0 || !strings.Contains(r.stdout, step.says) {
			t.Fatalf("receive-wal %s: exit %d: %s%s", step.flag, r.code, r.stdout, r.stderr)
		}
	}
	if n := c.QueryInt64(t, "SELECT count(*) FROM pg_replication_slots"); n != 0 {
		t.Fatalf("%d replication slots left after --drop-slot", n)
	}
	if r := cellar(t, env, "--config", conf, "receive-wal", "main"); r.code != 1 || !strings.Contains(r.stderr, "--create-slot") {
		t.Fatalf("receive-wal without the slot: exit %d: %s", r.code, r.stderr)
	}
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--create-slot", "--drop-slot"); r.code != 2 {
		t.Fatalf("receive-wal --create-slot --drop-slot: exit %d: %s", r.code, r.stderr)
	}
	// A user without the REPLICATION attribute.
	c.Exec(t, "CREATE ROLE plain LOGIN")
	weak := strings.Replace(readFile(t, conf), "streaming_conninfo = "+c.ConnString(), "streaming_conninfo = "+strings.Replace(c.ConnString(), "user="+c.User(), "user=plain", 1), 1)
	if r := cellar(t, env, "--config", writeConfig(t, weak), "receive-wal", "main", "--create-slot"); r.code != 1 || !strings.Contains(r.stderr, "ALTER ROLE plain REPLICATION") {
		t.Fatalf("receive-wal as a user without REPLICATION: exit %d: %s", r.code, r.stderr)
	}
	// wal_level = minimal.
	m := pgtest.New(t, pgtest.Options{Conf: map[string]string{"wal_level": "minimal", "max_wal_senders": "0", "archive_mode": "off"}})
	minimal := strings.Replace(readFile(t, conf), "streaming_conninfo = "+c.ConnString(), "streaming_conninfo = "+m.ConnString(), 1)
	if r := cellar(t, env, "--config", writeConfig(t, minimal), "receive-wal", "main", "--create-slot"); r.code != 1 || !strings.Contains(r.stderr, "wal_level = replica") {
		t.Fatalf("receive-wal against wal_level = minimal: exit %d: %s", r.code, r.stderr)
	}
}

// TestReceiveWALAsynchronousAndRestart: without synchronous commit, what
// is older than streaming_upload_interval survives the loss of the host;
// a restart in the middle of a segment leaves no gap, and archive_command
// pushing the same segments meets no conflict.
func TestReceiveWALAsynchronousAndRestart(t *testing.T) {
	c, conf, env := streamingCluster(t, "file", "streaming_upload_interval = 1s\n")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	rw := startReceiveWAL(t, env, conf)
	if !strings.Contains(rw.output(), "asynchronous") {
		t.Fatalf("receive-wal should be asynchronous:\n%s", rw.output())
	}
	markers(t, c, 1, 10)
	// Stopped in the middle of a segment, and started again after more
	// commits: it goes on from where the repository ends.
	if code := rw.stop(t); code != 0 {
		t.Fatalf("receive-wal stopped with exit %d:\n%s", code, rw.output())
	}
	markers(t, c, 11, 10)
	rw = startReceiveWAL(t, env, conf)
	// The server restarts under it: it reconnects and goes on.
	c.Restart(t)
	for range 3 {
		c.Exec(t, "INSERT INTO marker SELECT g FROM generate_series(1000 * (1 + (SELECT max(id) / 1000 FROM marker)), 1000 * (1 + (SELECT max(id) / 1000 FROM marker)) + 999) g")
		c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	}
	markers(t, c, 21, 5)
	time.Sleep(3 * time.Second) // more than streaming_upload_interval
	if _, failed, _, last := c.ArchiverStats(t); failed != 0 {
		t.Fatalf("archive_command failed %d times (last %s) beside receive-wal", failed, last)
	}
	want := c.QueryInt64(t, "SELECT count(*) FROM marker")
	if !strings.Contains(rw.output(), "reconnecting") || c.QueryInt64(t, "SELECT count(*) FROM pg_stat_replication") != 1 {
		t.Fatalf("receive-wal did not reconnect after the restart:\n%s", rw.output())
	}
	c.Crash(t)
	rw.kill()
	if out := rw.output(); strings.Contains(out, "different content") || strings.Contains(out, "level=ERROR") {
		t.Fatalf("receive-wal reported errors:\n%s", out)
	}
	if err := os.RemoveAll(c.DataDir()); err != nil {
		t.Fatal(err)
	}
	r := cellar(t, env, "--config", conf, "--format", "json", "list-wal", "main")
	if r.code != 0 || !strings.Contains(r.stdout, `"gaps": []`) {
		t.Fatalf("list-wal: exit %d: %s", r.code, r.stdout)
	}
	rc := restoreLatest(t, c, conf, env)
	if got := rc.QueryInt64(t, "SELECT count(*) FROM marker"); got != want {
		t.Fatalf("restored %d markers, want all %d committed more than streaming_upload_interval before the crash\nreceive-wal:\n%s", got, want, rw.output())
	}
}

// TestReceiveWALFollowsPromotion: receive-wal streams from a standby that
// is then promoted; it follows the new timeline, and the repository alone
// restores everything committed on both.
func TestReceiveWALFollowsPromotion(t *testing.T) {
	primary, conf, env := backupCluster(t, "file", "streaming_upload_interval = 1s\n")
	primary.Exec(t, "CREATE TABLE marker (id int primary key)")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	standby := pgtest.Restore(t, primary.BaseBackup(t), "standby", pgtest.Options{Conf: map[string]string{
		"primary_conninfo": primary.ConnString(),
		"archive_mode":     "off",
	}})
	appendConf(t, conf, "streaming_conninfo = "+standby.ConnString()+"\n")
	if r := cellar(t, env, "--config", conf, "receive-wal", "main", "--create-slot"); r.code != 0 {
		t.Fatalf("receive-wal --create-slot on the standby: exit %d: %s", r.code, r.stderr)
	}
	rw := startReceiveWAL(t, env, conf)
	markers(t, primary, 1, 5)
	deadline := time.Now().Add(time.Minute)
	for standby.QueryInt64(t, "SELECT count(*) FROM marker") < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the standby did not replay the markers")
		}
		time.Sleep(50 * time.Millisecond)
	}
	primary.Stop(t)
	standby.Exec(t, "SELECT pg_promote()")
	standby.WaitPromoted(t, time.Minute)
	markers(t, standby, 6, 5)
	deadline = time.Now().Add(time.Minute)
	for !strings.Contains(rw.output(), "following a new timeline") {
		if time.Now().After(deadline) {
			t.Fatalf("receive-wal did not follow the promotion:\n%s", rw.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // more than streaming_upload_interval
	standby.Crash(t)
	rw.kill()
	rc := restoreLatest(t, primary, conf, env)
	if got := rc.QueryInt64(t, "SELECT count(*) FROM marker"); got != 10 {
		t.Fatalf("restored %d markers, want the 10 of both timelines\nreceive-wal:\n%s", got, rw.output())
	}
	if tl := rc.QueryInt64(t, "SELECT timeline_id::bigint FROM pg_control_checkpoint()"); tl != 3 {
		t.Fatalf("the restore ended on timeline %d, want 3 (after the promoted 2)", tl)
	}
}

// TestReceiveWALCronStatusAndCheck: cron starts receive-wal for a server
// with streaming_archiver = on (once), replication-status shows it, and
// check follows the slot, the process and the lag.
func TestReceiveWALCronStatusAndCheck(t *testing.T) {
	c, conf, env := streamingCluster(t, "file", "streaming_archiver = on\nstreaming_lag_max = 1MiB\n")
	lockDir := strings.TrimSpace(strings.SplitN(strings.SplitN(readFile(t, conf), "lock_directory = ", 2)[1], "\n", 2)[0])
	holder := func() (lockfile.Holder, bool) {
		h, ok := lockfile.Look(lockDir, "cellar-main.receive-wal.lock")
		if !ok || h == nil {
			return lockfile.Holder{}, false
		}
		return *h, h.PID > 0 && syscall.Kill(h.PID, 0) == nil
	}
	t.Cleanup(func() {
		if h, ok := holder(); ok {
			_ = syscall.Kill(h.PID, syscall.SIGKILL)
		}
	})
	r := cellar(t, env, "--config", conf, "check", "main")
	lines := checkLines(r)
	if r.code != 1 || lines["streaming connection"] != "OK" || !strings.Contains(lines["replication slot"], "nothing streams from it") ||
		!strings.HasPrefix(lines["receive-wal running"], "FAILED") {
		t.Fatalf("check before cron: exit %d\n%s", r.code, r.stdout)
	}
	for range 2 { // the second run finds it running
		if r := cellar(t, env, "--config", conf, "cron"); r.code != 0 {
			t.Fatalf("cron: exit %d: %s", r.code, r.stderr)
		}
	}
	h, ok := holder()
	if !ok {
		t.Fatal("cron did not start receive-wal")
	}
	if n := c.QueryInt64(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'cellar_receive_wal'"); n != 1 {
		t.Fatalf("%d receive-wal connections after two cron runs, want 1", n)
	}
	c.Exec(t, "CREATE TABLE t AS SELECT generate_series(1, 10000) g")
	c.WaitArchived(t, c.SwitchWAL(t), time.Minute)
	r = cellar(t, env, "--config", conf, "check", "main")
	if lines := checkLines(r); r.code != 0 || lines["receive-wal running"] != "OK" || lines["replication slot"] != "OK" || lines["streaming lag"] != "OK" {
		t.Fatalf("check with receive-wal running: exit %d\n%s", r.code, r.stdout)
	}
	r = cellar(t, env, "--config", conf, "--format", "json", "replication-status", "main")
	var s replStatus
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || r.code != 0 {
		t.Fatalf("replication-status: exit %d (%v): %s%s", r.code, err, r.stdout, r.stderr)
	}
	if len(s.Clients) != 1 || s.Clients[0].Application != "cellar_receive_wal" || !s.Slot.Exists || !s.Slot.Active ||
		s.Repository.LastSegment == "" || s.ReceiveWAL == nil || s.ReceiveWAL.PID != h.PID {
		t.Fatalf("replication-status: %+v", s)
	}
	if r := cellar(t, env, "--config", conf, "replication-status", "main"); r.code != 0 || !strings.Contains(r.stdout, "Status of streaming clients for server 'main'") ||
		!strings.Contains(r.stdout, "Application name: cellar_receive_wal") {
		t.Fatalf("replication-status: exit %d: %s", r.code, r.stdout)
	}
	// receive-wal gone and WAL written since: the slot falls behind.
	_ = syscall.Kill(h.PID, syscall.SIGKILL)
	for _, ok := holder(); ok; _, ok = holder() {
		time.Sleep(50 * time.Millisecond)
	}
	c.Exec(t, "INSERT INTO t SELECT generate_series(1, 100000)")
	c.SwitchWAL(t)
	r = cellar(t, env, "--config", conf, "check", "main", "--nagios")
	if r.code != 2 || !strings.Contains(r.stdout, "receive-wal running") || !strings.Contains(r.stdout, "above streaming_lag_max") {
		t.Fatalf("check --nagios with receive-wal stopped: exit %d: %s", r.code, r.stdout)
	}
}

// cellarAs runs the binary as another (unprivileged) user.
func cellarAs(t *testing.T, u *user.User, env []string, args ...string) result {
	t.Helper()
	cmd := cellarCommandAs(t, u, env, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running cellar as %s: %v", u.Username, err)
	}
	return r
}

// cellarCommandAs is the command that runs the binary as u (in its
// primary and supplementary groups), with a clean environment plus env.
func cellarCommandAs(t *testing.T, u *user.User, env []string, args ...string) *exec.Cmd {
	t.Helper()
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.Atoi(g); err == nil {
				groups = append(groups, uint32(n))
			}
		}
	}
	cmd := exec.Command(cellarBin, args...)
	home := t.TempDir()
	os.Chmod(home, 0o777)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
	return cmd
}

// TestStreamBackup: backup_method = stream, run by a user who cannot read
// pgdata, backs up over the replication protocol (a tablespace included);
// the backup restores to the same contents; a file damaged in transit is
// caught by PostgreSQL's backup_manifest and the backup is FAILED.
func TestStreamBackup(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("the test needs the user nobody: %v", err)
	}
	c, conf, env := backupCluster(t, "s3", "backup_method = stream\n")
	// A directory that user may write, for its lock and configuration.
	open, err := os.MkdirTemp("", "cellar-stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(open) })
	os.Chmod(open, 0o777)
	appendConf(t, conf, "streaming_conninfo = "+c.ConnString()+"\nlock_directory = "+open+"\n")
	text := readFile(t, conf)
	os.Chmod(conf, 0o644)
	if _, err := os.ReadDir(c.DataDir()); err != nil {
		t.Fatal(err)
	}
	spc := c.MakeDir("tablespace")
	c.Exec(t, "CREATE TABLESPACE extra LOCATION '"+spc+"'")
	c.Exec(t, "CREATE TABLE spread (id int, note text) TABLESPACE extra")
	c.Exec(t, "INSERT INTO spread SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
	c.Pgbench(t, "-i", "-s", "3", "-q")
	digest := "SELECT md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"
	want := c.QueryString(t, digest)

	// The local method, as this user, cannot read pgdata.
	local := strings.Replace(text, "backup_method = stream", "backup_method = local", 1)
	localConf := filepath.Join(open, "local.conf")
	if err := os.WriteFile(localConf, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := cellarAs(t, nobody, env, "--config", localConf, "backup", "main", "--fast", "--quiet"); r.code == 0 || !strings.Contains(r.stderr, "pgdata") {
		t.Fatalf("a local backup by a user who cannot read pgdata: exit %d: %s", r.code, r.stderr)
	}
	r := cellarAs(t, nobody, env, "--config", conf, "--format", "json", "backup", "main", "--fast")
	if r.code != 0 {
		t.Fatalf("stream backup: exit %d: %s", r.code, r.stderr)
	}
	rows := listBackups(t, env, conf)
	if len(rows) != 1 || rows[0].Status != catalog.StatusDone {
		t.Fatalf("list-backups: %+v", rows)
	}
	m, err := catalog.ReadManifest(context.Background(), openRepository(t, conf, env), "main", rows[0].ID)
	if err != nil || m.Method != "stream" || len(m.Tablespaces) != 1 {
		t.Fatalf("manifest: %v, method %q, tablespaces %+v", err, m.Method, m.Tablespaces)
	}
	hasPGManifest := false
	_, files := pgtest.Contents(t, openRepository(t, conf, env), m)
	for _, f := range files {
		hasPGManifest = hasPGManifest || f.Path == "backup_manifest"
	}
	if !hasPGManifest {
		t.Fatal("the backup does not keep PostgreSQL's backup_manifest")
	}
	if r := cellar(t, env, "--config", conf, "verify", "main", rows[0].ID); r.code != 0 {
		t.Fatalf("verify: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	dir := restoreDir(t)
	moved := filepath.Join(filepath.Dir(dir), "moved-tablespace")
	if r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir, "--tablespace", "extra:"+moved, "--target-immediate"); r.code != 0 {
		t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
	}
	c.Chown(moved)
	rc := startRestored(t, c, dir, env)
	if got := rc.QueryString(t, digest); got != want {
		t.Fatalf("restored pgbench_accounts digest %s, want %s", got, want)
	}
	if n := rc.QueryInt64(t, "SELECT count(*) FROM spread"); n != 20000 {
		t.Fatalf("the tablespace's table has %d rows, want 20000", n)
	}
	rc.Stop(t)

	// A file damaged in transit.
	file := c.QueryString(t, "SELECT pg_relation_filepath('pgbench_accounts')")
	r = cellarAs(t, nobody, append(env, "CELLAR_TEST_CORRUPT_STREAM="+file), "--config", conf, "backup", "main", "--fast", "--quiet")
	if r.code != 1 || !strings.Contains(r.stderr, file) || !strings.Contains(r.stderr, "damaged in transit") {
		t.Fatalf("stream backup with %s damaged: exit %d: %s", file, r.code, r.stderr)
	}
	rows = listBackups(t, env, conf)
	if len(rows) != 2 || rows[0].Status != catalog.StatusFailed || rows[1].Status != catalog.StatusDone {
		t.Fatalf("after the damaged stream: %+v", rows)
	}
}

// TestStreamingOnly: no archive_command at all; receive-wal is the only
// archiver and backups go over the replication protocol, as on a central
// backup host. The backup waits for its WAL from receive-wal, and the
// repository restores everything streamed up to its stop.
func TestStreamingOnly(t *testing.T) {
	c, conf, env := streamingCluster(t, "s3", "backup_method = stream\nstreaming_archiver = on\n")
	c.SetConf(t, "archive_mode", "off")
	c.Restart(t)
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	rw := startReceiveWAL(t, env, conf)
	r := cellar(t, env, "--config", conf, "check", "main")
	if lines := checkLines(r); r.code != 0 || lines["receive-wal running"] != "OK" || lines["archive_mode"] != "" {
		t.Fatalf("check of a streaming-only server: exit %d\n%s", r.code, r.stdout)
	}
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup with receive-wal as the only archiver: exit %d: %s\nreceive-wal:\n%s", r.code, r.stderr, rw.output())
	}
	// Commits flushed locally (the harness turns synchronous_commit off)
	// reach the WAL sender, and so receive-wal, within moments.
	c.SetConf(t, "synchronous_commit", "on")
	markers(t, c, 1, 10)
	time.Sleep(500 * time.Millisecond)
	if code := rw.stop(t); code != 0 {
		t.Fatalf("receive-wal stopped with exit %d:\n%s", code, rw.output())
	}
	c.Crash(t)
	rc := restoreLatest(t, c, conf, env)
	if got := rc.QueryInt64(t, "SELECT count(*) FROM marker"); got != 10 {
		t.Fatalf("restored %d markers, want the 10 streamed before receive-wal stopped\nreceive-wal:\n%s", got, rw.output())
	}
}
