// Package health checks every precondition of backup and archiving for
// one server: the repository answers and takes writes, PostgreSQL is set
// up for archiving and its archiver works, WAL arrives, streaming runs,
// backups are recent enough, the catalog meets the retention settings and
// no WAL is missing. It returns results, one per check, that cmd prints as
// text, JSON or a Nagios line; status, metrics and drills can use the same.
//
// The package reads nothing itself that it is not handed: the settings,
// how to open the repository and reach PostgreSQL, and what the host knows
// (locks) come in Options.
package health

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

	"github.com/cellar-backup/cellar/basebackup"
	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/retention"
)

// Statuses of a Result.
const (
	OK     = "OK"
	Failed = "FAILED"
)

// Result is one check.
type Result struct {
	Name   string `json:"name"`
	Status string `json:"status"` // OK or FAILED
	Hint   string `json:"hint,omitempty"`
}

func ok(name string) Result               { return Result{Name: name, Status: OK} }
func fail(name, hint string) Result       { return Result{Name: name, Status: Failed, Hint: hint} }
func failErr(name string, e error) Result { return fail(name, e.Error()) }

// Settings are the server's settings the checks judge by.
type Settings struct {
	Server string
	// SQL says PostgreSQL is reachable with SQL (conninfo is set).
	SQL bool
	// Streaming says a replication connection is configured
	// (streaming_conninfo, or streaming_archiver = on).
	Streaming         bool
	BackupMethod      string // local or stream
	PGData            string
	StreamingArchiver bool
	SlotName          string
	StreamingLagMax   int64 // bytes; 0 for no limit
	// LastBackupMaximumAge is the setting as written ("" for none) and
	// MaximumAge its value (or AgeErr).
	LastBackupMaximumAge string
	MaximumAge           time.Duration
	AgeErr               error
	MinimumRedundancy    int
	// RetentionPolicy is the setting as written ("" for none); Policy is
	// what it says (or PolicyErr).
	RetentionPolicy string
	Policy          retention.Policy
	PolicyErr       error
	// Encryption is the setting (none or age); Identity says an
	// encryption_identity_file is configured.
	Encryption string
	Identity   bool
	// DrillMaximumAge is the setting as written ("" for none) and
	// DrillAge its value.
	DrillMaximumAge string
	DrillAge        time.Duration
}

// Options are one run of the checks.
type Options struct {
	Settings
	// OpenStore opens the repository; Where names where its requests go,
	// for messages.
	OpenStore func(ctx context.Context) (cloud.Storage, error)
	Where     string
	// Connect opens a SQL connection to PostgreSQL (with Settings.SQL).
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// DialReplication opens the replication connection (with
	// Settings.Streaming), or says why it cannot.
	DialReplication func(ctx context.Context) (*pg.ReplConn, error)
	// ReadCatalog reads the server's catalog with its WAL listing.
	ReadCatalog func(ctx context.Context, store cloud.Storage) (*catalog.Catalog, error)
	// ReceiveWALRunning says whether a receive-wal of the server runs on
	// this host.
	ReceiveWALRunning func() bool
	// Host are checks of this host (its lock directory), shown after the
	// repository's.
	Host []Result
	// Hint is told what is worth saying but no failure.
	Hint func(msg string)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Time limits of the checks. Together they stay under the 30 s within
// which check must answer even when the repository does not.
const (
	reachTimeout   = 12 * time.Second
	writeTimeout   = 15 * time.Second
	connectTimeout = 10 * time.Second
	catalogTimeout = 30 * time.Second
)

// Run runs every check that the settings call for, in order: the
// repository, the host's, PostgreSQL and archiving, streaming, backup age
// and the catalog.
func Run(ctx context.Context, o Options) []Result {
	results, store := Repository(ctx, o.OpenStore, o.Where)
	if store != nil {
		defer store.Close()
	}
	repoOK := store != nil
	for _, r := range results {
		repoOK = repoOK && r.Status == OK
	}
	results = append(results, o.Host...)
	if o.SQL {
		results = append(results, Postgres(ctx, o, store)...)
	}
	if o.Streaming {
		results = append(results, Streaming(ctx, o)...)
	}
	cctx, cancel := context.WithTimeout(ctx, catalogTimeout)
	defer cancel()
	var cat *catalog.Catalog
	var catErr error
	if repoOK && (o.LastBackupMaximumAge != "" || o.SQL || o.RetentionPolicy != "" || o.MinimumRedundancy > 0) {
		cat, catErr = o.ReadCatalog(cctx, store)
	}
	if o.LastBackupMaximumAge != "" {
		switch {
		case !repoOK:
			results = append(results, fail("backup maximum age", "the repository does not answer (see repository reachable)"))
		case catErr != nil:
			results = append(results, failErr("backup maximum age", catErr))
		default:
			results = append(results, BackupAge(o.Settings, cat, o.now()))
		}
	}
	if repoOK {
		results = append(results, Encryption(cctx, o.Settings, store, cat)...)
		results = append(results, Drills(cctx, o.Settings, store, o.now())...)
	}
	// The backup catalog is checked for a server set up for backups (a
	// repository alone is checked as such).
	if repoOK && (o.SQL || o.RetentionPolicy != "" || o.MinimumRedundancy > 0) {
		if catErr != nil {
			results = append(results, failErr("backup catalog", catErr))
		} else {
			results = append(results, Catalog(o.Settings, cat, o.now())...)
		}
	}
	return results
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) hint(msg string) {
	if o.Hint != nil {
		o.Hint(msg)
	}
}

var errStop = errors.New("stop")

// Repository checks that the repository answers and that a probe object
// can be written, read back and deleted. It returns the opened repository
// for the checks that follow (nil when it could not be opened); the caller
// closes it.
func Repository(ctx context.Context, open func(context.Context) (cloud.Storage, error), where string) ([]Result, cloud.Storage) {
	const reachable, writable = "repository reachable", "repository writable"
	// When the repository cannot be reached, the write check is not run:
	// one FAILED line names the cause.
	store, err := open(ctx)
	if err != nil {
		return []Result{failErr(reachable, err)}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, reachTimeout)
	err = store.List(rctx, "", func(cloud.ObjectInfo) error { return errStop })
	cancel()
	if err != nil && !errors.Is(err, errStop) {
		return []Result{failErr(reachable, cloud.NoAnswer(rctx, err, reachTimeout, where, ""))}, store
	}
	results := []Result{ok(reachable)}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := probeWrite(wctx, store); err != nil {
		return append(results, failErr(writable, cloud.NoAnswer(wctx, err, writeTimeout, where, ""))), store
	}
	return append(results, ok(writable)), store
}

// probeWrite writes a small random object, reads it back and deletes it.
func probeWrite(ctx context.Context, store cloud.Storage) error {
	// The store as it is: a host that encrypts and holds no private key
	// writes what it cannot read back, which is what encryption is for.
	store = catalog.Unsealed(store)
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

// Postgres checks what backups and archiving need of PostgreSQL: that it
// answers, its version, the privileges and data directory of a local
// backup, wal_level, archiving (see archiving), and that the repository
// belongs to this cluster. store may be nil.
func Postgres(ctx context.Context, o Options, store cloud.Storage) []Result {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := o.Connect(cctx)
	if err != nil {
		return []Result{failErr("PostgreSQL", err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	results := []Result{ok("PostgreSQL")}
	show := func(name string) string {
		v, err := pg.Setting(cctx, conn, name)
		if err != nil {
			return "?" + err.Error()
		}
		return v
	}
	const versionOK = "PostgreSQL version supported"
	version, err := strconv.Atoi(show("server_version_num"))
	if err == nil {
		err = basebackup.CheckVersion(version, show("server_version"))
	}
	if err != nil {
		results = append(results, failErr(versionOK, err))
	} else {
		results = append(results, ok(versionOK))
	}
	// A stream backup reads nothing itself and needs only the
	// replication connection, which the streaming checks cover.
	local := o.BackupMethod != "stream"
	if local {
		const privileges = "superuser or backup privileges"
		if err := basebackup.CheckPrivileges(cctx, conn, version); err != nil {
			results = append(results, failErr(privileges, err))
		} else {
			results = append(results, ok(privileges))
		}
	}
	if o.PGData != "" && local {
		if err := basebackup.CheckDataDirectory(o.PGData, show("data_directory")); err != nil {
			results = append(results, failErr("data directory", err))
		} else {
			results = append(results, ok("data directory"))
		}
	}
	if v := show("wal_level"); v == "replica" || v == "logical" {
		results = append(results, ok("wal_level"))
	} else {
		results = append(results, fail("wal_level", fmt.Sprintf("wal_level is %s: set wal_level = replica and restart PostgreSQL", v)))
	}
	results = append(results, archiving(cctx, o, conn, store, show)...)
	return append(results, systemIdentifier(cctx, o.Server, conn, store))
}

// archiving checks archive_mode, archive_command, the archiver, and that
// what PostgreSQL archived last is in the repository. archive_command is
// judged by its effect: a wrapper script or a chain of commands archives
// as well as the plain command, and only a command that cannot archive
// fails. With streaming_archiver = on and archive_mode off, receive-wal is
// the only archiver, which the streaming checks cover.
func archiving(cctx context.Context, o Options, conn *pgx.Conn, store cloud.Storage, show func(string) string) []Result {
	var results []Result
	switch v := show("archive_mode"); {
	case v == "on" || v == "always":
		results = append(results, ok("archive_mode"))
	case o.StreamingArchiver:
		return nil
	default:
		results = append(results, fail("archive_mode", fmt.Sprintf("archive_mode is %s: set archive_mode = on and restart PostgreSQL (or stream WAL with streaming_archiver = on)", v)))
	}
	switch v := show("archive_command"); {
	case strings.TrimSpace(v) == "" || v == "(disabled)":
		if lib := show("archive_library"); lib != "" && !strings.HasPrefix(lib, "?") {
			results = append(results, fail("archive_command", fmt.Sprintf("PostgreSQL archives with the module archive_library = %s, not a command: set archive_library = '' and archive_command = 'cellar wal-push %s %%p', then reload PostgreSQL", lib, o.Server)))
		} else {
			results = append(results, fail("archive_command", fmt.Sprintf("archive_command is empty: set archive_command = 'cellar wal-push %s %%p' and reload PostgreSQL", o.Server)))
		}
	default:
		results = append(results, ok("archive_command"))
		if !ArchiveCommandNamesCellar(v, o.Server) {
			o.hint(fmt.Sprintf("archive_command does not name cellar wal-push %s (it is %q); archiving is judged by its effect (continuous archiving, WAL archive)", o.Server, v))
		}
	}
	a, err := pg.ReadArchiver(cctx, conn)
	switch {
	case err != nil:
		results = append(results, failErr("continuous archiving", err))
	case a.Failing:
		results = append(results, fail("continuous archiving", fmt.Sprintf("the archiver is failing: %d failures, last on %s; see the PostgreSQL log", a.Failed, a.LastFailedWAL)))
	default:
		results = append(results, ok("continuous archiving"))
	}
	if err == nil && a.LastArchivedWAL != "" && store != nil {
		results = append(results, archivedWAL(cctx, o.Server, store, a.LastArchivedWAL, a.LastArchivedTime))
	}
	return results
}

// archivedWAL checks that the last file PostgreSQL says it archived is in
// the repository: an archive_command that succeeds but stores elsewhere
// (a wrapper for another server, another configuration) fails here,
// however it is written.
func archivedWAL(ctx context.Context, server string, store cloud.Storage, name string, when time.Time) Result {
	const item = "WAL archive"
	w, err := pg.ParseWALName(name)
	if err != nil {
		return ok(item) // not a file Cellar stores
	}
	_, err = store.Stat(ctx, catalog.WALKey(server, w))
	switch {
	case errors.Is(err, cloud.ErrNotExist):
		return fail(item, fmt.Sprintf(
			"PostgreSQL archived %s at %s, but the repository of server %s does not have it: archive_command stores WAL elsewhere; make it run cellar wal-push %s %%p (if the repository was changed since, run cellar switch-wal %s --archive)",
			name, when.UTC().Format(time.RFC3339), server, server, server))
	case err != nil:
		return failErr(item, err)
	}
	return ok(item)
}

// systemIdentifier checks that the repository belongs to this cluster.
func systemIdentifier(cctx context.Context, server string, conn *pgx.Conn, store cloud.Storage) Result {
	const name = "system identifier"
	sysid, err := pg.SystemIdentifier(cctx, conn)
	if err != nil {
		return failErr(name, err)
	}
	if store == nil {
		return fail(name, "the repository could not be opened (see repository reachable)")
	}
	if err := catalog.CheckCluster(cctx, store, server, sysid); errors.Is(err, catalog.ErrWrongCluster) {
		return fail(name, strings.TrimPrefix(err.Error(), catalog.ErrWrongCluster.Error()+": ")+": point the server at its own repository")
	} else if err != nil {
		return failErr(name, err)
	}
	return ok(name)
}

// ArchiveCommandNamesCellar reports whether an archive_command runs
// cellar's wal-push for server.
func ArchiveCommandNamesCellar(cmd, server string) bool {
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

// Streaming checks WAL streaming: the replication connection and, with
// streaming_archiver = on, the slot (there and active), receive-wal
// running and the slot's lag against streaming_lag_max.
func Streaming(ctx context.Context, o Options) []Result {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := o.DialReplication(cctx)
	if err != nil {
		return []Result{failErr("streaming connection", err)}
	}
	defer conn.Close()
	sys, err := conn.IdentifySystem(cctx)
	if err != nil {
		return []Result{failErr("streaming connection", err)}
	}
	out := []Result{ok("streaming connection")}
	if !o.StreamingArchiver {
		// streaming_conninfo for backup_method = stream alone: no slot.
		return out
	}
	slot, err := conn.ReadSlot(cctx, o.SlotName)
	switch {
	case err != nil:
		return append(out, failErr("replication slot", err))
	case !slot.Exists:
		return append(out, fail("replication slot", fmt.Sprintf("slot %q does not exist: create it with cellar receive-wal %s --create-slot", o.SlotName, o.Server)))
	}
	active := true
	if o.SQL {
		if sql, err := o.Connect(cctx); err == nil {
			if cur, err := pg.CurrentLSN(cctx, sql); err == nil {
				if s, err := pg.ReadSlotState(cctx, sql, o.SlotName, cur); err == nil && s.Exists {
					active = s.Active
				}
			}
			sql.Close(context.WithoutCancel(ctx))
		}
	}
	if !active {
		out = append(out, fail("replication slot", fmt.Sprintf("slot %q exists but nothing streams from it: start cellar receive-wal %s (cellar cron does with streaming_archiver = on)", o.SlotName, o.Server)))
	} else {
		out = append(out, ok("replication slot"))
	}
	if o.ReceiveWALRunning != nil && o.ReceiveWALRunning() {
		out = append(out, ok("receive-wal running"))
	} else {
		out = append(out, fail("receive-wal running", fmt.Sprintf("no receive-wal of server %s runs on this host: cellar cron starts it, or run cellar receive-wal %s", o.Server, o.Server)))
	}
	if max := o.StreamingLagMax; max > 0 && slot.RestartLSN != 0 {
		if lag := int64(sys.Flush) - int64(slot.RestartLSN); lag > max {
			out = append(out, fail("streaming lag", fmt.Sprintf("the slot is %s behind the server, above streaming_lag_max = %s", catalog.HumanSize(lag), catalog.HumanSize(max))))
		} else {
			out = append(out, ok("streaming lag"))
		}
	}
	return out
}

// BackupAge checks that the newest finished backup is younger than
// last_backup_maximum_age.
func BackupAge(s Settings, cat *catalog.Catalog, now time.Time) Result {
	const name = "backup maximum age"
	if s.AgeErr != nil {
		return failErr(name, s.AgeErr)
	}
	done := cat.Done()
	if len(done) == 0 {
		return fail(name, fmt.Sprintf("there is no finished backup, and last_backup_maximum_age is %s: run cellar backup %s", s.LastBackupMaximumAge, s.Server))
	}
	var newest time.Time
	for _, e := range done {
		if e.EndTime.After(newest) {
			newest = e.EndTime
		}
	}
	if age := now.Sub(newest); age > s.MaximumAge {
		return fail(name, fmt.Sprintf("the latest backup is %s old, more than last_backup_maximum_age (%s): run cellar backup %s and check its schedule",
			age.Round(time.Minute), s.LastBackupMaximumAge, s.Server))
	}
	return ok(name)
}

// Catalog checks the backups against the retention settings: minimum
// redundancy, the policy, failed backups, and WAL continuity from the
// oldest retained backup that retention keeps the WAL after (not a kept
// backup, which keeps its own range only) to the last archived segment.
func Catalog(s Settings, cat *catalog.Catalog, now time.Time) []Result {
	if s.PolicyErr != nil {
		return []Result{failErr("retention policy settings", s.PolicyErr)}
	}
	in := retention.InputOf(cat)
	in.Policy, in.Now = s.Policy, now
	p := retention.Decide(in)
	retained := map[string]bool{}
	for _, id := range p.Retained {
		retained[id] = true
	}
	done, failed := 0, 0
	var oldest *catalog.Entry
	for i, b := range cat.Backups {
		switch b.Status {
		case catalog.StatusDone:
			done++
			// The backup WAL is kept from on every timeline; with only
			// kept backups (which keep their own range), the oldest.
			if oldest == nil && retained[b.ID] && (p.WALFrom == "" || p.WALFrom == b.ID) {
				oldest = &cat.Backups[i]
			}
		case catalog.StatusFailed: // handled failures and killed runs
			failed++
		}
	}
	var out []Result
	if done < s.MinimumRedundancy {
		out = append(out, fail("minimum redundancy requirements", fmt.Sprintf("have %d backups, expected at least %d", done, s.MinimumRedundancy)))
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
		if gaps := cat.Gaps(*oldest); len(gaps) > 0 {
			out = append(out, fail("WAL continuity", fmt.Sprintf("WAL is missing after backup %s: %s", oldest.ID, strings.Join(gaps, ", "))))
		} else {
			out = append(out, ok("WAL continuity"))
		}
	}
	return out
}

// Failures counts the results that are not OK.
func Failures(results []Result) int {
	n := 0
	for _, r := range results {
		if r.Status != OK {
			n++
		}
	}
	return n
}

// Encryption compares the repository with the encryption settings: the
// newest backup's manifest and the newest archived WAL segment (when cat
// lists WAL) are encrypted exactly when encryption = age, and a configured
// encryption_identity_file opens the newest backup. A repository that
// holds older objects of the other kind (encryption was turned on or off
// since) is fine.
func Encryption(ctx context.Context, s Settings, store cloud.Storage, cat *catalog.Catalog) []Result {
	const name = "encryption"
	want := s.Encryption
	if want == "" {
		want = catalog.EncryptionNone
	}
	var newest string
	err := store.List(ctx, catalog.BackupsPrefix(s.Server), func(oi cloud.ObjectInfo) error {
		if strings.HasSuffix(oi.Key, ".manifest") {
			newest = oi.Key
		}
		return nil
	})
	if err != nil {
		return []Result{failErr(name, err)}
	}
	type object struct{ what, key string }
	var objects []object
	if newest != "" {
		objects = append(objects, object{"the newest backup", newest})
	}
	switch {
	case cat != nil:
		if names := cat.WALNames(); len(names) > 0 {
			objects = append(objects, object{"the newest archived WAL", catalog.WALKey(s.Server, names[len(names)-1])})
		}
	case want == catalog.EncryptionAge:
		// Not read for the other checks: the newest segment by listing.
		var last string
		err := catalog.ListWALFiles(ctx, store, s.Server, func(w pg.WALName, oi cloud.ObjectInfo) error {
			if w.Kind == pg.Segment && oi.Key > last {
				last = oi.Key
			}
			return nil
		})
		if err != nil {
			return []Result{failErr(name, err)}
		}
		if last != "" {
			objects = append(objects, object{"the newest archived WAL", last})
		}
	}
	for _, ob := range objects {
		h, err := catalog.ClearHeader(ctx, store, ob.key)
		if errors.Is(err, cloud.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return []Result{failErr(name, err)}
		}
		got := h.Encryption
		switch {
		case want == catalog.EncryptionNone && got == catalog.EncryptionAge:
			return []Result{fail(name, fmt.Sprintf("%s (%s) is encrypted (age) but encryption = none here: set encryption = age and encryption_recipients as the host that wrote it has them", ob.what, ob.key))}
		case want == catalog.EncryptionAge && got != catalog.EncryptionAge && ob.what != "the newest backup":
			return []Result{fail(name, fmt.Sprintf("%s (%s) is not encrypted but encryption = age here: another host archives with encryption = none; set encryption = age there too", ob.what, ob.key))}
		}
	}
	if want == catalog.EncryptionNone && !s.Identity {
		return nil // nothing configured, nothing encrypted: nothing to say
	}
	out := []Result{ok(name)}
	if s.Identity && newest != "" {
		id := strings.TrimSuffix(strings.TrimPrefix(newest, catalog.BackupsPrefix(s.Server)), ".manifest")
		m, err := catalog.ReadManifest(ctx, store, s.Server, id)
		switch {
		case err != nil:
			out = append(out, failErr("encryption identity", err))
		case m.Sealed:
			out = append(out, fail("encryption identity", fmt.Sprintf("encryption_identity_file opens no key of the newest backup %s: add the private key of a recipient it was encrypted to", id)))
		default:
			out = append(out, ok("encryption identity"))
		}
	}
	return out
}

// Drills checks the restore drills: the last one must not have failed,
// and with drill_maximum_age the last good one must be that recent. A
// server without drills and without the setting has no such line.
func Drills(ctx context.Context, s Settings, store cloud.Storage, now time.Time) []Result {
	const name = "drill"
	drills, err := catalog.ListDrills(ctx, store, s.Server, 50)
	if err != nil {
		return []Result{failErr(name, err)}
	}
	last, lastOK := catalog.LastDrills(drills)
	switch {
	case last == nil && s.DrillMaximumAge == "":
		return nil
	case last != nil && last.Result == catalog.DrillFailed:
		why := ""
		if last.Error != "" {
			why = ": " + last.Error
		}
		return []Result{fail(name, fmt.Sprintf("the last drill, %s of backup %s, FAILED%s (see list-drills %s; run cellar drill %s once it is mended)",
			last.ID, last.Backup, why, s.Server, s.Server))}
	case s.DrillMaximumAge == "":
	case lastOK == nil:
		return []Result{fail(name, fmt.Sprintf("no drill has succeeded, and drill_maximum_age is %s: run cellar drill %s (or set drill_schedule for cron)", s.DrillMaximumAge, s.Server))}
	case now.Sub(lastOK.EndTime) > s.DrillAge:
		return []Result{fail(name, fmt.Sprintf("the last good drill (%s) is %s old, more than drill_maximum_age (%s): run cellar drill %s and check drill_schedule",
			lastOK.ID, now.Sub(lastOK.EndTime).Round(time.Minute), s.DrillMaximumAge, s.Server))}
	}
	return []Result{ok(name)}
}
