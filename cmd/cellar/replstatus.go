package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/wal"
)

type replStatus struct {
	Server     string          `json:"server"`
	CurrentLSN string          `json:"current_lsn"`
	Clients    []pg.ReplClient `json:"clients"`
	Slot       pg.SlotState    `json:"slot"`
	Repository struct {
		Timeline    uint32 `json:"timeline"`
		LastSegment string `json:"last_segment"`
		Partial     int    `json:"partial_segments"`
	} `json:"repository"`
	ReceiveWAL *lockfile.Holder `json:"receive_wal,omitempty"` // the process on this host, when one runs
}

// sqlConninfo is how replication-status reaches the server with SQL:
// conninfo, or else streaming_conninfo as an ordinary connection.
func sqlConninfo(srv *config.Server) (*config.Server, error) {
	if srv.Conninfo != "" {
		return srv, nil
	}
	if srv.StreamingConninfo == "" {
		return nil, usagef("server %s has neither conninfo nor streaming_conninfo: set one", srv.Name)
	}
	s := *srv
	s.Conninfo = srv.StreamingConninfo
	return &s, nil
}

// replicationStatus reads the streaming clients and the slot from the
// server and where the repository ends.
func (st *state) replicationStatus(ctx context.Context, srv *config.Server, store cloud.Storage) (replStatus, error) {
	out := replStatus{Server: srv.Name, Clients: []pg.ReplClient{}, Slot: pg.SlotState{Name: srv.SlotName}}
	s, err := sqlConninfo(srv)
	if err != nil {
		return out, err
	}
	conn, err := connect(ctx, s)
	if err != nil {
		return out, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if out.CurrentLSN, err = pg.CurrentLSN(ctx, conn); err != nil {
		return out, err
	}
	if out.Clients, err = pg.ReplClients(ctx, conn); err != nil {
		return out, err
	}
	if out.Slot, err = pg.ReadSlotState(ctx, conn, srv.SlotName, out.CurrentLSN); err != nil {
		return out, err
	}
	tls, err := wal.ListWAL(ctx, store, srv.Name)
	if err != nil {
		return out, err
	}
	if len(tls) > 0 {
		t := tls[len(tls)-1]
		out.Repository.Timeline, out.Repository.LastSegment, out.Repository.Partial = t.Timeline, t.Last, t.Partial
	}
	if h, ok := lockHolderOf(srv, "receive-wal"); ok {
		out.ReceiveWAL = h
	}
	return out, nil
}

func replicationStatusCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "replication-status",
		Usage:     "the streaming clients PostgreSQL reports, the replication slot and its lag, and where the repository ends",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 1, "replication-status takes exactly one SERVER argument", func(srv *config.Server, store cloud.Storage) error {
				ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
				defer cancel()
				s, err := st.replicationStatus(ctx, srv, store)
				if err != nil {
					return fmt.Errorf("server %s: %w", srv.Name, err)
				}
				if st.format == "json" {
					return st.printJSON(s)
				}
				w := st.stdout
				fmt.Fprintf(w, "Status of streaming clients for server '%s':\n", s.Server)
				fmt.Fprintf(w, "  Current LSN on the server: %s\n", s.CurrentLSN)
				fmt.Fprintf(w, "  Number of streaming clients: %d\n", len(s.Clients))
				for i, cl := range s.Clients {
					kind := "Async"
					if cl.SyncState == "sync" || cl.SyncState == "quorum" {
						kind = "Sync"
					}
					fmt.Fprintf(w, "\n  %d. %s WAL streamer\n", i+1, kind)
					fmt.Fprintf(w, "     Application name: %s\n", cl.Application)
					fmt.Fprintf(w, "     User name       : %s\n", cl.User)
					fmt.Fprintf(w, "     Client address  : %s\n", cl.ClientAddr)
					fmt.Fprintf(w, "     Current state   : %s (%s)\n", cl.State, cl.SyncState)
					fmt.Fprintf(w, "     WAL sender PID  : %d\n", cl.PID)
					fmt.Fprintf(w, "     Started at      : %s\n", cl.Started.Local().Format(time.RFC3339))
					fmt.Fprintf(w, "     Sent LSN   : %s\n     Write LSN  : %s\n     Flush LSN  : %s (%s behind)\n", cl.SentLSN, cl.WriteLSN, cl.FlushLSN, humanSize(cl.FlushLag))
				}
				fmt.Fprintf(w, "\n  Replication slot '%s': ", s.Slot.Name)
				switch {
				case !s.Slot.Exists:
					fmt.Fprintf(w, "does not exist (create it with cellar receive-wal %s --create-slot)\n", s.Server)
				default:
					state := "inactive"
					if s.Slot.Active {
						state = "active"
					}
					fmt.Fprintf(w, "%s, restart LSN %s, %s behind, WAL %s\n", state, s.Slot.RestartLSN, humanSize(s.Slot.LagBytes), s.Slot.WALStatus)
				}
				if s.Repository.LastSegment == "" {
					fmt.Fprintf(w, "  Repository: no WAL yet\n")
				} else {
					fmt.Fprintf(w, "  Repository ends at: %s (timeline %d, %d partial segments)\n", s.Repository.LastSegment, s.Repository.Timeline, s.Repository.Partial)
				}
				if s.ReceiveWAL != nil {
					fmt.Fprintf(w, "  receive-wal: running (pid %d since %s)\n", s.ReceiveWAL.PID, s.ReceiveWAL.Since.Local().Format(time.RFC3339))
				} else {
					fmt.Fprintf(w, "  receive-wal: not running on this host\n")
				}
				return nil
			})
		},
	}
}

// checkStreaming is check's part for WAL streaming: the replication
// connection and, with streaming_archiver = on, the slot (there and
// active), receive-wal running and the slot's lag against
// streaming_lag_max.
func (st *state) checkStreaming(ctx context.Context, srv *config.Server) []checkResult {
	ok := func(name string) checkResult { return checkResult{Name: name, Status: "OK"} }
	fail := func(name, hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	conninfo, err := streamingConninfo(srv)
	if err != nil {
		return []checkResult{fail("streaming connection", err.Error())}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pg.DialReplication(cctx, conninfo, "cellar")
	if err != nil {
		return []checkResult{fail("streaming connection", err.Error())}
	}
	defer conn.Close()
	sys, err := conn.IdentifySystem(cctx)
	if err != nil {
		return []checkResult{fail("streaming connection", err.Error())}
	}
	out := []checkResult{ok("streaming connection")}
	if !srv.StreamingArchiver {
		// streaming_conninfo for backup_method = stream alone: no slot.
		return out
	}
	slot, err := conn.ReadSlot(cctx, srv.SlotName)
	switch {
	case err != nil:
		return append(out, fail("replication slot", err.Error()))
	case !slot.Exists:
		return append(out, fail("replication slot", fmt.Sprintf("slot %q does not exist: create it with cellar receive-wal %s --create-slot", srv.SlotName, srv.Name)))
	}
	active := true
	if srv.Conninfo != "" {
		if sql, err := connect(cctx, srv); err == nil {
			if cur, err := pg.CurrentLSN(cctx, sql); err == nil {
				if s, err := pg.ReadSlotState(cctx, sql, srv.SlotName, cur); err == nil && s.Exists {
					active = s.Active
				}
			}
			sql.Close(context.WithoutCancel(ctx))
		}
	}
	if !active {
		out = append(out, fail("replication slot", fmt.Sprintf("slot %q exists but nothing streams from it: start cellar receive-wal %s (cellar cron does with streaming_archiver = on)", srv.SlotName, srv.Name)))
	} else {
		out = append(out, ok("replication slot"))
	}
	if _, running := lockHolderOf(srv, "receive-wal"); running {
		out = append(out, ok("receive-wal running"))
	} else {
		out = append(out, fail("receive-wal running", fmt.Sprintf("no receive-wal of server %s runs on this host: cellar cron starts it, or run cellar receive-wal %s", srv.Name, srv.Name)))
	}
	if max := int64(srv.StreamingLagMax); max > 0 && slot.RestartLSN != 0 {
		if lag := int64(sys.Flush) - int64(slot.RestartLSN); lag > max {
			out = append(out, fail("streaming lag", fmt.Sprintf("the slot is %s behind the server, above streaming_lag_max = %s", humanSize(lag), humanSize(max))))
		} else {
			out = append(out, ok("streaming lag"))
		}
	}
	return out
}
