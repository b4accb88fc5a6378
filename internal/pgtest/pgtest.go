// Package pgtest runs a real PostgreSQL 15 server for Cellar's end-to-end
// tests: initdb into a fresh temporary directory, start it on a free
// 127.0.0.1 port, and stop it and remove everything when the test ends.
//
// PostgreSQL refuses to run as root, and the tests run as root on CI. When
// the test binary runs as root, every PostgreSQL program (initdb, pg_ctl,
// pgbench, pg_waldump, ...) runs as the ordinary user [ServerUserName] via
// `runuser -u cellartest --`; otherwise it runs as the current user. The
// server, and the archive_command it runs, therefore see only files that
// user can reach: the harness directory ([Cluster.Base]) is world-readable
// and owned by that user, [Cluster.MakeDir] makes more directories owned by
// it (repositories, spool directories, restore targets, a directory for a
// freshly built cellar binary; t.TempDir() is mode 0700 and root's, so the
// server user cannot use it), and [Cluster.Chown] hands over files the test
// made itself.
//
// Every function that takes a testing.TB fails the test on error, with the
// command's output (and, where it helps, the tail of the server log) in the
// message. When a test fails, the cleanup logs the last lines of the server
// log; set PGTEST_KEEP=1 to keep the directory of a failed test.
//
// PGTEST_BINDIR overrides the directory of the PostgreSQL binaries
// (default /usr/lib/postgresql/15/bin).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerUserName is the ordinary user PostgreSQL runs as when the tests run
// as root.
const ServerUserName = "cellartest"

// DefaultBinDir holds the PostgreSQL 15 binaries on Debian.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

const (
	// queryTimeout bounds one Exec or Query, connection included.
	queryTimeout = 2 * time.Minute
	// logTailLines is how much of the server log failures show.
	logTailLines = 50
)

// Bin returns the path of a PostgreSQL binary, e.g. Bin("pg_waldump").
func Bin(name string) string {
	dir := os.Getenv("PGTEST_BINDIR")
	if dir == "" {
		dir = DefaultBinDir
	}
	return filepath.Join(dir, name)
}

// Options configure a new cluster. The zero value is a default cluster.
type Options struct {
	// Conf holds extra postgresql.conf settings, e.g. "archive_mode": "on",
	// "wal_level": "logical". Values are written unquoted by the caller and
	// quoted by the harness (any setting may be quoted in postgresql.conf),
	// so "archive_command": "cp %p /dir/%f" is fine. They override the
	// harness defaults (shared_buffers=32MB, synchronous_commit=off); fsync
	// keeps PostgreSQL's default (on). listen_addresses, port and
	// unix_socket_directories always belong to the harness.
	Conf map[string]string
	// WalSegSizeMB is initdb's --wal-segsize: a power of 2 from 1 to 1024;
	// 0 means PostgreSQL's default of 16.
	WalSegSizeMB int
	// Env is extra environment ("KEY=value") for the server process and so
	// for archive_command and restore_command, e.g. AWS_ACCESS_KEY_ID=...,
	// CELLAR_CONFIG=..., or PATH=... to find a freshly built cellar.
	Env []string
	// InitdbArgs are extra initdb arguments, e.g. "--data-checksums".
	InitdbArgs []string
}

// Cluster is one running (or stopped) PostgreSQL server owned by a test.
type Cluster struct {
	t       testing.TB // the test that made it: MakeDir, Chown and the cleanup use it
	su      serverUser
	base    string
	data    string
	logFile string
	port    int
	env     []string
	conf    map[string]string // effective harness + caller settings, without port etc.
	orig    []byte            // postgresql.conf as initdb wrote it
	// logShown is set once a failure message carried the log tail, so the
	// cleanup does not log it a second time.
	logShown bool
}

// New creates, configures and starts a cluster in a new temporary directory.
// A cleanup registered on t stops the server (immediate mode), logs the tail
// of the server log if the test failed, and removes the directory.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, opts)
	args := []string{"-D", c.data, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions", "-U", c.su.name}
	if opts.WalSegSizeMB != 0 {
		args = append(args, "--wal-segsize="+strconv.Itoa(opts.WalSegSizeMB))
	}
	args = append(args, opts.InitdbArgs...)
	if out, err := c.run(nil, Bin("initdb"), args...); err != nil {
		t.Fatalf("pgtest: initdb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.configureAndStart(t, opts)
	return c
}

// Restore makes a cluster from a copy of the data directory src (a base
// backup, see BaseBackup), with Options.Conf on top of its configuration,
// and starts it. signal "recovery" or "standby" writes recovery.signal or
// standby.signal first; with hot_standby (PostgreSQL's default) Restore
// returns once the server accepts connections, which for a server in
// recovery is when it is consistent: see WaitPromoted.
func Restore(t testing.TB, src, signal string, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, opts)
	if out, err := c.run(nil, "cp", "-a", src, c.data); err != nil {
		t.Fatalf("pgtest: copy %s: %v\n%s", src, err, out)
	}
	_ = os.Remove(filepath.Join(c.data, "postmaster.pid"))
	if err := os.Chmod(c.data, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	switch signal {
	case "":
	case "recovery", "standby":
		f := filepath.Join(c.data, signal+".signal")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		c.chown(t, f)
	default:
		t.Fatalf("pgtest: signal %q: want recovery, standby or nothing", signal)
	}
	c.configureAndStart(t, opts)
	return c
}

// BaseBackup takes a base backup of the running server with pg_basebackup
// (fast checkpoint, no WAL: restore_command must bring it) into a new
// directory of the harness, and returns its path, for Restore.
func (c *Cluster) BaseBackup(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(c.MakeDir("basebackup"), "data")
	if out, err := c.run(nil, Bin("pg_basebackup"), "-h", c.base, "-p", strconv.Itoa(c.port), "-U", c.su.name,
		"-D", dir, "-X", "none", "-c", "fast", "--no-sync"); err != nil {
		t.Fatalf("pgtest: pg_basebackup: %v\n%s", err, out)
	}
	return dir
}

// WaitPromoted waits (up to limit) until the server has left recovery.
func (c *Cluster) WaitPromoted(t testing.TB, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var inRecovery bool
		c.Scan(t, "SELECT pg_is_in_recovery()", nil, &inRecovery)
		if !inRecovery {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtest: still in recovery after %v\nserver log (last %d lines):\n%s", limit, logTailLines, c.failTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newCluster makes the harness directory of a cluster, its data directory
// still to be made.
func newCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	su := lookupServerUser(t)
	if _, err := os.Stat(Bin("initdb")); err != nil {
		t.Fatalf("pgtest: PostgreSQL 15 binaries are missing (%v); install them with `apt-get install -y postgresql-15` or set PGTEST_BINDIR", err)
	}
	if n := opts.WalSegSizeMB; n != 0 && !validWalSegSizeMB(n) {
		t.Fatalf("pgtest: WalSegSizeMB %d: PostgreSQL 15 needs a power of 2 from 1 to 1024", n)
	}

	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatalf("pgtest: create harness directory: %v", err)
	}
	c := &Cluster{
		t:       t,
		su:      su,
		base:    base,
		data:    filepath.Join(base, "data"),
		logFile: filepath.Join(base, "postgres.log"),
		env:     append([]string(nil), opts.Env...),
	}
	t.Cleanup(c.cleanup)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.chown(t, base)
	if su.asRoot {
		// The server user needs to reach base through every parent directory.
		if out, err := c.run(nil, "test", "-w", base, "-a", "-x", base); err != nil {
			t.Fatalf("pgtest: user %s cannot enter and write %s (test -w -x: %v)%s; point TMPDIR at a directory every user can enter, such as /tmp",
				su.name, base, err, strings.TrimRight("\n"+out, "\n"))
		}
	}

	return c
}

// configureAndStart writes the harness and caller settings after the data
// directory's own postgresql.conf and starts the server.
func (c *Cluster) configureAndStart(t testing.TB, opts Options) {
	t.Helper()
	var err error
	c.orig, err = os.ReadFile(filepath.Join(c.data, "postgresql.conf"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.conf = map[string]string{
		"shared_buffers":     "32MB",
		"synchronous_commit": "off",
	}
	for k, v := range opts.Conf {
		if !confKey.MatchString(k) {
			t.Fatalf("pgtest: bad setting name %q", k)
		}
		c.conf[k] = v
	}

	// The port is free when freePort returns but may be taken before the
	// postmaster binds it; try again with another one a couple of times.
	for attempt := 1; ; attempt++ {
		c.port = freePort(t)
		c.writeConf(t)
		logStart := fileSize(c.logFile)
		out, err := c.pgctlStart()
		if err == nil {
			break
		}
		logged := readFrom(c.logFile, logStart)
		if attempt < 3 && (strings.Contains(logged, "could not bind") || strings.Contains(logged, "Address already in use")) {
			t.Logf("pgtest: port %d was taken, retrying with another", c.port)
			continue
		}
		t.Fatalf("pgtest: start PostgreSQL: %v\n%s\nserver log (last %d lines):\n%s", err, out, logTailLines, c.failTail())
	}
}

var confKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

func validWalSegSizeMB(n int) bool {
	return n >= 1 && n <= 1024 && n&(n-1) == 0
}

// writeConf writes initdb's postgresql.conf followed by the harness and
// caller settings (later lines win in postgresql.conf).
func (c *Cluster) writeConf(t testing.TB) {
	t.Helper()
	var b strings.Builder
	b.Write(c.orig)
	b.WriteString("\n# Added by pgtest.\n")
	keys := make([]string, 0, len(c.conf))
	for k := range c.conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteLiteral(c.conf[k]))
	}
	fmt.Fprintf(&b, "listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = %s\n", c.port, quoteLiteral(c.base))
	// The file exists and belongs to the server user; rewriting keeps that.
	if err := os.WriteFile(filepath.Join(c.data, "postgresql.conf"), []byte(b.String()), 0o600); err != nil {
		t.Fatalf("pgtest: write postgresql.conf: %v", err)
	}
}

// quoteLiteral quotes s for postgresql.conf and for SQL (with
// standard_conforming_strings on, PostgreSQL's default).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func (c *Cluster) pgctlStart() (string, error) {
	return c.run(c.env, Bin("pg_ctl"), "-D", c.data, "-l", c.logFile, "-w", "-t", "60", "start")
}

func (c *Cluster) cleanup() {
	t := c.t
	if t.Failed() && !c.logShown {
		if tail := c.LogTail(logTailLines); tail != "" {
			t.Logf("pgtest: server log %s (last %d lines):\n%s", c.logFile, logTailLines, tail)
		}
	}
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); err == nil {
		if out, err := c.run(nil, Bin("pg_ctl"), "-D", c.data, "-m", "immediate", "-w", "-t", "30", "stop"); err != nil {
			t.Logf("pgtest: stop PostgreSQL: %v\n%s", err, out)
		}
	}
	if t.Failed() && os.Getenv("PGTEST_KEEP") != "" {
		t.Logf("pgtest: PGTEST_KEEP is set, keeping %s", c.base)
		return
	}
	// An archive_command still running after an immediate stop may write
	// into the directory while it is being removed; try a few times.
	var err error
	for i := 0; i < 5; i++ {
		if err = os.RemoveAll(c.base); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("pgtest: remove %s: %v", c.base, err)
}

// DataDir is the server's data directory.
func (c *Cluster) DataDir() string { return c.data }

// Port is the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Host is the directory of the server's Unix socket (usable as libpq host=).
func (c *Cluster) Host() string { return c.base }

// Base is the harness directory: it holds the data directory, the server
// log, the Unix socket and whatever MakeDir creates.
func (c *Cluster) Base() string { return c.base }

// User is the database superuser's name; it is also the OS user the server
// runs as.
func (c *Cluster) User() string { return c.su.name }

// LogFile is the path of the server log.
func (c *Cluster) LogFile() string { return c.logFile }

// ConnString is a libpq key=value connection string for the server over TCP.
func (c *Cluster) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", c.port, c.su.name)
}

// failTail returns the log tail for a failure message and notes that it was shown.
func (c *Cluster) failTail() string {
	c.logShown = true
	return c.LogTail(logTailLines)
}

// LogTail returns the last n lines of the server log ("" if there is none).
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// MakeDir creates Base()/name (and any missing parents below Base) owned by
// the server user, mode 0755, and returns its path. Use it for anything the
// server or its archive_command must write or read: repositories, spool
// directories, restore targets, a directory to build cellar into. It fails
// the test that created the cluster.
func (c *Cluster) MakeDir(name string) string {
	t := c.t
	t.Helper()
	p := filepath.Join(c.base, name)
	rel, err := filepath.Rel(c.base, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		t.Fatalf("pgtest: MakeDir(%q): not a directory below %s", name, c.base)
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// Hand over every level MkdirAll may have created.
	for dir := p; dir != c.base; dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		c.chown(t, dir)
	}
	return p
}

// Chown gives path, and everything below it if it is a directory, to the
// server user, so that the server or a command run with RunAsServerUser can
// read and write it. It does nothing unless the test runs as root. It fails
// the test that created the cluster.
func (c *Cluster) Chown(path string) {
	t := c.t
	t.Helper()
	if !c.su.asRoot {
		return
	}
	err := filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, c.su.uid, c.su.gid)
	})
	if err != nil {
		t.Fatalf("pgtest: chown %s to %s: %v", path, c.su.name, err)
	}
}

func (c *Cluster) chown(t testing.TB, path string) {
	t.Helper()
	if !c.su.asRoot {
		return
	}
	if err := os.Lchown(path, c.su.uid, c.su.gid); err != nil {
		t.Fatalf("pgtest: chown %s to %s: %v", path, c.su.name, err)
	}
}

// Stop shuts the server down in fast mode (a clean shutdown: the archiver
// gets to archive what is ready) and waits for it.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if out, err := c.run(nil, Bin("pg_ctl"), "-D", c.data, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("pgtest: stop PostgreSQL: %v\n%s\nserver log (last %d lines):\n%s", err, out, logTailLines, c.failTail())
	}
}

// Crash stops the server in immediate mode, as a power cut would: no
// checkpoint, no archiving of what is ready, no goodbye to replication
// clients.
func (c *Cluster) Crash(t testing.TB) {
	t.Helper()
	if out, err := c.run(nil, Bin("pg_ctl"), "-D", c.data, "-m", "immediate", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("pgtest: stop PostgreSQL: %v\n%s", err, out)
	}
}

// Start starts a stopped server on the same port and waits until it accepts
// connections (pg_ctl -w; for a server in recovery that means until it
// reaches a consistent state or finishes recovery).
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if out, err := c.pgctlStart(); err != nil {
		t.Fatalf("pgtest: start PostgreSQL: %v\n%s\nserver log (last %d lines):\n%s", err, out, logTailLines, c.failTail())
	}
}

// Restart stops the server in fast mode and starts it again, which applies
// settings that need a restart (archive_mode, wal_level, ...).
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t)
	c.Start(t)
}

// Reload makes the server re-read its configuration and waits until the
// postmaster has done so, so that new connections and the archiver see the
// new settings.
func (c *Cluster) Reload(t testing.TB) {
	t.Helper()
	var before time.Time
	c.Scan(t, "SELECT pg_conf_load_time()", nil, &before)
	c.Exec(t, "SELECT pg_reload_conf()")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var done bool
		c.Scan(t, "SELECT pg_conf_load_time() > $1", []any{before}, &done)
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtest: configuration reload not seen after 30s\nserver log (last %d lines):\n%s", logTailLines, c.failTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetConf sets a setting with ALTER SYSTEM and reloads. Settings that need
// a restart (archive_mode, wal_level, ...) take effect only after Restart.
// value is quoted by SetConf, as in Options.Conf.
func (c *Cluster) SetConf(t testing.TB, key, value string) {
	t.Helper()
	if !confKey.MatchString(key) {
		t.Fatalf("pgtest: bad setting name %q", key)
	}
	c.Exec(t, fmt.Sprintf("ALTER SYSTEM SET %s = %s", key, quoteLiteral(value)))
	c.Reload(t)
}

func (c *Cluster) connect(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.ConnString())
	if err != nil {
		t.Fatalf("pgtest: connect to PostgreSQL on port %d: %v", c.port, err)
	}
	return conn
}

// Exec runs a statement on a new connection. Without args, sql may hold
// several statements separated by semicolons (simple protocol).
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn := c.connect(t, ctx)
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// Scan runs a query that returns at least one row on a new connection and
// scans the first row into dest, as pgx's Row.Scan does. args may be nil.
func (c *Cluster) Scan(t testing.TB, sql string, args []any, dest ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn := c.connect(t, ctx)
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// Query runs a query on a new connection and returns every row's values as
// pgx decodes them (int64, string, time.Time, ...).
func (c *Cluster) Query(t testing.TB, sql string, args ...any) [][]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn := c.connect(t, ctx)
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
	defer rows.Close()
	var all [][]any
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatalf("pgtest: %s: %v", sql, err)
		}
		all = append(all, vals)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
	return all
}

// QueryRow returns the values of the first row of a query, as Query does;
// a query without rows fails the test.
func (c *Cluster) QueryRow(t testing.TB, sql string, args ...any) []any {
	t.Helper()
	rows := c.Query(t, sql, args...)
	if len(rows) == 0 {
		t.Fatalf("pgtest: %s: no rows", sql)
	}
	return rows[0]
}

// QueryInt64 returns the single integer value of a one-row, one-column query.
func (c *Cluster) QueryInt64(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	var v int64
	c.Scan(t, sql, args, &v)
	return v
}

// QueryString returns the single text value of a one-row, one-column query
// (NULL fails the test; use coalesce).
func (c *Cluster) QueryString(t testing.TB, sql string, args ...any) string {
	t.Helper()
	var v string
	c.Scan(t, sql, args, &v)
	return v
}

// Pgbench runs pgbench against the server (as the server user when root)
// and returns its output, e.g. Pgbench(t, "-i", "-s", "10") or
// Pgbench(t, "-c", "2", "-t", "2000"). The connection comes from PGHOST,
// PGPORT, PGUSER and PGDATABASE=postgres; a trailing dbname argument
// overrides the database.
func (c *Cluster) Pgbench(t testing.TB, args ...string) string {
	t.Helper()
	env := []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(c.port), "PGUSER=" + c.su.name, "PGDATABASE=postgres", "PGSSLMODE=disable"}
	out, err := c.run(env, Bin("pgbench"), args...)
	if err != nil {
		t.Fatalf("pgtest: pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// SwitchWAL forces a switch to a new WAL segment and returns the name of the
// segment it completed. If nothing was written since the last switch, there
// is no switch and that is the segment the previous switch completed.
func (c *Cluster) SwitchWAL(t testing.TB) string {
	t.Helper()
	return c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
}

// ArchiverStats returns pg_stat_archiver's counters and the last archived
// and last failed WAL file names ("" when none).
func (c *Cluster) ArchiverStats(t testing.TB) (archived, failed int64, lastArchived, lastFailed string) {
	t.Helper()
	c.Scan(t, "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
		nil, &archived, &failed, &lastArchived, &lastFailed)
	return
}

// WaitArchived waits until the archiver has archived segment (a WAL file
// name, usually from SwitchWAL): until pg_stat_archiver's last_archived_wal
// is that file or a later segment (names compared lexically), or PostgreSQL
// has marked the file .done. It fails the test after timeout with the
// archiver's statistics and the server log tail.
func (c *Cluster) WaitArchived(t testing.TB, segment string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		_, _, last, _ := c.ArchiverStats(t)
		if archivedBy(segment, last) || exists(filepath.Join(c.data, "pg_wal", "archive_status", segment+".done")) {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var archived, failed int64
	var lastArchived, lastFailed, lastFailedTime, archiveCommand string
	c.Scan(t, `SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''),
		coalesce(last_failed_time::text, ''), current_setting('archive_command') FROM pg_stat_archiver`, nil,
		&archived, &failed, &lastArchived, &lastFailed, &lastFailedTime, &archiveCommand)
	var ready []string
	if ents, err := os.ReadDir(filepath.Join(c.data, "pg_wal", "archive_status")); err == nil {
		for _, e := range ents {
			ready = append(ready, e.Name())
		}
	}
	t.Fatalf("pgtest: WAL file %s not archived after %s\npg_stat_archiver: archived_count=%d failed_count=%d last_archived_wal=%q last_failed_wal=%q last_failed_time=%q\narchive_command=%q\npg_wal/archive_status: %v\nserver log (last %d lines):\n%s",
		segment, timeout, archived, failed, lastArchived, lastFailed, lastFailedTime, archiveCommand, ready, logTailLines, c.failTail())
}

// archivedBy reports whether last (pg_stat_archiver.last_archived_wal)
// being archived implies that want was: the same file, or a segment at or
// after it. A suffixed name (.partial, .backup) only implies the segments
// before its own.
func archivedBy(want, last string) bool {
	if last == "" {
		return false
	}
	if last == want {
		return true
	}
	if !isSegment(want) || len(last) < 24 || !isSegment(last[:24]) {
		return false
	}
	if len(last) == 24 {
		return last >= want
	}
	return last[:24] > want
}

var segmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

func isSegment(name string) bool { return segmentName.MatchString(name) }

// SystemIdentifier returns the cluster's database system identifier.
func (c *Cluster) SystemIdentifier(t testing.TB) uint64 {
	t.Helper()
	// pg_control_system() shows the unsigned identifier as a bigint.
	return uint64(c.QueryInt64(t, "SELECT system_identifier FROM pg_control_system()"))
}

// WALFiles returns the names of the WAL segment files now in pg_wal, sorted.
func (c *Cluster) WALFiles(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.data, "pg_wal"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && isSegment(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

// serverUser is who runs PostgreSQL: ServerUserName when the tests run as
// root (asRoot), else the current user.
type serverUser struct {
	name     string
	uid, gid int
	asRoot   bool
}

func lookupServerUser(t testing.TB) serverUser {
	t.Helper()
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatalf("pgtest: current user: %v", err)
		}
		return serverUser{name: u.Username, uid: os.Geteuid(), gid: os.Getegid()}
	}
	u, err := user.Lookup(ServerUserName)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			t.Fatalf("pgtest: the tests run as root, PostgreSQL refuses to, and user %s does not exist: create it with `useradd -m %s` or run `make test`",
				ServerUserName, ServerUserName)
		}
		t.Fatalf("pgtest: look up user %s: %v", ServerUserName, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("pgtest: user %s has uid %q gid %q", ServerUserName, u.Uid, u.Gid)
	}
	return serverUser{name: u.Username, uid: uid, gid: gid, asRoot: true}
}

// command builds a command that runs as the server user with extra
// environment env on top of the inherited one.
func (su serverUser) command(env []string, name string, args ...string) *exec.Cmd {
	if !su.asRoot {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		return cmd
	}
	// runuser without --login keeps the environment except HOME, SHELL,
	// USER and LOGNAME; env adds the extra variables.
	full := append([]string{"-u", su.name, "--", "env"}, env...)
	full = append(full, name)
	full = append(full, args...)
	return exec.Command("runuser", full...)
}

// run runs a command as the server user in the harness directory and
// returns its combined output.
func (c *Cluster) run(env []string, name string, args ...string) (string, error) {
	cmd := c.su.command(env, name, args...)
	cmd.Dir = c.base
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Command returns a command that runs name as the server user (through
// runuser when the tests run as root, else directly). It inherits the test's
// environment and working directory, which the server user may not be able
// to enter: prefer absolute paths, or set Dir.
func Command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	return lookupServerUser(t).command(nil, name, args...)
}

// RunAsServerUser runs a command as the server user and returns its
// combined output; the error is an *exec.ExitError when it ran and failed.
// Use it to run cellar by hand as PostgreSQL would, so that the files it
// makes have the same owner. For extra environment run "env" with
// "KEY=value" arguments before the command.
func RunAsServerUser(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	out, err := Command(t, name, args...).CombinedOutput()
	return string(out), err
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the content of path from offset on ("" on error).
func readFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || offset > int64(len(b)) {
		return ""
	}
	return string(b[offset:])
}
