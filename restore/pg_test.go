package restore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cellar-backup/cellar/basebackup"
	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/internal/pgtest"
	"github.com/cellar-backup/cellar/restore"
	"github.com/cellar-backup/cellar/wal"
)

// archiver pushes what PostgreSQL's archive_command copied into dir into
// the repository, as wal-push would, until stopped.
func archiver(t *testing.T, store *mem.Storage, dir string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		done := map[string]bool{}
		for ctx.Err() == nil {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.IsDir() || done[e.Name()] || strings.HasPrefix(e.Name(), ".") {
					continue
				}
				if _, err := wal.Push(ctx, wal.PushOptions{Store: store, Server: "main", Path: filepath.Join(dir, e.Name()), Codec: codec.Zstd, Version: "test"}); err != nil {
					if ctx.Err() == nil {
						t.Errorf("pushing %s: %v", e.Name(), err)
					}
					continue
				}
				done[e.Name()] = true
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return func() { cancel(); wg.Wait() }
}

// TestBackupAndRestoreWithPostgreSQL: a backup of a real server taken by
// basebackup and restored by restore starts as a server that recovers to
// the end of the archived WAL, rows written after the backup included, and
// its files are the backup's to the byte.
func TestBackupAndRestoreWithPostgreSQL(t *testing.T) {
	ctx := context.Background()
	src := pgtest.New(t, pgtest.Options{Conf: map[string]string{"archive_mode": "on"}})
	archive := src.MakeDir("archive")
	// Copied under a hidden name and renamed, so the archiver never
	// reads a half-copied segment.
	src.SetConf(t, "archive_command", "cp %p "+archive+"/.%f && mv "+archive+"/.%f "+archive+"/%f")
	store := mem.New(nil)
	stop := archiver(t, store, archive)
	defer stop()

	src.Exec(t, "CREATE TABLE t (id int primary key, v text)")
	src.Exec(t, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
	conn, err := pgx.Connect(ctx, src.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	m, err := basebackup.Run(ctx, basebackup.Options{
		Store: store, Server: "main", Conn: conn, PGData: src.DataDir(), Codec: codec.Zstd,
		Parallel: 2, PartSize: 4 << 20, Fast: true, WALTimeout: 2 * time.Minute, CellarVersion: "test",
	})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if m.Status != catalog.StatusDone || m.PartCount < 2 || m.FileCount == 0 {
		t.Fatalf("backup manifest: status %s, %d parts, %d files", m.Status, m.PartCount, m.FileCount)
	}
	src.Exec(t, "INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 20100) g")
	last := src.SwitchWAL(t)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := wal.WaitArchived(wctx, store, "main", last); err != nil {
		t.Fatalf("waiting for %s: %v", last, err)
	}

	full, err := catalog.ReadManifest(ctx, store, "main", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(src.MakeDir("restored"), "data")
	res, err := restore.Run(ctx, restore.Options{
		Store: store, Manifest: full, Dest: dest, Parallel: 2,
		Recovery: restore.Recovery{Settings: [][2]string{{"restore_command", "cp " + archive + "/%f %p"}}, Signal: "recovery"},
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if res.Files != full.FileCount || res.Parts != full.PartCount {
		t.Errorf("restore: %d files from %d parts, the backup has %d in %d", res.Files, res.Parts, full.FileCount, full.PartCount)
	}
	// Every regular file is the backup's, by its SHA-256, but the
	// configuration restore adds the recovery settings to.
	_, files := pgtest.Contents(t, store, full)
	sameFiles(t, dest, files, "postgresql.auto.conf")

	// The same backup as Cellar 1.0 stored it (version 1: parts and
	// files in the manifest, no index, no file lists) restores and
	// verifies to the same bytes.
	v1, m1 := asVersion1(t, store, full)
	dest1 := filepath.Join(src.MakeDir("restored-v1"), "data")
	res1, err := restore.Run(ctx, restore.Options{Store: v1, Manifest: m1, Dest: dest1, Parallel: 2})
	if err != nil || res1.Files != full.FileCount || res1.Parts != full.PartCount {
		t.Fatalf("restore of the version 1 backup: %+v %v", res1, err)
	}
	sameFiles(t, dest1, files)
	if vr, err := restore.Verify(ctx, restore.VerifyOptions{Store: v1, Manifest: m1, Parallel: 2}); err != nil || len(vr.Problems) > 0 || vr.Files == 0 {
		t.Fatalf("verify of the version 1 backup: %+v %v", vr, err)
	}

	restored := pgtest.Restore(t, dest, "", pgtest.Options{})
	restored.WaitPromoted(t, 2*time.Minute)
	if n := restored.QueryInt64(t, "SELECT count(*) FROM t"); n != 20100 {
		t.Fatalf("the restored server has %d rows, want 20100 (20000 before the backup, 100 after)", n)
	}
	// PostgreSQL's own judges: the same dump, and sound indexes and heaps.
	if a, b := dumpall(t, src), dumpall(t, restored); a != b {
		t.Fatalf("pg_dumpall of the restored server differs from the source's (%d against %d bytes)", len(b), len(a))
	}
	if out, err := pgtest.RunAsServerUser(t, pgtest.Bin("pg_amcheck"), "-h", restored.Host(), "-p", strconv.Itoa(restored.Port()), "-U", restored.User(), "--all", "--install-missing", "--heapallindexed"); err != nil {
		t.Fatalf("pg_amcheck on the restored server: %v\n%s", err, out)
	}
}

// sameFiles checks that every regular file of a backup, but those named
// in except, is in dir with the backup's SHA-256.
func sameFiles(t *testing.T, dir string, files []catalog.File, except ...string) {
	t.Helper()
	for _, f := range files {
		if f.Type != catalog.TypeFile || slices.Contains(except, f.Path) {
			continue
		}
		r, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		_, sum, err := catalog.Digest(r)
		r.Close()
		if err != nil || sum != f.SHA256 {
			t.Fatalf("%s restored into %s differs from the backup (%v)", f.Path, dir, err)
		}
	}
}

// asVersion1 copies a backup's repository into a new store with the
// backup's manifest rewritten as version 1 held it, parts and files in it,
// and without its index and file lists.
func asVersion1(t *testing.T, store *mem.Storage, m *catalog.Manifest) (*mem.Storage, *catalog.Manifest) {
	t.Helper()
	ctx := context.Background()
	parts, files := pgtest.Contents(t, store, m)
	out := mem.New(nil)
	err := store.List(ctx, "", func(o cloud.ObjectInfo) error {
		if o.Key == catalog.ManifestKey(m.Server, m.ID) || o.Key == m.Index.Key || strings.HasSuffix(o.Key, ".files") {
			return nil
		}
		rc, err := store.Get(ctx, o.Key)
		if err != nil {
			return err
		}
		defer rc.Close()
		return out.Put(ctx, o.Key, rc, o.Size)
	})
	if err != nil {
		t.Fatal(err)
	}
	v1 := *m
	v1.Version, v1.Index, v1.PartCount = 1, nil, 0
	for i := range parts {
		parts[i].List = nil
	}
	slices.SortFunc(files, func(a, b catalog.File) int { return strings.Compare(a.Path, b.Path) })
	js, err := json.Marshal(struct {
		catalog.Manifest
		Parts []catalog.Part `json:"parts"`
		Files []catalog.File `json:"files"`
	}{v1, parts, files})
	if err != nil {
		t.Fatal(err)
	}
	h := catalog.Header{Type: "manifest", Name: m.ID, Codec: codec.Zstd}
	h.Size, h.SHA256, _ = catalog.Digest(bytes.NewReader(js))
	var obj bytes.Buffer
	if err := catalog.Encode(&obj, h, 0, bytes.NewReader(js)); err != nil {
		t.Fatal(err)
	}
	if err := out.Put(ctx, catalog.ManifestKey(m.Server, m.ID), &obj, int64(obj.Len())); err != nil {
		t.Fatal(err)
	}
	got, err := catalog.ReadManifest(ctx, out, m.Server, m.ID)
	if err != nil || got.Version != 1 || got.PartCount != len(parts) {
		t.Fatalf("the version 1 manifest reads back as %+v, %v", got, err)
	}
	return out, got
}

func dumpall(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	// A fixed \restrict key: pg_dumpall draws a random one per run.
	out, err := pgtest.Command(t, pgtest.Bin("pg_dumpall"), "-h", c.Host(), "-p", strconv.Itoa(c.Port()), "-U", c.User(), "--restrict-key=cellartest").Output()
	if err != nil {
		t.Fatalf("pg_dumpall: %v", err)
	}
	return string(out)
}
