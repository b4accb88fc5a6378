package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/health"
)

func statusCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "one screen of a server's state: PostgreSQL and archiving, streaming, backups, the recoverable range, the last drill and the repository",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("status takes exactly one SERVER argument")
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			s, err := st.readStatus(c.Context, srv)
			if st.format == "json" {
				text, jerr := st.scrubbedJSON(s)
				if jerr != nil {
					return jerr
				}
				fmt.Fprintln(st.stdout, text)
			} else {
				var b bytes.Buffer
				printStatus(&b, s, st.now())
				fmt.Fprint(st.stdout, st.scrub(b.String()))
			}
			if err != nil {
				// What could be read is shown; the repository could not be.
				return fmt.Errorf("server %s: reading the repository %s: %w", srv.Name, s.Repository.URL, err)
			}
			return nil
		},
	}
}

// readStatus reads a server's status (see health.ReadStatus), reaching
// PostgreSQL with conninfo or else streaming_conninfo, as
// replication-status does.
func (st *state) readStatus(ctx context.Context, srv *config.Server) (health.Status, error) {
	o := st.healthOptions(srv)
	if s, err := sqlConninfo(srv); err == nil {
		o.SQL = true
		o.Connect = func(ctx context.Context) (*pgx.Conn, error) { return connect(ctx, s) }
	}
	s, err := health.ReadStatus(ctx, o)
	s.Description, s.Active = srv.Description, srv.Active
	s.Repository.URL = srv.Show("repository")
	return s, err
}

// scrubbedJSON is v as indented JSON with every known secret masked, in
// the clear and as JSON escapes it.
func (st *state) scrubbedJSON(v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	text := st.scrub(string(b))
	for _, s := range st.secrets {
		if q, err := json.Marshal(s); err == nil && len(s) >= 4 {
			text = strings.ReplaceAll(text, strings.Trim(string(q), `"`), "***")
		}
	}
	return text, nil
}

// statusTime is how status prints a time: local, in a form restore's
// --target-time takes.
func statusTime(t time.Time) string { return t.Local().Format(time.RFC3339) }

// ago says how long before now t was, to the unit that matters.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// printStatus renders a status as Barman's status does: "Server NAME:"
// and a "Key: value" line for each item.
func printStatus(w io.Writer, s health.Status, now time.Time) {
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "\t%s: %s\n", k, fmt.Sprintf(format, args...)) }
	fmt.Fprintf(w, "Server %s:\n", s.Server)
	if s.Description != "" {
		line("Description", "%s", s.Description)
	}
	line("Active", "%s", map[bool]string{true: "yes", false: "no"}[s.Active])
	printPostgresStatus(line, s.PostgreSQL, now)
	printStreamingStatus(line, s.Streaming)

	b := s.Backups
	if !s.Repository.Readable {
		line("Repository", "%s - unreadable: %s", s.Repository.URL, oneLine(s.Repository.Error))
		return
	}
	backups := fmt.Sprintf("%d", b.Done)
	if b.Failed > 0 || b.Running > 0 {
		backups += fmt.Sprintf(" (%d failed, %d running)", b.Failed, b.Running)
	}
	line("No. of available backups", "%s", backups)
	if b.First == nil {
		line("First available backup", "none (run cellar backup %s)", s.Server)
	} else {
		line("First available backup", "%s (%s, ended %s)", b.First.ID, b.First.Type, statusTime(b.First.EndTime))
		line("Last available backup", "%s (%s, ended %s, %s)", b.Last.ID, b.Last.Type, statusTime(b.Last.EndTime), ago(now, b.Last.EndTime))
	}
	if r := s.Recoverable; r.First != nil {
		line("First recoverable point", "%s (LSN %s, from backup %s)", statusTime(r.First.Time), r.First.LSN, r.First.Backup)
		line("Last recoverable point", "%s (LSN %s, end of WAL file %s)", statusTime(r.Last.Time), r.Last.LSN, r.Last.WAL)
	} else {
		line("Recoverable points", "none: there is no finished backup")
	}
	if s.WAL.Files == 0 {
		line("Archived WAL", "none")
	} else {
		line("Archived WAL", "%d files, newest segment %s (stored %s)", s.WAL.Files, orDash(s.WAL.LastSegment), statusTime(s.WAL.LastTime))
	}
	printDrillStatus(line, s)
	line("Repository", "%s", s.Repository.URL)
	line("Stored bytes", "%s (backups %s, WAL %s)", humanSize(s.Repository.StoredBytes), humanSize(b.StoredBytes), humanSize(s.WAL.StoredBytes))
	line("Encryption", "%s", s.Repository.Encryption)
}

func printPostgresStatus(line func(k, format string, args ...any), p *health.PostgresStatus, now time.Time) {
	if p == nil {
		line("PostgreSQL", "not configured (set conninfo to see its state)")
		return
	}
	if p.State == health.StateUnreachable {
		line("Cluster state", "unreachable (%s)", oneLine(p.Error))
		return
	}
	line("PostgreSQL version", "%s", orDash(p.Version))
	line("Cluster state", "%s", p.State)
	if p.Error != "" {
		line("Error reading its state", "%s", oneLine(p.Error))
	}
	line("Data directory", "%s", orDash(p.DataDirectory))
	if p.CurrentWAL != "" {
		line("Current WAL", "%s (LSN %s)", p.CurrentWAL, p.CurrentLSN)
	} else {
		line("Current LSN", "%s", orDash(p.CurrentLSN))
	}
	line("archive_mode", "%s", orDash(p.ArchiveMode))
	line("archive_command", "%s", orDash(p.ArchiveCommand))
	a := p.Archiver
	if a == nil {
		return
	}
	if a.LastArchivedWAL == "" {
		line("Last archived WAL", "none since %s", orDash(statusTimeOrEmpty(a.StatsReset)))
	} else {
		line("Last archived WAL", "%s, at %s (%s)", a.LastArchivedWAL, statusTime(a.LastArchivedTime), ago(now, a.LastArchivedTime))
	}
	if a.FailedCount == 0 {
		line("Failures of WAL archiver", "0")
	} else {
		state := ""
		if a.Failing {
			state = ", FAILING NOW"
		}
		line("Failures of WAL archiver", "%d (last %s at %s%s)", a.FailedCount, a.LastFailedWAL, statusTime(a.LastFailedTime), state)
	}
	if !a.StatsReset.IsZero() {
		line("WAL archiving rate", "%.2f/hour (since %s)", a.RatePerHour, statusTime(a.StatsReset))
	}
}

func statusTimeOrEmpty(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return statusTime(t)
}

func printStreamingStatus(line func(k, format string, args ...any), ss *health.StreamingStatus) {
	if ss == nil {
		line("Streaming", "off")
		return
	}
	running := "not running on this host"
	if ss.ReceiveWALRunning {
		running = "running"
	}
	if !ss.StreamingArchiver {
		running += " (streaming_archiver = off)"
	}
	line("receive-wal", "%s", running)
	switch sl := ss.Slot; {
	case sl == nil:
		line("Replication slot", "unknown (%s)", oneLine(ss.SlotError))
	case !sl.Exists:
		line("Replication slot", "%s does not exist", sl.Name)
	default:
		state := "inactive"
		if sl.Active {
			state = "active"
		}
		line("Replication slot", "%s %s, %s behind, restart LSN %s", sl.Name, state, humanSize(sl.LagBytes), orDash(sl.RestartLSN))
	}
}

func printDrillStatus(line func(k, format string, args ...any), s health.Status) {
	d := s.Drills
	if d.Error != "" {
		line("Last drill", "unknown (%s)", oneLine(d.Error))
		return
	}
	if d.Last == nil {
		extra := ""
		if d.Running > 0 {
			extra = ", one running"
		}
		line("Last drill", "none yet%s (run cellar drill %s)", extra, s.Server)
		return
	}
	line("Last drill", "%s", drillLine(d.Last))
	switch {
	case d.LastOK == nil:
		line("Last successful drill", "none")
	case d.LastOK.ID != d.Last.ID:
		line("Last successful drill", "%s", drillLine(d.LastOK))
	}
}

// drillLine is one drill in short: id, result, backup, target, the point
// reached, how long it took, when it ended, and why it failed.
func drillLine(d *catalog.Drill) string {
	reached := ""
	if d.ReachedLSN != "" {
		reached = ", reached " + d.ReachedLSN
	}
	out := fmt.Sprintf("%s %s (backup %s, target %s%s, total %s, ended %s)", d.ID, d.Result, orDash(d.Backup), orDash(d.Target),
		reached, secs(d.TotalSeconds), orDash(statusTimeOrEmpty(d.EndTime)))
	if d.Result == catalog.DrillFailed && d.Error != "" {
		out += ": " + oneLine(d.Error)
	}
	return out
}
