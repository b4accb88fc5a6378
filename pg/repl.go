package pg

// The physical replication protocol over a pgconn connection: the
// commands receive-wal and the stream backup method need
// (IDENTIFY_SYSTEM, SHOW, READ_REPLICATION_SLOT, slot creation,
// TIMELINE_HISTORY, START_REPLICATION) and the CopyBoth messages of a WAL
// stream. pgconn does the wire protocol; this file only gives the
// replication messages their meaning.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ReplConn is a physical replication connection. Receive is for one goroutine;
// SendStatus may be called from another at the same time.
type ReplConn struct {
	pg  *pgconn.PgConn
	wmu sync.Mutex // serialises writes to the connection
}

// Dial opens a physical replication connection with conninfo (a libpq
// connection string), naming itself appName unless conninfo sets
// application_name. Errors that have a known fix say it.
func DialReplication(ctx context.Context, conninfo, appName string) (*ReplConn, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("streaming_conninfo: %v", err)
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	cfg.RuntimeParams["replication"] = "true"
	if cfg.RuntimeParams["application_name"] == "" && appName != "" {
		cfg.RuntimeParams["application_name"] = appName
	}
	pg, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, explainConnect(err, cfg.User)
	}
	return &ReplConn{pg: pg}, nil
}

// explainConnect turns the refusals of a replication connection into the
// fix for each.
func explainConnect(err error, user string) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return fmt.Errorf("cannot open a replication connection: %w", err)
	}
	msg := pe.Message
	switch {
	case strings.Contains(msg, "superuser or replication role") || strings.Contains(msg, "permission denied to start WAL sender"):
		return fmt.Errorf("user %s may not stream WAL (%s): grant it with ALTER ROLE %s REPLICATION, or use a superuser in streaming_conninfo", user, msg, user)
	case strings.Contains(msg, "max_wal_senders"):
		return fmt.Errorf("the server accepts no replication connection (%s): set wal_level = replica and max_wal_senders above 0, then restart PostgreSQL", msg)
	case strings.Contains(msg, "pg_hba.conf") && strings.Contains(msg, "replication"):
		return fmt.Errorf("the server refuses the replication connection (%s): add a pg_hba.conf line for database \"replication\" and user %s, then reload PostgreSQL", msg, user)
	}
	return fmt.Errorf("cannot open a replication connection: %w", err)
}

// Close closes the connection.
func (c *ReplConn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.pg.Close(ctx)
}

// Interrupt ends a Receive in progress in another goroutine: it closes
// the network connection under it. Close still cleans up.
func (c *ReplConn) Interrupt() { _ = c.pg.Conn().Close() }

// exec runs one replication command and returns its rows as text.
func (c *ReplConn) exec(ctx context.Context, cmd string) ([][]string, error) {
	results, err := c.pg.Exec(ctx, cmd).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, r := range results {
		for _, row := range r.Rows {
			var out []string
			for _, v := range row {
				out = append(out, string(v))
			}
			rows = append(rows, out)
		}
	}
	return rows, nil
}

// System is what IDENTIFY_SYSTEM reports.
type System struct {
	SystemIdentifier uint64
	Timeline         uint32
	Flush            LSN // the server's current WAL flush position
}

// IdentifySystem runs IDENTIFY_SYSTEM.
func (c *ReplConn) IdentifySystem(ctx context.Context) (System, error) {
	rows, err := c.exec(ctx, "IDENTIFY_SYSTEM")
	if err != nil {
		return System{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) < 3 {
		return System{}, fmt.Errorf("IDENTIFY_SYSTEM: unexpected answer %v", rows)
	}
	var s System
	var err1, err2, err3 error
	s.SystemIdentifier, err1 = strconv.ParseUint(rows[0][0], 10, 64)
	tl, err2 := strconv.ParseUint(rows[0][1], 10, 32)
	s.Timeline = uint32(tl)
	s.Flush, err3 = ParseLSN(rows[0][2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return System{}, fmt.Errorf("IDENTIFY_SYSTEM: %v", err)
	}
	return s, nil
}

// Show returns a server setting (SHOW works on a replication connection).
func (c *ReplConn) Show(ctx context.Context, name string) (string, error) {
	rows, err := c.exec(ctx, "SHOW "+name)
	if err != nil {
		return "", fmt.Errorf("SHOW %s: %w", name, err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected answer %v", name, rows)
	}
	return rows[0][0], nil
}

// SegmentSize is the server's wal_segment_size in bytes.
func (c *ReplConn) SegmentSize(ctx context.Context) (int64, error) {
	v, err := c.Show(ctx, "wal_segment_size")
	if err != nil {
		return 0, err
	}
	return ParseSize(v)
}

// ParseSize reads a size as SHOW prints it: "16MB", "1GB", "8192kB".
func ParseSize(v string) (int64, error) {
	i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := v, ""
	if i >= 0 {
		num, unit = v[:i], strings.TrimSpace(v[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", v)
	}
	mult := map[string]int64{"": 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%q is not a size", v)
	}
	return n * mult, nil
}

// Slot is a physical replication slot as READ_REPLICATION_SLOT reports it.
type Slot struct {
	Exists     bool
	Physical   bool
	RestartLSN LSN // 0 when the slot has reserved no WAL yet
	RestartTLI uint32
}

// ReadSlot runs READ_REPLICATION_SLOT (PostgreSQL 15 and later).
func (c *ReplConn) ReadSlot(ctx context.Context, name string) (Slot, error) {
	rows, err := c.exec(ctx, "READ_REPLICATION_SLOT "+quoteIdent(name))
	if err != nil {
		return Slot{}, fmt.Errorf("READ_REPLICATION_SLOT %s: %w", name, err)
	}
	if len(rows) != 1 || len(rows[0]) != 3 || rows[0][0] == "" {
		return Slot{}, nil
	}
	s := Slot{Exists: true, Physical: rows[0][0] == "physical"}
	if rows[0][1] != "" {
		if s.RestartLSN, err = ParseLSN(rows[0][1]); err != nil {
			return Slot{}, err
		}
	}
	if tl, err := strconv.ParseUint(rows[0][2], 10, 32); err == nil {
		s.RestartTLI = uint32(tl)
	}
	return s, nil
}

// CreateSlot creates a physical slot that reserves WAL from now on.
func (c *ReplConn) CreateSlot(ctx context.Context, name string) error {
	_, err := c.exec(ctx, "CREATE_REPLICATION_SLOT "+quoteIdent(name)+" PHYSICAL RESERVE_WAL")
	return err
}

// DropSlot drops a slot.
func (c *ReplConn) DropSlot(ctx context.Context, name string) error {
	_, err := c.exec(ctx, "DROP_REPLICATION_SLOT "+quoteIdent(name))
	return err
}

// TimelineHistory returns the history file of a timeline: its name and
// content.
func (c *ReplConn) TimelineHistory(ctx context.Context, tl uint32) (string, []byte, error) {
	rows, err := c.exec(ctx, fmt.Sprintf("TIMELINE_HISTORY %d", tl))
	if err != nil {
		return "", nil, fmt.Errorf("TIMELINE_HISTORY %d: %w", tl, err)
	}
	if len(rows) != 1 || len(rows[0]) != 2 {
		return "", nil, fmt.Errorf("TIMELINE_HISTORY %d: unexpected answer", tl)
	}
	return rows[0][0], []byte(rows[0][1]), nil
}

// HistoryEntry is one line of a timeline history file: timeline Parent
// ended at Switch.
type HistoryEntry struct {
	Parent uint32
	Switch LSN
}

// ParseHistory reads a timeline history file's entries.
func ParseHistory(content []byte) []HistoryEntry {
	var out []HistoryEntry
	for _, line := range strings.Split(string(content), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		tl, err1 := strconv.ParseUint(f[0], 10, 32)
		lsn, err2 := ParseLSN(f[1])
		if err1 == nil && err2 == nil {
			out = append(out, HistoryEntry{Parent: uint32(tl), Switch: lsn})
		}
	}
	return out
}

// TimelineAt is the timeline of a history (of timeline current) that holds
// the WAL at pos: the first parent that ended after pos, else current.
func TimelineAt(history []HistoryEntry, current uint32, pos LSN) uint32 {
	for _, e := range history {
		if pos < e.Switch {
			return e.Parent
		}
	}
	return current
}

// StartReplication starts streaming WAL from pos on timeline tl through
// slot (none when empty). It returns once the server is streaming.
func (c *ReplConn) StartReplication(ctx context.Context, slot string, pos LSN, tl uint32) error {
	cmd := "START_REPLICATION"
	if slot != "" {
		cmd += " SLOT " + quoteIdent(slot)
	}
	cmd += fmt.Sprintf(" PHYSICAL %s TIMELINE %d", pos, tl)
	c.wmu.Lock()
	c.pg.Frontend().Send(&pgproto3.Query{String: cmd})
	err := c.pg.Frontend().Flush()
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	for {
		msg, err := c.pg.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			pe := pgconn.ErrorResponseToPgError(m)
			// The error ends the command: the server sends ReadyForQuery.
			c.drain(ctx)
			return pe
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("START_REPLICATION: unexpected message %T", msg)
		}
	}
}

// drain reads up to ReadyForQuery.
func (c *ReplConn) drain(ctx context.Context) {
	for {
		msg, err := c.pg.ReceiveMessage(ctx)
		if err != nil {
			return
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return
		}
	}
}

// Message is one message of a WAL stream.
type Message struct {
	// Data is WAL that starts at Start (an XLogData message).
	Start LSN
	Data  []byte
	// ServerEnd is the end of WAL on the server.
	ServerEnd LSN
	// ReplyRequested is set by a keepalive that wants a status update now.
	ReplyRequested bool
	// EndOfTimeline is set when the server ended the stream because the
	// timeline ended: NextTimeline starts at NextStart. The connection is
	// then ready for another command.
	EndOfTimeline bool
	NextTimeline  uint32
	NextStart     LSN
}

// Receive waits for the next message of the stream. Data is valid until
// the next call.
func (c *ReplConn) Receive(ctx context.Context) (Message, error) {
	for {
		msg, err := c.pg.ReceiveMessage(ctx)
		if err != nil {
			return Message{}, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			d := m.Data
			switch d[0] {
			case 'w':
				if len(d) < 25 {
					return Message{}, errors.New("short XLogData message")
				}
				return Message{Start: LSN(binary.BigEndian.Uint64(d[1:])), ServerEnd: LSN(binary.BigEndian.Uint64(d[9:])), Data: d[25:]}, nil
			case 'k':
				if len(d) < 18 {
					return Message{}, errors.New("short keepalive message")
				}
				return Message{ServerEnd: LSN(binary.BigEndian.Uint64(d[1:])), ReplyRequested: d[17] != 0}, nil
			}
		case *pgproto3.CopyDone:
			return c.endOfTimeline(ctx)
		case *pgproto3.ErrorResponse:
			return Message{}, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return Message{}, fmt.Errorf("unexpected message %T in the WAL stream", msg)
		}
	}
}

// endOfTimeline answers the server's CopyDone and reads the next timeline
// it names, up to ReadyForQuery.
func (c *ReplConn) endOfTimeline(ctx context.Context) (Message, error) {
	done, err := (&pgproto3.CopyDone{}).Encode(nil)
	if err == nil {
		err = c.send(done)
	}
	if err != nil {
		return Message{}, err
	}
	out := Message{EndOfTimeline: true}
	for {
		msg, err := c.pg.ReceiveMessage(ctx)
		if err != nil {
			return Message{}, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) == 2 {
				tl, err1 := strconv.ParseUint(string(m.Values[0]), 10, 32)
				pos, err2 := ParseLSN(string(m.Values[1]))
				if err := errors.Join(err1, err2); err != nil {
					return Message{}, fmt.Errorf("the next timeline the server named: %v", err)
				}
				out.NextTimeline, out.NextStart = uint32(tl), pos
			}
		case *pgproto3.ErrorResponse:
			return Message{}, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			if out.NextTimeline == 0 {
				return Message{}, errors.New("the server ended the WAL stream without naming a next timeline")
			}
			return out, nil
		}
	}
}

// pgEpoch is PostgreSQL's epoch for timestamps in the protocol.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// SendStatus sends a standby status update: WAL up to write is received,
// up to flush is durable (PostgreSQL's synchronous commit waits for
// flush). It may run while another goroutine is in Receive.
func (c *ReplConn) SendStatus(write, flush LSN, replyRequested bool) error {
	var b [34]byte
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], uint64(write))
	binary.BigEndian.PutUint64(b[9:], uint64(flush))
	binary.BigEndian.PutUint64(b[17:], 0) // nothing is applied
	binary.BigEndian.PutUint64(b[25:], uint64(time.Since(pgEpoch).Microseconds()))
	if replyRequested {
		b[33] = 1
	}
	msg, err := (&pgproto3.CopyData{Data: b[:]}).Encode(nil)
	if err != nil {
		return err
	}
	return c.send(msg)
}

// send writes an encoded message straight to the connection, so that a
// status update need not wait for Receive.
func (c *ReplConn) send(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, werr := c.pg.Conn().Write(msg)
	return werr
}

// quoteIdent quotes a slot name for a replication command.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
