package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cellar-backup/cellar/pg"
)

// StartOptions verify a restored data directory by starting PostgreSQL on
// it (restore --verify-start, drills).
type StartOptions struct {
	Bin     pg.Binaries
	DataDir string
	// Owner runs the server (the data directory's owner); nil: this
	// process's user.
	Owner *pg.Owner
	// Env is the server's environment, in which restore_command runs.
	Env []string
	// WorkDir is a private directory, Owner's, for the server's socket,
	// its authentication files and its log. Its path must be short
	// enough for a socket (about 90 bytes).
	WorkDir string
	// Users are the roles to connect as, tried in order (the restored
	// cluster's roles are not known beforehand).
	Users []string
	// Settings are given to the server on its command line besides those
	// that keep it private (no TCP, no archiving, trust on its own socket).
	Settings [][2]string
	Query    string
	// Amcheck runs pg_amcheck --all when it is installed; InstallAmcheck
	// lets it create the amcheck extension where it is missing (in a
	// scratch directory only: it changes the cluster).
	Amcheck, InstallAmcheck bool
	// Timeout bounds the wait for recovery and the query.
	Timeout time.Duration
	// Port is the port to give the server, 0 for a free one. Its socket
	// is in WorkDir and it listens on no TCP port, so a port another
	// server uses does not stand in its way.
	Port int
	// FirstWAL is the first segment recovery needs (the backup's), and
	// SegmentSize the segments' size: a failed recovery names the segment
	// it missed from them. LastWAL, when set, is the last segment archived
	// on the backup's timeline: a recovery to the end of WAL that ends
	// before it has missed a segment.
	FirstWAL    string
	SegmentSize int64
	LastWAL     string
	Log         *slog.Logger
}

// StartResult is what a started server showed.
type StartResult struct {
	// Replay is the time from the start of the server until it had
	// reached its target (or the end of WAL) and accepted connections.
	Replay  time.Duration
	Version string
	// The point recovery reached: the last replayed record, the time of
	// the last replayed transaction (zero when none was replayed) and the
	// timeline the server was left on.
	LSN      pg.LSN
	Time     time.Time
	Timeline uint32
	// Promoted says that recovery finished and the server was promoted;
	// otherwise it was paused at the target and stopped, and the
	// directory keeps its recovery settings.
	Promoted bool
	Answer   string
	// Amcheck is "OK", "skipped: why", or "" when not asked for.
	Amcheck string
	// LastRestored is the last WAL file restore_command delivered.
	LastRestored string
	User         string
}

// StartError is a failed verification: the server did not start, did not
// recover, or a check on it failed. Segment names the WAL segment that
// recovery could not fetch, when that is what went wrong; Log holds the
// server's last messages.
type StartError struct {
	Msg     string
	Segment string
	Log     string
}

func (e *StartError) Error() string { return e.Msg }

// ErrStartRoot is returned for a data directory that would have to run as
// root, which PostgreSQL refuses.
var ErrStartRoot = errors.New("PostgreSQL refuses to run as root")

// VerifyStart starts PostgreSQL on a restored data directory, privately
// (no TCP listener, its socket in WorkDir, archive_mode off), waits until
// recovery reaches its target or the end of WAL and connections are
// accepted, runs the query and pg_amcheck, and shuts it down cleanly. A
// server left paused at its target keeps its recovery settings and signal,
// as the restore wrote them; a promoted one is a clean cluster whose new
// timeline's history file is marked to be archived when it starts.
func VerifyStart(ctx context.Context, o StartOptions) (StartResult, error) {
	if o.Owner == nil && os.Geteuid() == 0 {
		return StartResult{}, ErrStartRoot
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	logFile := filepath.Join(o.WorkDir, "postgresql.log")
	settings, err := privateSettings(o)
	if err != nil {
		return StartResult{}, err
	}
	port := o.Port
	if port == 0 {
		if port, err = freePort(); err != nil {
			return StartResult{}, err
		}
	}
	// The socket and its lock file are in WorkDir, private, and nothing
	// listens on TCP: no other server can have taken the port.
	srv, err := pg.StartServer(pg.ServerOptions{
		Bin: o.Bin, DataDir: o.DataDir, Env: o.Env, LogFile: logFile, Owner: o.Owner,
		Settings: append(append([][2]string{{"port", strconv.Itoa(port)}}, settings...), o.Settings...),
	})
	if err != nil {
		return StartResult{}, fmt.Errorf("starting %s: %w", o.Bin.Path("postgres"), err)
	}
	o.Log.Debug("started PostgreSQL on the restored directory", "version", o.Bin.Version, "socket", o.WorkDir, "port", port)
	began := time.Now()
	res, err := awaitRecovery(ctx, o, srv, port, logFile)
	res.Replay = time.Since(began)
	if err != nil {
		srv.Kill()
		return res, err
	}
	if err := check(ctx, o, &res, port); err != nil {
		srv.Kill()
		return res, err
	}
	if err := srv.Stop(time.Minute); err != nil {
		return res, &StartError{Msg: err.Error(), Log: logTail(logFile)}
	}
	if res.Promoted {
		markHistory(o, res.Timeline)
	}
	return res, nil
}

// privateSettings are the command-line settings that keep the server to
// itself and make its log readable, and write its authentication files.
func privateSettings(o StartOptions) ([][2]string, error) {
	files := map[string]string{
		"pg_hba.conf":   "# Written by cellar for a verification start: the socket directory is private.\nlocal all all trust\n",
		"pg_ident.conf": "",
	}
	s := [][2]string{
		{"listen_addresses", ""},
		{"unix_socket_directories", o.WorkDir},
		{"unix_socket_permissions", "0700"},
		{"archive_mode", "off"},
		{"hot_standby", "on"},
		{"ssl", "off"},
		{"synchronous_standby_names", ""},
		{"logging_collector", "off"},
		{"log_destination", "stderr"},
		{"log_min_messages", "warning"},
		{"lc_messages", "C"},
		{"hba_file", filepath.Join(o.WorkDir, "pg_hba.conf")},
		{"ident_file", filepath.Join(o.WorkDir, "pg_ident.conf")},
	}
	if _, err := os.Stat(filepath.Join(o.DataDir, "postgresql.conf")); errors.Is(err, os.ErrNotExist) {
		// A cluster whose configuration lives elsewhere (Debian's
		// /etc/postgresql): start it with PostgreSQL's defaults.
		files["postgresql.conf"] = ""
		s = append(s, [2]string{"config_file", filepath.Join(o.WorkDir, "postgresql.conf")})
	}
	for name, text := range files {
		p := filepath.Join(o.WorkDir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			return nil, err
		}
		if o.Owner != nil {
			if err := os.Chown(p, o.Owner.UID, o.Owner.GID); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// refusing are the messages of a server that refuses connections while it
// starts, recovers or stops.
var refusing = []string{"the database system is starting up", "not yet accepting connections", "the database system is shutting down"}

// notYet are the errors of connections and queries to a server that is
// starting or recovering and will take them later.
var notYet = append([]string{"consistent recovery state has not been yet reached", "no such file or directory", "connection refused",
	"recovery is in progress"}, refusing...)

// awaitRecovery waits until the server accepts connections and has
// reached its target (paused there) or the end of WAL (promoted).
func awaitRecovery(ctx context.Context, o StartOptions, srv *pg.Server, port int, logFile string) (StartResult, error) {
	var res StartResult
	deadline := time.Now().Add(o.Timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	users := o.Users
	replayed := ""
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-srv.Exited():
			return res, failure(o, logFile, "PostgreSQL stopped during recovery", srv.ExitError())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			what := fmt.Sprintf("recovery did not finish within drill_timeout (%s)", o.Timeout)
			if replayed != "" {
				what += " (it had replayed WAL to " + replayed + ")"
			}
			return res, failure(o, logFile, what, nil)
		}
		conn, err := connectAs(ctx, o.WorkDir, port, users[0])
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "does not exist") && strings.Contains(msg, "role") && len(users) > 1 {
				users = users[1:]
				continue
			}
			if containsAny(msg, notYet) {
				continue
			}
			return res, &StartError{Msg: "connecting to the restored server: " + msg, Log: logTail(logFile)}
		}
		var inRecovery bool
		var pause string
		err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END,
			coalesce(pg_last_wal_replay_lsn()::text, '')`).Scan(&inRecovery, &pause, &replayed)
		if err == nil && (!inRecovery || pause == "paused") {
			res.User = users[0]
			res.Promoted = !inRecovery
			err = readPoint(ctx, conn, &res)
			res.LastRestored = lastRestored(logFile)
			conn.Close(ctx)
			if err != nil {
				return res, &StartError{Msg: "reading the point recovery reached: " + err.Error()}
			}
			return res, missedWAL(o, res, logFile)
		}
		conn.Close(ctx)
		if err != nil && !containsAny(err.Error(), notYet) {
			return res, &StartError{Msg: "asking the restored server about recovery: " + err.Error(), Log: logTail(logFile)}
		}
	}
}

func connectAs(ctx context.Context, dir string, port int, user string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("dbname=postgres sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password = dir, uint16(port), user, ""
	cfg.ConnectTimeout = 5 * time.Second
	cfg.RuntimeParams["application_name"] = "cellar verify-start"
	return pgx.ConnectConfig(ctx, cfg)
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// readPoint reads where recovery stopped and the timeline the server is on.
func readPoint(ctx context.Context, conn *pgx.Conn, res *StartResult) error {
	var lsn string
	var at *time.Time
	var tli string
	err := conn.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), current_setting('server_version'),
		CASE WHEN pg_is_in_recovery()
			THEN (SELECT lpad(to_hex(CASE WHEN r.min_recovery_end_timeline > 0 THEN r.min_recovery_end_timeline ELSE c.timeline_id END), 8, '0')
				FROM pg_control_recovery() r, pg_control_checkpoint() c)
			ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END`).Scan(&lsn, &at, &res.Version, &tli)
	if err != nil {
		return err
	}
	res.Version, _, _ = strings.Cut(res.Version, " ")
	if res.LSN, err = pg.ParseLSN(lsn); err != nil {
		return err
	}
	if at != nil {
		res.Time = *at
	}
	t, err := strconv.ParseUint(tli, 16, 32)
	res.Timeline = uint32(t)
	return err
}

// check runs the query and pg_amcheck on the recovered server.
func check(ctx context.Context, o StartOptions, res *StartResult, port int) error {
	ctx, cancel := context.WithTimeout(ctx, max(o.Timeout, time.Minute))
	defer cancel()
	conn, err := connectAs(ctx, o.WorkDir, port, res.User)
	if err != nil {
		return &StartError{Msg: "connecting to the recovered server: " + err.Error()}
	}
	defer conn.Close(ctx)
	results, err := conn.PgConn().Exec(ctx, o.Query).ReadAll()
	if err != nil {
		return &StartError{Msg: fmt.Sprintf("drill_query %q failed: %v", o.Query, err)}
	}
	res.Answer = answerOf(results)
	if !o.Amcheck {
		return nil
	}
	if !o.Bin.Has("pg_amcheck") {
		res.Amcheck = "skipped: pg_amcheck is not installed in " + o.Bin.Dir
		return nil
	}
	args := []string{"--all", "-h", o.WorkDir, "-p", strconv.Itoa(port), "-U", res.User, "--no-password"}
	if o.InstallAmcheck && res.Promoted {
		args = append(args, "--install-missing")
	}
	cmd := exec.CommandContext(ctx, o.Bin.Path("pg_amcheck"), args...)
	cmd.Env = append(o.Env, "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	var without []string
	for _, m := range notInstalledRe.FindAllStringSubmatch(text, -1) {
		without = append(without, m[1])
	}
	switch {
	case err == nil && len(without) == 0:
		res.Amcheck = "OK"
	case err == nil:
		res.Amcheck = "OK (not checked, without the amcheck extension: " + strings.Join(without, ", ") + ")"
	case len(without) > 0 && strings.Contains(text, "no relations to check"):
		res.Amcheck = "skipped: no database has the amcheck extension (CREATE EXTENSION amcheck in the source's databases)"
	default:
		res.Amcheck = "FAILED: " + firstLine(text)
		return &StartError{Msg: fmt.Sprintf("pg_amcheck --all found problems (%v): %s", err, oneLineText(text, 400))}
	}
	return nil
}

// answerOf renders the query's result: the first row's values, separated
// by " | ", and how many rows there were when more than one.
func answerOf(results []*pgconn.Result) string {
	for i := len(results) - 1; i >= 0; i-- {
		r := results[i]
		if len(r.FieldDescriptions) == 0 {
			continue
		}
		if len(r.Rows) == 0 {
			return "(no rows)"
		}
		vals := make([]string, len(r.Rows[0]))
		for j, v := range r.Rows[0] {
			if v == nil {
				vals[j] = "NULL"
			} else {
				vals[j] = string(v)
			}
		}
		out := oneLineText(strings.Join(vals, " | "), 200)
		if len(r.Rows) > 1 {
			out += fmt.Sprintf(" (first of %d rows)", len(r.Rows))
		}
		return out
	}
	if len(results) > 0 {
		return results[len(results)-1].CommandTag.String()
	}
	return ""
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func oneLineText(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return s
}

// connectionFatal are the FATAL messages of the connections awaitRecovery
// made: refused while the server started, or as a role it lacks.
var connectionFatal = append([]string{`role "`}, refusing...)

var notInstalledRe = regexp.MustCompile(`skipping database "([^"]*)": amcheck is not installed`)

var (
	restoredRe = regexp.MustCompile(`restored log file "([0-9A-F]{24})" from archive`)
	missingRe  = regexp.MustCompile(`WAL ends before (consistent recovery point|end of online backup)|recovery ended before configured recovery target was reached|could not locate required checkpoint record|requested timeline \d+ is not a child`)
)

// lastRestored is the last segment the server's log says restore_command
// delivered.
func lastRestored(logFile string) string {
	last := ""
	scanLog(logFile, func(line string) {
		if m := restoredRe.FindStringSubmatch(line); m != nil {
			last = m[1]
		}
	})
	return last
}

func scanLog(logFile string, fn func(string)) {
	f, err := os.Open(logFile)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fn(sc.Text())
	}
}

// nextSegment is the segment recovery asks for after the last one it got.
func nextSegment(o StartOptions, last string) string {
	if last == "" {
		return o.FirstWAL
	}
	w, err := pg.ParseWALName(last)
	if err != nil || o.SegmentSize == 0 {
		return ""
	}
	return w.Next(o.SegmentSize)
}

// failure explains a server that stopped or did not finish recovery, from
// its log: its last FATAL or PANIC message, and the segment it could not
// fetch when it ran out of WAL.
func failure(o StartOptions, logFile, what string, exit error) error {
	var fatal, cellarMsg, last string
	scanLog(logFile, func(line string) {
		if m := restoredRe.FindStringSubmatch(line); m != nil {
			last = m[1]
		}
		if containsAny(line, connectionFatal) {
			return // our own connection attempts, refused while recovery ran
		}
		if i := strings.Index(line, "FATAL:"); i >= 0 {
			fatal = strings.TrimSpace(line[i+len("FATAL:"):])
		} else if i := strings.Index(line, "PANIC:"); i >= 0 {
			fatal = strings.TrimSpace(line[i+len("PANIC:"):])
		}
		if i := strings.Index(line, "cellar: "); i >= 0 {
			cellarMsg = strings.TrimSpace(line[i:])
		}
	})
	e := &StartError{Msg: what, Log: logTail(logFile)}
	if fatal != "" {
		e.Msg += ": " + fatal
	} else if exit != nil {
		e.Msg += fmt.Sprintf(" (%v)", exit)
	}
	if missingRe.MatchString(fatal) || (exit == nil && fatal == "") {
		if seg := nextSegment(o, last); seg != "" {
			e.Segment = seg
			e.Msg += fmt.Sprintf(": WAL segment %s could not be fetched from the repository", seg)
			if last != "" {
				e.Msg += " (the last restored was " + last + ")"
			}
		}
	}
	if cellarMsg != "" {
		e.Msg += "; restore_command said: " + cellarMsg
	}
	return e
}

// missedWAL fails a recovery to the end of WAL that ended before the last
// segment archived on its timeline: in a disaster, the transactions after
// it would be lost.
func missedWAL(o StartOptions, res StartResult, logFile string) error {
	if o.LastWAL == "" || !res.Promoted || res.LastRestored == "" {
		return nil
	}
	last, err1 := pg.ParseWALName(res.LastRestored)
	want, err2 := pg.ParseWALName(o.LastWAL)
	if err1 != nil || err2 != nil || pg.CompareWAL(last, want) >= 0 {
		return nil
	}
	seg := nextSegment(o, res.LastRestored)
	return &StartError{Segment: seg, Log: logTail(logFile), Msg: fmt.Sprintf(
		"recovery ended at %s, but the repository holds WAL up to %s: WAL segment %s could not be fetched, and a restore would lose what came after it",
		res.LSN, o.LastWAL, seg)}
}

// markHistory marks the history file of a promoted server's new timeline
// ready for archiving, which archive_mode = off did not do: started for
// real, the server archives it.
func markHistory(o StartOptions, timeline uint32) {
	name := fmt.Sprintf("%08X.history", timeline)
	if _, err := os.Stat(filepath.Join(o.DataDir, "pg_wal", name)); err != nil {
		return
	}
	p := filepath.Join(o.DataDir, "pg_wal", "archive_status", name+".ready")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		o.Log.Warn("could not mark the new timeline's history file for archiving", "file", p, "error", err)
		return
	}
	if o.Owner != nil {
		_ = os.Chown(p, o.Owner.UID, o.Owner.GID)
	}
}

// logTail is the last lines of the server's log.
func logTail(logFile string) string {
	var lines []string
	scanLog(logFile, func(line string) {
		lines = append(lines, line)
		if len(lines) > 20 {
			lines = lines[1:]
		}
	})
	return strings.Join(lines, "\n")
}
