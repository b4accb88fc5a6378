package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/basebackup"
	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/retention"
)

// checkResult is one line of `cellar check`.
type checkResult struct {
	Name   string `json:"name"`
	Status string `json:"status"` // OK or FAILED
	Hint   string `json:"hint,omitempty"`
}

// Time limits of the repository checks. Together they stay under the 30 s
// within which `check` must answer even when the endpoint is unreachable.
const (
	reachTimeout = 12 * time.Second
	writeTimeout = 15 * time.Second
)

func checkCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "check every precondition for backup and archiving; exit 0 only if all are OK",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "nagios", Usage: "print one line in the Nagios plugin format; exit 0 OK, 2 CRITICAL"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("check takes exactly one SERVER argument")
			}
			name := c.Args().First()
			srv, err := st.server(c)
			var results []checkResult
			code := exitOK
			if err != nil {
				var ce *config.Error
				if !errors.As(err, &ce) {
					return err
				}
				// A configuration error is a failed check and, as for every
				// command, exit status 2.
				results = append(results, checkResult{"configuration", "FAILED", st.scrub(oneLine(err.Error()))})
				code = exitUsage
			} else {
				results = append(results, checkResult{Name: "configuration", Status: "OK"})
				repoResults, store := st.checkRepository(c.Context, srv)
				results = append(results, repoResults...)
				if r := checkLockDirectory(srv); r.Status != "OK" {
					results = append(results, r)
				}
				// PostgreSQL is checked when Cellar knows how to reach it.
				if srv.Conninfo != "" {
					results = append(results, st.checkPostgres(c.Context, srv, store)...)
				}
				if srv.StreamingConninfo != "" || srv.StreamingArchiver {
					results = append(results, st.checkStreaming(c.Context, srv)...)
				}
				// The catalog checks need a repository that answers, and
				// are bounded like the rest.
				repoOK := store != nil
				for _, r := range repoResults {
					repoOK = repoOK && r.Status == "OK"
				}
				cctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
				if srv.LastBackupMaximumAge != "" {
					if repoOK {
						results = append(results, st.checkBackupAge(cctx, srv, store))
					} else {
						results = append(results, checkResult{"backup maximum age", "FAILED", "the repository does not answer (see repository reachable)"})
					}
				}
				// The backup catalog is checked for a server set up for
				// backups (a repository alone is checked as such).
				if repoOK && (srv.Conninfo != "" || srv.RetentionPolicy != "" || srv.MinimumRedundancy > 0) {
					results = append(results, st.checkCatalog(cctx, srv, store)...)
				}
				cancel()
				if store != nil {
					store.Close()
				}
			}
			failed := 0
			for _, r := range results {
				if r.Status != "OK" {
					failed++
				}
			}
			if failed > 0 && code == exitOK {
				code = exitFailure
			}
			switch {
			case c.Bool("nagios"):
				printNagios(st.stdout, name, results, failed)
				if failed > 0 {
					code = 2 // Nagios CRITICAL
				}
			case st.format == "json":
				status := "OK"
				if failed > 0 {
					status = "FAILED"
				}
				if err := st.printJSON(map[string]any{"server": name, "status": status, "checks": results}); err != nil {
					return err
				}
			default:
				for _, r := range results {
					if r.Status == "OK" {
						fmt.Fprintf(st.stdout, "%s: OK\n", r.Name)
					} else {
						fmt.Fprintf(st.stdout, "%s: FAILED (%s)\n", r.Name, r.Hint)
					}
				}
			}
			if code != exitOK {
				return &exitError{code: code, silent: true}
			}
			return nil
		},
	}
}

func printNagios(w io.Writer, name string, results []checkResult, failed int) {
	if failed == 0 {
		fmt.Fprintf(w, "CELLAR OK - server %s: %d checks OK\n", name, len(results))
		return
	}
	var bad []string
	for _, r := range results {
		if r.Status != "OK" {
			bad = append(bad, r.Name+": "+r.Hint)
		}
	}
	fmt.Fprintf(w, "CELLAR CRITICAL - server %s has %d failed checks: %s\n", name, failed, strings.Join(bad, "; "))
}

// checkRepository checks that the repository answers and that a probe
// object can be written, read back and deleted. It returns the opened
// repository for the checks that follow (nil when it could not be opened);
// the caller closes it.
func (st *state) checkRepository(ctx context.Context, srv *config.Server) ([]checkResult, cloud.Storage) {
	fail := func(name string, err error) checkResult {
		return checkResult{name, "FAILED", st.scrub(oneLine(err.Error()))}
	}
	reachable, writable := "repository reachable", "repository writable"
	opts := st.repoOptions(srv)
	where := repo.Endpoint(opts)
	// When the repository cannot be reached, the write check is not run:
	// one FAILED line names the cause.
	store, err := repo.Open(ctx, opts)
	if err != nil {
		return []checkResult{fail(reachable, err)}, nil
	}

	rctx, cancel := context.WithTimeout(ctx, reachTimeout)
	err = store.List(rctx, "", func(cloud.ObjectInfo) error { return errStop })
	cancel()
	if err != nil && !errors.Is(err, errStop) {
		return []checkResult{fail(reachable, noAnswer(rctx, err, reachTimeout, where, ""))}, store
	}
	results := []checkResult{{Name: reachable, Status: "OK"}}

	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := probeWrite(wctx, store); err != nil {
		return append(results, fail(writable, noAnswer(wctx, err, writeTimeout, where, ""))), store
	}
	return append(results, checkResult{Name: writable, Status: "OK"}), store
}

var errStop = errors.New("stop")

// checkLockDirectory checks that lock_directory exists; the item is shown
// only when it fails. Whether this user may write it is not checked:
// monitoring only looks at locks, and the users who take them are told by
// their own commands.
func checkLockDirectory(srv *config.Server) checkResult {
	const name = "lock directory"
	var d *lockfile.DirError
	if err := lockfile.CheckDir(srv.LockDirectory); errors.As(err, &d) && !errors.Is(err, lockfile.ErrNotWritable) {
		return checkResult{name, "FAILED", "lock_directory " + d.Error()}
	}
	return checkResult{Name: name, Status: "OK"}
}

// probeWrite writes a small random object, reads it back and deletes it.
func probeWrite(ctx context.Context, store cloud.Storage) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	key := fmt.Sprintf("check/probe-%s-%d-%s", strings.ReplaceAll(host, "/", "_"), os.Getpid(), hex.EncodeToString(b[:4]))
	payload := []byte(hex.EncodeToString(b[:]))
	if err := store.Put(ctx, key, bytes.NewReader(payload), int64(len(payload))); err != nil {
		return err
	}
	defer store.Delete(context.WithoutCancel(ctx), key)
	rc, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("probe object %s read back different bytes than were written", key)
	}
	return store.Delete(ctx, key)
}

// checkPostgres checks what archiving needs of PostgreSQL: that it answers
// on conninfo, that wal_level, archive_mode and archive_command are set
// for Cellar, that the archiver is not failing, and that the repository
// belongs to this cluster.
func (st *state) checkPostgres(ctx context.Context, srv *config.Server, store cloud.Storage) []checkResult {
	ok := func(name string) checkResult { return checkResult{Name: name, Status: "OK"} }
	fail := func(name, hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := connect(cctx, srv)
	if err != nil {
		return []checkResult{fail("PostgreSQL", err.Error())}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	results := []checkResult{ok("PostgreSQL")}
	show := func(name string) string {
		v, err := pg.Setting(cctx, conn, name)
		if err != nil {
			return "?" + err.Error()
		}
		return v
	}
	version, err := strconv.Atoi(show("server_version_num"))
	if err != nil {
		results = append(results, fail("PostgreSQL version supported", err.Error()))
	} else if err := basebackup.CheckVersion(version, show("server_version")); err != nil {
		results = append(results, fail("PostgreSQL version supported", err.Error()))
	} else {
		results = append(results, ok("PostgreSQL version supported"))
	}
	// A stream backup reads nothing itself and needs only the replication
	// connection, which the streaming checks cover.
	local := srv.BackupMethod != "stream"
	if local {
		if err := basebackup.CheckPrivileges(cctx, conn, version); err != nil {
			results = append(results, fail("superuser or backup privileges", err.Error()))
		} else {
			results = append(results, ok("superuser or backup privileges"))
		}
	}
	if srv.PGData != "" && local {
		if err := basebackup.CheckDataDirectory(srv.PGData, show("data_directory")); err != nil {
			results = append(results, fail("data directory", err.Error()))
		} else {
			results = append(results, ok("data directory"))
		}
	}
	if v := show("wal_level"); v == "replica" || v == "logical" {
		results = append(results, ok("wal_level"))
	} else {
		results = append(results, fail("wal_level", fmt.Sprintf("wal_level is %s: set wal_level = replica and restart PostgreSQL", v)))
	}
	results = append(results, st.checkArchiving(cctx, srv, conn, store, show)...)
	return append(results, st.checkSystemIdentifier(cctx, srv, conn, store))
}

// checkArchiving checks archive_mode, archive_command, the archiver, and
// that what PostgreSQL archived last is in the repository.
// With streaming_archiver = on and archive_mode off, receive-wal is the
// only archiver, which the streaming checks cover.
func (st *state) checkArchiving(cctx context.Context, srv *config.Server, conn *pgx.Conn, store cloud.Storage, show func(string) string) []checkResult {
	ok := func(name string) checkResult { return checkResult{Name: name, Status: "OK"} }
	fail := func(name, hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	var results []checkResult
	switch v := show("archive_mode"); {
	case v == "on" || v == "always":
		results = append(results, ok("archive_mode"))
	case srv.StreamingArchiver:
		return nil
	default:
		results = append(results, fail("archive_mode", fmt.Sprintf("archive_mode is %s: set archive_mode = on and restart PostgreSQL (or stream WAL with streaming_archiver = on)", v)))
	}
	// archive_command is judged by its effect (the two checks after it):
	// a wrapper script or a chain of commands archives as well as the
	// plain command. Only a command that cannot archive fails here.
	switch v := show("archive_command"); {
	case strings.TrimSpace(v) == "" || v == "(disabled)":
		if lib := show("archive_library"); lib != "" && !strings.HasPrefix(lib, "?") {
			results = append(results, fail("archive_command", fmt.Sprintf("PostgreSQL archives with the module archive_library = %s, not a command: set archive_library = '' and archive_command = 'cellar wal-push %s %%p', then reload PostgreSQL", lib, srv.Name)))
		} else {
			results = append(results, fail("archive_command", fmt.Sprintf("archive_command is empty: set archive_command = 'cellar wal-push %s %%p' and reload PostgreSQL", srv.Name)))
		}
	default:
		results = append(results, ok("archive_command"))
		if !archiveCommandOK(v, srv.Name) {
			st.log.Info("hint: archive_command does not name cellar wal-push "+srv.Name+"; archiving is judged by its effect (continuous archiving, WAL archive)", "archive_command", st.scrub(v))
		}
	}
	a, err := pg.ReadArchiver(cctx, conn)
	switch {
	case err != nil:
		results = append(results, fail("continuous archiving", err.Error()))
	case a.Failing:
		results = append(results, fail("continuous archiving", fmt.Sprintf("the archiver is failing: %d failures, last on %s; see the PostgreSQL log", a.Failed, a.LastFailedWAL)))
	default:
		results = append(results, ok("continuous archiving"))
	}
	if err == nil && a.LastArchivedWAL != "" && store != nil {
		results = append(results, st.checkArchivedWAL(cctx, srv, store, a.LastArchivedWAL, a.LastArchivedTime))
	}
	return results
}

// checkArchivedWAL checks that the last file PostgreSQL says it archived
// is in the repository: an archive_command that succeeds but stores
// elsewhere (a wrapper for another server, another configuration) fails
// here, however it is written.
func (st *state) checkArchivedWAL(ctx context.Context, srv *config.Server, store cloud.Storage, name string, when time.Time) checkResult {
	const item = "WAL archive"
	w, err := pg.ParseWALName(name)
	if err != nil {
		return checkResult{Name: item, Status: "OK"} // not a file Cellar stores
	}
	_, err = store.Stat(ctx, catalog.WALKey(srv.Name, w))
	switch {
	case errors.Is(err, cloud.ErrNotExist):
		return checkResult{item, "FAILED", st.scrub(oneLine(fmt.Sprintf(
			"PostgreSQL archived %s at %s, but the repository of server %s does not have it: archive_command stores WAL elsewhere; make it run cellar wal-push %s %%p (if the repository was changed since, run cellar switch-wal %s --archive)",
			name, when.UTC().Format(time.RFC3339), srv.Name, srv.Name, srv.Name)))}
	case err != nil:
		return checkResult{item, "FAILED", st.scrub(oneLine(err.Error()))}
	}
	return checkResult{Name: item, Status: "OK"}
}

// checkSystemIdentifier checks that the repository belongs to this cluster.
func (st *state) checkSystemIdentifier(cctx context.Context, srv *config.Server, conn *pgx.Conn, store cloud.Storage) checkResult {
	const name = "system identifier"
	fail := func(hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	sysid, err := pg.SystemIdentifier(cctx, conn)
	if err != nil {
		return fail(err.Error())
	}
	if store == nil {
		return fail("the repository could not be opened (see repository reachable)")
	}
	id, err := catalog.ReadIdentity(cctx, store, srv.Name)
	switch {
	case errors.Is(err, cloud.ErrNotExist):
		return checkResult{Name: name, Status: "OK"} // nothing archived yet
	case err != nil:
		return fail(err.Error())
	case id.SystemIdentifier != sysid:
		return fail(fmt.Sprintf("the repository of server %s belongs to the cluster %d, PostgreSQL is cluster %d: point the server at its own repository", srv.Name, id.SystemIdentifier, sysid))
	}
	return checkResult{Name: name, Status: "OK"}
}

// archiveCommandOK reports whether archive_command runs cellar's wal-push
// for this server.
func archiveCommandOK(cmd, server string) bool {
	f := strings.Fields(cmd)
	for i, w := range f {
		if w == "wal-push" && i+2 < len(f) && f[i+1] == server && strings.Contains(f[i+2], "%p") {
			for _, prev := range f[:i] {
				if strings.HasSuffix(prev, "cellar") {
					return true
				}
			}
		}
	}
	return false
}

// checkBackupAge checks that the newest finished backup is younger than
// last_backup_maximum_age.
func (st *state) checkBackupAge(ctx context.Context, srv *config.Server, store cloud.Storage) checkResult {
	const name = "backup maximum age"
	fail := func(hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	limit, err := config.ParseAge(srv.LastBackupMaximumAge)
	if err != nil {
		return fail(err.Error())
	}
	if store == nil {
		return fail("the repository could not be opened (see repository reachable)")
	}
	list, err := catalog.ListBackups(ctx, store, srv.Name)
	if err != nil {
		return fail(err.Error())
	}
	var newest time.Time
	for _, b := range list {
		if b.Manifest != nil && b.Manifest.Status == catalog.StatusDone && b.Manifest.EndTime.After(newest) {
			newest = b.Manifest.EndTime
		}
	}
	if newest.IsZero() {
		return fail(fmt.Sprintf("there is no finished backup, and last_backup_maximum_age is %s: run cellar backup %s", srv.LastBackupMaximumAge, srv.Name))
	}
	if age := time.Since(newest); age > limit {
		return fail(fmt.Sprintf("the latest backup is %s old, more than last_backup_maximum_age (%s): run cellar backup %s and check its schedule",
			age.Round(time.Minute), srv.LastBackupMaximumAge, srv.Name))
	}
	return checkResult{Name: name, Status: "OK"}
}

// checkCatalog checks the backups against the retention settings: minimum
// redundancy, the policy, failed backups, and WAL continuity from the
// oldest retained backup to the last archived segment.
func (st *state) checkCatalog(ctx context.Context, srv *config.Server, store cloud.Storage) []checkResult {
	ok := func(name string) checkResult { return checkResult{Name: name, Status: "OK"} }
	fail := func(name, hint string) checkResult { return checkResult{name, "FAILED", st.scrub(oneLine(hint))} }
	pol, err := policyOf(srv)
	if err != nil {
		return []checkResult{fail("retention policy settings", err.Error())}
	}
	inv, err := st.gather(ctx, srv, store)
	if err != nil {
		return []checkResult{fail("backup catalog", err.Error())}
	}
	p := st.decide(inv, pol)
	var out []checkResult
	done, failed := 0, 0
	var oldest *retention.Backup
	retained := map[string]bool{}
	for _, id := range p.Retained {
		retained[id] = true
	}
	for i, b := range inv.Input.Backups {
		switch b.Status {
		case catalog.StatusDone:
			done++
			if oldest == nil && retained[b.ID] {
				oldest = &inv.Input.Backups[i]
			}
		case catalog.StatusFailed: // handled failures and killed runs
			failed++
		}
	}
	if done < srv.MinimumRedundancy {
		out = append(out, fail("minimum redundancy requirements", fmt.Sprintf("have %d backups, expected at least %d", done, srv.MinimumRedundancy)))
	} else {
		out = append(out, ok("minimum redundancy requirements"))
	}
	out = append(out, ok("retention policy settings"))
	if failed > 0 {
		out = append(out, fail("failed backups", fmt.Sprintf("there are %d failed backups: see list-backups; cellar cron removes them once a newer backup is done", failed)))
	} else {
		out = append(out, ok("failed backups"))
	}
	if oldest != nil {
		// The oldest retained backup's own WAL must be there, and no
		// segment may be missing after it, on any later timeline.
		var gaps []string
		have := map[string]bool{}
		for _, w := range inv.Input.WAL {
			have[w.Name] = true
		}
		for _, name := range []string{oldest.BeginWAL, oldest.EndWAL} {
			if !have[name] && (len(gaps) == 0 || gaps[0] != name) {
				gaps = append(gaps, name)
			}
		}
		segSize := inv.Input.WALSegmentSize
		last := map[uint32]uint64{}
		for _, w := range inv.Input.WAL { // in timeline and segment order
			if w.Kind != pg.Segment || w.Timeline < oldest.Timeline {
				continue
			}
			n := w.SegNo(segSize)
			if prev, seen := last[w.Timeline]; seen && n > prev+1 {
				to := pg.SegmentNameOf(w.Timeline, n-1, segSize)
				if to[8:] >= oldest.BeginWAL[8:] { // after the backup's begin, on any timeline
					gaps = append(gaps, pg.SegmentNameOf(w.Timeline, prev+1, segSize)+".."+to)
				}
			}
			last[w.Timeline] = n
		}
		if len(gaps) > 0 {
			out = append(out, fail("WAL continuity", fmt.Sprintf("WAL is missing after backup %s: %s", oldest.ID, strings.Join(gaps, ", "))))
		} else {
			out = append(out, ok("WAL continuity"))
		}
	}
	return out
}
