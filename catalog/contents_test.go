package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/cloud/storagetest"
)

var update = flag.Bool("update", false, "rewrite testdata/manifest-v2 and manifest-v3 from what this Cellar writes")

const goldenV2 = "../testdata/manifest-v2"

// goldenBackup stores the backup that testdata/manifest-v2 describes
// with the writers that cellar backup uses: three parts (the last one
// holding what PostgreSQL returned at the stop), their file lists, the
// index and the manifest.
func goldenBackup(t *testing.T, store cloud.Storage) *Manifest {
	t.Helper()
	ctx := context.Background()
	const id = "20261201T021500"
	t1 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	t2 := time.Date(2026, 12, 1, 2, 15, 4, 0, time.UTC)
	lists := [][]File{
		{
			{Path: "PG_VERSION", Type: TypeFile, Size: 3, Mode: 0o600, MTime: t1, SHA256: "8b4b5ad0a5b1d3a4aa21e2b2bf2ce9f0ce2d1f4d57b4a2b2b96f2ac26a8b0b56", Offset: 512},
			{Path: "base", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 1536},
			{Path: "base/5", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 2048},
			{Path: "base/5/1259", Type: TypeFile, Size: 8192, Mode: 0o600, MTime: t1, SHA256: "d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5", Offset: 2560},
		},
		{
			{Path: "pg_tblspc", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 512},
			{Path: "pg_tblspc/16385", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 1024},
			{Path: "pg_tblspc/16385/PG_15_202209061/5/16386", Type: TypeFile, Size: 8192, Mode: 0o600, MTime: t1, SHA256: "9f1b4e2d7c3a6b5e8d0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d", Offset: 1536},
			{Path: "pg_wal", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 10240},
			{Path: "pg_wal/archive_status", Type: TypeDir, Mode: 0o700, MTime: t1, Offset: 10752},
			{Path: "some_link", Type: TypeSymlink, Mode: 0o777, MTime: t1, Link: "/etc/hosts", Offset: 11264},
		},
		{
			{Path: "backup_label", Type: TypeFile, Size: 255, Mode: 0o600, MTime: t2, SHA256: "0c2d5cd0c9e0b2c9b7d6e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4", Offset: 512},
			{Path: "tablespace_map", Type: TypeFile, Size: 30, Mode: 0o600, MTime: t2, SHA256: "1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e", Offset: 1280},
		},
	}
	var parts []Part
	for i, files := range lists {
		n := i + 1
		key := PartKey("main", id, n, codec.Zstd)
		w := NewFileList(key)
		for _, f := range files {
			if err := w.Add(f); err != nil {
				t.Fatal(err)
			}
		}
		ref, err := w.Store(ctx, store, FileListKey("main", id, n))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, Part{Number: n, Key: key, Size: int64(400 + 100*n), SHA256: fmt.Sprintf("%064x", n), DataSize: 10240 + int64(n)*1024, Files: len(files), List: &ref})
	}
	index, err := WriteIndex(ctx, store, "main", id, parts)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{
		Version: ManifestVersionFull, ID: id, Server: "main", Status: StatusDone, SystemIdentifier: 7443318127582425231,
		PGVersion: 150018, PGVersionString: "15.18 (Debian 15.18-0+deb12u1)", PGData: "/var/lib/postgresql/15/main",
		Timeline: 1, WALSegmentSize: 16 << 20, BeginLSN: "0/5000028", EndLSN: "0/5000138",
		BeginWAL: "000000010000000000000005", EndWAL: "000000010000000000000005",
		BeginTime: time.Date(2026, 12, 1, 2, 15, 0, 0, time.UTC), EndTime: t2, Label: "cellar backup " + id,
		Method: "local", Fast: true, Compression: "zstd", DataSize: 16672, StoredSize: 1500, FileCount: 5,
		CellarVersion: "1.1.0 (commit 0123456789ab)", Host: "db1",
		Tablespaces:   []Tablespace{{OID: 16385, Name: "extra", Location: "/srv/tablespaces/extra", Size: 8192}},
		BackupLabel:   "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\nCHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-01 02:15:00 UTC\nLABEL: cellar backup 20261201T021500\nSTART TIMELINE: 1\n",
		TablespaceMap: "16385 /srv/tablespaces/extra\n", PartCount: len(parts), Index: &index,
	}
	if err := WriteManifest(ctx, store, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// payload is the original bytes of a stored object.
func payload(t *testing.T, store cloud.Storage, key string) []byte {
	t.Helper()
	rc, err := store.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h, err := ReadHeader(rc)
	if err != nil {
		t.Fatal(err)
	}
	body, err := Decode(rc, h)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGoldenV2 keeps the version 2 format: what the writers store is, byte
// for byte, the payloads in testdata/manifest-v2 (the manifest there
// indented), and reading them back gives every field.
func TestGoldenV2(t *testing.T) {
	store := mem.New(nil)
	m := goldenBackup(t, store)
	var pretty bytes.Buffer
	json.Indent(&pretty, payload(t, store, ManifestKey("main", m.ID)), "", "  ")
	pretty.WriteString("\n")
	files := map[string][]byte{
		"manifest.json": pretty.Bytes(),
		"index.jsonl":   payload(t, store, IndexKey("main", m.ID)),
	}
	for n := 1; n <= m.PartCount; n++ {
		files[fmt.Sprintf("part-%05d.files.jsonl", n)] = payload(t, store, FileListKey("main", m.ID, n))
	}
	for name, got := range files {
		path := filepath.Join(goldenV2, name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what this Cellar writes (go test ./catalog -run TestGoldenV2 -update rewrites it, for a change that raises the format version):\n%s", path, got)
		}
	}
	// Every field of the golden manifest is one the reader knows.
	var decoded Manifest
	dec := json.NewDecoder(bytes.NewReader(files["manifest.json"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&decoded); err != nil {
		t.Fatalf("the golden manifest does not decode: %v", err)
	}

	ctx := context.Background()
	got, err := ReadManifest(ctx, store, "main", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.PartCount != 3 || got.FileCount != 5 || got.Index.Key != IndexKey("main", m.ID) || got.Tablespaces[0].Size != 8192 {
		t.Fatalf("read back: %+v", got)
	}
	c, err := OpenContents(ctx, store, got)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	if err := c.AllFiles(ctx, func(f File) error { paths = append(paths, fmt.Sprintf("%d:%s", f.Part, f.Path)); return nil }); err != nil {
		t.Fatal(err)
	}
	want := "1:PG_VERSION 1:base 1:base/5 1:base/5/1259 2:pg_tblspc 2:pg_tblspc/16385 2:pg_tblspc/16385/PG_15_202209061/5/16386 2:pg_wal 2:pg_wal/archive_status 2:some_link 3:backup_label 3:tablespace_map"
	if strings.Join(paths, " ") != want {
		t.Fatalf("files:\n%s\nwant\n%s", strings.Join(paths, " "), want)
	}
}

// TestGoldenV1 reads a manifest as Cellar 1.0 wrote it, files and parts
// in it: the summary alone for the catalog, and the files of each part in
// the order of its tar stream for restore.
func TestGoldenV1(t *testing.T) {
	golden, err := os.ReadFile("../testdata/manifest-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var o struct {
		Manifest
		manifestLists
	}
	dec := json.NewDecoder(bytes.NewReader(golden))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		t.Fatalf("the version 1 golden manifest does not decode: %v", err)
	}
	ctx := context.Background()
	store := mem.New(nil)
	compact, _ := json.Marshal(json.RawMessage(golden))
	h := Header{Type: "manifest", Name: o.ID, Codec: codec.Zstd}
	h.Size, h.SHA256, _ = Digest(bytes.NewReader(compact))
	var obj bytes.Buffer
	if err := Encode(&obj, h, 0, bytes.NewReader(compact)); err != nil {
		t.Fatal(err)
	}
	store.Put(ctx, ManifestKey("main", o.ID), &obj, int64(obj.Len()))

	m, err := ReadManifest(ctx, store, "main", o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 1 || m.PartCount != 2 || m.FileCount != 3 || m.Index != nil || m.Ratio() < 6 || m.SystemIdentifier != 7443318127582425231 {
		t.Fatalf("version 1 summary: %+v", m)
	}
	list, err := ListBackups(ctx, store, "main")
	if err != nil || len(list) != 1 || list[0].Manifest.PartCount != 2 {
		t.Fatalf("ListBackups of a version 1 manifest: %+v %v", list, err)
	}
	c, err := OpenContents(ctx, store, m)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	c.AllFiles(ctx, func(f File) error {
		paths = append(paths, fmt.Sprintf("%d:%s@%d", f.Part, f.Path, f.Offset))
		return nil
	})
	want := "1:pg_tblspc/16385/PG_15_202209061/5/16386@512 2:PG_VERSION@1536 2:pg_tblspc/16385@2560 2:pg_wal@3072 2:backup_label@3584"
	if strings.Join(paths, " ") != want {
		t.Fatalf("version 1 files in tar order:\n%s\nwant\n%s", strings.Join(paths, " "), want)
	}
}

// TestListingReadsLittle: list-backups reads a few kilobytes per backup,
// whatever the number of files: the manifest only, never an index or a
// file list.
func TestListingReadsLittle(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	const backups, files = 3, 100_000
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range backups {
		id := NewBackupID(t0.Add(time.Duration(i) * time.Hour))
		var parts []Part
		for n := 1; n <= 5; n++ {
			key := PartKey("main", id, n, codec.Zstd)
			w := NewFileList(key)
			for j := range files / 5 {
				w.Add(File{Path: fmt.Sprintf("base/16384/%d", 16384+n*files+j), Type: TypeFile, Size: 8192, Mode: 0o600, MTime: t0, SHA256: fmt.Sprintf("%064x", j*n), Offset: int64(j) * 9216})
			}
			ref, err := w.Store(ctx, store, FileListKey("main", id, n))
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, Part{Number: n, Key: key, Files: files / 5, List: &ref})
		}
		index, err := WriteIndex(ctx, store, "main", id, parts)
		if err != nil {
			t.Fatal(err)
		}
		m := &Manifest{Version: ManifestVersion, ID: id, Server: "main", Status: StatusDone, FileCount: files, PartCount: 5, Index: &index,
			BackupLabel: strings.Repeat("label line\n", 8), Tablespaces: []Tablespace{}}
		if err := WriteManifest(ctx, store, m); err != nil {
			t.Fatal(err)
		}
	}
	c := storagetest.NewCounting(store)
	list, err := ListBackups(ctx, c, "main")
	if err != nil || len(list) != backups {
		t.Fatalf("ListBackups: %d, %v", len(list), err)
	}
	if per := c.BytesRead() / backups; per >= 64<<10 || c.TotalGets() != backups {
		t.Fatalf("listing %d backups of %d files read %d bytes a backup in %d reads", backups, files, per, c.TotalGets())
	}
	if list[2].Manifest.FileCount != files || list[2].Manifest.PartCount != 5 {
		t.Fatalf("summary: %+v", list[2].Manifest)
	}
	// Restore and verify read the lists as streams, each checked.
	m := list[0].Manifest
	contents, err := OpenContents(ctx, store, m)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := contents.AllFiles(ctx, func(File) error { n++; return nil }); err != nil || n != files {
		t.Fatalf("AllFiles: %d files, %v", n, err)
	}
}

// TestContentsCatchDamage: a file list or index changed, swapped or cut
// is an error naming the object, never a shorter list.
func TestContentsCatchDamage(t *testing.T) {
	ctx := context.Background()
	damage := func(t *testing.T, key string, change func([]byte) []byte) (*Manifest, cloud.Storage) {
		store := mem.New(nil)
		m := goldenBackup(t, store)
		rc, _ := store.Get(ctx, key)
		b, _ := io.ReadAll(rc)
		rc.Close()
		b = change(b)
		store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
		return m, store
	}
	flip := func(b []byte) []byte { b[len(b)-10] ^= 0xff; return b }
	cut := func(b []byte) []byte { return b[:len(b)-12] }
	for _, tc := range []struct {
		name, key string
		change    func([]byte) []byte
	}{
		{"a list with a byte changed", FileListKey("main", "20261201T021500", 2), flip},
		{"a list cut short", FileListKey("main", "20261201T021500", 2), cut},
		{"the index with a byte changed", IndexKey("main", "20261201T021500"), flip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, store := damage(t, tc.key, tc.change)
			c, err := OpenContents(ctx, store, m)
			if err == nil {
				err = c.AllFiles(ctx, func(File) error { return nil })
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("%s: %v, want ErrCorrupt naming %s", tc.name, err, tc.key)
			}
		})
	}
	// A list swapped for another part's: its envelope checks out, but it
	// is not the object the index names.
	store := mem.New(nil)
	m := goldenBackup(t, store)
	rc, _ := store.Get(ctx, FileListKey("main", m.ID, 1))
	b, _ := io.ReadAll(rc)
	rc.Close()
	store.Put(ctx, FileListKey("main", m.ID, 2), bytes.NewReader(b), int64(len(b)))
	c, err := OpenContents(ctx, store, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Files(ctx, c.Parts()[1], func(File) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a swapped list: %v", err)
	}
	// A missing list is named.
	store.Delete(ctx, FileListKey("main", m.ID, 3))
	if err := c.Files(ctx, c.Parts()[2], func(File) error { return nil }); !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("a missing list: %v", err)
	}
}

func TestComparePaths(t *testing.T) {
	paths := []string{"base/1.old", "base", "base/1/2", "PG_VERSION", "base/1", "base-x", "base/10", "global/pg_control", "base/1/10"}
	slices.SortFunc(paths, ComparePaths)
	want := "PG_VERSION base base/1 base/1/10 base/1/2 base/1.old base/10 base-x global/pg_control"
	if got := strings.Join(paths, " "); got != want {
		t.Fatalf("sorted: %s\nwant   %s", got, want)
	}
}
