package basebackup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
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
	ents, err := scan(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := plan(ents)
	os.Remove(filepath.Join(dir, "vanishes"))
	write("shrinks", 10)
	write("grows", 200000)

	store := mem.New(nil)
	b := &backup{o: Options{Store: store, Server: "main", Codec: codec.Zstd, Parallel: 2, PartSize: 1 << 30, Progress: catalog.NoProgress{}}, id: "20260101T000000", lim: codec.NewLimiter(0)}
	records, parts, err := b.writeParts(context.Background(), files)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]catalog.File{}
	for _, r := range records {
		got[r.Path] = r
	}
	if _, ok := got["vanishes"]; ok || len(got) != 3 {
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
