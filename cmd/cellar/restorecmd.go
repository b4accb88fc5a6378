package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/pg"
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
			m, err := chooseBackup(ctx, st, srv, store, id, tgt)
			if err != nil {
				return err
			}
			if err := checkTarget(ctx, store, srv, m, tgt); err != nil {
				return err
			}
			rec := restore.Recovery{Settings: [][2]string{{"restore_command", st.restoreCommand(c, srv)}}, Signal: "recovery"}
			if c.Bool("standby") {
				rec.Signal = "standby"
			}
			rec.Settings = append(rec.Settings, tgt.settings...)
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
				return err
			}
			if os.Geteuid() == 0 && ownerOf(dest) == nil {
				// Root restored into a directory of root's: the files
				// were not given to anybody else.
				st.log.Warn("the restored files belong to root, and PostgreSQL refuses to run as root: give them to PostgreSQL's user (chown -R postgres: " + dest + ") before starting it, or restore into a directory that user owns")
			}
			if st.format == "json" {
				return st.printJSON(map[string]any{"backup": m.ID, "server": srv.Name, "destination": dest,
					"files": res.Files, "fetched": res.Fetched, "kept": res.Kept, "removed": res.Removed,
					"bytes": res.Bytes, "parts": res.Parts, "seconds": time.Since(began).Seconds(), "recovery": recoveryMap(rec)})
			}
			if !st.quiet {
				fmt.Fprintf(st.stdout, "Restored backup %s of server %s to %s: %d files (%d fetched, %d kept, %d removed), %s in %s\n",
					m.ID, srv.Name, dest, res.Files, res.Fetched, res.Kept, res.Removed, humanSize(res.Bytes), time.Since(began).Round(time.Second))
				fmt.Fprintf(st.stdout, "Start PostgreSQL on it to recover%s; it fetches WAL with: %s\n", tgt.describe(), rec.Settings[0][1])
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

// target is a parsed recovery target.
type target struct {
	kind     string // "", time, lsn, xid, name, immediate
	time     time.Time
	lsn      pg.LSN
	text     string
	settings [][2]string
}

func (t target) describe() string {
	switch t.kind {
	case "":
		return " to the end of the archived WAL"
	case "immediate":
		return " until the backup is consistent"
	}
	return " to " + t.kind + " " + t.text
}

// timeLayouts are the forms --target-time accepts; without a zone, the
// time is local.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999 Z07:00",
	"2006-01-02 15:04:05.999999999 MST",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999",
}

func parseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		var t time.Time
		var err error
		if strings.Contains(l, "07") || strings.Contains(l, "MST") {
			t, err = time.Parse(l, s)
		} else {
			t, err = time.ParseInLocation(l, s, time.Local)
		}
		if err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--target-time %q is not a time: write e.g. '2026-12-01 10:00:00+00' or 2026-12-01T10:00:00Z", s)
}

func parseTarget(c *cli.Context) (target, error) {
	var t target
	n := 0
	for _, name := range []string{"target-time", "target-lsn", "target-xid", "target-name", "target-immediate"} {
		if c.IsSet(name) {
			n++
		}
	}
	if n > 1 {
		return t, usagef("give at most one of --target-time, --target-lsn, --target-xid, --target-name and --target-immediate")
	}
	switch {
	case c.IsSet("target-time"):
		tm, err := parseTargetTime(c.String("target-time"))
		if err != nil {
			return t, usagef("%v", err)
		}
		t.kind, t.time, t.text = "time", tm, tm.UTC().Format("2006-01-02 15:04:05.999999+00")
		t.settings = append(t.settings, [2]string{"recovery_target_time", t.text})
	case c.IsSet("target-lsn"):
		l, err := pg.ParseLSN(c.String("target-lsn"))
		if err != nil {
			return t, usagef("--target-lsn: %v", err)
		}
		t.kind, t.lsn, t.text = "lsn", l, l.String()
		t.settings = append(t.settings, [2]string{"recovery_target_lsn", t.text})
	case c.IsSet("target-xid"):
		x := strings.TrimSpace(c.String("target-xid"))
		if _, err := strconv.ParseUint(x, 10, 64); err != nil {
			return t, usagef("--target-xid %q is not a transaction id (a whole number)", x)
		}
		t.kind, t.text = "xid", x
		t.settings = append(t.settings, [2]string{"recovery_target_xid", x})
	case c.IsSet("target-name"):
		name := c.String("target-name")
		if name == "" {
			return t, usagef("--target-name is empty: name a restore point made with pg_create_restore_point")
		}
		t.kind, t.text = "name", name
		t.settings = append(t.settings, [2]string{"recovery_target_name", name})
	case c.Bool("target-immediate"):
		t.kind = "immediate"
		t.settings = append(t.settings, [2]string{"recovery_target", "immediate"})
	}
	tl := strings.ToLower(strings.TrimSpace(c.String("target-timeline")))
	if tl != "latest" && tl != "current" {
		if n, err := strconv.ParseUint(tl, 10, 32); err != nil || n == 0 {
			return t, usagef("--target-timeline %q: use latest, current or a timeline number", c.String("target-timeline"))
		}
	}
	t.settings = append(t.settings, [2]string{"recovery_target_timeline", tl})
	action := strings.ToLower(c.String("target-action"))
	switch action {
	case "":
		if t.kind != "" {
			action = "promote"
		}
	case "pause", "promote", "shutdown":
		if t.kind == "" {
			return t, usagef("--target-action needs a target (--target-time, --target-lsn, --target-xid, --target-name or --target-immediate)")
		}
	default:
		return t, usagef("--target-action %q: use pause, promote or shutdown", action)
	}
	if action != "" {
		t.settings = append(t.settings, [2]string{"recovery_target_action", action})
	}
	if c.Bool("exclusive") {
		if t.kind == "" || t.kind == "immediate" || t.kind == "name" {
			return t, usagef("--exclusive needs --target-time, --target-lsn or --target-xid")
		}
		t.settings = append(t.settings, [2]string{"recovery_target_inclusive", "off"})
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

// chooseBackup reads the manifest of the backup named by id: an id,
// latest/last, oldest/first, or auto (the newest that ended before the
// target time).
func chooseBackup(ctx context.Context, st *state, srv *config.Server, store cloud.Storage, id string, tgt target) (*catalog.Manifest, error) {
	list, err := catalog.ListBackups(ctx, store, srv.Name)
	if err != nil {
		return nil, err
	}
	var done []*catalog.Manifest
	for _, b := range list {
		if b.Manifest != nil && b.Manifest.Status == catalog.StatusDone {
			done = append(done, b.Manifest)
		}
	}
	if len(done) == 0 {
		return nil, fmt.Errorf("server %s has no finished backup to restore (see list-backups)", srv.Name)
	}
	pick := ""
	switch strings.ToLower(id) {
	case "auto":
		if tgt.kind != "time" {
			return nil, usagef("BACKUP_ID auto needs --target-time")
		}
		for _, m := range done {
			if !m.EndTime.After(tgt.time) {
				pick = m.ID
			}
		}
		if pick == "" {
			return nil, fmt.Errorf("no backup of server %s ended before %s: the oldest ended at %s, so the recoverable range starts there",
				srv.Name, tgt.text, done[0].EndTime.UTC().Format(time.RFC3339))
		}
	default:
		rows := make([]backupRow, 0, len(list))
		for i := len(list) - 1; i >= 0; i-- {
			b := list[i]
			if b.Manifest != nil {
				rows = append(rows, backupRow{ID: b.Manifest.ID, Status: b.Manifest.Status})
			} else {
				rows = append(rows, backupRow{ID: b.Started.ID, Status: b.Started.Status})
			}
		}
		r, err := pickRow(rows, id)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", srv.Name, err)
		}
		if r.Status != catalog.StatusDone {
			return nil, fmt.Errorf("backup %s of server %s is %s, not a finished backup: choose another (see list-backups)", r.ID, srv.Name, r.Status)
		}
		pick = r.ID
	}
	return catalog.ReadManifest(ctx, store, srv.Name, pick)
}

// checkTarget refuses a target before the backup's end or after the last
// archived WAL, giving the range that is recoverable.
func checkTarget(ctx context.Context, store cloud.Storage, srv *config.Server, m *catalog.Manifest, tgt target) error {
	if tgt.kind != "time" && tgt.kind != "lsn" {
		return nil
	}
	var last pg.WALName
	var lastTime time.Time
	found := false
	err := catalog.ListWALFiles(ctx, store, srv.Name, func(w pg.WALName, o cloud.ObjectInfo) error {
		if w.Kind != pg.Segment || w.Timeline < m.Timeline {
			return nil
		}
		if !found || w.Name[8:] > last.Name[8:] || (w.Name[8:] == last.Name[8:] && w.Timeline > last.Timeline) {
			last, found = w, true
		}
		if o.ModTime.After(lastTime) {
			lastTime = o.ModTime
		}
		return nil
	})
	if err != nil {
		return err
	}
	endLSN, _ := pg.ParseLSN(m.EndLSN)
	switch tgt.kind {
	case "time":
		rangeText := fmt.Sprintf("backup %s can recover from %s to %s", m.ID, m.EndTime.UTC().Format(time.RFC3339), lastTime.UTC().Format(time.RFC3339))
		if tgt.time.Before(m.EndTime) {
			return fmt.Errorf("--target-time %s is before the end of backup %s (%s): choose an older backup, or a later target (%s)",
				tgt.text, m.ID, m.EndTime.UTC().Format(time.RFC3339), rangeText)
		}
		if found && tgt.time.After(lastTime) {
			return fmt.Errorf("--target-time %s is after the last archived WAL (%s, archived at %s): %s",
				tgt.text, last.Name, lastTime.UTC().Format(time.RFC3339), rangeText)
		}
	case "lsn":
		var lastEnd pg.LSN
		if found {
			lastEnd = pg.LSN((last.SegNo(m.WALSegmentSize) + 1) * uint64(m.WALSegmentSize))
		}
		rangeText := fmt.Sprintf("backup %s can recover from LSN %s to %s", m.ID, m.EndLSN, lastEnd)
		if tgt.lsn < endLSN {
			return fmt.Errorf("--target-lsn %s is before the end of backup %s (%s): %s", tgt.text, m.ID, m.EndLSN, rangeText)
		}
		if found && tgt.lsn > lastEnd {
			return fmt.Errorf("--target-lsn %s is after the last archived WAL (%s): %s", tgt.text, last.Name, rangeText)
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
				m, err := chooseBackup(c.Context, st, srv, store, c.Args().Get(1), target{})
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
					fmt.Fprintf(st.stdout, "Backup %s of server %s: %s (%d parts, %d files, WAL %s to %s: %d segments)\n",
						m.ID, srv.Name, status, res.Parts, res.Files, res.FirstWAL, res.LastWAL, res.WAL)
				}
				if len(res.Problems) > 0 {
					return &exitError{code: exitFailure, silent: true}
				}
				return nil
			})
		},
	}
}
