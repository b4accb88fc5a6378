package retention

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/pg"
)

const seg = 16 << 20

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func segName(tl uint32, n uint64) string { return pg.SegmentNameOf(tl, n, seg) }

// history makes n daily backups on timeline 1, backup i covering segments
// 10i..10i+1, and WAL from segment 0 to 10n+5.
func history(n int) ([]Backup, []pg.WALName) {
	var bs []Backup
	for i := range n {
		bs = append(bs, Backup{ID: catalog.NewBackupID(t0.Add(time.Duration(i) * 24 * time.Hour)), Status: catalog.StatusDone,
			EndTime: t0.Add(time.Duration(i)*24*time.Hour + time.Hour), Timeline: 1,
			BeginWAL: segName(1, uint64(10*i)), EndWAL: segName(1, uint64(10*i+1))})
	}
	var wal []pg.WALName
	for s := uint64(0); s <= uint64(10*n+5); s++ {
		w, _ := pg.ParseWALName(segName(1, s))
		wal = append(wal, w)
	}
	return bs, wal
}

func ids(bs []Backup, idx ...int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, bs[i].ID)
	}
	return out
}

func TestDecideTable(t *testing.T) {
	bs, wal := history(6) // days 0..5
	now := t0.Add(5*24*time.Hour + 2*time.Hour)
	failed := Backup{ID: catalog.NewBackupID(t0.Add(36 * time.Hour)), Status: catalog.StatusFailed}
	kept := append([]Backup(nil), bs...)
	kept[0].Keep = true
	for _, tc := range []struct {
		name     string
		backups  []Backup
		pol      Policy
		retained []string
		walFrom  string // the first segment kept (older ones removed), "" for none removed
	}{
		{"redundancy 2", bs, Policy{Redundancy: 2}, ids(bs, 4, 5), segName(1, 40)},
		{"redundancy above the count", bs, Policy{Redundancy: 10}, ids(bs, 0, 1, 2, 3, 4, 5), ""},
		{"window of 2 days keeps the anchor", bs, Policy{Window: 48 * time.Hour}, ids(bs, 3, 4, 5), segName(1, 30)},
		{"window ending just after a backup", bs, Policy{Window: 49 * time.Hour}, ids(bs, 2, 3, 4, 5), segName(1, 20)},
		{"window wider than history", bs, Policy{Window: 30 * 24 * time.Hour}, ids(bs, 0, 1, 2, 3, 4, 5), ""},
		{"minimum redundancy wins", bs, Policy{Redundancy: 1, MinimumRedundancy: 3}, ids(bs, 3, 4, 5), segName(1, 30)},
		{"kept backup stays with its WAL", kept, Policy{Redundancy: 1}, ids(kept, 0, 5), segName(1, 50)},
		{"no policy keeps all", bs, Policy{}, ids(bs, 0, 1, 2, 3, 4, 5), ""},
		{"failed backups go", append(append([]Backup(nil), bs...), failed), Policy{Redundancy: 6}, ids(bs, 0, 1, 2, 3, 4, 5), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(Input{Backups: tc.backups, WAL: wal, Policy: tc.pol, Now: now, WALSegmentSize: seg})
			if !slices.Equal(p.Retained, tc.retained) {
				t.Fatalf("retained %v, want %v", p.Retained, tc.retained)
			}
			removed := map[string]bool{}
			for _, w := range p.WAL {
				removed[w] = true
			}
			for _, w := range wal {
				want := tc.walFrom != "" && w.Name < tc.walFrom
				if tc.name == "kept backup stays with its WAL" && (w.Name == segName(1, 0) || w.Name == segName(1, 1)) {
					want = false
				}
				if removed[w.Name] != want {
					t.Fatalf("WAL %s removed %v, want %v (plan removes %d: %v)", w.Name, removed[w.Name], want, len(p.WAL), p.WAL)
				}
			}
			if strings.HasPrefix(tc.name, "failed") && !slices.Equal(p.Failed, []string{failed.ID}) {
				t.Fatalf("failed %v", p.Failed)
			}
		})
	}
}

// chains makes history(6) two chains: 0 full, 1 incr on 0, 2 incr on 1;
// 3 full, 4 diff on 3, 5 incr on 4.
func chains() ([]Backup, []pg.WALName) {
	bs, wal := history(6)
	for child, parent := range map[int]int{1: 0, 2: 1, 4: 3, 5: 4} {
		bs[child].Parent = bs[parent].ID
	}
	return bs, wal
}

func TestDecideChains(t *testing.T) {
	bs, wal := chains()
	now := t0.Add(5*24*time.Hour + 2*time.Hour)
	kept := slices.Clone(bs)
	kept[2].Keep = true
	for _, tc := range []struct {
		name              string
		backups           []Backup
		pol               Policy
		retained, parents []string
		walKept           func(s uint64) bool // which of segments 0..65 stay
	}{
		{"redundancy 1 keeps the newest incremental's chain", bs, Policy{Redundancy: 1}, ids(bs, 3, 4, 5), ids(bs, 3, 4),
			func(s uint64) bool { return s >= 30 }},
		{"redundancy 4 keeps the older chain whole", bs, Policy{Redundancy: 4}, ids(bs, 0, 1, 2, 3, 4, 5), ids(bs, 0, 1),
			func(uint64) bool { return true }},
		{"a window's anchor is a full", bs, Policy{Window: 48 * time.Hour}, ids(bs, 3, 4, 5), nil,
			func(s uint64) bool { return s >= 30 }},
		{"a window's anchor is an incremental", bs, Policy{Window: 24 * time.Hour}, ids(bs, 3, 4, 5), ids(bs, 3),
			func(s uint64) bool { return s >= 30 }},
		{"a kept incremental keeps its parents, with their own WAL only", kept, Policy{Redundancy: 1}, ids(bs, 0, 1, 2, 3, 4, 5), ids(bs, 0, 1, 3, 4),
			func(s uint64) bool { return s >= 30 || s%10 <= 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Decide(Input{Backups: tc.backups, WAL: wal, Policy: tc.pol, Now: now, WALSegmentSize: seg})
			if !slices.Equal(p.Retained, tc.retained) || !slices.Equal(p.Parents, tc.parents) {
				t.Fatalf("retained %v with parents %v, want %v with %v", p.Retained, p.Parents, tc.retained, tc.parents)
			}
			removed := map[string]bool{}
			for _, w := range p.WAL {
				removed[w] = true
			}
			for s := uint64(0); s <= 65; s++ {
				if removed[segName(1, s)] == tc.walKept(s) {
					t.Fatalf("segment %d removed %v (plan removes %v)", s, removed[segName(1, s)], p.WAL)
				}
			}
			for _, id := range tc.parents {
				if !strings.HasPrefix(p.Reason[id], "the parent of ") {
					t.Errorf("parent %s retained because %q", id, p.Reason[id])
				}
			}
		})
	}
	// A failed backup that a finished one names as its parent stays.
	odd := slices.Clone(bs)
	odd[1].Status = catalog.StatusFailed
	if p := Decide(Input{Backups: odd, WAL: wal, Policy: Policy{Redundancy: 1}, Now: now, WALSegmentSize: seg}); slices.Contains(p.Failed, odd[1].ID) {
		t.Errorf("removes failed backup %s, which %s names as its parent", odd[1].ID, odd[2].ID)
	}
}

// recordingStore records the keys deleted, and fails to delete one.
type recordingStore struct {
	*mem.Storage
	mu      sync.Mutex
	deleted []string
	fail    string
}

func (s *recordingStore) Delete(ctx context.Context, key string) error {
	if key == s.fail {
		return fmt.Errorf("delete %s: injected failure", key)
	}
	s.mu.Lock()
	s.deleted = append(s.deleted, key)
	s.mu.Unlock()
	return s.Storage.Delete(ctx, key)
}

// TestExecuteChainOrder: Execute removes an incremental's manifest
// before its parent's, and after a failure to remove an incremental
// leaves its parents whole.
func TestExecuteChainOrder(t *testing.T) {
	ctx := context.Background()
	bs, wal := chains()
	p := Decide(Input{Backups: bs, WAL: wal, Policy: Policy{Redundancy: 1}, Now: t0.Add(6 * 24 * time.Hour), WALSegmentSize: seg})
	if !slices.Equal(p.Obsolete, ids(bs, 0, 1, 2)) {
		t.Fatalf("obsolete %v", p.Obsolete)
	}
	fill := func() *recordingStore {
		s := &recordingStore{Storage: mem.New(nil)}
		for _, b := range bs {
			for _, k := range []string{catalog.ManifestKey("main", b.ID), catalog.PartKey("main", b.ID, 1, "zstd")} {
				if err := s.Put(ctx, k, strings.NewReader("x"), 1); err != nil {
					t.Fatal(err)
				}
			}
		}
		return s
	}
	s := fill()
	res, err := Execute(ctx, s, "main", p, nil, false)
	if err != nil || len(res.Backups) != 3 || res.Backups[0].ID != bs[0].ID {
		t.Fatalf("Execute = %+v, %v", res, err)
	}
	at := func(id string) int { return slices.Index(s.deleted, catalog.ManifestKey("main", id)) }
	if !(at(bs[2].ID) < at(bs[1].ID) && at(bs[1].ID) < at(bs[0].ID)) || at(bs[2].ID) < 0 {
		t.Fatalf("manifests removed in the order %v", s.deleted)
	}
	s = fill()
	s.fail = catalog.PartKey("main", bs[2].ID, 1, "zstd")
	if _, err := Execute(ctx, s, "main", p, nil, false); err == nil {
		t.Fatal("Execute with a failing delete: no error")
	}
	for _, b := range bs[:2] {
		if _, err := s.Stat(ctx, catalog.ManifestKey("main", b.ID)); err != nil {
			t.Errorf("after a failure to remove %s, its parent %s: %v", bs[2].ID, b.ID, err)
		}
	}
}

func TestDecideTimelines(t *testing.T) {
	// Timeline 1 to segment 30, timeline 2 forks at 25 and runs to 60,
	// timeline 3 forks at 50 and runs to 80. Backups on each; the window
	// starts between the TL2 backups.
	var wal []pg.WALName
	add := func(tl uint32, from, to uint64) {
		for s := from; s <= to; s++ {
			w, _ := pg.ParseWALName(segName(tl, s))
			wal = append(wal, w)
		}
	}
	add(1, 0, 30)
	add(2, 25, 60)
	add(3, 50, 80)
	for _, h := range []string{"00000002.history", "00000003.history"} {
		w, _ := pg.ParseWALName(h)
		wal = append(wal, w)
	}
	mk := func(day int, tl uint32, begin uint64) Backup {
		return Backup{ID: catalog.NewBackupID(t0.Add(time.Duration(day) * 24 * time.Hour)), Status: catalog.StatusDone,
			EndTime: t0.Add(time.Duration(day)*24*time.Hour + time.Hour), Timeline: tl, BeginWAL: segName(tl, begin), EndWAL: segName(tl, begin+1)}
	}
	bs := []Backup{mk(0, 1, 5), mk(1, 1, 20), mk(2, 2, 35), mk(3, 2, 45), mk(4, 3, 70)}
	now := t0.Add(4*24*time.Hour + 12*time.Hour)
	p := Decide(Input{Backups: bs, WAL: wal, Policy: Policy{Window: 36 * time.Hour}, Now: now, WALSegmentSize: seg})
	// The window starts on day 3: the day 2 backup (timeline 2, from
	// segment 35) is the one recovery to the window's start needs.
	if !slices.Equal(p.Retained, ids(bs, 2, 3, 4)) {
		t.Fatalf("retained %v", p.Retained)
	}
	for _, w := range p.WAL {
		if n, _ := pg.ParseWALName(w); n.Kind == pg.History || n.SegNo(seg) >= 35 {
			t.Fatalf("removes %s, which recovery from backup %s needs", w, bs[2].ID)
		}
	}
	if len(p.WAL) != 31+(35-25) {
		t.Fatalf("removes %d WAL files, want all of timeline 1 and timeline 2 before 35", len(p.WAL))
	}
}

// TestDecideProperty: for random histories of full, incr and diff
// backups and random policies, every ancestor of a retained backup is
// retained (never obsolete nor failed), and removed only after its
// dependents; every retained backup keeps all WAL from its begin on (on
// its timeline), and so does every parent such a backup builds on; a
// kept backup, and a parent that only kept backups build on, keeps its
// range; kept backups are retained, minimum redundancy holds, and every
// moment of a window has a retained backup that ended before it.
func TestDecideProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for iter := range 3000 {
		n := rng.IntN(14)
		var bs []Backup
		day := 0
		lastDone, lastFull := "", ""
		for i := range n {
			day += 1 + rng.IntN(3)
			b := Backup{ID: catalog.NewBackupID(t0.Add(time.Duration(day) * 24 * time.Hour)), Status: catalog.StatusDone,
				EndTime: t0.Add(time.Duration(day)*24*time.Hour + time.Hour), Timeline: 1,
				BeginWAL: segName(1, uint64(10*i)), EndWAL: segName(1, uint64(10*i+1+rng.IntN(3))), Keep: rng.IntN(8) == 0}
			if rng.IntN(6) == 0 {
				b.Status, b.Keep = catalog.StatusFailed, false
				bs = append(bs, b)
				continue
			}
			// incr on the newest backup (or, as --parent may say, an
			// older one), diff on the newest full, or a full.
			switch k := rng.IntN(10); {
			case k < 5 && lastDone != "":
				b.Parent = lastDone
				if k == 0 {
					b.Parent = pickDone(rng, bs)
				}
			case k < 7 && lastFull != "":
				b.Parent = lastFull
			default:
				lastFull = b.ID
			}
			lastDone = b.ID
			bs = append(bs, b)
		}
		var wal []pg.WALName
		for s := uint64(0); s <= uint64(10*n+5); s++ {
			w, _ := pg.ParseWALName(segName(1, s))
			wal = append(wal, w)
		}
		pol := Policy{MinimumRedundancy: rng.IntN(3)}
		if rng.IntN(2) == 0 {
			pol.Redundancy = 1 + rng.IntN(4)
		} else {
			pol.Window = time.Duration(1+rng.IntN(15)) * 24 * time.Hour
		}
		now := t0.Add(time.Duration(day+rng.IntN(4))*24*time.Hour + 2*time.Hour)
		p := Decide(Input{Backups: bs, WAL: wal, Policy: pol, Now: now, WALSegmentSize: seg})
		desc := fmt.Sprintf("iteration %d: %+v, policy %+v", iter, bs, pol)
		removed := map[string]bool{}
		for _, w := range p.WAL {
			removed[w] = true
		}
		retained, parents, gone := map[string]bool{}, map[string]bool{}, map[string]bool{}
		for _, id := range p.Retained {
			retained[id] = true
		}
		for _, id := range p.Parents {
			parents[id] = true
		}
		for _, id := range append(slices.Clone(p.Obsolete), p.Failed...) {
			gone[id] = true
		}
		byID := map[string]Backup{}
		var done []Backup
		for _, b := range bs {
			byID[b.ID] = b
			if b.Status == catalog.StatusDone {
				done = append(done, b)
			}
		}
		if len(p.Retained)+len(p.Obsolete) != len(done) {
			t.Fatalf("%s: %d retained and %d obsolete of %d finished backups", desc, len(p.Retained), len(p.Obsolete), len(done))
		}
		if len(p.Retained) < min(pol.MinimumRedundancy, len(done)) {
			t.Fatalf("%s: %d retained, below minimum redundancy", desc, len(p.Retained))
		}
		// keepsFrom: the retained backups that need all WAL from their
		// begin on: those retained for themselves (not kept, not only a
		// parent), and the parents that they build on, unless kept.
		keepsFrom := map[string]bool{}
		for _, b := range done {
			if retained[b.ID] && !b.Keep && !parents[b.ID] {
				for a := b; ; a = byID[a.Parent] {
					if !a.Keep {
						keepsFrom[a.ID] = true
					}
					if a.Parent == "" {
						break
					}
				}
			}
		}
		if p.WALFrom != "" && !keepsFrom[p.WALFrom] || p.WALFrom == "" && len(keepsFrom) > 0 {
			t.Fatalf("%s: WAL is kept from backup %q on", desc, p.WALFrom)
		}
		for _, b := range done {
			if b.Keep && !retained[b.ID] {
				t.Fatalf("%s: kept backup %s not retained", desc, b.ID)
			}
			if !retained[b.ID] {
				continue
			}
			for a := b; a.Parent != ""; a = byID[a.Parent] {
				if !retained[a.Parent] || gone[a.Parent] {
					t.Fatalf("%s: retained backup %s builds on %s, which is not retained", desc, b.ID, a.Parent)
				}
			}
			if parents[b.ID] && !strings.HasPrefix(p.Reason[b.ID], "the parent of ") {
				t.Fatalf("%s: parent %s retained because %q", desc, b.ID, p.Reason[b.ID])
			}
			first, _ := pg.ParseWALName(b.BeginWAL)
			last, _ := pg.ParseWALName(b.EndWAL)
			end := last.SegNo(seg)
			if keepsFrom[b.ID] {
				end = uint64(10*n + 5)
			}
			for s := first.SegNo(seg); s <= end; s++ {
				if removed[segName(1, s)] {
					t.Fatalf("%s: removes %s, which retained backup %s needs", desc, segName(1, s), b.ID)
				}
			}
		}
		// Parents are only what retained backups build on.
		for id := range parents {
			needed := false
			for _, b := range done {
				for a := b; retained[b.ID] && !parents[b.ID] && a.Parent != ""; a = byID[a.Parent] {
					needed = needed || a.Parent == id
				}
			}
			if !needed {
				t.Fatalf("%s: %s retained as a parent, which no backup retained for itself builds on", desc, id)
			}
		}
		// Removal goes dependents first.
		ids := append(slices.Clone(p.Obsolete), p.Failed...)
		round := map[string]int{}
		for r, idx := range removalRounds(ids, p.BuildsOn) {
			for _, i := range idx {
				round[ids[i]] = r
			}
		}
		if len(round) != len(ids) {
			t.Fatalf("%s: removal rounds hold %d of %d backups", desc, len(round), len(ids))
		}
		for _, id := range ids {
			if par, ok := round[byID[id].Parent]; ok && par <= round[id] {
				t.Fatalf("%s: %s is removed in round %d, its parent %s in round %d", desc, id, round[id], byID[id].Parent, par)
			}
		}
		if pol.Window > 0 {
			for tm := now.Add(-pol.Window); !tm.After(now); tm = tm.Add(time.Hour) {
				had, has := false, false
				for _, b := range done {
					if !b.EndTime.After(tm) {
						had = true
						has = has || retained[b.ID]
					}
				}
				if had && !has {
					t.Fatalf("%s: no retained backup can recover to %v", desc, tm)
				}
			}
		}
	}
}

// pickDone returns a random finished backup of bs.
func pickDone(rng *rand.Rand, bs []Backup) string {
	var ids []string
	for _, b := range bs {
		if b.Status == catalog.StatusDone {
			ids = append(ids, b.ID)
		}
	}
	return ids[rng.IntN(len(ids))]
}

func TestCheckDelete(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(i int, keep bool) catalog.Entry {
		id := catalog.NewBackupID(t0.Add(time.Duration(i) * time.Hour))
		return catalog.Entry{ID: id, Status: catalog.StatusDone, Keep: keep, Manifest: &catalog.Manifest{ID: id, Status: catalog.StatusDone}}
	}
	cat := &catalog.Catalog{Backups: []catalog.Entry{entry(0, true), entry(1, false), entry(2, false)}}
	if err := CheckDelete(cat, cat.Backups[0], 0); !errors.Is(err, ErrKept) {
		t.Errorf("deleting a kept backup = %v", err)
	}
	if err := CheckDelete(cat, cat.Backups[1], 3); !errors.Is(err, ErrBelowRedundancy) {
		t.Errorf("deleting below minimum redundancy = %v", err)
	}
	if err := CheckDelete(cat, cat.Backups[1], 2); err != nil {
		t.Errorf("deleting one of three with a minimum of two = %v", err)
	}
	failed := catalog.Entry{ID: catalog.NewBackupID(t0.Add(5 * time.Hour)), Status: catalog.StatusFailed}
	if err := CheckDelete(cat, failed, 10); err != nil {
		t.Errorf("deleting a failed backup = %v", err)
	}
	// 1 <- 2 <- 3, 1 <- 4 (diff), and a failed backup that names 4.
	for i, parent := range map[int]int{3: 2, 4: 1} {
		cat.Backups = append(cat.Backups, entry(i, false))
		cat.Backups[len(cat.Backups)-1].Manifest.Parent = cat.Backups[parent].ID
	}
	slices.SortFunc(cat.Backups, func(a, b catalog.Entry) int { return strings.Compare(a.ID, b.ID) })
	cat.Backups[2].Manifest.Parent = cat.Backups[1].ID
	cat.Backups = append(cat.Backups, catalog.Entry{ID: catalog.NewBackupID(t0.Add(6 * time.Hour)), Status: catalog.StatusFailed,
		Manifest: &catalog.Manifest{Parent: cat.Backups[4].ID}})
	id := func(i int) string { return cat.Backups[i].ID }
	direct, indirect := Dependents(cat, id(1))
	if !slices.Equal(direct, []string{id(4), id(2)}) || !slices.Equal(indirect, []string{id(3)}) {
		t.Errorf("Dependents of %s = %v, %v", id(1), direct, indirect)
	}
	if err := CheckDelete(cat, cat.Backups[1], 0); !errors.Is(err, ErrParent) {
		t.Errorf("deleting a parent = %v", err)
	}
	for _, i := range []int{3, 4} {
		if err := CheckDelete(cat, cat.Backups[i], 0); err != nil {
			t.Errorf("deleting %s, on which only a failed backup builds = %v", id(i), err)
		}
	}
}
