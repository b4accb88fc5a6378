package catalog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// Catalog queries: a server's backups and archived WAL read once, with
// each backup's state; which backup a name means; the WAL between two
// points and the gaps in it; the range a backup can recover to; and
// whether a cluster is the repository's. Commands render what these
// return; retention decides on the same reading.

// Named errors of the catalog queries; the errors returned wrap them.
var (
	ErrNoBackup       = errors.New("there is no finished backup")
	ErrBackupNotFound = errors.New("no backup")
	ErrBadBackupID    = errors.New("not a backup id: use an id such as 20260101T120000, latest or oldest")
	ErrNotFinished    = errors.New("not a finished backup")
	ErrWrongCluster   = errors.New("the repository belongs to another cluster")
	ErrNoWAL          = errors.New("no WAL is archived")
)

// Entry is one backup and its state.
type Entry struct {
	ID string
	// Status is StatusDone, StatusFailed (handled, or a process that
	// ended without finishing), or StatusStarted while a live process
	// runs it.
	Status    string
	Error     string // why it failed
	Host      string // where it ran
	BeginTime time.Time
	EndTime   time.Time
	// Manifest is the manifest's summary (no files, no parts), nil for a
	// backup that did not finish.
	Manifest *Manifest
	// Keep is set for a backup pinned with cellar keep.
	Keep bool
	// Obsolete is set by MarkObsolete: the retention policy no longer
	// needs the backup.
	Obsolete bool
	// NeededAsParent is set by MarkParents: the retention policy alone
	// would remove the backup, but a retained backup builds on it.
	NeededAsParent bool
}

// WALFile is one archived WAL file.
type WALFile struct {
	pg.WALName
	Size    int64 // stored
	ModTime time.Time
}

// Catalog is a server's catalog as read once.
type Catalog struct {
	Server string
	// Backups are oldest first.
	Backups []Entry
	// WAL is the archived WAL in timeline and segment order, history
	// files last (empty unless ReadOptions.WAL).
	WAL []WALFile
	// WALSegmentSize is the cluster's, from its identity, read with the
	// WAL listing (16 MiB when nothing was archived yet).
	WALSegmentSize int64
	// segs are the segments of WAL in WAL order, sorted once.
	segs []WALFile
}

// ReadOptions say what Read reads and how it judges an unfinished backup.
type ReadOptions struct {
	// WAL lists the archived WAL too.
	WAL bool
	// Now is the clock.
	Now time.Time
	// Host is this host's name, and Running says whether a live process
	// on it runs the backup id (the caller knows its host's locks).
	Host    string
	Running func(id string) bool
	// OrphanAge is how old a backup that never finished must be before
	// it counts as failed, whatever host ran it.
	OrphanAge time.Duration
}

// killed is the error of a backup whose process ended without a trace.
const killed = "the backup process ended without finishing (killed?)"

// Read reads a server's catalog: one paged listing of its backups and a
// read of each one's manifest or marker, and with o.WAL one paged listing
// of its WAL. A backup still marked STARTED that no process here runs was
// killed if it ran here, or if it began more than o.OrphanAge ago: it is
// FAILED.
func Read(ctx context.Context, store cloud.Storage, server string, o ReadOptions) (*Catalog, error) {
	list, err := ListBackups(ctx, store, server)
	if err != nil {
		return nil, err
	}
	c := &Catalog{Server: server, WALSegmentSize: 16 << 20}
	for _, b := range list {
		e := Entry{ID: b.ID(), Status: b.Status(), Manifest: b.Manifest, Keep: b.Keep}
		if m := b.Manifest; m != nil {
			e.BeginTime, e.EndTime, e.Host = m.BeginTime, m.EndTime, m.Host
		} else {
			s := b.Started
			e.BeginTime, e.EndTime, e.Host, e.Error = s.BeginTime, s.EndTime, s.Host, s.Error
		}
		if e.Status == StatusStarted && (o.Running == nil || !o.Running(e.ID)) {
			began, perr := time.Parse(BackupIDLayout, e.ID)
			if e.Host == o.Host || perr == nil && o.Now.Sub(began) > o.OrphanAge {
				e.Status, e.Error = StatusFailed, killed
			}
		}
		c.Backups = append(c.Backups, e)
	}
	if o.WAL {
		if id, err := ReadIdentity(ctx, store, server); err == nil {
			c.WALSegmentSize = id.WALSegmentSize
		} else if !errors.Is(err, cloud.ErrNotExist) {
			return nil, err
		}
		err = ListWALFiles(ctx, store, server, func(w pg.WALName, obj cloud.ObjectInfo) error {
			c.WAL = append(c.WAL, WALFile{WALName: w, Size: obj.Size, ModTime: obj.ModTime})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Done returns the finished backups, oldest first.
func (c *Catalog) Done() []Entry {
	var out []Entry
	for _, e := range c.Backups {
		if e.Status == StatusDone {
			out = append(out, e)
		}
	}
	return out
}

// Find returns the backup name means: latest (last) or oldest (first)
// finished backup, or the backup with that id in any state.
func (c *Catalog) Find(name string) (Entry, error) {
	done := c.Done()
	switch strings.ToLower(name) {
	case "latest", "last":
		if len(done) == 0 {
			return Entry{}, ErrNoBackup
		}
		return done[len(done)-1], nil
	case "oldest", "first":
		if len(done) == 0 {
			return Entry{}, ErrNoBackup
		}
		return done[0], nil
	}
	for _, e := range c.Backups {
		if e.ID == name {
			return e, nil
		}
	}
	if !ValidBackupID(name) {
		return Entry{}, fmt.Errorf("%q is %w", name, ErrBadBackupID)
	}
	return Entry{}, fmt.Errorf("%w %s", ErrBackupNotFound, name)
}

// FindDone is Find for a backup that must be finished.
func (c *Catalog) FindDone(name string) (Entry, error) {
	e, err := c.Find(name)
	if err == nil && e.Status != StatusDone {
		return e, fmt.Errorf("backup %s is %s, %w", e.ID, e.Status, ErrNotFinished)
	}
	return e, err
}

// NewestBefore returns the newest finished backup that ended at t or
// before, or ErrNoBackup.
func (c *Catalog) NewestBefore(t time.Time) (Entry, error) {
	done := c.Done()
	for i := len(done) - 1; i >= 0; i-- {
		if !done[i].EndTime.After(t) {
			return done[i], nil
		}
	}
	return Entry{}, ErrNoBackup
}

// MarkObsolete marks the backups with these ids obsolete.
func (c *Catalog) MarkObsolete(ids []string) {
	for i, in := range c.marks(ids) {
		c.Backups[i].Obsolete = in
	}
}

// MarkParents marks the backups with these ids as retained only because
// retained backups build on them.
func (c *Catalog) MarkParents(ids []string) {
	for i, in := range c.marks(ids) {
		c.Backups[i].NeededAsParent = in
	}
}

// marks says, for each backup, whether its id is one of ids.
func (c *Catalog) marks(ids []string) []bool {
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	out := make([]bool, len(c.Backups))
	for i, e := range c.Backups {
		out[i] = set[e.ID]
	}
	return out
}

// WALNames are the archived WAL files' names, as listed.
func (c *Catalog) WALNames() []pg.WALName {
	out := make([]pg.WALName, len(c.WAL))
	for i, w := range c.WAL {
		out[i] = w.WALName
	}
	return out
}

// WALSizes are the archived WAL files' stored sizes by name.
func (c *Catalog) WALSizes() map[string]int64 {
	out := make(map[string]int64, len(c.WAL))
	for _, w := range c.WAL {
		out[w.Name] = w.Size
	}
	return out
}

// segments returns the archived segments in WAL order across timelines,
// sorted on the first call only: a listing asks once per backup.
func (c *Catalog) segments() []WALFile {
	if c.segs == nil {
		c.segs = []WALFile{}
		for _, w := range c.WAL {
			if w.Kind == pg.Segment {
				c.segs = append(c.segs, w)
			}
		}
		sort.SliceStable(c.segs, func(i, j int) bool { return pg.CompareWAL(c.segs[i].WALName, c.segs[j].WALName) < 0 })
	}
	return c.segs
}

// WALBetween counts the archived segments from the one named from
// (inclusive) to the one named until (exclusive; "" for no end), on any
// timeline, and names the last of them.
func (c *Catalog) WALBetween(from, until string) (n int, size int64, last string) {
	lo, err := pg.ParseWALName(from)
	if err != nil {
		return 0, 0, ""
	}
	hi, herr := pg.ParseWALName(until)
	for _, s := range c.segments() {
		if pg.CompareWAL(s.WALName, lo) < 0 || herr == nil && pg.CompareWAL(s.WALName, hi) >= 0 {
			continue
		}
		n++
		size += s.Size
		last = s.Name
	}
	return n, size, last
}

// Gaps returns what is missing of the WAL a backup needs to reach the end
// of the archive: its own begin and end segments, and every run of
// segments missing after its begin, on its timeline and any later one
// ("FIRST..LAST").
func (c *Catalog) Gaps(b Entry) []string {
	m := b.Manifest
	if m == nil {
		return nil
	}
	var gaps []string
	have := map[string]bool{}
	for _, w := range c.WAL {
		have[w.Name] = true
	}
	for _, name := range []string{m.BeginWAL, m.EndWAL} {
		if !have[name] && (len(gaps) == 0 || gaps[0] != name) {
			gaps = append(gaps, name)
		}
	}
	begin, err := pg.ParseWALName(m.BeginWAL)
	if err != nil {
		return gaps
	}
	segSize := c.WALSegmentSize
	last := map[uint32]uint64{}
	for _, w := range c.WAL { // in timeline and segment order
		if w.Kind != pg.Segment || w.Timeline < m.Timeline {
			continue
		}
		n := w.SegNo(segSize)
		if prev, seen := last[w.Timeline]; seen && n > prev+1 {
			to, _ := pg.ParseWALName(pg.SegmentNameOf(w.Timeline, n-1, segSize))
			if pg.CompareWAL(pg.WALName{Log: to.Log, Seg: to.Seg, Timeline: begin.Timeline}, begin) >= 0 { // after the backup's begin, on any timeline
				gaps = append(gaps, pg.SegmentNameOf(w.Timeline, prev+1, segSize)+".."+to.Name)
			}
		}
		last[w.Timeline] = n
	}
	return gaps
}

// Range is what a backup can recover to: from its end to the end of the
// last segment archived on its timeline or a later one.
type Range struct {
	FromTime time.Time
	FromLSN  pg.LSN
	// LastWAL is the last archived segment; ToTime is when it was
	// archived, rounded up to the second (stores keep modification times
	// to the second), and ToLSN where it ends. Zero when nothing is
	// archived.
	LastWAL pg.WALName
	ToTime  time.Time
	ToLSN   pg.LSN
}

// Recoverable returns the range the finished backup m can recover to, or
// ErrNoWAL when no segment after it is archived. It needs the WAL listing.
func (c *Catalog) Recoverable(m *Manifest) (Range, error) {
	r := Range{FromTime: m.EndTime}
	r.FromLSN, _ = pg.ParseLSN(m.EndLSN)
	found := false
	for _, w := range c.WAL {
		if w.Kind != pg.Segment || w.Timeline < m.Timeline {
			continue
		}
		if !found || pg.CompareWAL(w.WALName, r.LastWAL) > 0 {
			r.LastWAL, found = w.WALName, true
		}
		if w.ModTime.After(r.ToTime) {
			r.ToTime = w.ModTime
		}
	}
	if !found {
		return r, ErrNoWAL
	}
	segSize := m.WALSegmentSize
	if segSize == 0 {
		segSize = c.WALSegmentSize
	}
	r.ToLSN = pg.LSN((r.LastWAL.SegNo(segSize) + 1) * uint64(segSize))
	r.ToTime = r.ToTime.Truncate(time.Second).Add(time.Second)
	return r, nil
}

// CheckCluster returns an error that wraps ErrWrongCluster when the
// server's repository belongs to another cluster than systemID. A
// repository with nothing archived yet belongs to any.
func CheckCluster(ctx context.Context, store cloud.Storage, server string, systemID uint64) error {
	id, err := ReadIdentity(ctx, store, server)
	switch {
	case errors.Is(err, cloud.ErrNotExist):
		return nil
	case err != nil:
		return err
	case id.SystemIdentifier != systemID:
		return fmt.Errorf("%w: the repository of server %s belongs to the cluster %d, PostgreSQL is cluster %d", ErrWrongCluster, server, id.SystemIdentifier, systemID)
	}
	return nil
}
