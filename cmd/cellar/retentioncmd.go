package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/retention"
	"github.com/cellar-backup/cellar/wal"
)

// now is the clock of the catalog commands. CELLAR_NOW (RFC 3339) moves
// it, for tests of retention that must not wait for days.
func (st *state) now() time.Time {
	if v := st.getenv("CELLAR_NOW"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return t
		}
	}
	return time.Now()
}

// policyOf is the server's retention policy for retention.Decide.
func policyOf(srv *config.Server) (retention.Policy, error) {
	p := retention.Policy{MinimumRedundancy: srv.MinimumRedundancy}
	if srv.RetentionPolicy == "" {
		return p, nil
	}
	rp, err := config.ParseRetentionPolicy(srv.RetentionPolicy)
	if err != nil {
		return p, err
	}
	p.Redundancy, p.Window = rp.Redundancy, rp.Window
	return p, nil
}

// readCatalog reads a server's catalog once, and with wal its WAL listing
// (see catalog.Read), judging unfinished backups by this host's locks,
// the clock and orphan_age.
func (st *state) readCatalog(ctx context.Context, srv *config.Server, store cloud.Storage, wal bool) (*catalog.Catalog, error) {
	host, _ := os.Hostname()
	running := runningBackup(srv)
	return catalog.Read(ctx, store, srv.Name, catalog.ReadOptions{
		WAL: wal, Now: st.now(), Host: host, OrphanAge: orphanAge(srv),
		Running: func(id string) bool { return id == running },
	})
}

// decide is what retention does to the catalog under pol, now.
func (st *state) decide(cat *catalog.Catalog, pol retention.Policy) retention.Plan {
	in := retention.InputOf(cat)
	in.Policy, in.Now = pol, st.now()
	return retention.Decide(in)
}

// orphanAge is how old the remains of a killed backup (a marker without a
// manifest, parts without either) must be before cron removes them: the
// server's orphan_age, validated when the configuration was loaded.
func orphanAge(srv *config.Server) time.Duration {
	d, err := config.ParseAge(srv.OrphanAge)
	if err != nil || d <= 0 {
		return 24 * time.Hour
	}
	return d
}

func cronCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:  "cron",
		Usage: "maintenance for every active server: receive-wal kept running (streaming_archiver = on), retention, failed backups and orphan parts, restore drills when drill_schedule says one is due; safe to run every minute",
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("cron takes no arguments")
			}
			cfg, err := st.config(c)
			if err != nil {
				return err
			}
			var failed []string
			drilling := drillRunning(cfg.Servers())
			for _, srv := range cfg.Servers() {
				if !srv.Active || srv.Repository == "" {
					continue
				}
				err := errors.Join(st.cronReceiveWAL(c, srv), st.cronServer(c.Context, srv), st.cronDrill(c, srv, &drilling))
				if err != nil {
					failed = append(failed, srv.Name)
					fmt.Fprintf(st.stderr, "cellar: cron: server %s: %s\n", srv.Name, st.scrub(oneLine(err.Error())))
				}
			}
			if len(failed) > 0 {
				return &exitError{code: exitFailure, silent: true}
			}
			return nil
		},
	}
}

// cronServer does one server's maintenance under its retention lock; a
// server whose lock is held (another cron, a retention) is left for the
// next run.
func (st *state) cronServer(ctx context.Context, srv *config.Server) error {
	lock, err := lockServer(srv, "retention")
	if errors.Is(err, errBusy) {
		st.log.Info("cron: skipping a busy server", "server", srv.Name, "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.release()
	pol, err := policyOf(srv)
	if err != nil {
		return err
	}
	store, err := st.openStore(ctx, srv)
	if err != nil {
		return err
	}
	defer store.Close()
	cat, err := st.readCatalog(ctx, srv, store, true)
	if err != nil {
		return err
	}
	p := st.decide(cat, pol)
	if srv.RetentionPolicy == "" {
		// Without a policy, only failed backups go.
		p.Obsolete, p.WAL = nil, nil
	}
	res, err := retention.Execute(ctx, store, srv.Name, p, cat.WALSizes(), false)
	if err != nil {
		return err
	}
	orphans, err := retention.OrphanParts(ctx, store, cat, st.now().Add(-orphanAge(srv)))
	if err != nil {
		return err
	}
	if err := retention.StaleChunks(ctx, store, cat, p); err != nil {
		return err
	}
	// A killed process's half-written files on a file:// repository.
	if tc, ok := store.(cloud.TempCleaner); ok {
		if n, err := tc.CleanTemp(ctx, srv.Name+"/", st.now().Add(-orphanAge(srv))); err != nil {
			return err
		} else if n > 0 {
			st.log.Info("cron: removed temporary files of interrupted writes", "server", srv.Name, "files", n)
		}
	}
	// The WAL spools under pg_wal (or wal_spool_dir), which no call of
	// PostgreSQL's tidies once recovery has ended or archiving stopped.
	if srv.PGData != "" {
		wal.TidySpools(filepath.Join(srv.PGData, "pg_wal"), spoolDir(srv, "pushed"), spoolDir(srv, "prefetch"), st.now(), st.log)
	}
	for _, id := range orphans {
		rb, err := retention.RemoveBackup(ctx, store, srv.Name, id, "orphan parts")
		if err != nil {
			return err
		}
		res.Backups = append(res.Backups, rb)
		res.Bytes += rb.Bytes
	}
	if len(res.Backups) > 0 || res.WALFiles > 0 {
		st.log.Info("cron: removed", "server", srv.Name, "backups", len(res.Backups), "wal_files", res.WALFiles, "bytes", res.Bytes)
	}
	return nil
}

func retentionCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "retention",
		Usage:     "apply the retention policy: remove obsolete backups, failed ones and the WAL no backup needs",
		ArgsUsage: "SERVER",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "print what would be removed, remove nothing"}},
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 1, "retention takes exactly one SERVER argument", func(srv *config.Server, store cloud.Storage) error {
				if srv.RetentionPolicy == "" {
					return fmt.Errorf("server %s has no retention_policy: set retention_policy = REDUNDANCY n or RECOVERY WINDOW OF n DAYS", srv.Name)
				}
				pol, err := policyOf(srv)
				if err != nil {
					return err
				}
				lock, err := lockServer(srv, "retention")
				if err != nil {
					return err
				}
				defer lock.release()
				cat, err := st.readCatalog(c.Context, srv, store, true)
				if err != nil {
					return err
				}
				p := st.decide(cat, pol)
				dry := c.Bool("dry-run")
				res, err := retention.Execute(c.Context, store, srv.Name, p, cat.WALSizes(), dry)
				if err != nil {
					return err
				}
				if st.format == "json" {
					return st.printJSON(map[string]any{"server": srv.Name, "policy": srv.RetentionPolicy, "dry_run": dry, "retained": nonNil(p.Retained),
						"retained_as_parents": nonNil(p.Parents), "removed": res})
				}
				verb := "Removed"
				if dry {
					verb = "Would remove"
				}
				for _, b := range res.Backups {
					fmt.Fprintf(st.stdout, "%s backup %s (%s, %d parts, %s)\n", verb, b.ID, b.Reason, b.Parts, humanSize(b.Bytes))
				}
				parents := ""
				if len(p.Parents) > 0 {
					parents = fmt.Sprintf(" (%d of them only because retained incremental backups build on them)", len(p.Parents))
				}
				fmt.Fprintf(st.stdout, "%s %d WAL files (%s); %s freed in all. Retained: %d backups%s.\n",
					verb, res.WALFiles, humanSize(res.WALBytes), humanSize(res.Bytes), len(p.Retained), parents)
				return nil
			})
		},
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func deleteCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Usage:     "remove one backup (refused when kept, when incremental backups build on it, or below minimum_redundancy)",
		ArgsUsage: "SERVER BACKUP_ID",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 2, "delete takes SERVER and BACKUP_ID", func(srv *config.Server, store cloud.Storage) error {
				ctx := c.Context
				lock, err := lockServer(srv, "retention")
				if err != nil {
					return err
				}
				defer lock.release()
				cat, r, err := st.findBackup(ctx, srv, store, c.Args().Get(1), true)
				if err != nil {
					return err
				}
				switch err := retention.CheckDelete(cat, r, srv.MinimumRedundancy); {
				case errors.Is(err, retention.ErrKept):
					return fmt.Errorf("backup %s of server %s is kept: release it first with cellar keep %s %s --release", r.ID, srv.Name, srv.Name, r.ID)
				case errors.Is(err, retention.ErrParent):
					direct, indirect := retention.Dependents(cat, r.ID)
					deps := strings.Join(direct, ", ")
					if len(indirect) > 0 {
						deps += " (and, through them, of " + strings.Join(indirect, ", ") + ")"
					}
					return fmt.Errorf("backup %s of server %s is the parent of %s: delete those first, newest first", r.ID, srv.Name, deps)
				case errors.Is(err, retention.ErrBelowRedundancy):
					return fmt.Errorf("deleting backup %s would leave %d backups of server %s, below minimum_redundancy = %d", r.ID, len(cat.Done())-1, srv.Name, srv.MinimumRedundancy)
				case err != nil:
					return err
				}
				rb, err := retention.RemoveBackup(ctx, store, srv.Name, r.ID, "deleted")
				if err != nil {
					return err
				}
				// The WAL before the oldest backup left is of no use.
				cat.Backups = slices.DeleteFunc(cat.Backups, func(b catalog.Entry) bool { return b.ID == r.ID })
				p := st.decide(cat, retention.Policy{})
				p.Obsolete, p.Failed = nil, nil
				res, err := retention.Execute(ctx, store, srv.Name, p, cat.WALSizes(), false)
				if err != nil {
					return err
				}
				if !st.quiet {
					fmt.Fprintf(st.stdout, "Deleted backup %s of server %s (%d parts, %s) and %d WAL files no backup needs (%s)\n",
						r.ID, srv.Name, rb.Parts, humanSize(rb.Bytes), res.WALFiles, humanSize(res.WALBytes))
				}
				return nil
			})
		},
	}
}

func keepCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "keep",
		Usage:     "pin a backup (and the WAL it needs to be consistent) so retention never removes it",
		ArgsUsage: "SERVER BACKUP_ID",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "release", Usage: "unpin it"}},
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 2, "keep takes SERVER and BACKUP_ID", func(srv *config.Server, store cloud.Storage) error {
				_, r, err := st.findBackup(c.Context, srv, store, c.Args().Get(1), false)
				if err != nil {
					return err
				}
				if c.Bool("release") {
					if err := catalog.DeleteKeep(c.Context, store, srv.Name, r.ID); err != nil {
						return err
					}
					fmt.Fprintf(st.stdout, "Backup %s of server %s is no longer kept\n", r.ID, srv.Name)
					return nil
				}
				if r.Status != catalog.StatusDone {
					return fmt.Errorf("backup %s of server %s is %s: only a finished backup can be kept", r.ID, srv.Name, r.Status)
				}
				if err := catalog.WriteKeep(c.Context, store, srv.Name, catalog.Keep{ID: r.ID, Target: "standalone", Since: st.now().UTC()}); err != nil {
					return err
				}
				fmt.Fprintf(st.stdout, "Backup %s of server %s is kept (standalone: with the WAL from %s to %s)\n", r.ID, srv.Name, r.Manifest.BeginWAL, r.Manifest.EndWAL)
				return nil
			})
		},
	}
}
