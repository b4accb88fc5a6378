package catalog

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/pg"
)

func TestManifestRefusesNewerVersionAndDamage(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	m := &Manifest{Version: ManifestVersion + 1, ID: "20260101T000000", Server: "main", Status: StatusDone}
	if err := WriteManifest(ctx, store, m); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(ctx, store, "main", m.ID); err == nil || !strings.Contains(err.Error(), "upgrade cellar") {
		t.Fatalf("a newer manifest: %v", err)
	}
	// One byte changed in the stored object.
	key := ManifestKey("main", "20260102T000000")
	m = &Manifest{Version: ManifestVersion, ID: "20260102T000000", Server: "main", Status: StatusDone, Label: strings.Repeat("x", 1000)}
	if err := WriteManifest(ctx, store, m); err != nil {
		t.Fatal(err)
	}
	rc, _ := store.Get(ctx, key)
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	rc.Close()
	b := buf.Bytes()
	b[len(b)-20] ^= 0xff
	if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(ctx, store, "main", m.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a damaged manifest: %v, want ErrCorrupt", err)
	}
}

func TestListBackups(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, status := range []string{StatusDone, StatusFailed, StatusDone, StatusStarted} {
		id := NewBackupID(t0.Add(time.Duration(i) * time.Hour))
		s := Started{ID: id, Server: "main", Status: StatusStarted, BeginTime: t0}
		if err := PutJSON(ctx, store, StartedKey("main", id), "backup-started", s, true); err != nil {
			t.Fatal(err)
		}
		switch status {
		case StatusDone:
			m := &Manifest{Version: ManifestVersion, ID: id, Server: "main", Status: StatusDone, DataSize: int64(i), PartCount: 1}
			if err := WriteManifest(ctx, store, m); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				store.Delete(ctx, StartedKey("main", id))
			}
		case StatusFailed:
			s.Status, s.Error = StatusFailed, "disk full"
			if err := WriteStarted(ctx, store, s); err != nil {
				t.Fatal(err)
			}
		}
		// Parts are not the catalog's business.
		store.Put(ctx, PartKey("main", id, 1, codec.Zstd), strings.NewReader("x"), 1)
	}
	// Another server's backups and stray objects.
	store.Put(ctx, "other/backups/20260101T000000.manifest", strings.NewReader("x"), 1)
	store.Put(ctx, "main/backups/README", strings.NewReader("x"), 1)
	list, err := ListBackups(ctx, store, "main")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range list {
		got = append(got, b.ID()+":"+b.Status())
	}
	want := "20260101T000000:DONE 20260101T010000:FAILED 20260101T020000:DONE 20260101T030000:STARTED"
	if strings.Join(got, " ") != want {
		t.Fatalf("ListBackups = %v\nwant %s", got, want)
	}
	if list[0].Manifest.PartCount != 1 || list[0].Manifest.DataSize != 0 || list[2].Manifest.DataSize != 2 {
		t.Fatalf("a listing decodes the summary only: %+v", list[0].Manifest)
	}
	if list[1].Started.Error != "disk full" {
		t.Fatalf("failed marker: %+v", list[1].Started)
	}
}

// TestListBackupsIsBounded: listing the catalog reads a few objects per
// backup, however many parts and WAL files the repository holds.
func TestListBackupsIsBounded(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const backups = 6
	for i := range backups {
		id := NewBackupID(t0.Add(time.Duration(i) * 24 * time.Hour))
		m := &Manifest{Version: ManifestVersion, ID: id, Server: "main", Status: StatusDone}
		for n := 1; n <= 300; n++ {
			store.Put(ctx, PartKey("main", id, n, codec.Zstd), strings.NewReader("p"), 1)
			m.PartCount++
		}
		if err := WriteManifest(ctx, store, m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3000 {
		w, _ := pg.ParseWALName(pg.SegmentNameOf(1, uint64(i), 16<<20))
		store.Put(ctx, WALKey("main", w), strings.NewReader("w"), 1)
	}
	c := storagetest.NewCounting(store)
	list, err := ListBackups(ctx, c, "main")
	if err != nil || len(list) != backups {
		t.Fatalf("ListBackups: %d, %v", len(list), err)
	}
	if c.Lists() != 1 || c.Listed() != backups || c.TotalGets() != backups {
		t.Fatalf("listing %d backups among %d objects: %d list calls, %d objects listed, %d reads", backups, 6*300+3000, c.Lists(), c.Listed(), c.TotalGets())
	}
}
