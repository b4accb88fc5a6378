package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/restore"
)

func restoreCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "rebuild a data directory from a backup, ready to start and recover to the target",
		ArgsUsage: "SERVER [BACKUP_ID|latest|auto] DEST_DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "target-time", Usage: "recover up to this time (e.g. '2026-12-01 10:00:00+00')"},
			&cli.StringFlag{Name: "target-lsn", Usage: "recover up to this LSN (e.g. 16/B374D848)"},
			&cli.StringFlag{Name: "target-xid", Usage: "recover up to this transaction id"},
			&cli.StringFlag{Name: "target-name", Usage: "recover up to this restore point (pg_create_restore_point)"},
			&cli.BoolFlag{Name: "target-immediate", Usage: "recover only until the backup is consistent"},
			&cli.StringFlag{Name: "target-timeline", Value: "latest", Usage: "timeline to follow: latest, current or a number"},
			&cli.StringFlag{Name: "target-action", Usage: "at the target: pause, promote or shutdown (default promote when a target is set)"},
			&cli.BoolFlag{Name: "exclusive", Usage: "stop just before the target (recovery_target_inclusive = off)"},
			&cli.BoolFlag{Name: "standby", Usage: "write standby.signal instead of recovery.signal"},
			&cli.BoolFlag{Name: "delta", Usage: "re-sync an existing directory: fetch only the files that differ, remove what the backup lacks"},
			&cli.StringSliceFlag{Name: "tablespace", Usage: "put tablespace NAME at PATH (NAME:PATH, repeatable)"},
			&cli.IntFlag{Name: "parallel", Aliases: []string{"j"}, Usage: "parts fetched at once (default: the parallel setting)"},
			&cli.BoolFlag{Name: "verify-start", Usage: "then start PostgreSQL on it privately, wait until recovery reaches the target, run drill_query (and pg_amcheck with drill_amcheck = on), and shut it down cleanly"},
		},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			var id, dest string
			switch len(args) {
			case 2:
				if !c.IsSet("target-time") {
					return usagef("restore takes SERVER BACKUP_ID DEST_DIR (BACKUP_ID may be left out only with --target-time)")
				}
				id, dest = "auto", args[1]
			case 3:
				id, dest = args[1], args[2]
			default:
				return usagef("restore takes SERVER BACKUP_ID DEST_DIR (BACKUP_ID: an id, latest, or auto with --target-time)")
			}
			tgt, err := parseTarget(c)
			if err != nil {
				return err
			}
			if c.Bool("verify-start") && c.Bool("standby") {
				return usagef("--verify-start needs a restore that ends recovery: a --standby never does")
			}
			spc, err := parseTablespaces(c.StringSlice("tablespace"))
			if err != nil {
				return err
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			parallel := srv.Parallel
			if c.IsSet("parallel") {
				if parallel = c.Int("parallel"); parallel < 1 || parallel > 256 {
					return usagef("--parallel %d: use 1 to 256", parallel)
				}
			}
			ctx := c.Context
			store, err := st.openStore(ctx, srv)
			if err != nil {
				return err
			}
			defer store.Close()
			// --verify-start checks recovery against the WAL listing.
			cat, m, err := chooseBackup(ctx, st, srv, store, id, tgt, c.Bool("verify-start"))
			if err != nil {
				return err
			}
			if err := checkTarget(cat, srv, m, tgt); err != nil {
				return err
			}
			var vs *restore.StartOptions
			if c.Bool("verify-start") {
				o, err := st.prepareVerifyStart(ctx, srv, cat, m, tgt, dest)
				if err != nil {
					return fmt.Errorf("--verify-start: %w", err)
				}
				vs = &o
			}
			rec := restore.Recovery{Settings: [][2]string{{"restore_command", st.restoreCommand(c, srv)}}, Signal: "recovery"}
			if c.Bool("standby") {
				rec.Signal = "standby"
			}
			rec.Settings = append(rec.Settings, tgt.Settings...)
			prog := st.newProgress("restore " + srv.Name)
			began := time.Now()
			res, err := restore.Run(ctx, restore.Options{
				Store: store, Manifest: m, Dest: dest, Parallel: parallel, Tablespaces: spc,
				Delta: c.Bool("delta"), Recovery: rec, Progress: prog, Log: st.log,
			})
			prog.Done()
			if err != nil {
				if _, statErr := os.Stat(filepath.Join(dest, restore.IncompleteMarker)); statErr == nil {
					return fmt.Errorf("restore of backup %s to %s failed, and the directory is marked incomplete (run the restore again with --delta to finish it): %w", m.ID, dest, err)
				}
				switch {
				case errors.Is(err, restore.ErrNotEmpty):
					return fmt.Errorf("%w: restore into an empty directory, or use --delta to re-sync it (--tablespace NAME:PATH moves a tablespace)", err)
				case errors.Is(err, restore.ErrTablespaceInside):
					return fmt.Errorf("%w with --tablespace NAME:PATH", err)
				}
				return err
			}
			if os.Geteuid() == 0 && repo.OwnerOf(dest) == nil {
				// Root restored into a directory of root's: the files
				// were not given to anybody else.
				st.log.Warn("the restored files belong to root, and PostgreSQL refuses to run as root: give them to PostgreSQL's user (chown -R postgres: " + dest + ") before starting it, or restore into a directory that user owns")
			}
			restoreTime := time.Since(began)
			var started restore.StartResult
			if vs != nil {
				work, remove, err := socketWorkDir("")
				if err != nil {
					return err
				}
				started, err = verifyStartIn(ctx, *vs, work, false)
				remove()
				if err != nil {
					return st.startError(fmt.Errorf("--verify-start: backup %s was restored to %s, but PostgreSQL started on it failed: %w", m.ID, dest, err))
				}
			}
			total := time.Since(began)
			if st.format == "json" {
				out := map[string]any{"backup": m.ID, "server": srv.Name, "destination": dest,
					"files": res.Files, "fetched": res.Fetched, "kept": res.Kept, "removed": res.Removed,
					"bytes": res.Bytes, "parts": res.Parts, "seconds": restoreTime.Seconds(), "recovery": recoveryMap(rec)}
				if vs != nil {
					out["verify_start"] = startJSON(started, restoreTime, total)
				}
				return st.printJSON(out)
			}
			if !st.quiet {
				fmt.Fprintf(st.stdout, "Restored backup %s of server %s to %s: %d files (%d fetched, %d kept, %d removed), %s in %s\n",
					m.ID, srv.Name, dest, res.Files, res.Fetched, res.Kept, res.Removed, humanSize(res.Bytes), restoreTime.Round(time.Second))
				if vs == nil {
					fmt.Fprintf(st.stdout, "Start PostgreSQL on it to recover%s; it fetches WAL with: %s\n", tgt.Describe(), rec.Settings[0][1])
				}
			}
			if vs != nil && !st.quiet {
				w := st.stdout
				fmt.Fprintf(w, "Started PostgreSQL %s on it: recovery reached %s\n", started.Version, pointText(started))
				fmt.Fprintf(w, "Query %q answered: %s\n", srv.DrillQuery, started.Answer)
				if started.Amcheck != "" {
					fmt.Fprintf(w, "pg_amcheck: %s\n", started.Amcheck)
				}
				fmt.Fprintf(w, "Time: file restore %s, WAL replay %s, total %s\n", secs(restoreTime.Seconds()), secs(started.Replay.Seconds()), secs(total.Seconds()))
				fmt.Fprintf(w, "Then %s\n", describeStart(started))
			}
			return nil
		},
	}
}

func recoveryMap(rec restore.Recovery) map[string]string {
	out := map[string]string{"signal": rec.Signal}
	for _, kv := range rec.Settings {
		out[kv[0]] = kv[1]
	}
	return out
}

// restoreCommand is the restore_command for the server: this binary's
// absolute path, and the configuration file when one was named.
func (st *state) restoreCommand(c *cli.Context, srv *config.Server) string {
	exe := selfExe
	if exe == "" {
		exe = "cellar"
	}
	cmd := exe
	path := c.String("config")
	if path == "" {
		path = st.getenv("CELLAR_CONFIG")
	}
	if path != "" {
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
		}
		cmd += " --config " + path
	}
	return cmd + " wal-fetch " + srv.Name + " %f %p"
}

// targetFlags are the restore flags that name a target, with the field of
// restore.TargetSpec (and restore.TargetError) each fills.
var targetFlags = map[string]string{"target-time": "time", "target-lsn": "lsn", "target-xid": "xid", "target-name": "name", "target-immediate": "immediate"}

// parseTarget reads the target flags (see restore.ParseTarget); its errors
// name the flag.
func parseTarget(c *cli.Context) (restore.Target, error) {
	n := 0
	for name := range targetFlags {
		if c.IsSet(name) {
			n++
		}
	}
	if n > 1 {
		return restore.Target{}, usagef("give at most one of --target-time, --target-lsn, --target-xid, --target-name and --target-immediate")
	}
	if c.IsSet("target-name") && c.String("target-name") == "" {
		return restore.Target{}, usagef("--target-name is empty: name a restore point made with pg_create_restore_point")
	}
	t, err := restore.ParseTarget(restore.TargetSpec{
		Time: c.String("target-time"), LSN: c.String("target-lsn"), XID: c.String("target-xid"), Name: c.String("target-name"),
		Immediate: c.Bool("target-immediate"), Timeline: c.String("target-timeline"), Action: c.String("target-action"), Exclusive: c.Bool("exclusive"),
	})
	var te *restore.TargetError
	switch {
	case errors.As(err, &te) && te.Field == "action" && te.Msg == "needs a target":
		return t, usagef("--target-action needs a target (--target-time, --target-lsn, --target-xid, --target-name or --target-immediate)")
	case errors.As(err, &te) && te.Field == "exclusive":
		return t, usagef("--exclusive needs --target-time, --target-lsn or --target-xid")
	case errors.As(err, &te) && te.Field != "":
		return t, usagef("--target-%s %s", te.Field, te.Msg)
	case err != nil:
		return t, usagef("%v", err)
	}
	return t, nil
}

func parseTablespaces(specs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs {
		name, path, ok := strings.Cut(s, ":")
		if !ok || name == "" || !filepath.IsAbs(path) {
			return nil, usagef("--tablespace %q: write NAME:/absolute/path", s)
		}
		out[name] = filepath.Clean(path)
	}
	return out, nil
}

// chooseBackup reads the catalog and the manifest of the backup named by
// id: an id, latest/last, oldest/first, or auto (the newest that ended
// before the target time).
// The WAL is listed with listWAL, or for a target it must be checked
// against: a plain restore in the bad hour spends no time on it.
func chooseBackup(ctx context.Context, st *state, srv *config.Server, store cloud.Storage, id string, tgt restore.Target, listWAL bool) (*catalog.Catalog, *catalog.Manifest, error) {
	cat, err := st.readCatalog(ctx, srv, store, listWAL || tgt.Kind == "time" || tgt.Kind == "lsn")
	if err != nil {
		return nil, nil, err
	}
	m, err := pickBackup(ctx, srv, store, cat, id, tgt)
	return cat, m, err
}

// pickBackup reads the manifest of the backup of cat named by id, as
// chooseBackup.
func pickBackup(ctx context.Context, srv *config.Server, store cloud.Storage, cat *catalog.Catalog, id string, tgt restore.Target) (*catalog.Manifest, error) {
	var err error
	done := cat.Done()
	if len(done) == 0 {
		return nil, fmt.Errorf("server %s has no finished backup to restore (see list-backups)", srv.Name)
	}
	var e catalog.Entry
	if strings.EqualFold(id, "auto") {
		if tgt.Kind != "time" {
			return nil, usagef("BACKUP_ID auto needs --target-time")
		}
		if e, err = cat.NewestBefore(tgt.Time); err != nil {
			return nil, fmt.Errorf("no backup of server %s ended before %s: the oldest ended at %s, so the recoverable range starts there",
				srv.Name, tgt.Text, done[0].EndTime.UTC().Format(time.RFC3339))
		}
	} else if e, err = cat.FindDone(id); err != nil {
		if errors.Is(err, catalog.ErrNotFinished) {
			return nil, fmt.Errorf("backup %s of server %s is %s, not a finished backup: choose another (see list-backups)", e.ID, srv.Name, e.Status)
		}
		return nil, fmt.Errorf("server %s: %w (see list-backups)", srv.Name, err)
	}
	return catalog.ReadManifest(ctx, store, srv.Name, e.ID)
}

// checkTarget refuses a target before the backup's end or after the last
// archived WAL, giving the range that is recoverable.
func checkTarget(cat *catalog.Catalog, srv *config.Server, m *catalog.Manifest, tgt restore.Target) error {
	if tgt.Kind != "time" && tgt.Kind != "lsn" {
		return nil
	}
	r, err := cat.Recoverable(m)
	found := err == nil
	switch tgt.Kind {
	case "time":
		rangeText := fmt.Sprintf("backup %s can recover from %s to %s", m.ID, r.FromTime.UTC().Format(time.RFC3339), r.ToTime.UTC().Format(time.RFC3339))
		if tgt.Time.Before(m.EndTime) {
			return fmt.Errorf("--target-time %s is before the end of backup %s (%s): choose an older backup, or a later target (%s)",
				tgt.Text, m.ID, m.EndTime.UTC().Format(time.RFC3339), rangeText)
		}
		if found && tgt.Time.After(r.ToTime) {
			return fmt.Errorf("--target-time %s is after the last archived WAL (%s, archived at %s): %s",
				tgt.Text, r.LastWAL.Name, r.ToTime.UTC().Format(time.RFC3339), rangeText)
		}
	case "lsn":
		rangeText := fmt.Sprintf("backup %s can recover from LSN %s to %s", m.ID, m.EndLSN, r.ToLSN)
		if tgt.LSN < r.FromLSN {
			return fmt.Errorf("--target-lsn %s is before the end of backup %s (%s): %s", tgt.Text, m.ID, m.EndLSN, rangeText)
		}
		if found && tgt.LSN > r.ToLSN {
			return fmt.Errorf("--target-lsn %s is after the last archived WAL (%s): %s", tgt.Text, r.LastWAL.Name, rangeText)
		}
	}
	if !found {
		return errors.New("no WAL is archived for server " + srv.Name + ": a backup cannot be recovered without it")
	}
	return nil
}

func verifyCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "re-read a backup and its WAL, check every checksum and WAL continuity; exit 0 only when all is intact",
		ArgsUsage: "SERVER BACKUP_ID",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "to-latest", Usage: "check the WAL on to the last segment archived on the backup's timeline"},
		},
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 2, "verify takes SERVER and BACKUP_ID (an id, latest or oldest)", func(srv *config.Server, store cloud.Storage) error {
				_, m, err := chooseBackup(c.Context, st, srv, store, c.Args().Get(1), restore.Target{}, false)
				if err != nil {
					return err
				}
				prog := st.newProgress("verify " + srv.Name)
				res, err := restore.Verify(c.Context, restore.VerifyOptions{Store: store, Manifest: m, Parallel: srv.Parallel, ToLatest: c.Bool("to-latest"), Progress: prog})
				prog.Done()
				if err != nil {
					return err
				}
				status := "OK"
				if len(res.Problems) > 0 {
					status = "FAILED"
				}
				if st.format == "json" {
					if err := st.printJSON(map[string]any{"server": srv.Name, "backup": m.ID, "status": status, "result": res}); err != nil {
						return err
					}
				} else {
					for _, p := range res.Problems {
						fmt.Fprintf(st.stdout, "FAILED %s: %s\n", p.Object, st.scrub(oneLine(p.Error)))
					}
					chain := ""
					if len(res.Ancestors) > 0 {
						chain = fmt.Sprintf(", with the backups it builds on: %s", strings.Join(res.Ancestors, ", "))
					}
					fmt.Fprintf(st.stdout, "Backup %s of server %s: %s (%d parts, %d files, WAL %s to %s: %d segments%s)\n",
						m.ID, srv.Name, status, res.Parts, res.Files, res.FirstWAL, res.LastWAL, res.WAL, chain)
				}
				if len(res.Problems) > 0 {
					return &exitError{code: exitFailure, silent: true}
				}
				return nil
			})
		},
	}
}
