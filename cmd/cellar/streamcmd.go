package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/wal"
)

// streamingConninfo is the server's replication connection string:
// streaming_conninfo, or else conninfo (as Barman defaults it), or the
// error that says to set it.
func streamingConninfo(srv *config.Server) (string, error) {
	switch {
	case srv.StreamingConninfo != "":
		return srv.StreamingConninfo, nil
	case srv.Conninfo != "":
		return srv.Conninfo, nil
	}
	return "", usagef("server %s has no streaming_conninfo (nor conninfo): set streaming_conninfo = host=... user=... (a user with the REPLICATION attribute)", srv.Name)
}

func receiveWALCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "receive-wal",
		Usage:     "stream WAL over a replication slot into the repository until stopped (SIGTERM)",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "create-slot", Usage: "create the physical replication slot slot_name, then exit"},
			&cli.BoolFlag{Name: "drop-slot", Usage: "drop the replication slot slot_name, then exit"},
			&cli.BoolFlag{Name: "reset", Usage: "start from the server's current position, not where the repository ends"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("receive-wal takes exactly one SERVER argument")
			}
			if n := btoi(c.Bool("create-slot")) + btoi(c.Bool("drop-slot")) + btoi(c.Bool("reset")); n > 1 {
				return usagef("receive-wal: give at most one of --create-slot, --drop-slot and --reset")
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			conninfo, err := streamingConninfo(srv)
			if err != nil {
				return err
			}
			ctx := c.Context
			if c.Bool("create-slot") || c.Bool("drop-slot") {
				drop := c.Bool("drop-slot")
				verb, done, already := "creating", "created on", "already exists on"
				if drop {
					verb, done, already = "dropping", "dropped from", "does not exist on"
				}
				changed, err := wal.ManageSlot(ctx, conninfo, srv.StreamingArchiverName, srv.SlotName, drop)
				if err != nil {
					return fmt.Errorf("server %s: %s replication slot %q: %w", srv.Name, verb, srv.SlotName, err)
				}
				if !changed {
					done = already
				}
				st.say("Replication slot %q %s server %s\n", srv.SlotName, done, srv.Name)
				return nil
			}
			lock, err := lockServer(srv, "receive-wal")
			if err != nil {
				return err
			}
			defer lock.release()
			store, err := st.openStore(ctx, srv)
			if err != nil {
				return err
			}
			defer store.Close()
			cod, err := codec.Parse(srv.Compression)
			if err != nil {
				return err
			}
			err = wal.Receive(ctx, wal.ReceiveOptions{
				Store: store, Server: srv.Name, Conninfo: conninfo, Slot: srv.SlotName, AppName: srv.StreamingArchiverName,
				Codec: cod, Level: srv.CompressionLevel, Version: version,
				UploadInterval: time.Duration(srv.StreamingUploadInterval), SyncInterval: time.Duration(srv.StreamingSyncInterval),
				Reset: c.Bool("reset"), Log: st.log,
				Started: func(s wal.Status) {
					mode := "asynchronous: the segment in progress is uploaded every " + time.Duration(srv.StreamingUploadInterval).String()
					if s.Synchronous {
						mode = "synchronous: commits wait for the repository"
					}
					st.say("Streaming WAL of server %s from %s on timeline %d (%s)\n", srv.Name, s.Start, s.Timeline, mode)
				},
			})
			if errors.Is(err, wal.ErrNoSlot) || errors.Is(err, wal.ErrLogicalSlot) {
				return fmt.Errorf("%w: create one with cellar receive-wal %s --create-slot", err, srv.Name)
			}
			return err
		},
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// say prints a line for the user unless --quiet.
func (st *state) say(format string, args ...any) {
	if !st.quiet {
		fmt.Fprintf(st.stdout, format, args...)
	}
}

// cronReceiveWAL starts receive-wal for a server with streaming_archiver
// = on when none runs (its lock is free), detached, its output appended
// to cellar-SERVER.receive-wal.log in lock_directory. A receive-wal that
// exits within a few seconds (a missing slot, a refused connection) is an
// error of this cron run, with its last words.
func (st *state) cronReceiveWAL(c *cli.Context, srv *config.Server) error {
	if !srv.StreamingArchiver {
		return nil
	}
	if _, err := streamingConninfo(srv); err != nil {
		return err
	}
	if _, running := lockHolderOf(srv, "receive-wal"); running {
		return nil
	}
	logPath := strings.TrimSuffix(lockPath(srv, "receive-wal"), ".lock") + ".log"
	cmd, err := st.detach(c, []string{"receive-wal", srv.Name}, logPath)
	if err != nil {
		return fmt.Errorf("starting receive-wal: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		last := ""
		if b, rerr := os.ReadFile(logPath); rerr == nil {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			last = ": " + lines[len(lines)-1]
		}
		return fmt.Errorf("receive-wal exited at once (%v)%s", err, last)
	case <-time.After(3 * time.Second):
		st.log.Info("cron: started receive-wal", "server", srv.Name, "pid", cmd.Process.Pid, "log", logPath)
		return nil
	}
}
