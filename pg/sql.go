package pg

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// The SQL that reads a server's state: how archiving goes, where WAL is,
// who streams from it. Each function takes an open connection; Connect
// opens one as Cellar does.

// ParseConninfo reads a libpq connection string for Connect. Its error may
// quote the string: redact it before it is shown.
func ParseConninfo(conninfo string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(conninfo)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	cfg.RuntimeParams["application_name"] = "cellar"
	return cfg, nil
}

// Connect opens a connection with cfg from ParseConninfo.
func Connect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, cfg)
}

// Archiver is pg_stat_archiver.
type Archiver struct {
	Archived, Failed int64
	// LastArchivedWAL and LastFailedWAL are "" when there was none, and
	// their times zero.
	LastArchivedWAL, LastFailedWAL   string
	LastArchivedTime, LastFailedTime time.Time
	// StatsReset is when the counts began.
	StatsReset time.Time
	// Failing is true when the last failure came after the last success.
	Failing bool
}

// ReadArchiver reads pg_stat_archiver.
func ReadArchiver(ctx context.Context, conn *pgx.Conn) (Archiver, error) {
	var a Archiver
	var lastArchived, lastFailed *string
	var lastTime, failedTime, reset *time.Time
	err := conn.QueryRow(ctx, `SELECT archived_count, failed_count, last_archived_wal, last_failed_wal, last_archived_time,
		last_failed_time, stats_reset, coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false)
		FROM pg_stat_archiver`).Scan(&a.Archived, &a.Failed, &lastArchived, &lastFailed, &lastTime, &failedTime, &reset, &a.Failing)
	a.LastArchivedWAL, a.LastFailedWAL = deref(lastArchived), deref(lastFailed)
	a.LastArchivedTime, a.LastFailedTime, a.StatsReset = deref(lastTime), deref(failedTime), deref(reset)
	return a, err
}

// deref is what p points to, or T's zero value for NULL.
func deref[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}

// InRecovery says whether the server is in recovery (a standby).
func InRecovery(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var in bool
	err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&in)
	return in, err
}

// CurrentWAL names the segment a primary writes at lsn (CurrentLSN).
// pg_walfile_name names the segment before for an LSN on a boundary (as
// right after a WAL switch): only its timeline is taken from it.
func CurrentWAL(ctx context.Context, conn *pgx.Conn, lsn string) (string, error) {
	var name string
	var segSize int64
	err := conn.QueryRow(ctx, `SELECT pg_walfile_name($1::pg_lsn), setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'`, lsn).Scan(&name, &segSize)
	if err != nil {
		return "", err
	}
	w, err := ParseWALName(name)
	if err != nil {
		return "", err
	}
	at, err := ParseLSN(lsn)
	if err != nil || segSize <= 0 {
		return name, err
	}
	return at.SegmentName(w.Timeline, segSize), nil
}

// SwitchWAL closes the current WAL segment and returns its file name.
func SwitchWAL(ctx context.Context, conn *pgx.Conn) (string, error) {
	var name string
	err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&name)
	return name, err
}

// currentLSN is where WAL ends on the server: written on a primary,
// received or replayed on a standby.
const currentLSN = `(CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END)`

// CurrentLSN returns where WAL ends on the server.
func CurrentLSN(ctx context.Context, conn *pgx.Conn) (string, error) {
	var lsn string
	err := conn.QueryRow(ctx, `SELECT `+currentLSN+`::text`).Scan(&lsn)
	return lsn, err
}

// ReplClient is one row of pg_stat_replication.
type ReplClient struct {
	PID         int       `json:"pid"`
	Application string    `json:"application_name"`
	User        string    `json:"user"`
	ClientAddr  string    `json:"client_addr"`
	State       string    `json:"state"`
	SyncState   string    `json:"sync_state"`
	SentLSN     string    `json:"sent_lsn"`
	WriteLSN    string    `json:"write_lsn"`
	FlushLSN    string    `json:"flush_lsn"`
	ReplayLSN   string    `json:"replay_lsn"`
	FlushLag    int64     `json:"flush_lag_bytes"`
	Started     time.Time `json:"backend_start"`
}

// ReplClients reads pg_stat_replication, with each client's flush lag
// behind the server's current position.
func ReplClients(ctx context.Context, conn *pgx.Conn) ([]ReplClient, error) {
	rows, err := conn.Query(ctx, `
WITH cur AS (SELECT `+currentLSN+` AS lsn)
SELECT pid, coalesce(application_name, ''), coalesce(usename::text, ''), coalesce(client_addr::text, 'local'),
       coalesce(state, ''), coalesce(sync_state, ''), coalesce(sent_lsn::text, ''), coalesce(write_lsn::text, ''),
       coalesce(flush_lsn::text, ''), coalesce(replay_lsn::text, ''),
       coalesce(pg_wal_lsn_diff((SELECT lsn FROM cur), flush_lsn), 0)::bigint, backend_start
FROM pg_stat_replication ORDER BY pid`)
	if err != nil {
		return nil, err
	}
	out := []ReplClient{}
	for rows.Next() {
		var c ReplClient
		if err := rows.Scan(&c.PID, &c.Application, &c.User, &c.ClientAddr, &c.State, &c.SyncState, &c.SentLSN, &c.WriteLSN, &c.FlushLSN, &c.ReplayLSN, &c.FlushLag, &c.Started); err != nil {
			return out, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// SlotState is a replication slot as pg_replication_slots shows it.
type SlotState struct {
	Name       string `json:"name"`
	Exists     bool   `json:"exists"`
	Active     bool   `json:"active"`
	RestartLSN string `json:"restart_lsn,omitempty"`
	LagBytes   int64  `json:"lag_bytes"`
	WALStatus  string `json:"wal_status,omitempty"`
}

// ReadSlotState reads the slot name, with its lag behind the position cur
// (CurrentLSN). A missing slot is no error: Exists says.
func ReadSlotState(ctx context.Context, conn *pgx.Conn, name, cur string) (SlotState, error) {
	s := SlotState{Name: name}
	err := conn.QueryRow(ctx, `SELECT active, coalesce(restart_lsn::text, ''), coalesce(pg_wal_lsn_diff($2::pg_lsn, restart_lsn), 0)::bigint, coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, name, cur).Scan(&s.Active, &s.RestartLSN, &s.LagBytes, &s.WALStatus)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return s, nil
	case err != nil:
		return s, err
	}
	s.Exists = true
	return s, nil
}

// Setting returns the current value of a server setting.
func Setting(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var v string
	err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	return v, err
}

// SystemIdentifier returns the cluster's system identifier.
func SystemIdentifier(ctx context.Context, conn *pgx.Conn) (uint64, error) {
	var id uint64
	err := conn.QueryRow(ctx, "SELECT system_identifier FROM pg_control_system()").Scan(&id)
	return id, err
}
