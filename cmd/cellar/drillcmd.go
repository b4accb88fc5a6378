package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/restore"
	"github.com/cellar-backup/cellar/wal"
)

// prepareVerifyStart finds the PostgreSQL binaries of the backup's major
// version and the user to run them as, and what recovery should reach
// (cat is read with its WAL listing): what restore --verify-start and a
// drill need, found before anything is restored.
func (st *state) prepareVerifyStart(ctx context.Context, srv *config.Server, cat *catalog.Catalog, m *catalog.Manifest, tgt restore.Target, dest string) (restore.StartOptions, error) {
	var o restore.StartOptions
	if m.PGVersion == 0 {
		return o, fmt.Errorf("the manifest of backup %s does not say its PostgreSQL version", m.ID)
	}
	major := m.PGVersion / 10000
	bin, err := pg.FindBinaries(ctx, srv.PGBinDir, major)
	if err != nil {
		hint := "install PostgreSQL " + strconv.Itoa(major) + "'s server package, or set pg_bin_dir to the directory of its postgres"
		if srv.PGBinDir != "" {
			hint = "set pg_bin_dir to the directory of PostgreSQL " + strconv.Itoa(major) + "'s postgres"
		}
		return o, fmt.Errorf("backup %s is of PostgreSQL %d: %v: %s", m.ID, major, err, hint)
	}
	owner := restore.StartOwner(dest)
	if owner == nil && os.Geteuid() == 0 {
		return o, fmt.Errorf("%w, and the restored files in %s would belong to root: restore into a directory PostgreSQL's user owns, or run cellar as that user", restore.ErrStartRoot, dest)
	}
	o = restore.StartOptions{
		Bin: bin, DataDir: dest, Owner: owner, Env: st.env, Query: srv.DrillQuery, Amcheck: srv.DrillAmcheck,
		Timeout: time.Duration(srv.DrillTimeout), FirstWAL: m.BeginWAL, SegmentSize: m.WALSegmentSize, Log: st.log,
		Users: startUsers(srv, owner),
	}
	for _, kv := range tgt.Settings {
		if kv[0] == "recovery_target_action" && kv[1] == "shutdown" {
			// Shut down at the target, the server could not be
			// asked anything: it pauses there for the check, and
			// the directory keeps the setting.
			o.Settings = append(o.Settings, [2]string{"recovery_target_action", "pause"})
		}
	}
	if tgt.Kind == "" {
		// To the end of WAL: recovery must get as far as the
		// repository holds WAL on the backup's timeline.
		if r, err := cat.Recoverable(m); err == nil {
			o.LastWAL = r.LastWAL.Name
		}
	}
	return o, nil
}

// startUsers are the roles a verification start connects as: the user
// of conninfo, the data directory owner's name and postgres.
func startUsers(srv *config.Server, owner *pg.Owner) []string {
	var out []string
	add := func(u string) {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	if srv.Conninfo != "" {
		if cfg, err := pgconn.ParseConfig(srv.Conninfo); err == nil {
			add(cfg.User)
		}
	}
	uid := os.Geteuid()
	if owner != nil {
		uid = owner.UID
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		add(u.Username)
	}
	add("postgres")
	return out
}

// verifyStartIn starts PostgreSQL on the restored directory as o says,
// in workDir (made here, given to the owner).
func verifyStartIn(ctx context.Context, o restore.StartOptions, workDir string, installAmcheck bool) (restore.StartResult, error) {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return restore.StartResult{}, err
	}
	if o.Owner != nil {
		if err := os.Chown(workDir, o.Owner.UID, o.Owner.GID); err != nil {
			return restore.StartResult{}, err
		}
	}
	o.WorkDir, o.InstallAmcheck = workDir, installAmcheck
	return restore.VerifyStart(ctx, o)
}

// socketWorkDir is a private directory for the verification server's
// socket: dir itself when the socket's path fits there (a socket's path
// has room for about 100 bytes), else a new one in the temporary
// directory. remove deletes it.
func socketWorkDir(dir string) (string, func(), error) {
	if dir == "" || len(dir)+len("/.s.PGSQL.65535") > 100 {
		var err error
		if dir, err = os.MkdirTemp("", "cellar-verify-"); err != nil {
			return "", nil, err
		}
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// describeStart says how the server was left.
func describeStart(r restore.StartResult) string {
	if r.Promoted {
		return fmt.Sprintf("recovery finished and PostgreSQL was promoted to timeline %d: the directory is a clean cluster, ready to start", r.Timeline)
	}
	return "PostgreSQL paused at the target and was shut down: the directory keeps its recovery settings, and starting it recovers to the target again"
}

func pointText(r restore.StartResult) string {
	at := "no transaction replayed"
	if !r.Time.IsZero() {
		at = r.Time.UTC().Format("2006-01-02 15:04:05.000000Z07:00")
	}
	return fmt.Sprintf("LSN %s, %s, timeline %d", r.LSN, at, r.Timeline)
}

func startJSON(r restore.StartResult, restoreTime, total time.Duration) map[string]any {
	out := map[string]any{
		"postgresql_version": r.Version, "reached_lsn": r.LSN.String(), "reached_timeline": r.Timeline,
		"promoted": r.Promoted, "answer": r.Answer, "restore_seconds": restoreTime.Seconds(),
		"replay_seconds": r.Replay.Seconds(), "total_seconds": total.Seconds(), "last_restored_wal": r.LastRestored,
	}
	if !r.Time.IsZero() {
		out["reached_time"] = r.Time
	}
	if r.Amcheck != "" {
		out["amcheck"] = r.Amcheck
	}
	return out
}

// startError turns a failed verification into the command's error, with
// the server's last messages logged.
func (st *state) startError(err error) error {
	var se *restore.StartError
	if errors.As(err, &se) && se.Log != "" && !st.quiet {
		fmt.Fprintf(st.stderr, "cellar: the restored server's last messages:\n    %s\n", strings.ReplaceAll(st.scrub(se.Log), "\n", "\n    "))
	}
	return err
}

func drillCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "drill",
		Usage:     "prove a backup restores: restore it into a scratch directory, start PostgreSQL on it, recover, query it, and record the outcome",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "backup", Usage: "the backup to drill: an id, latest, oldest or random (default latest, or the newest before --target-time)"},
			&cli.StringFlag{Name: "target-time", Usage: "recover up to this time instead of the end of WAL"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the scratch directory (its path is printed)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("drill takes exactly one SERVER argument")
			}
			tgt, err := restore.ParseTarget(restore.TargetSpec{Time: c.String("target-time"), Timeline: "latest"})
			if err != nil {
				return usagef("--target-time %s", strings.TrimPrefix(err.Error(), "target time "))
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			d, err := st.drill(c, srv, tgt, c.String("backup"), c.Bool("keep"))
			if err != nil {
				return err
			}
			if d.Result != catalog.DrillOK {
				return &exitError{code: exitFailure, silent: true}
			}
			return nil
		},
	}
}

// drill runs one drill of srv under its drill lock and records it; the
// error is for what kept it from being recorded at all.
func (st *state) drill(c *cli.Context, srv *config.Server, tgt restore.Target, backup string, keep bool) (catalog.Drill, error) {
	ctx := c.Context
	lock, err := lockServer(srv, "drill")
	if err != nil {
		return catalog.Drill{}, err
	}
	defer lock.release()
	store, err := st.openStore(ctx, srv)
	if err != nil {
		return catalog.Drill{}, err
	}
	defer store.Close()
	host, _ := os.Hostname()
	st.cleanDrills(ctx, srv, store, host)
	// A backup that does not exist, or a target it cannot reach, is the
	// caller's mistake: an error, not a failed drill.
	cat, m, err := st.drillBackup(ctx, srv, store, backup, tgt)
	if err != nil {
		return catalog.Drill{}, err
	}

	d := catalog.Drill{Server: srv.Name, Backup: m.ID, Host: host, PID: os.Getpid(), Target: strings.TrimPrefix(tgt.Describe(), " to ")}
	if tgt.Kind == "" {
		d.Target = "end of WAL"
	}
	d, err = catalog.NewDrill(ctx, store, d)
	if err != nil {
		return d, fmt.Errorf("recording the drill in the repository: %w", err)
	}
	began := d.BeginTime
	scratch := filepath.Join(srv.DrillDirectory, scratchPrefix(srv)+d.ID)
	res, restoreTime, err := st.runDrill(ctx, c, srv, store, cat, m, tgt, scratch, &d)
	d.EndTime = time.Now().UTC()
	d.TotalSeconds = d.EndTime.Sub(began).Seconds()
	d.RestoreSeconds = restoreTime.Seconds()
	d.ReplaySeconds = res.Replay.Seconds()
	if err == nil {
		d.Result = catalog.DrillOK
		d.ReachedLSN, d.ReachedTimeline, d.Answer, d.Amcheck = res.LSN.String(), res.Timeline, res.Answer, res.Amcheck
		if !res.Time.IsZero() {
			d.ReachedTime = res.Time.UTC()
		}
		d.State = "paused at the target"
		if res.Promoted {
			d.State = "promoted"
		}
	} else {
		d.Result = catalog.DrillFailed
		d.Error = st.scrub(oneLine(err.Error()))
		err = st.startError(err)
	}
	if keep {
		st.log.Info("drill: the scratch directory is kept", "path", scratch)
	} else if !wal.AwaitPrefetches(spoolDir(srv, "prefetch"), filepath.Join(scratch, "data", "pg_wal"), 10*time.Second) {
		st.log.Warn("drill: a WAL prefetch still runs: the scratch directory is left for the next drill to remove", "path", scratch)
	} else if rerr := os.RemoveAll(scratch); rerr != nil {
		st.log.Warn("drill: could not remove the scratch directory", "path", scratch, "error", rerr)
	}
	if werr := catalog.WriteDrill(context.WithoutCancel(ctx), store, d); werr != nil {
		return d, fmt.Errorf("recording the drill's outcome in the repository: %w", werr)
	}
	st.printDrill(d, scratch, keep)
	if err != nil {
		fmt.Fprintf(st.stderr, "cellar: drill of server %s FAILED: %s\n", srv.Name, d.Error)
	}
	return d, nil
}

// runDrill restores the backup into scratch and starts PostgreSQL on it.
func (st *state) runDrill(ctx context.Context, c *cli.Context, srv *config.Server, store cloud.Storage, cat *catalog.Catalog, m *catalog.Manifest, tgt restore.Target, scratch string, d *catalog.Drill) (restore.StartResult, time.Duration, error) {
	var res restore.StartResult
	dest := filepath.Join(scratch, "data")
	if err := makeScratch(srv, scratch, dest); err != nil {
		return res, 0, err
	}
	v, err := st.prepareVerifyStart(ctx, srv, cat, m, tgt, dest)
	if err != nil {
		return res, 0, err
	}
	rec := restore.Recovery{Settings: append([][2]string{{"restore_command", st.restoreCommand(c, srv)}}, tgt.Settings...), Signal: "recovery"}
	began := time.Now()
	rr, err := restore.Run(ctx, restore.Options{Store: store, Manifest: m, Dest: dest, Parallel: srv.Parallel, Recovery: rec, Log: st.log})
	restoreTime := time.Since(began)
	if err != nil {
		return res, restoreTime, fmt.Errorf("restoring backup %s into drill_directory %s: %w", m.ID, srv.DrillDirectory, err)
	}
	d.Bytes = rr.Bytes
	work, remove, err := socketWorkDir(filepath.Join(scratch, "s"))
	if err != nil {
		return res, restoreTime, err
	}
	defer remove()
	res, err = verifyStartIn(ctx, v, work, true)
	return res, restoreTime, err
}

// drillBackup reads the catalog, with its WAL listing, and the manifest
// of the backup to drill.
func (st *state) drillBackup(ctx context.Context, srv *config.Server, store cloud.Storage, backup string, tgt restore.Target) (*catalog.Catalog, *catalog.Manifest, error) {
	switch {
	case backup == "" && tgt.Kind == "time":
		backup = "auto"
	case backup == "":
		backup = "latest"
	}
	cat, err := st.readCatalog(ctx, srv, store, true)
	if err != nil {
		return nil, nil, err
	}
	if strings.EqualFold(backup, "random") {
		done := cat.Done()
		if len(done) == 0 {
			return nil, nil, fmt.Errorf("server %s has no finished backup to drill (see list-backups)", srv.Name)
		}
		backup = done[rand.IntN(len(done))].ID
	}
	m, err := pickBackup(ctx, srv, store, cat, backup, tgt)
	if err != nil {
		return nil, nil, err
	}
	return cat, m, checkTarget(cat, srv, m, tgt)
}

// makeScratch makes the drill's scratch directory and the data directory
// in it, given, when cellar runs as root, to PostgreSQL's user.
func makeScratch(srv *config.Server, scratch, dest string) error {
	if err := os.MkdirAll(srv.DrillDirectory, 0o755); err != nil {
		return fmt.Errorf("drill_directory %s: %w", srv.DrillDirectory, err)
	}
	if err := os.Mkdir(scratch, 0o700); err != nil {
		return fmt.Errorf("drill_directory %s: %w", srv.DrillDirectory, err)
	}
	if err := os.Mkdir(dest, 0o700); err != nil {
		return fmt.Errorf("drill_directory %s: %w", srv.DrillDirectory, err)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	o := drillOwner(srv)
	if o == nil {
		return fmt.Errorf("drill_directory %s belongs to root, and PostgreSQL refuses to run as root: give drill_directory to PostgreSQL's user, or run the drill as that user", srv.DrillDirectory)
	}
	for _, p := range []string{scratch, dest} {
		if err := os.Chown(p, o.UID, o.GID); err != nil {
			return err
		}
	}
	return nil
}

// scratchPrefix begins the names of the scratch directories of srv's
// drills; the drill's id ends them.
func scratchPrefix(srv *config.Server) string { return "cellar-drill-" + srv.Name + "-" }

// drillOwner is the user a drill run by root starts PostgreSQL as: the
// owner of drill_directory, else of pgdata, else the user postgres.
func drillOwner(srv *config.Server) *pg.Owner {
	for _, p := range []string{srv.DrillDirectory, srv.PGData} {
		if o := repo.OwnerOf(p); o != nil {
			return &pg.Owner{UID: o.UID, GID: o.GID}
		}
	}
	if u, err := user.Lookup("postgres"); err == nil {
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil && uid != 0 {
			return &pg.Owner{UID: uid, GID: gid}
		}
	}
	return nil
}

// cleanDrills removes what drills of srv that were killed left: their
// scratch directories (stopping a server still running there) and, on
// this host, their RUNNING records, which become FAILED. The caller holds
// the drill lock, so no drill of srv runs here.
func (st *state) cleanDrills(ctx context.Context, srv *config.Server, store cloud.Storage, host string) {
	prefix := scratchPrefix(srv)
	stale, _ := filepath.Glob(filepath.Join(srv.DrillDirectory, prefix+"*"))
	for _, dir := range stale {
		if !catalog.ValidDrillID(strings.TrimPrefix(filepath.Base(dir), prefix)) {
			continue // another server's, whose name begins with this one's
		}
		pg.StopStale(filepath.Join(dir, "data"))
		if err := os.RemoveAll(dir); err != nil {
			st.log.Warn("drill: could not remove the scratch directory of an interrupted drill", "path", dir, "error", err)
		} else {
			st.log.Info("drill: removed the scratch directory of an interrupted drill", "path", dir)
		}
	}
	drills, err := catalog.ListDrills(ctx, store, srv.Name, 20)
	if err != nil {
		st.log.Warn("drill: could not list earlier drills", "error", err)
		return
	}
	for _, d := range drills {
		if d.Result != catalog.DrillRunning || d.Host != host {
			continue
		}
		d.Result = catalog.DrillFailed
		d.Error = fmt.Sprintf("interrupted: the drill (pid %d) ended before it finished", d.PID)
		if err := catalog.WriteDrill(ctx, store, d); err != nil {
			st.log.Warn("drill: could not record an interrupted drill", "drill", d.ID, "error", err)
		}
	}
}

func (st *state) printDrill(d catalog.Drill, scratch string, keep bool) {
	if st.format == "json" {
		_ = st.printJSON(d)
		return
	}
	if st.quiet && d.Result == catalog.DrillOK {
		return
	}
	w := st.stdout
	fmt.Fprintf(w, "Drill %s of server %s: %s\n", d.ID, d.Server, d.Result)
	if d.Backup != "" {
		fmt.Fprintf(w, "  Backup: %s\n", d.Backup)
	}
	fmt.Fprintf(w, "  Target: %s\n", d.Target)
	if d.Result == catalog.DrillOK {
		at := "no transaction replayed"
		if !d.ReachedTime.IsZero() {
			at = d.ReachedTime.Format("2006-01-02 15:04:05.000000Z07:00")
		}
		fmt.Fprintf(w, "  Reached: LSN %s, %s, timeline %d (%s)\n", d.ReachedLSN, at, d.ReachedTimeline, d.State)
		fmt.Fprintf(w, "  Query answered: %s\n", d.Answer)
		if d.Amcheck != "" {
			fmt.Fprintf(w, "  pg_amcheck: %s\n", d.Amcheck)
		}
	} else {
		fmt.Fprintf(w, "  Error: %s\n", d.Error)
	}
	fmt.Fprintf(w, "  Time: file restore %s, WAL replay %s, total %s\n", secs(d.RestoreSeconds), secs(d.ReplaySeconds), secs(d.TotalSeconds))
	if keep {
		fmt.Fprintf(w, "  Scratch directory: %s (kept)\n", scratch)
	}
}

func secs(s float64) string { return strconv.FormatFloat(s, 'f', 1, 64) + " s" }

func listDrillsCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "list-drills",
		Usage:     "list a server's restore drills, newest first",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 1, "list-drills takes exactly one SERVER argument", func(srv *config.Server, store cloud.Storage) error {
				drills, err := catalog.ListDrills(c.Context, store, srv.Name, 0)
				if err != nil {
					return err
				}
				for i, j := 0, len(drills)-1; i < j; i, j = i+1, j-1 {
					drills[i], drills[j] = drills[j], drills[i]
				}
				if st.format == "json" {
					if drills == nil {
						drills = []catalog.Drill{}
					}
					return st.printJSON(drills)
				}
				if len(drills) == 0 {
					fmt.Fprintf(st.stdout, "No drills of server %s\n", srv.Name)
					return nil
				}
				for _, d := range drills {
					line := fmt.Sprintf("%s %s - %s - %s - backup %s - target %s", srv.Name, d.ID, d.BeginTime.Local().Format(time.ANSIC), d.Result, orDash(d.Backup), d.Target)
					switch d.Result {
					case catalog.DrillOK:
						line += fmt.Sprintf(" - reached %s - restore %s, replay %s, total %s", d.ReachedLSN, secs(d.RestoreSeconds), secs(d.ReplaySeconds), secs(d.TotalSeconds))
					case catalog.DrillFailed:
						if d.Error != "" {
							line += " - " + oneLine(d.Error)
						}
					}
					fmt.Fprintln(st.stdout, st.scrub(line))
				}
				return nil
			})
		},
	}
}

// drillRunning says whether a drill of any of the servers runs on this
// host.
func drillRunning(servers []*config.Server) bool {
	for _, srv := range servers {
		if _, running := lockHolderOf(srv, "drill"); running {
			return true
		}
	}
	return false
}

// cronDrill starts a drill of srv, detached, when drill_schedule says one
// is due: the last began longer ago than the schedule, or there is none
// and a finished backup exists. Drills run one at a time on a host:
// *drilling is set once one runs or was started. Its output is appended
// to cellar-SERVER.drill.log in lock_directory; its outcome is recorded in
// the repository.
func (st *state) cronDrill(c *cli.Context, srv *config.Server, drilling *bool) error {
	if srv.DrillSchedule == "" || *drilling {
		return nil
	}
	every, err := config.ParseAge(srv.DrillSchedule)
	if err != nil {
		return err
	}
	// One cron at a time decides, and hands over only once the drill
	// holds its lock: a later cron sees the lock, or the drill's record.
	decide, err := lockServer(srv, "drill-cron")
	if errors.Is(err, errBusy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer decide.release()
	if _, running := lockHolderOf(srv, "drill"); running {
		*drilling = true
		return nil
	}
	ctx := c.Context
	store, err := st.openStore(ctx, srv)
	if err != nil {
		return err
	}
	defer store.Close()
	drills, err := catalog.ListDrills(ctx, store, srv.Name, 1)
	if err != nil {
		return err
	}
	if len(drills) > 0 && st.now().Sub(drills[len(drills)-1].BeginTime) < every {
		return nil
	}
	cat, err := st.readCatalog(ctx, srv, store, false)
	if err != nil {
		return err
	}
	if len(cat.Done()) == 0 {
		return nil
	}
	logPath := strings.TrimSuffix(lockPath(srv, "drill"), ".lock") + ".log"
	cmd, err := st.detach(c, []string{"drill", srv.Name}, logPath)
	if err != nil {
		return fmt.Errorf("starting a drill: %w", err)
	}
	*drilling = true
	st.log.Info("cron: started a drill", "server", srv.Name, "pid", cmd.Process.Pid, "log", logPath)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if _, running := lockHolderOf(srv, "drill"); running {
			return nil
		}
		select {
		case <-exited:
			return nil // done already, or failed: its log and record say
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
