package catalog_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/pg"
)

// viewRepo makes a repository with three finished backups (one kept), a
// killed one, a running one and WAL on two timelines with a gap.
func viewRepo(t *testing.T) (*mem.Storage, time.Time) {
	t.Helper()
	ctx := context.Background()
	store := mem.New(nil)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	seg := int64(16 << 20)
	if _, err := catalog.EnsureIdentity(ctx, store, "main", catalog.Identity{SystemIdentifier: 42, WALSegmentSize: seg}); err != nil {
		t.Fatal(err)
	}
	for i, segNo := range []uint64{2, 5, 9} {
		id := catalog.NewBackupID(t0.Add(time.Duration(i) * 24 * time.Hour))
		m := &catalog.Manifest{Version: catalog.ManifestVersion, ID: id, Server: "main", Status: catalog.StatusDone, Timeline: 1,
			BeginTime: t0.Add(time.Duration(i) * 24 * time.Hour), EndTime: t0.Add(time.Duration(i)*24*time.Hour + time.Hour),
			BeginWAL: pg.SegmentNameOf(1, segNo, seg), EndWAL: pg.SegmentNameOf(1, segNo+1, seg),
			EndLSN: pg.LSN((segNo+1)*uint64(seg) + 0x28).String(), WALSegmentSize: seg}
		if err := catalog.WriteManifest(ctx, store, m); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := catalog.WriteKeep(ctx, store, "main", catalog.Keep{ID: id, Target: "standalone"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []catalog.Started{
		{ID: catalog.NewBackupID(t0.Add(80 * time.Hour)), Server: "main", Status: catalog.StatusStarted, Host: "here"},
		{ID: catalog.NewBackupID(t0.Add(90 * time.Hour)), Server: "main", Status: catalog.StatusStarted, Host: "here"},
	} {
		if err := catalog.WriteStarted(ctx, store, s); err != nil {
			t.Fatal(err)
		}
	}
	// Timeline 1: segments 2..7 and 9..11 (8 is missing); timeline 2
	// from 11 on.
	put := func(name string) {
		w, _ := pg.ParseWALName(name)
		if err := store.Put(ctx, catalog.WALKey("main", w), strings.NewReader("seg"), 3); err != nil {
			t.Fatal(err)
		}
	}
	for n := uint64(2); n <= 11; n++ {
		if n != 8 {
			put(pg.SegmentNameOf(1, n, seg))
		}
	}
	put(pg.SegmentNameOf(2, 11, seg))
	put(pg.SegmentNameOf(2, 12, seg))
	put("00000002.history")
	return store, t0
}

func TestCatalogQueries(t *testing.T) {
	ctx := context.Background()
	store, t0 := viewRepo(t)
	ids := []string{catalog.NewBackupID(t0), catalog.NewBackupID(t0.Add(24 * time.Hour)), catalog.NewBackupID(t0.Add(48 * time.Hour))}
	killed, running := catalog.NewBackupID(t0.Add(80*time.Hour)), catalog.NewBackupID(t0.Add(90*time.Hour))
	c, err := catalog.Read(ctx, store, "main", catalog.ReadOptions{
		WAL: true, Now: t0.Add(100 * time.Hour), Host: "here", OrphanAge: 24 * time.Hour,
		Running: func(id string) bool { return id == running },
	})
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	for _, e := range c.Backups {
		state[e.ID] = e.Status
	}
	if state[ids[0]] != catalog.StatusDone || state[killed] != catalog.StatusFailed || state[running] != catalog.StatusStarted || len(c.Backups) != 5 {
		t.Fatalf("states: %v", state)
	}
	if !c.Backups[0].Keep || c.Backups[1].Keep {
		t.Errorf("keep marks: %+v", c.Backups[:2])
	}

	for name, want := range map[string]string{"latest": ids[2], "last": ids[2], "oldest": ids[0], "FIRST": ids[0], ids[1]: ids[1], killed: killed} {
		if e, err := c.Find(name); err != nil || e.ID != want {
			t.Errorf("Find(%s) = %s, %v; want %s", name, e.ID, err, want)
		}
	}
	if _, err := c.Find("20200101T000000"); !errors.Is(err, catalog.ErrBackupNotFound) || !strings.Contains(err.Error(), "no backup 20200101T000000") {
		t.Errorf("Find of a missing id = %v", err)
	}
	if _, err := c.Find("yesterday"); !errors.Is(err, catalog.ErrBadBackupID) {
		t.Errorf("Find of a bad id = %v", err)
	}
	if _, err := c.FindDone(killed); !errors.Is(err, catalog.ErrNotFinished) {
		t.Errorf("FindDone of a failed backup = %v", err)
	}
	if e, err := c.NewestBefore(t0.Add(30 * time.Hour)); err != nil || e.ID != ids[1] {
		t.Errorf("NewestBefore = %s, %v; want %s", e.ID, err, ids[1])
	}
	if _, err := c.NewestBefore(t0); !errors.Is(err, catalog.ErrNoBackup) {
		t.Errorf("NewestBefore the first backup's end = %v", err)
	}

	// WAL across timelines: from the second backup's begin (5) to the
	// third's (9): 5, 6, 7; to the end: 9, 10, 11 on timeline 1, then 11
	// and 12 on timeline 2.
	seg := int64(16 << 20)
	if n, _, last := c.WALBetween(pg.SegmentNameOf(1, 5, seg), pg.SegmentNameOf(1, 9, seg)); n != 3 || last != pg.SegmentNameOf(1, 7, seg) {
		t.Errorf("WALBetween 5..9 = %d up to %s", n, last)
	}
	if n, size, last := c.WALBetween(pg.SegmentNameOf(1, 9, seg), ""); n != 5 || size != 15 || last != pg.SegmentNameOf(2, 12, seg) {
		t.Errorf("WALBetween 9.. = %d, %d bytes, up to %s", n, size, last)
	}
	// The gap at 8 lies after the first backup, not after the third.
	if gaps := c.Gaps(c.Backups[0]); len(gaps) != 1 || gaps[0] != pg.SegmentNameOf(1, 8, seg)+".."+pg.SegmentNameOf(1, 8, seg) {
		t.Errorf("Gaps after the first backup = %v", gaps)
	}
	if gaps := c.Gaps(c.Backups[2]); len(gaps) != 0 {
		t.Errorf("Gaps after the third backup = %v", gaps)
	}
	r, err := c.Recoverable(c.Backups[2].Manifest)
	if err != nil || r.LastWAL.Name != pg.SegmentNameOf(2, 12, seg) || r.ToLSN != pg.LSN(13*uint64(seg)) || !r.FromTime.Equal(c.Backups[2].EndTime) {
		t.Errorf("Recoverable = %+v, %v", r, err)
	}
	// Stores keep modification times to the second: the end is rounded
	// up, so a target in the last segment's second is in range.
	for _, w := range c.WAL {
		if w.ModTime.After(r.ToTime) || r.ToTime.Nanosecond() != 0 {
			t.Errorf("Recoverable ends at %v, before %s was archived at %v", r.ToTime, w.Name, w.ModTime)
		}
	}

	c.MarkObsolete([]string{ids[1]})
	if !c.Backups[1].Obsolete || c.Backups[0].Obsolete {
		t.Errorf("MarkObsolete: %+v", c.Backups[:2])
	}

	rows := c.Summaries(false)
	if len(rows) != 5 || rows[0].ID != running || rows[1].Status != catalog.StatusFailed || rows[2].ID != ids[2] {
		t.Fatalf("Summaries order: %+v", rows)
	}
	first, second, third := rows[4], rows[3], rows[2]
	if first.Retention != "KEEP:STANDALONE" || second.Retention != "OBSOLETE" || third.Retention != "VALID" ||
		first.Next != second.ID || second.Previous != first.ID || second.Next != third.ID || third.Next != "" {
		t.Errorf("Summaries marks and neighbours: %+v %+v %+v", first, second, third)
	}
	// WAL from each backup to the next: 2..4 (3 segments), 5..7, then 9..
	// to the end (5 across both timelines).
	if first.WALFiles != 3 || second.WALFiles != 3 || third.WALFiles != 5 || third.LastWAL != pg.SegmentNameOf(2, 12, seg) {
		t.Errorf("Summaries WAL: %d, %d, %d up to %s", first.WALFiles, second.WALFiles, third.WALFiles, third.LastWAL)
	}
	if rows := c.Summaries(true); rows[3].WALFiles != 3+5 {
		t.Errorf("Summaries to the end: the second backup has %d WAL files", rows[3].WALFiles)
	}

	if err := catalog.CheckCluster(ctx, store, "main", 42); err != nil {
		t.Errorf("CheckCluster of the repository's cluster = %v", err)
	}
	if err := catalog.CheckCluster(ctx, store, "main", 7); !errors.Is(err, catalog.ErrWrongCluster) {
		t.Errorf("CheckCluster of another cluster = %v", err)
	}
	if err := catalog.CheckCluster(ctx, store, "other", 7); err != nil {
		t.Errorf("CheckCluster of a server with nothing archived = %v", err)
	}
	// Without the WAL listing, nothing is recoverable.
	c, err = catalog.Read(ctx, store, "main", catalog.ReadOptions{Now: t0})
	if err != nil || len(c.WAL) != 0 {
		t.Fatalf("Read without WAL: %d WAL files, %v", len(c.WAL), err)
	}
	if _, err := c.Recoverable(c.Backups[2].Manifest); !errors.Is(err, catalog.ErrNoWAL) {
		t.Errorf("Recoverable without a WAL listing = %v", err)
	}
}

// TestSummariesChain: a full backup with an incremental on it shows its
// child and, marked as a parent, VALID:PARENT; the incremental its type,
// parent and chain length; JSON names no parent for the full one.
func TestSummariesChain(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	full := &catalog.Manifest{ID: catalog.NewBackupID(t0), Status: catalog.StatusDone}
	incr := &catalog.Manifest{ID: catalog.NewBackupID(t0.Add(time.Hour)), Status: catalog.StatusDone, Type: catalog.TypeIncr, Parent: full.ID, ChainLength: 2}
	c := &catalog.Catalog{Server: "main", Backups: []catalog.Entry{
		{ID: full.ID, Status: catalog.StatusDone, Manifest: full}, {ID: incr.ID, Status: catalog.StatusDone, Manifest: incr}}}
	c.MarkParents([]string{full.ID})
	rows := c.Summaries(false)
	if r := rows[1]; r.Type != catalog.TypeFull || r.ChainLength != 1 || r.Retention != "VALID:PARENT" || len(r.Children) != 1 || r.Children[0] != incr.ID {
		t.Errorf("the full backup: %+v", r)
	}
	if r := rows[0]; r.Type != catalog.TypeIncr || r.Parent != full.ID || r.ChainLength != 2 || r.Retention != "VALID" || r.Children != nil {
		t.Errorf("the incremental: %+v", r)
	}
	js, err := json.Marshal(rows[1])
	if err != nil || strings.Contains(string(js), `"parent"`) || !strings.Contains(string(js), `"type":"full"`) {
		t.Errorf("the full backup as JSON: %s, %v", js, err)
	}
}
