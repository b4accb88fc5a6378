package main

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/basebackup"
	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/pg"
)

func backupCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "take a base backup (full, or incremental on an earlier one) of a running server and upload it in parallel parts",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "fast", Usage: "start with an immediate checkpoint (default: the immediate_checkpoint setting, off: spread, as PostgreSQL's); --fast=false asks for a spread one"},
			&cli.IntFlag{Name: "parallel", Aliases: []string{"j"}, Usage: "files read and parts written at once (default: the parallel setting)"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the backup (and the WAL it needs) from retention, as cellar keep does"},
			&cli.StringFlag{Name: "type", Usage: "full, incr (the changes since the newest backup) or diff (since the newest full) (default: the backup_type setting)"},
			&cli.StringFlag{Name: "parent", Usage: "the id of the backup an incremental builds on (default: the newest, or for diff the newest full)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("backup takes exactly one SERVER argument")
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			typ := srv.BackupType
			if c.IsSet("type") {
				typ = c.String("type")
				switch typ {
				case catalog.TypeFull, catalog.TypeIncr, catalog.TypeDiff:
				default:
					return usagef("--type %s: use full, incr or diff", typ)
				}
			}
			parent := c.String("parent")
			if parent != "" {
				if !catalog.ValidBackupID(parent) {
					return usagef("--parent %s: not a backup id (see list-backups)", parent)
				}
				if !c.IsSet("type") {
					typ = catalog.TypeIncr
				}
				if typ == catalog.TypeFull {
					return usagef("--parent names the backup an incremental builds on: use it with --type incr or diff, not full")
				}
			}
			if srv.BackupMethod == "stream" && typ != catalog.TypeFull {
				why := "--type " + typ
				if !c.IsSet("type") && parent == "" {
					why = "backup_type = " + typ
				}
				return usagef("server %s: %s: %v", srv.Name, why, basebackup.ErrStreamIncremental)
			}
			var streamConninfo string
			if srv.BackupMethod == "stream" {
				if streamConninfo, err = streamingConninfo(srv); err != nil {
					return err
				}
			}
			parallel := srv.Parallel
			if c.IsSet("parallel") {
				parallel = c.Int("parallel")
				if parallel < 1 || parallel > 256 {
					return usagef("--parallel %d: use 1 to 256", parallel)
				}
			}
			cod, err := codec.Parse(srv.Compression)
			if err != nil {
				return err
			}
			lock, err := lockServer(srv, "backup")
			if err != nil {
				return err
			}
			defer lock.release()
			ctx := c.Context
			ro := st.repoOptions(srv)
			// Each part is its own upload stream: split the upload
			// concurrency among them so that buffers stay bounded.
			ro.Concurrency = max(1, srv.UploadConcurrency/parallel)
			ro.PartSize = max(minUploadPart, ro.PartSize/int64(parallel))
			st.boundMemory()
			store, err := repo.Open(ctx, ro)
			if err != nil {
				return err
			}
			defer store.Close()
			conn, err := connect(ctx, srv)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			prog := st.newProgress("backup " + srv.Name)
			fast := srv.ImmediateCheckpoint
			if c.IsSet("fast") {
				fast = c.Bool("fast")
			}
			if !fast {
				prog.Say("checkpoint", "waiting for PostgreSQL's checkpoint (spread; --fast or immediate_checkpoint = on for an immediate one)")
			}
			o := basebackup.Options{
				Store: store, Server: srv.Name, Conn: conn, PGData: srv.PGData,
				Codec: cod, Level: srv.CompressionLevel, Parallel: parallel,
				PartSize: int64(srv.BackupPartSize), Fast: fast,
				WALTimeout: time.Duration(srv.BackupWALTimeout), Progress: prog, Log: st.log,
				CellarVersion: versionString(), OnStart: lock.setBackup, Now: st.now,
				StreamConninfo: streamConninfo, CorruptInTransit: st.getenv("CELLAR_TEST_CORRUPT_STREAM"),
				Type: typ, Parent: parent, MaxChain: srv.IncrementalMaxChain,
			}
			if srv.PrimaryConninfo != "" {
				o.SwitchPrimaryWAL = func(ctx context.Context) error { return switchPrimaryWAL(ctx, srv) }
			}
			m, err := basebackup.Run(ctx, o)
			prog.Done()
			if err != nil {
				return err
			}
			if c.Bool("keep") {
				if err := catalog.WriteKeep(ctx, store, srv.Name, catalog.Keep{ID: m.ID, Target: "standalone", Since: st.now().UTC()}); err != nil {
					return fmt.Errorf("backup %s is done, but keeping it failed (run cellar keep %s %s): %w", m.ID, srv.Name, m.ID, err)
				}
			}
			if st.format == "json" {
				return st.printJSON(catalog.SummaryOf(m))
			}
			if !st.quiet {
				kind := "Backup"
				if m.Parent != "" {
					kind = fmt.Sprintf("Incremental backup (%s on %s, chain of %d)", m.Type, m.Parent, m.Chain())
				}
				fmt.Fprintf(st.stdout, "%s %s of server %s done: %s in %s (stored %s, ratio %.1f), WAL %s to %s\n",
					kind, m.ID, srv.Name, humanSize(m.DataSize), m.EndTime.Sub(m.BeginTime).Round(time.Second),
					humanSize(m.StoredSize), m.Ratio(), m.BeginWAL, m.EndWAL)
			}
			return nil
		},
	}
}

// minUploadPart is the smallest upload part every store takes (S3's).
const minUploadPart = 5 << 20

// boundMemory keeps a long run's heap (upload buffers, compression
// pieces) from doubling before the collector runs: a soft limit of
// longRunMemory, unless GOGC or GOMEMLIMIT say otherwise.
func (st *state) boundMemory() {
	if st.getenv("GOGC") != "" || st.getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(longRunMemory)
}

// longRunMemory is the soft memory limit of backup and restore.
const longRunMemory = 100 << 20

// switchPrimaryWAL closes the current WAL segment on the primary that
// primary_conninfo names.
func switchPrimaryWAL(ctx context.Context, srv *config.Server) error {
	cfg, err := pg.ParseConninfo(srv.PrimaryConninfo)
	if err != nil {
		return fmt.Errorf("primary_conninfo of server %s: %v", srv.Name, config.RedactConninfo(err.Error()))
	}
	conn, err := pg.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = pg.SwitchWAL(ctx, conn)
	return err
}

// backupRow is one backup as list-backups and show-backup print it.
type backupRow = catalog.Summary

// catalogRows are a server's backups, newest first (see
// catalog.Catalog.Summaries), with the retention policy's verdict.
func (st *state) catalogRows(srv *config.Server, cat *catalog.Catalog, toEnd bool) []backupRow {
	st.markObsolete(srv, cat)
	return cat.Summaries(toEnd)
}

func listBackupsCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "list-backups",
		Usage:     "list a server's backups, newest first",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 1, "list-backups takes exactly one SERVER argument", func(srv *config.Server, store cloud.Storage) error {
				cat, err := st.readCatalog(c.Context, srv, store, true)
				if err != nil {
					return err
				}
				rows := st.catalogRows(srv, cat, false)
				if st.format == "json" {
					if rows == nil {
						rows = []backupRow{}
					}
					return st.printJSON(rows)
				}
				if len(rows) == 0 {
					fmt.Fprintf(st.stdout, "No backups of server %s\n", srv.Name)
					return nil
				}
				for _, r := range rows {
					if r.Status != catalog.StatusDone {
						line := fmt.Sprintf("%s %s - %s - started %s", srv.Name, r.ID, r.Status, r.BeginTime.Local().Format(time.ANSIC))
						if r.Error != "" {
							line += " - " + oneLine(r.Error)
						}
						fmt.Fprintln(st.stdout, st.scrub(line))
						continue
					}
					size := humanSize(r.DataSize)
					if r.Sealed {
						size = "(encrypted)"
					}
					line := fmt.Sprintf("%s %s - %s - %s - Size: %s - Stored: %s - WAL Size: %s - Type: %s",
						srv.Name, r.ID, r.EndTime.Local().Format(time.ANSIC), r.Status,
						size, humanSize(r.StoredSize), humanSize(r.WALSize), backupType(r))
					if r.Encryption == catalog.EncryptionAge {
						line += " - Encrypted"
					}
					fmt.Fprintln(st.stdout, line)
				}
				return nil
			})
		},
	}
}

func showBackupCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "show-backup",
		Usage:     "show one backup in detail (BACKUP_ID may be latest/last or oldest/first)",
		ArgsUsage: "SERVER BACKUP_ID",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 2, "show-backup takes SERVER and BACKUP_ID (an id, latest or oldest)", func(srv *config.Server, store cloud.Storage) error {
				cat, e, err := st.findBackup(c.Context, srv, store, c.Args().Get(1), true)
				if err != nil {
					return err
				}
				var r backupRow
				for _, row := range st.catalogRows(srv, cat, true) {
					if row.ID == e.ID {
						r = row
					}
				}
				if st.format == "json" {
					return st.printJSON(r)
				}
				printBackup(st, r)
				return nil
			})
		},
	}
}

// findBackup reads the catalog (see readCatalog) and finds the backup
// name means (see catalog.Catalog.Find).
func (st *state) findBackup(ctx context.Context, srv *config.Server, store cloud.Storage, name string, wal bool) (*catalog.Catalog, catalog.Entry, error) {
	cat, err := st.readCatalog(ctx, srv, store, wal)
	if err != nil {
		return nil, catalog.Entry{}, err
	}
	e, err := cat.Find(name)
	if err != nil {
		return nil, catalog.Entry{}, fmt.Errorf("server %s: %w (see list-backups)", srv.Name, err)
	}
	return cat, e, nil
}

func printBackup(st *state, r backupRow) {
	w := st.stdout
	line := func(k string, v any) { fmt.Fprintf(w, "  %-24s: %v\n", k, v) }
	fmt.Fprintf(w, "Backup %s:\n", r.ID)
	line("Server Name", r.Server)
	line("Status", r.Status)
	if r.Retention != "" {
		line("Retention Policy", r.Retention)
	}
	if r.Status != catalog.StatusDone {
		line("Begin time", r.BeginTime.Local().Format(time.RFC3339))
		if r.Error != "" {
			line("Error", st.scrub(oneLine(r.Error)))
		}
		return
	}
	line("PostgreSQL Version", fmt.Sprintf("%d (%s)", r.PGVersion, r.PGVersionString))
	line("PGDATA directory", r.PGData)
	line("System identifier", r.SystemIdentifier)
	line("Taken from standby", r.Standby)
	for _, t := range r.Tablespaces {
		line("Tablespace "+t.Name, fmt.Sprintf("%s (oid %d, %s)", t.Location, t.OID, humanSize(t.Size)))
	}
	fmt.Fprintln(w, "\n  Base backup information:")
	line("Backup type", r.Type)
	if r.Parent != "" {
		line("Parent backup", r.Parent)
	}
	line("Chain length", r.ChainLength)
	line("Timeline", r.Timeline)
	line("Begin WAL", r.BeginWAL)
	line("End WAL", r.EndWAL)
	line("Begin LSN", r.BeginLSN)
	line("End LSN", r.EndLSN)
	line("Begin time", r.BeginTime.Local().Format(time.RFC3339))
	line("End time", r.EndTime.Local().Format(time.RFC3339))
	line("Duration", time.Duration(r.Duration*float64(time.Second)).Round(time.Second))
	line("Size", humanSize(r.DataSize))
	if r.Parent != "" {
		line("Stored size", humanSize(r.StoredSize)+" (what changed since "+r.Parent+")")
	} else {
		line("Stored size", humanSize(r.StoredSize))
	}
	line("Compression", fmt.Sprintf("%s, ratio %.2f", r.Compression, r.Ratio))
	line("Encryption", map[bool]string{true: r.Encryption + " (this host cannot open it: set encryption_identity_file)", false: r.Encryption}[r.Sealed])
	line("Files", r.Files)
	line("Parts", r.Parts)
	fmt.Fprintln(w, "\n  WAL information:")
	line("No of files", r.WALFiles)
	line("Size (stored)", humanSize(r.WALSize))
	line("Last available", r.LastWAL)
	fmt.Fprintln(w, "\n  Catalog information:")
	line("Previous Backup", orDash(r.Previous))
	line("Next Backup", orDash(r.Next))
	line("Children Backups", orDash(strings.Join(r.Children, ", ")))
}

// backupType is a finished backup's type as list-backups prints it:
// "full", or for an incremental its type, its parent and the length of its
// chain ("incr - Parent: ID - Chain: 3").
func backupType(r backupRow) string {
	if r.Parent == "" {
		return r.Type
	}
	return fmt.Sprintf("%s - Parent: %s - Chain: %d", r.Type, r.Parent, r.ChainLength)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// markObsolete marks the backups the server's retention policy no longer
// needs, and those it keeps only because retained backups build on them
// (none without a policy).
func (st *state) markObsolete(srv *config.Server, cat *catalog.Catalog) {
	if pol, err := policyOf(srv); err == nil && srv.RetentionPolicy != "" {
		p := st.decide(cat, pol)
		cat.MarkObsolete(p.Obsolete)
		cat.MarkParents(p.Parents)
	}
}
