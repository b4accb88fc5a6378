package retention

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
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

// TestDecideProperty: for random histories and policies, every retained
// backup keeps all WAL from its begin on (on its timeline), a kept backup
// keeps its range, kept backups are retained, minimum redundancy holds,
// and every moment of a window has a retained backup that ended before it.
func TestDecideProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for iter := range 2000 {
		n := rng.IntN(12)
		var bs []Backup
		day := 0
		for i := range n {
			day += 1 + rng.IntN(3)
			b := Backup{ID: catalog.NewBackupID(t0.Add(time.Duration(day) * 24 * time.Hour)), Status: catalog.StatusDone,
				EndTime: t0.Add(time.Duration(day)*24*time.Hour + time.Hour), Timeline: 1,
				BeginWAL: segName(1, uint64(10*i)), EndWAL: segName(1, uint64(10*i+1+rng.IntN(3))), Keep: rng.IntN(8) == 0}
			if rng.IntN(6) == 0 {
				b.Status = catalog.StatusFailed
			}
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
		retained := map[string]bool{}
		for _, id := range p.Retained {
			retained[id] = true
		}
		var done []Backup
		for _, b := range bs {
			if b.Status == catalog.StatusDone {
				done = append(done, b)
			}
		}
		if len(p.Retained) < min(pol.MinimumRedundancy, len(done)) {
			t.Fatalf("%s: %d retained, below minimum redundancy", desc, len(p.Retained))
		}
		for _, b := range done {
			if b.Keep && !retained[b.ID] {
				t.Fatalf("%s: kept backup %s not retained", desc, b.ID)
			}
			if !retained[b.ID] {
				continue
			}
			first, _ := pg.ParseWALName(b.BeginWAL)
			last, _ := pg.ParseWALName(b.EndWAL)
			end := uint64(10*n + 5)
			if b.Keep {
				end = last.SegNo(seg)
			}
			for s := first.SegNo(seg); s <= end; s++ {
				if removed[segName(1, s)] {
					t.Fatalf("%s: removes %s, which retained backup %s needs", desc, segName(1, s), b.ID)
				}
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

func TestCheckDelete(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(i int, keep bool) catalog.Entry {
		return catalog.Entry{ID: catalog.NewBackupID(t0.Add(time.Duration(i) * time.Hour)), Status: catalog.StatusDone, Keep: keep}
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
}
