// Package retention decides what a retention policy removes: a pure
// function from the catalog, the WAL listing, the policy and the clock to
// a plan, tested without storage; a separate step carries the plan out.
//
// Incremental backups form chains: each names the backup it builds on
// (its parent), down to a full one, and a restore reads the whole chain.
// The policy counts every finished backup, full or incremental, as a
// backup to recover from; then every ancestor of a retained backup is
// retained too (a parent), and WAL is kept from the oldest retained
// backup on, which may be such a parent.
package retention

import (
	"fmt"
	"sort"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// Policy is a server's retention settings.
type Policy struct {
	// Redundancy keeps the newest n finished backups (REDUNDANCY n).
	Redundancy int
	// Window keeps what recovery to any moment of the last Window needs
	// (RECOVERY WINDOW OF ...).
	Window time.Duration
	// MinimumRedundancy is never gone below, whatever the policy says.
	MinimumRedundancy int
}

// Backup is what the plan needs to know of a backup.
type Backup struct {
	ID       string
	Status   string // catalog.StatusDone, StatusFailed, ...
	EndTime  time.Time
	Timeline uint32
	BeginWAL string
	EndWAL   string
	// Keep pins the backup and the WAL it needs to be consistent.
	Keep bool
	// Host is where an unfinished backup ran.
	Host string
	// Parent is the backup an incremental builds on ("" for a full).
	Parent string
}

// Input is everything the plan depends on.
type Input struct {
	Backups        []Backup
	WAL            []pg.WALName
	Policy         Policy
	Now            time.Time
	WALSegmentSize int64
}

// Plan is what retention removes, and why it keeps what it keeps.
type Plan struct {
	// Obsolete are finished backups the policy no longer needs.
	Obsolete []string
	// Failed are failed backups older than the newest finished one.
	Failed []string
	// Retained are the finished backups that stay, oldest first.
	Retained []string
	// Parents are the retained backups that the policy alone would
	// remove, kept because a retained backup builds on them (as its
	// parent, or its parent's parent...), oldest first.
	Parents []string
	// BuildsOn names, for each finished incremental, its parent: Execute
	// removes a backup only after the backups of the plan that build on
	// it.
	BuildsOn map[string]string
	// WAL are the WAL files to remove.
	WAL []string
	// WALFrom is the retained backup from whose begin WAL is kept on
	// every timeline ("" when only kept backups are retained, and their
	// parents: then no WAL goes).
	WALFrom string
	// Reason says, per backup, why it stays or goes.
	Reason map[string]string
}

// Decide applies the policy. It never removes a kept backup, never leaves
// fewer than MinimumRedundancy finished backups, keeps for a window the
// newest backup that ended before the window's start, and never removes
// an ancestor of a retained backup: the policy counts each finished
// backup, full or incremental, then the backups that retained ones build
// on are retained too (Parents). It removes only WAL that no retained
// backup needs: segments before the oldest retained backup's begin WAL
// (on every timeline), except the ranges of kept backups and of the
// parents only kept backups need (see removableWAL). History files are
// always kept. A failed backup that a finished one names as its parent
// (which cellar never writes) is not removed either.
func Decide(in Input) Plan {
	p := Plan{Reason: map[string]string{}, BuildsOn: map[string]string{}}
	var done []Backup
	for _, b := range in.Backups {
		if b.Status == catalog.StatusDone {
			done = append(done, b)
		}
	}
	sort.SliceStable(done, func(i, j int) bool { return done[i].EndTime.Before(done[j].EndTime) })
	keep := make([]bool, len(done))
	n := len(done)
	pol := in.Policy
	switch {
	case pol.Redundancy > 0:
		for i := max(0, n-pol.Redundancy); i < n; i++ {
			keep[i] = true
			p.Reason[done[i].ID] = fmt.Sprintf("one of the newest %d", pol.Redundancy)
		}
	case pol.Window > 0:
		start := in.Now.Add(-pol.Window)
		anchor := -1
		for i, b := range done {
			if !b.EndTime.Before(start) {
				keep[i] = true
				p.Reason[b.ID] = "inside the recovery window"
			} else {
				anchor = i
			}
		}
		if anchor >= 0 {
			keep[anchor] = true
			p.Reason[done[anchor].ID] = "the newest backup before the window's start, which recovery to its start needs"
		}
	default:
		for i := range done {
			keep[i] = true
			p.Reason[done[i].ID] = "no retention policy"
		}
	}
	for i := max(0, n-pol.MinimumRedundancy); i < n; i++ {
		if !keep[i] {
			keep[i] = true
			p.Reason[done[i].ID] = fmt.Sprintf("minimum_redundancy = %d", pol.MinimumRedundancy)
		}
	}
	for i, b := range done {
		if b.Keep {
			keep[i] = true
			p.Reason[b.ID] = "kept (cellar keep)"
		}
	}
	// walFrom: the backup needs the WAL from its begin on (retained by
	// the policy, or an ancestor of one, and not kept standalone).
	walFrom := make([]bool, n)
	for i, b := range done {
		walFrom[i] = keep[i] && !b.Keep
	}
	parent := make([]bool, n)
	index := make(map[string]int, n)
	for i, b := range done {
		index[b.ID] = i
		if b.Parent != "" {
			p.BuildsOn[b.ID] = b.Parent
		}
	}
	for i := range done {
		if !keep[i] {
			continue
		}
		// Up the chain; at most n steps, whatever the manifests say.
		for c, steps := i, 0; steps < n; steps++ {
			j, ok := index[done[c].Parent]
			if !ok || j == c {
				break // a full backup, or a parent not in the catalog
			}
			if !keep[j] {
				keep[j], parent[j] = true, true
				p.Reason[done[j].ID] = fmt.Sprintf("the parent of %s, which is retained", done[c].ID)
			}
			if walFrom[i] && !done[j].Keep {
				walFrom[j] = true
			}
			c = j
		}
	}
	oldest := -1
	for i, b := range done {
		switch {
		case keep[i]:
			p.Retained = append(p.Retained, b.ID)
			if parent[i] {
				p.Parents = append(p.Parents, b.ID)
			}
			if oldest < 0 && walFrom[i] {
				oldest = i
			}
		default:
			p.Obsolete = append(p.Obsolete, b.ID)
			p.Reason[b.ID] = "OBSOLETE: the policy no longer needs it"
		}
	}
	// Failed backups older than the newest finished one.
	if n > 0 {
		newest := done[n-1].ID
		named := map[string]bool{}
		for _, b := range done {
			named[b.Parent] = true
		}
		for _, b := range in.Backups {
			if b.Status == catalog.StatusFailed && b.ID < newest && !named[b.ID] {
				p.Failed = append(p.Failed, b.ID)
				p.Reason[b.ID] = "failed, and a newer backup is done"
			}
		}
	}
	if oldest >= 0 {
		p.WALFrom = done[oldest].ID
	}
	p.WAL = removableWAL(in, done, keep, walFrom, oldest)
	return p
}

// removableWAL lists the WAL files before the begin WAL of done[oldest],
// the oldest retained backup that needs its WAL from its begin on, on
// every timeline, except every history file and the begin-to-end ranges
// of the other retained backups (kept ones, and the parents only kept
// ones build on), which makes each of them consistent. With no such
// backup, no WAL goes: it may be all there is.
func removableWAL(in Input, done []Backup, keep, walFrom []bool, oldest int) []string {
	if oldest < 0 {
		// Only kept backups (or none): remove nothing but what precedes
		// every kept backup's range, and only when there are some.
		return nil
	}
	seg := in.WALSegmentSize
	if seg <= 0 {
		seg = 16 << 20
	}
	first, err := pg.ParseWALName(done[oldest].BeginWAL)
	if err != nil {
		return nil
	}
	cutoff := first.SegNo(seg)
	type span struct {
		tl       uint32
		from, to uint64
	}
	var pinned []span
	for i, b := range done {
		if !keep[i] || walFrom[i] {
			continue
		}
		bw, err1 := pg.ParseWALName(b.BeginWAL)
		ew, err2 := pg.ParseWALName(b.EndWAL)
		if err1 != nil || err2 != nil {
			return nil // cannot tell what it needs: remove nothing
		}
		pinned = append(pinned, span{bw.Timeline, bw.SegNo(seg), ew.SegNo(seg)})
	}
	var out []string
	for _, w := range in.WAL {
		if w.Kind == pg.History {
			continue
		}
		s := w.SegNo(seg)
		if s >= cutoff {
			continue
		}
		needed := false
		for _, p := range pinned {
			if w.Timeline == p.tl && s >= p.from && s <= p.to {
				needed = true
			}
		}
		if !needed {
			out = append(out, w.Name)
		}
	}
	return out
}
