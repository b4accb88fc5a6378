package basebackup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
)

// TestFilesThatChangeWhileRead: a file that vanished after the scan is
// left out, one that shrank is padded with zeros to its scanned size, one
// that grew is read to its scanned size; the records say what was stored.
func TestFilesThatChangeWhileRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) {
		if err := os.WriteFile(filepath.Join(dir, name), bytes.Repeat([]byte{'a'}, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("vanishes", 100)
	write("shrinks", 3<<20)
	write("grows", 1000)
	write("stays", 5000)
	var ents []entry
	if err := walk(dir, nil, func(e entry) error { ents = append(ents, e); return nil }); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "vanishes"))
	write("shrinks", 10)
	write("grows", 200000)

	store := mem.New(nil)
	b := testBackup(store, 1<<30)
	parts, err := b.writeParts(context.Background(), emitAll(ents))
	if err != nil {
		t.Fatal(err)
	}
	records := readLists(t, store, b, parts)
	got := map[string]catalog.File{}
	for _, r := range records {
		got[r.Path] = r
	}
	if _, ok := got["vanishes"]; ok || len(got) != 3 || b.fileCount != 3 {
		t.Fatalf("records: %+v", records)
	}
	want := map[string][]byte{
		"shrinks": append(bytes.Repeat([]byte{'a'}, 10), make([]byte, 3<<20-10)...),
		"grows":   bytes.Repeat([]byte{'a'}, 1000),
		"stays":   bytes.Repeat([]byte{'a'}, 5000),
	}
	stored := map[string][]byte{}
	for _, p := range parts {
		rc, err := store.Get(context.Background(), p.Key)
		if err != nil {
			t.Fatal(err)
		}
		zr, _ := codec.Zstd.NewReader(rc)
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			stored[h.Name], _ = io.ReadAll(tr)
		}
		rc.Close()
	}
	for name, data := range want {
		sum := sha256.Sum256(data)
		if !bytes.Equal(stored[name], data) || got[name].Size != int64(len(data)) || got[name].SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: stored %d bytes (equal %v), record %+v", name, len(stored[name]), bytes.Equal(stored[name], data), got[name])
		}
	}
}

// testBackup is a backup to store with two workers and parts of partSize.
func testBackup(store cloud.Storage, partSize int64) *backup {
	return &backup{o: Options{Store: store, Server: "main", Codec: codec.Zstd, Parallel: 2, PartSize: partSize, Progress: catalog.NoProgress{}}, id: "20260101T000000", lim: codec.NewLimiter(0)}
}

// emitAll is a walk that emits ents.
func emitAll(ents []entry) func(func(entry) error) error {
	return func(emit func(entry) error) error {
		for _, e := range ents {
			if err := emit(e); err != nil {
				return err
			}
		}
		return nil
	}
}

// readLists reads back the file lists of parts, in part order.
func readLists(t *testing.T, store cloud.Storage, b *backup, parts []catalog.Part) []catalog.File {
	t.Helper()
	ctx := context.Background()
	slices.SortFunc(parts, func(a, b catalog.Part) int { return a.Number - b.Number })
	index, err := catalog.WriteIndex(ctx, store, b.o.Server, b.id, parts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := catalog.OpenContents(ctx, store, &catalog.Manifest{Version: catalog.ManifestVersion, ID: b.id, Server: b.o.Server, Index: &index, PartCount: len(parts)})
	if err != nil {
		t.Fatal(err)
	}
	var out []catalog.File
	if err := c.AllFiles(ctx, func(f catalog.File) error { out = append(out, f); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPartsFollowPathOrder: parts are cut from the walk, small ones
// first, a file larger than the batch size alone, at most maxPartEntries
// entries each; the lists of the parts, one after another, are in path
// order.
func TestPartsFollowPathOrder(t *testing.T) {
	var ents []entry
	add := func(path string, size int64) {
		ents = append(ents, entry{File: catalog.File{Path: path, Type: catalog.TypeFile, Size: size, Mode: 0o600}, abs: "/dev/zero"})
	}
	ents = append(ents, entry{File: catalog.File{Path: "base", Type: catalog.TypeDir, Mode: 0o700}})
	for i := range maxPartEntries + 10 {
		add(fmt.Sprintf("base/%06d", i), 0)
	}
	add("base/big", 3<<20)
	for i := range 40 {
		add(fmt.Sprintf("global/%03d", i), 100<<10)
	}
	store := mem.New(nil)
	b := testBackup(store, 1<<20)
	parts, err := b.writeParts(context.Background(), emitAll(ents))
	if err != nil {
		t.Fatal(err)
	}
	records := readLists(t, store, b, parts)
	if len(records) != len(ents) || !slices.IsSortedFunc(records, func(a, b catalog.File) int { return catalog.ComparePaths(a.Path, b.Path) }) {
		t.Fatalf("%d records of %d entries, sorted %v", len(records), len(ents), slices.IsSortedFunc(records, func(a, b catalog.File) int { return catalog.ComparePaths(a.Path, b.Path) }))
	}
	var shape []string
	for _, p := range parts {
		shape = append(shape, fmt.Sprintf("%d:%d", p.Files, p.DataSize>>20))
		if p.Files > maxPartEntries {
			t.Errorf("part %d has %d entries", p.Number, p.Files)
		}
	}
	// 20,000 entries, the other 11 (empty files), the big file alone,
	// then 100 KiB files by the megabyte.
	if len(parts) < 5 || parts[0].Files != maxPartEntries || parts[2].Files != 1 || b.fileCount != len(ents)-1 {
		t.Fatalf("parts (entries:MiB): %v", shape)
	}
}
