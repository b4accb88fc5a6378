package restore_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
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

// TestIncrementalChainWithPostgreSQL: a full backup and two incrementals
// of a real server, with rows updated, a table truncated, one dropped and
// one created between them, store less than the full and restore, each,
// to files equal by SHA-256 to what the backup read; the newest restored
// starts with every row.
func TestIncrementalChainWithPostgreSQL(t *testing.T) {
	ctx := context.Background()
	src := pgtest.New(t, pgtest.Options{Conf: map[string]string{"archive_mode": "on"}})
	archive := src.MakeDir("archive")
	src.SetConf(t, "archive_command", "cp %p "+archive+"/.%f && mv "+archive+"/.%f "+archive+"/%f")
	store := mem.New(nil)
	stop := archiver(t, store, archive)
	defer stop()
	conn, err := pgx.Connect(ctx, src.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	options := func(typ string) basebackup.Options {
		return basebackup.Options{
			Store: store, Server: "main", Conn: conn, PGData: src.DataDir(), Codec: codec.Zstd,
			Parallel: 2, PartSize: 4 << 20, Fast: true, WALTimeout: 2 * time.Minute, CellarVersion: "test", Type: typ,
		}
	}
	backup := func(typ string) *catalog.Manifest {
		t.Helper()
		m, err := basebackup.Run(ctx, options(typ))
		if err != nil {
			t.Fatalf("%s backup: %v", typ, err)
		}
		return m
	}

	src.Exec(t, "CREATE TABLE t (id int primary key, v text)")
	src.Exec(t, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")
	src.Exec(t, "CREATE TABLE gone (id int)")
	src.Exec(t, "INSERT INTO gone SELECT generate_series(1, 1000)")
	src.Exec(t, "CREATE TABLE emptied (id int)")
	src.Exec(t, "INSERT INTO emptied SELECT generate_series(1, 100000)")
	full := backup(catalog.TypeFull)
	if full.Type != catalog.TypeFull || full.Parent != "" || full.Chain() != 1 {
		t.Fatalf("full: type %q parent %q chain %d", full.Type, full.Parent, full.Chain())
	}

	for _, q := range []string{"UPDATE t SET v = 'changed' WHERE id % 100 = 0", "TRUNCATE emptied", "DROP TABLE gone",
		"CREATE TABLE fresh AS SELECT g AS id FROM generate_series(1, 3000) g"} {
		src.Exec(t, q)
	}
	incr1 := backup(catalog.TypeIncr)
	if incr1.Type != catalog.TypeIncr || incr1.Parent != full.ID || incr1.Chain() != 2 || incr1.Version != catalog.ManifestVersionIncremental {
		t.Fatalf("incr1: type %q parent %q chain %d version %d", incr1.Type, incr1.Parent, incr1.Chain(), incr1.Version)
	}
	if incr1.StoredSize*4 > full.StoredSize {
		t.Errorf("incr1 stored %d bytes, the full %d: an incremental of a few changed pages stores far less", incr1.StoredSize, full.StoredSize)
	}
	src.Exec(t, "UPDATE t SET v = 'again' WHERE id % 1000 = 7")
	src.Exec(t, "INSERT INTO fresh SELECT generate_series(3001, 4000)")
	incr2 := backup(catalog.TypeIncr)
	if incr2.Parent != incr1.ID || incr2.Chain() != 3 {
		t.Fatalf("incr2: parent %q chain %d", incr2.Parent, incr2.Chain())
	}
	diff := backup(catalog.TypeDiff)
	if diff.Parent != full.ID || diff.Chain() != 2 {
		t.Fatalf("diff: parent %q chain %d, want %s and 2", diff.Parent, diff.Chain(), full.ID)
	}
	// The files of each kind: some stored as pages, some as references.
	kinds := map[string]int{}
	_, files := pgtest.Contents(t, store, incr2)
	for _, f := range files {
		kinds[f.Stored]++
	}
	if kinds[catalog.StoredPages] == 0 || kinds[catalog.StoredRef] == 0 {
		t.Errorf("incr2's files by what it stored: %v; want pages and references", kinds)
	}

	src.Exec(t, "INSERT INTO t SELECT g, 'after' FROM generate_series(50001, 50100) g")
	last := src.SwitchWAL(t)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := wal.WaitArchived(wctx, store, "main", last); err != nil {
		t.Fatalf("waiting for %s: %v", last, err)
	}

	for _, m := range []*catalog.Manifest{incr1, incr2, diff} {
		dest := filepath.Join(src.MakeDir("restored-"+m.ID+m.Type), "data")
		res, err := restore.Run(ctx, restore.Options{Store: store, Manifest: m, Dest: dest, Parallel: 2})
		if err != nil {
			t.Fatalf("restore of %s %s: %v", m.Type, m.ID, err)
		}
		if res.Files != m.FileCount || res.Parts == 0 {
			t.Fatalf("restore of %s: %+v, the backup has %d files", m.ID, res, m.FileCount)
		}
		_, files := pgtest.Contents(t, store, m)
		sameFiles(t, dest, files)
		vr, err := restore.Verify(ctx, restore.VerifyOptions{Store: store, Manifest: m, Parallel: 2})
		if err != nil || len(vr.Problems) > 0 || len(vr.Ancestors) != m.Chain()-1 || vr.Ancestors[0] != full.ID {
			t.Fatalf("verify of %s: %+v %v", m.ID, vr, err)
		}
	}

	dest := filepath.Join(src.MakeDir("restored-newest"), "data")
	if _, err := restore.Run(ctx, restore.Options{
		Store: store, Manifest: incr2, Dest: dest, Parallel: 2,
		Recovery: restore.Recovery{Settings: [][2]string{{"restore_command", "cp " + archive + "/%f %p"}}, Signal: "recovery"},
	}); err != nil {
		t.Fatal(err)
	}
	restored := pgtest.Restore(t, dest, "", pgtest.Options{})
	restored.WaitPromoted(t, 2*time.Minute)
	for q, want := range map[string]int64{
		"SELECT count(*) FROM t":                               50100,
		"SELECT count(*) FROM t WHERE v = 'changed'":           500,
		"SELECT count(*) FROM t WHERE v = 'again'":             50,
		"SELECT count(*) FROM emptied":                         0,
		"SELECT count(*) FROM fresh":                           4000,
		"SELECT count(*) FROM pg_class WHERE relname = 'gone'": 0,
	} {
		if n := restored.QueryInt64(t, q); n != want {
			t.Errorf("%s: %d, want %d", q, n, want)
		}
	}
	if a, b := dumpall(t, src), dumpall(t, restored); a != b {
		t.Fatalf("pg_dumpall of the restored server differs from the source's (%d against %d bytes)", len(b), len(a))
	}

	// A file rebuilt from pages that does not come out as the newest
	// backup records (here: the record is forged, lists, index and
	// manifest signed again): the restore fails naming it and the backup.
	forged, fm, path := forgeChecksum(t, store, incr2)
	dest = filepath.Join(src.MakeDir("restored-forged"), "data")
	if _, err := restore.Run(ctx, restore.Options{Store: forged, Manifest: fm, Dest: dest, Parallel: 2}); err == nil ||
		!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), incr2.ID) || !errors.Is(err, catalog.ErrCorrupt) {
		t.Fatalf("restore of %s with a wrong checksum recorded for %s: %v; want an error naming both", incr2.ID, path, err)
	}

	// A parent of another codec, or a chain at incremental_max_chain:
	// a full backup instead.
	o := options(catalog.TypeIncr)
	o.Codec = codec.S2
	if m, err := basebackup.Run(ctx, o); err != nil || m.BackupType() != catalog.TypeFull || m.Parent != "" {
		t.Fatalf("an incremental on a parent of another codec: %v, type %s parent %q; want a full", err, m.BackupType(), m.Parent)
	}
	o = options(catalog.TypeDiff)
	o.MaxChain = 1
	if m, err := basebackup.Run(ctx, o); err != nil || m.BackupType() != catalog.TypeFull {
		t.Fatalf("a diff at incremental_max_chain 1: %v, type %s; want a full", err, m.BackupType())
	}

	// A damaged chain: an incremental on it fails before it stores
	// anything, and restore and verify of the incremental name the piece.
	o = options(catalog.TypeIncr)
	o.Parent = incr2.ID
	pc, _ := pgtest.Contents(t, store, incr1)
	gone := pc[0].Blocks.Key
	if err := store.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	before := objectCount(t, store)
	if _, err := basebackup.Run(ctx, o); !errors.Is(err, basebackup.ErrParent) || !strings.Contains(err.Error(), gone) {
		t.Fatalf("an incremental on a chain without %s: %v; want an error naming it", gone, err)
	}
	if after := objectCount(t, store); after != before {
		t.Fatalf("the refused incremental left %d objects more in the repository", after-before)
	}
	damaged := pc[0].Key
	if err := store.Put(ctx, damaged, strings.NewReader("not a part"), 10); err != nil {
		t.Fatal(err)
	}
	dest = filepath.Join(src.MakeDir("restored-damaged"), "data")
	if _, err := restore.Run(ctx, restore.Options{Store: store, Manifest: incr2, Dest: dest, Parallel: 2}); err == nil || !strings.Contains(err.Error(), damaged) {
		t.Fatalf("restore of %s with its parent's part damaged: %v; want an error naming %s", incr2.ID, err, damaged)
	}
	vr, err := restore.Verify(ctx, restore.VerifyOptions{Store: store, Manifest: incr2, Parallel: 2})
	if err != nil || len(vr.Problems) != 1 || vr.Problems[0].Object != damaged {
		t.Fatalf("verify of %s with its parent's part damaged: %+v %v; want one problem, %s", incr2.ID, vr.Problems, err, damaged)
	}
}

func objectCount(t *testing.T, store cloud.Storage) int {
	t.Helper()
	n := 0
	if err := store.List(context.Background(), "", func(cloud.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// forgeChecksum copies the repository with the recorded checksum of the
// first file that backup m holds as changed pages altered, and the file
// list, index and manifest above it written again so that they check out.
// It returns the copy, the manifest written there and the file's path.
func forgeChecksum(t *testing.T, store *mem.Storage, m *catalog.Manifest) (*mem.Storage, *catalog.Manifest, string) {
	t.Helper()
	ctx := context.Background()
	out := mem.New(nil)
	err := store.List(ctx, "", func(o cloud.ObjectInfo) error {
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
	c, err := catalog.OpenContents(ctx, out, m)
	if err != nil {
		t.Fatal(err)
	}
	parts := c.Parts()
	path := ""
	for i, p := range parts {
		if path != "" {
			break
		}
		list := catalog.NewFileList(p.Key)
		err := c.Files(ctx, p, func(f catalog.File) error {
			if path == "" && f.Stored == catalog.StoredPages {
				path, f.SHA256 = f.Path, strings.Repeat("0", 64)
			}
			f.Part = 0
			return list.Add(f)
		})
		if err != nil {
			t.Fatal(err)
		}
		if path == "" {
			continue
		}
		if err := out.Delete(ctx, p.List.Key); err != nil {
			t.Fatal(err)
		}
		ref, err := list.Store(ctx, out, p.List.Key)
		if err != nil {
			t.Fatal(err)
		}
		parts[i].List = &ref
	}
	if path == "" {
		t.Fatalf("backup %s holds no file as changed pages", m.ID)
	}
	for _, key := range []string{m.Index.Key, catalog.ManifestKey(m.Server, m.ID)} {
		if err := out.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	index, err := catalog.WriteIndex(ctx, out, m.Server, m.ID, parts)
	if err != nil {
		t.Fatal(err)
	}
	forged := *m
	forged.Index = &index
	if err := catalog.WriteManifest(ctx, out, &forged); err != nil {
		t.Fatal(err)
	}
	return out, &forged, path
}
