package health_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/health"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/retention"
)

const seg = int64(16 << 20)

// done is a finished backup that ended at end, from segment begin on.
func done(end time.Time, begin uint64) catalog.Entry {
	id := catalog.NewBackupID(end.Add(-time.Hour))
	return catalog.Entry{ID: id, Status: catalog.StatusDone, EndTime: end, Manifest: &catalog.Manifest{
		ID: id, Status: catalog.StatusDone, Timeline: 1, EndTime: end,
		BeginWAL: pg.SegmentNameOf(1, begin, seg), EndWAL: pg.SegmentNameOf(1, begin+1, seg),
	}}
}

func wal(segNos ...uint64) []catalog.WALFile {
	var out []catalog.WALFile
	for _, n := range segNos {
		w, _ := pg.ParseWALName(pg.SegmentNameOf(1, n, seg))
		out = append(out, catalog.WALFile{WALName: w, Size: 1})
	}
	return out
}

func statusOf(results []health.Result) map[string]string {
	m := map[string]string{}
	for _, r := range results {
		m[r.Name] = r.Status + " " + r.Hint
	}
	return m
}

func TestBackupAge(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	s := health.Settings{Server: "main", LastBackupMaximumAge: "1 DAYS", MaximumAge: 24 * time.Hour}
	for _, c := range []struct {
		backups []catalog.Entry
		want    string
	}{
		{nil, "FAILED (there is no finished backup"},
		{[]catalog.Entry{done(now.Add(-30*time.Hour), 2)}, "FAILED (the latest backup is 30h0m0s old"},
		{[]catalog.Entry{done(now.Add(-30*time.Hour), 2), done(now.Add(-2*time.Hour), 5)}, "OK"},
	} {
		r := health.BackupAge(s, &catalog.Catalog{Server: "main", Backups: c.backups}, now)
		if got := r.Status + " (" + r.Hint; !strings.HasPrefix(got, c.want) {
			t.Errorf("BackupAge with %d backups = %s %s, want %s", len(c.backups), r.Status, r.Hint, c.want)
		}
	}
	s.AgeErr = errors.New("bad age")
	if r := health.BackupAge(s, &catalog.Catalog{}, now); r.Status != health.Failed || r.Hint != "bad age" {
		t.Errorf("BackupAge with a bad setting = %+v", r)
	}
}

func TestCatalogChecks(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	old, recent := done(now.Add(-72*time.Hour), 2), done(now.Add(-24*time.Hour), 6)
	killed := catalog.Entry{ID: catalog.NewBackupID(now.Add(-5 * time.Hour)), Status: catalog.StatusFailed}
	cat := &catalog.Catalog{Server: "main", Backups: []catalog.Entry{old, recent, killed}, WAL: wal(2, 3, 5, 6, 7, 8), WALSegmentSize: seg}
	s := health.Settings{Server: "main", MinimumRedundancy: 3, RetentionPolicy: "REDUNDANCY 2", Policy: retention.Policy{Redundancy: 2, MinimumRedundancy: 3}}
	got := statusOf(health.Catalog(s, cat, now))
	if got["minimum redundancy requirements"] != "FAILED have 2 backups, expected at least 3" ||
		!strings.HasPrefix(got["failed backups"], "FAILED there are 1 failed backups") ||
		got["WAL continuity"] != "FAILED WAL is missing after backup "+old.ID+": "+pg.SegmentNameOf(1, 4, seg)+".."+pg.SegmentNameOf(1, 4, seg) {
		t.Errorf("Catalog = %v", got)
	}
	// Without the failed backup, two required and segment 4 there: all OK.
	cat.Backups = cat.Backups[:2]
	cat.WAL = wal(2, 3, 4, 5, 6, 7, 8)
	s.MinimumRedundancy = 2
	for name, st := range statusOf(health.Catalog(s, cat, now)) {
		if st != "OK " {
			t.Errorf("%s = %s", name, st)
		}
	}
	// A kept backup keeps its own range only: the WAL after it and
	// before the backup retention keeps the WAL from is not missing.
	cat.Backups[0].Keep = true
	cat.WAL = wal(2, 3, 6, 7, 8)
	s.Policy.Redundancy = 1
	if got := statusOf(health.Catalog(s, cat, now)); got["WAL continuity"] != "OK " {
		t.Errorf("WAL continuity with a kept backup = %s", got["WAL continuity"])
	}
	s.PolicyErr = errors.New("retention_policy: bad")
	if r := health.Catalog(s, cat, now); len(r) != 1 || r[0].Name != "retention policy settings" || r[0].Status != health.Failed {
		t.Errorf("Catalog with a bad policy = %+v", r)
	}
}

func TestRepository(t *testing.T) {
	store := mem.New(nil)
	results, s := health.Repository(context.Background(), func(context.Context) (cloud.Storage, error) { return store, nil }, "memory")
	if s == nil || health.Failures(results) != 0 || len(results) != 2 {
		t.Fatalf("Repository of a working store = %+v", results)
	}
	if err := store.List(context.Background(), "", func(o cloud.ObjectInfo) error { return errors.New("probe left " + o.Key) }); err != nil {
		t.Fatal(err)
	}
	results, s = health.Repository(context.Background(), func(context.Context) (cloud.Storage, error) { return nil, errors.New("no such bucket") }, "memory")
	if s != nil || len(results) != 1 || results[0].Name != "repository reachable" || results[0].Hint != "no such bucket" {
		t.Fatalf("Repository that cannot be opened = %+v", results)
	}
}

func TestArchiveCommandNamesCellar(t *testing.T) {
	for cmd, want := range map[string]bool{
		"cellar wal-push main %p":                            true,
		"/usr/local/bin/cellar --config /c wal-push main %p": true,
		"cellar wal-push main %p && other-tool %p":           true,
		"/usr/local/bin/archive.sh %p":                       false,
		"cellar wal-push other %p":                           false,
		"barman-wal-archive host main %p":                    false,
	} {
		if got := health.ArchiveCommandNamesCellar(cmd, "main"); got != want {
			t.Errorf("ArchiveCommandNamesCellar(%q) = %v, want %v", cmd, got, want)
		}
	}
}
