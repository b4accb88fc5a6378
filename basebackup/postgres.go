package basebackup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// Errors of a backup's preconditions; the errors returned wrap them.
var (
	ErrUnsupportedVersion = errors.New("is not supported")
	ErrNoPrivileges       = errors.New("may not run backups")
	ErrNotDataDirectory   = errors.New("is not a PostgreSQL data directory")
	ErrWrongDataDirectory = errors.New("is not the data directory of the server")
	// ErrWALNotArchived: the WAL the backup needs did not reach the
	// repository in time.
	ErrWALNotArchived = errors.New("was not archived")
)

// MinVersion is the oldest PostgreSQL Cellar backs up: the first with the
// non-exclusive backup API taking the arguments Cellar passes, and with
// recovery configured in postgresql.conf.
const MinVersion = 120000

// Server is what a backup needs to know about the running PostgreSQL.
type Server struct {
	Version          int
	VersionString    string
	DataDirectory    string
	Standby          bool
	SystemIdentifier uint64
	WALSegmentSize   int64
	Tablespaces      []catalog.Tablespace
}

// Inspect reads the facts a backup depends on from the server and checks
// them: a supported version, the privileges to run a backup, and pgdata
// being the server's data directory (when pgdata is not empty).
func Inspect(ctx context.Context, conn *pgx.Conn, pgdata string) (*Server, error) {
	return inspect(ctx, conn, pgdata, true)
}

// inspect is Inspect; the backup functions' privileges are checked only
// with backupFunctions (a stream backup needs the REPLICATION attribute
// instead, which the replication connection checks).
func inspect(ctx context.Context, conn *pgx.Conn, pgdata string, backupFunctions bool) (*Server, error) {
	var s Server
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version'),
		pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).
		Scan(&s.Version, &s.VersionString, &s.Standby, &s.SystemIdentifier, &s.WALSegmentSize)
	if err != nil {
		return nil, fmt.Errorf("reading the server's version and identity: %w", explain(err))
	}
	if err := CheckVersion(s.Version, s.VersionString); err != nil {
		return nil, err
	}
	if backupFunctions {
		if err := CheckPrivileges(ctx, conn, s.Version); err != nil {
			return nil, err
		}
	}
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&s.DataDirectory); err != nil {
		return nil, fmt.Errorf("reading data_directory: %w", explain(err))
	}
	if pgdata != "" {
		if err := CheckDataDirectory(pgdata, s.DataDirectory); err != nil {
			return nil, err
		}
	}
	rows, err := conn.Query(ctx, `SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace
		WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid`)
	if err != nil {
		return nil, fmt.Errorf("listing tablespaces: %w", explain(err))
	}
	for rows.Next() {
		var t catalog.Tablespace
		if err := rows.Scan(&t.OID, &t.Name, &t.Location); err != nil {
			rows.Close()
			return nil, err
		}
		s.Tablespaces = append(s.Tablespaces, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing tablespaces: %w", explain(err))
	}
	return &s, nil
}

// CheckVersion checks that Cellar backs up this version of PostgreSQL.
func CheckVersion(num int, text string) error {
	if num < MinVersion {
		return fmt.Errorf("PostgreSQL %s %w: Cellar backs up PostgreSQL 12 and later", text, ErrUnsupportedVersion)
	}
	return nil
}

// CheckPrivileges checks that the user may run the backup functions:
// a superuser, or a user granted EXECUTE on them.
func CheckPrivileges(ctx context.Context, conn *pgx.Conn, version int) error {
	start, stop := "pg_backup_start(text, boolean)", "pg_backup_stop(boolean)"
	if version < 150000 {
		start, stop = "pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)"
	}
	var user string
	var super, canStart, canStop bool
	err := conn.QueryRow(ctx, `SELECT current_user, usesuper, has_function_privilege($1, 'EXECUTE'), has_function_privilege($2, 'EXECUTE')
		FROM pg_user WHERE usename = current_user`, start, stop).Scan(&user, &super, &canStart, &canStop)
	if err != nil {
		return fmt.Errorf("checking the backup privileges: %w", explain(err))
	}
	if super || (canStart && canStop) {
		return nil
	}
	return fmt.Errorf("the PostgreSQL user %s %w: connect as a superuser, or GRANT EXECUTE ON FUNCTION %s, %s TO %s (and pg_read_all_settings)",
		user, ErrNoPrivileges, start, stop, user)
}

// CheckDataDirectory checks that pgdata is the data directory the server
// runs on, dataDirectory.
func CheckDataDirectory(pgdata, dataDirectory string) error {
	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); err != nil {
		return fmt.Errorf("pgdata %s %w (no readable PG_VERSION): set pgdata to the server's data directory, %s", pgdata, ErrNotDataDirectory, dataDirectory)
	}
	a, err1 := filepath.EvalSymlinks(pgdata)
	b, err2 := filepath.EvalSymlinks(dataDirectory)
	if err1 != nil || err2 != nil || a != b {
		ia, erra := os.Stat(pgdata)
		ib, errb := os.Stat(dataDirectory)
		if erra != nil || errb != nil || !os.SameFile(ia, ib) {
			return fmt.Errorf("pgdata %s %w, which runs on %s: set pgdata = %s", pgdata, ErrWrongDataDirectory, dataDirectory, dataDirectory)
		}
	}
	return nil
}

// started is what the start of a backup returns.
type started struct {
	LSN pg.LSN
}

// startBackup starts a non-exclusive backup on conn, which must stay open
// until stopBackup.
func startBackup(ctx context.Context, conn *pgx.Conn, version int, label string, fast bool) (started, error) {
	q := "SELECT pg_backup_start($1, $2)::text"
	if version < 150000 {
		q = "SELECT pg_start_backup($1, $2, false)::text"
	}
	var lsn string
	if err := conn.QueryRow(ctx, q, label, fast).Scan(&lsn); err != nil {
		return started{}, fmt.Errorf("starting the backup: %w", explain(err))
	}
	l, err := pg.ParseLSN(lsn)
	return started{LSN: l}, err
}

// stopped is what the end of a backup returns.
type stopped struct {
	LSN           pg.LSN
	Label         string
	TablespaceMap string
}

// stopBackup ends the backup. It does not wait for the WAL to be
// archived: Cellar waits for it in the repository.
func stopBackup(ctx context.Context, conn *pgx.Conn, version int) (stopped, error) {
	q := "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
	if version < 150000 {
		q = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
	}
	var s stopped
	var lsn string
	var spc *string
	if err := conn.QueryRow(ctx, q).Scan(&lsn, &s.Label, &spc); err != nil {
		return s, fmt.Errorf("stopping the backup: %w", explain(err))
	}
	if spc != nil {
		s.TablespaceMap = *spc
	}
	l, err := pg.ParseLSN(lsn)
	s.LSN = l
	return s, err
}

// labelInfo reads the start WAL file and timeline from a backup_label.
func labelInfo(label string) (startWAL string, timeline uint32, err error) {
	for line := range strings.SplitSeq(label, "\n") {
		if rest, ok := strings.CutPrefix(line, "START WAL LOCATION: "); ok {
			if i := strings.Index(rest, "(file "); i >= 0 {
				startWAL = strings.TrimSuffix(strings.TrimSpace(rest[i+6:]), ")")
			}
		}
		if rest, ok := strings.CutPrefix(line, "START TIMELINE: "); ok {
			n, perr := strconv.ParseUint(strings.TrimSpace(rest), 10, 32)
			if perr == nil {
				timeline = uint32(n)
			}
		}
	}
	if _, perr := pg.ParseWALName(startWAL); perr != nil || timeline == 0 {
		return "", 0, fmt.Errorf("the backup_label PostgreSQL returned has no start WAL file or timeline:\n%s", label)
	}
	return startWAL, timeline, nil
}

// explain adds PostgreSQL's hint to its error, if any.
func explain(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Hint != "" {
		return fmt.Errorf("%w (%s)", err, pe.Hint)
	}
	return err
}
