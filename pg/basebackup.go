package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// BackupTablespace is one tablespace that BASE_BACKUP streams.
type BackupTablespace struct {
	OID      uint32
	Location string
}

// BaseBackup is a BASE_BACKUP in progress (PostgreSQL 15's protocol): the
// archives of the data directory and the tablespaces, one after another,
// then PostgreSQL's backup_manifest.
type BaseBackup struct {
	c           *ReplConn
	ctx         context.Context
	Start       LSN
	Timeline    uint32
	Tablespaces []BackupTablespace

	pending []byte // the rest of the current data message
	next    []byte // a new-archive or manifest message read ahead
	copying bool   // in the copy stream (until CopyDone)
	started bool   // an archive or the manifest is current
}

// Archive is one stream of a base backup: a tar archive of the data
// directory (Location "") or of a tablespace, or the backup manifest.
type Archive struct {
	Manifest bool
	Name     string
	Location string
}

// StartBaseBackup starts BASE_BACKUP with a label, a fast or spread
// checkpoint, no WAL, a tablespace map, and a backup manifest with CRC-32C
// checksums (the cheapest for the server; Cellar computes SHA-256
// itself). It returns once the start position and the tablespaces are
// known; the archives are read with NextArchive and Read.
func (c *ReplConn) StartBaseBackup(ctx context.Context, label string, fast bool) (*BaseBackup, error) {
	checkpoint := "spread"
	if fast {
		checkpoint = "fast"
	}
	cmd := fmt.Sprintf("BASE_BACKUP (LABEL %s, CHECKPOINT '%s', WAL false, WAIT false, TABLESPACE_MAP, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')",
		quoteLiteral(label), checkpoint)
	c.wmu.Lock()
	c.pg.Frontend().Send(&pgproto3.Query{String: cmd})
	err := c.pg.Frontend().Flush()
	c.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	b := &BaseBackup{c: c, ctx: ctx}
	set := 0 // result sets read
	for {
		msg, err := c.pg.ReceiveMessage(ctx)
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			switch set {
			case 0:
				if len(m.Values) < 2 {
					return nil, errors.New("BASE_BACKUP: short start row")
				}
				if b.Start, err = ParseLSN(string(m.Values[0])); err != nil {
					return nil, err
				}
				tl, err := strconv.ParseUint(string(m.Values[1]), 10, 32)
				if err != nil {
					return nil, fmt.Errorf("BASE_BACKUP: timeline %q", m.Values[1])
				}
				b.Timeline = uint32(tl)
			case 1:
				if len(m.Values) >= 2 && m.Values[0] != nil {
					oid, err := strconv.ParseUint(string(m.Values[0]), 10, 32)
					if err != nil {
						return nil, fmt.Errorf("BASE_BACKUP: tablespace oid %q", m.Values[0])
					}
					b.Tablespaces = append(b.Tablespaces, BackupTablespace{OID: uint32(oid), Location: string(m.Values[1])})
				}
			}
		case *pgproto3.CommandComplete:
			set++
		case *pgproto3.CopyOutResponse:
			b.copying = true
			return b, nil
		case *pgproto3.ErrorResponse:
			pe := pgconn.ErrorResponseToPgError(m)
			c.drain(ctx)
			return nil, fmt.Errorf("BASE_BACKUP: %w", pe)
		case *pgproto3.RowDescription, *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return nil, fmt.Errorf("BASE_BACKUP: unexpected message %T", msg)
		}
	}
}

// receive reads the next message of the copy stream: data goes to
// pending, a new archive or the manifest to next; it returns false at
// the end of the copy stream.
func (b *BaseBackup) receive() (bool, error) {
	for b.copying {
		msg, err := b.c.pg.ReceiveMessage(b.ctx)
		if err != nil {
			return false, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case 'd':
				b.pending = m.Data[1:]
				return true, nil
			case 'n', 'm':
				b.next = bytes.Clone(m.Data)
				return true, nil
			}
			// 'p', progress: not asked for.
		case *pgproto3.CopyDone:
			b.copying = false
		case *pgproto3.ErrorResponse:
			return false, fmt.Errorf("BASE_BACKUP: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return false, fmt.Errorf("BASE_BACKUP: unexpected message %T in the copy stream", msg)
		}
	}
	return false, nil
}

// NextArchive moves to the next archive (what is left of the current one
// is skipped) and returns it; io.EOF after the last.
func (b *BaseBackup) NextArchive() (Archive, error) {
	for b.next == nil {
		b.pending = nil
		more, err := b.receive()
		if err != nil {
			return Archive{}, err
		}
		if !more {
			return Archive{}, io.EOF
		}
	}
	msg := b.next
	b.next, b.pending, b.started = nil, nil, true
	if msg[0] == 'm' {
		return Archive{Manifest: true, Name: "backup_manifest"}, nil
	}
	f := bytes.SplitN(msg[1:], []byte{0}, 3)
	if len(f) < 2 {
		return Archive{}, errors.New("BASE_BACKUP: bad new-archive message")
	}
	return Archive{Name: string(f[0]), Location: string(f[1])}, nil
}

// Read reads the current archive; io.EOF at its end.
func (b *BaseBackup) Read(p []byte) (int, error) {
	if !b.started {
		return 0, errors.New("BASE_BACKUP: Read before NextArchive")
	}
	for len(b.pending) == 0 {
		if b.next != nil {
			return 0, io.EOF
		}
		more, err := b.receive()
		if err != nil {
			return 0, err
		}
		if !more || b.next != nil {
			return 0, io.EOF
		}
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	return n, nil
}

// Finish reads the end of the backup, after the last archive: its end
// position and timeline.
func (b *BaseBackup) Finish() (LSN, uint32, error) {
	for b.copying {
		b.pending, b.next = nil, nil
		if _, err := b.receive(); err != nil {
			return 0, 0, err
		}
	}
	var end LSN
	var tl uint32
	for {
		msg, err := b.c.pg.ReceiveMessage(b.ctx)
		if err != nil {
			return 0, 0, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) >= 2 {
				if end, err = ParseLSN(string(m.Values[0])); err != nil {
					return 0, 0, err
				}
				t, err := strconv.ParseUint(string(m.Values[1]), 10, 32)
				if err != nil {
					return 0, 0, fmt.Errorf("BASE_BACKUP: end timeline %q", m.Values[1])
				}
				tl = uint32(t)
			}
		case *pgproto3.ErrorResponse:
			return 0, 0, fmt.Errorf("BASE_BACKUP: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.ReadyForQuery:
			if end == 0 {
				return 0, 0, errors.New("BASE_BACKUP ended without its end position")
			}
			return end, tl, nil
		}
	}
}

// quoteLiteral quotes a string for a replication command.
func quoteLiteral(s string) string {
	return "'" + string(bytes.ReplaceAll([]byte(s), []byte("'"), []byte("''"))) + "'"
}
