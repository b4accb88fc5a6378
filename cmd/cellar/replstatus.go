package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
	"github.com/cellar-backup/cellar/health"
)

// replStatus is what replication-status prints: health.Replication and
// the receive-wal that runs on this host, if one does.
type replStatus struct {
	health.Replication
	ReceiveWAL *lockfile.Holder `json:"receive_wal,omitempty"`
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
	var out replStatus
	s, err := sqlConninfo(srv)
	if err != nil {
		return out, err
	}
	conn, err := connect(ctx, s)
	if err != nil {
		return out, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if out.Replication, err = health.ReadReplication(ctx, conn, store, srv.Name, srv.SlotName); err != nil {
		return out, err
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
