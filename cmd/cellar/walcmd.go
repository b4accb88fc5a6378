package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/wal"
)

// openStore opens a server's repository.
func (st *state) openStore(ctx context.Context, srv *config.Server) (cloud.Storage, error) {
	return repo.Open(ctx, st.repoOptions(srv))
}

// storeCommand loads the command's server (its first argument, of nargs)
// and opens its repository for run.
func (st *state) storeCommand(c *cli.Context, nargs int, usage string, run func(*config.Server, cloud.Storage) error) error {
	if c.NArg() != nargs {
		return usagef("%s", usage)
	}
	srv, err := st.server(c)
	if err != nil {
		return err
	}
	store, err := st.openStore(c.Context, srv)
	if err != nil {
		return err
	}
	defer store.Close()
	return run(srv, store)
}

// serverStore loads the command's server and opens its repository under a
// context bounded by the server's limit for this command. done releases
// both.
func (st *state) serverStore(c *cli.Context, limit func(*config.Server) time.Duration) (*config.Server, context.Context, cloud.Storage, func(), error) {
	srv, err := st.server(c)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, limit(srv))
	store, err := st.openStore(ctx, srv)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, err
	}
	return srv, ctx, store, func() { store.Close(); cancel() }, nil
}

// boundedError rewrites an error after a command's own time limit into a
// line that says so and names the endpoint and the limit's setting.
func (st *state) boundedError(ctx context.Context, err error, srv *config.Server, setting string, limit time.Duration) error {
	return cloud.NoAnswer(ctx, err, limit, repo.Endpoint(st.repoOptions(srv)), setting)
}

// spoolDir is the directory of a WAL spool (kind "pushed" or "prefetch")
// under wal_spool_dir, or "" for the default under pg_wal.
func spoolDir(srv *config.Server, kind string) string {
	if srv.WALSpoolDir == "" {
		return ""
	}
	return filepath.Join(srv.WALSpoolDir, srv.Name, kind)
}

// walPushLimit and walFetchLimit bound one call of wal-push, and of
// wal-fetch or its detached prefetch.
func walPushLimit(s *config.Server) time.Duration  { return time.Duration(s.WALPushTimeout) }
func walFetchLimit(s *config.Server) time.Duration { return time.Duration(s.WALFetchTimeout) }

// shortCallMemory is the heap at which a short call (wal-push, wal-fetch)
// collects garbage at all; see shortCall.
const shortCallMemory = 256 << 20

// shortCall sets the garbage collector for a process that PostgreSQL
// starts for one WAL file and that lives for tens of milliseconds: no
// collection until the heap reaches shortCallMemory, instead of three or
// four collections competing with the compressors for the cores while
// the heap grows from nothing. GOGC or GOMEMLIMIT in the environment
// (runtime settings of the user's) leave it alone.
func (st *state) shortCall() {
	if st.getenv("GOGC") != "" || st.getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(shortCallMemory)
	debug.SetGCPercent(-1)
}

func walPushCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "wal-push",
		Usage:     "archive one WAL file (for archive_command = 'cellar wal-push SERVER %p'); exit 0 only once it is durable",
		ArgsUsage: "SERVER WAL_PATH",
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef("wal-push takes SERVER and WAL_PATH (archive_command = 'cellar wal-push SERVER %%p')")
			}
			path := c.Args().Get(1)
			if _, err := pg.ParseWALName(filepath.Base(path)); err != nil {
				return usagef("wal-push: %v", err)
			}
			wal.ReadAhead(path)
			st.shortCall()
			srv, ctx, store, done, err := st.serverStore(c, walPushLimit)
			if err != nil {
				return err
			}
			defer done()
			limit := walPushLimit(srv)
			cod, err := codec.Parse(srv.Compression)
			if err != nil {
				return err
			}
			start := time.Now()
			res, err := wal.Push(ctx, wal.PushOptions{
				Store: store, Server: srv.Name, Path: path,
				Codec: cod, Level: srv.CompressionLevel, Version: version,
				Parallel: srv.WALPushParallel, SpoolDir: spoolDir(srv, "pushed"), Log: st.log,
			})
			for _, a := range res.Ahead {
				if a.Err == nil {
					st.log.Debug("pushed ahead", "wal", a.Name, "key", a.Key, "bytes", a.Size, "already_archived", a.AlreadyArchived)
				}
			}
			if err != nil {
				return st.boundedError(ctx, fmt.Errorf("wal-push %s: %w", filepath.Base(path), err), srv, "wal_push_timeout", limit)
			}
			st.log.Debug("archived", "wal", res.Name, "key", res.Key, "bytes", res.Size,
				"already_archived", res.AlreadyArchived, "from_spool", res.FromSpool,
				"pushed_ahead", len(res.Ahead), "seconds", time.Since(start).Seconds())
			return nil
		},
	}
}

func walFetchCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "wal-fetch",
		Usage:     "fetch one WAL file (for restore_command = 'cellar wal-fetch SERVER %f %p'); exit 1 quietly when it does not exist",
		ArgsUsage: "SERVER WAL_NAME DEST_PATH",
		Action: func(c *cli.Context) error {
			if c.NArg() != 3 {
				return usagef("wal-fetch takes SERVER, WAL_NAME and DEST_PATH (restore_command = 'cellar wal-fetch SERVER %%f %%p')")
			}
			name, dest := c.Args().Get(1), c.Args().Get(2)
			if _, err := pg.ParseWALName(name); err != nil {
				return usagef("wal-fetch: %v", err)
			}
			st.shortCall()
			srv, ctx, store, done, err := st.serverStore(c, walFetchLimit)
			if err != nil {
				return err
			}
			defer done()
			limit := walFetchLimit(srv)
			start := time.Now()
			res, err := wal.Fetch(ctx, wal.FetchOptions{
				Store: store, Server: srv.Name, Name: name, Dest: dest,
				Prefetch: srv.Parallel, SpoolDir: spoolDir(srv, "prefetch"), Log: st.log,
				Detach: st.detachPrefetch(c, srv.Name, dest),
			})
			if errors.Is(err, wal.ErrNotFound) {
				// PostgreSQL probes for files that do not exist all the
				// time; that is no cause for alarm.
				st.log.Debug("not in the repository", "wal", name)
				return &exitError{code: exitFailure, silent: true}
			}
			if err != nil {
				return st.boundedError(ctx, fmt.Errorf("wal-fetch %s: %w", name, err), srv, "wal_fetch_timeout", limit)
			}
			st.log.Debug("fetched", "wal", res.Name, "bytes", res.Size, "from_spool", res.FromSpool,
				"prefetched", strings.Join(res.Prefetched, ","), "prefetching", strings.Join(res.Detached, ","),
				"seconds", time.Since(start).Seconds())
			return nil
		},
	}
}

// walPrefetchCommand is the detached prefetch that wal-fetch starts: it
// fetches the named segments into the spool beside DEST_PATH (or under
// wal_spool_dir) and exits. Not for users; its output goes nowhere.
func walPrefetchCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "wal-prefetch",
		Hidden:    true,
		Usage:     "fetch WAL segments into wal-fetch's prefetch spool (started by wal-fetch)",
		ArgsUsage: "SERVER DEST_PATH SEGMENT...",
		Action: func(c *cli.Context) error {
			if c.NArg() < 3 {
				return usagef("wal-prefetch takes SERVER, DEST_PATH and one or more segment names")
			}
			names := c.Args().Slice()[2:]
			for _, n := range names {
				if w, err := pg.ParseWALName(n); err != nil || w.Kind != pg.Segment {
					return usagef("wal-prefetch: %q is not a WAL segment name", n)
				}
			}
			st.shortCall()
			srv, ctx, store, done, err := st.serverStore(c, walFetchLimit)
			if err != nil {
				return err
			}
			defer done()
			got := wal.Prefetch(ctx, wal.FetchOptions{
				Store: store, Server: srv.Name, Dest: c.Args().Get(1),
				SpoolDir: spoolDir(srv, "prefetch"), Log: st.log,
			}, names)
			st.log.Debug("prefetched", "wal", strings.Join(got, ","))
			return nil
		},
	}
}
