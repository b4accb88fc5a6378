package catalog

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud/mem"
)

const goldenV3 = "../testdata/manifest-v3"

// TestGoldenV3 keeps the incremental format (manifest version 3): an
// incremental of one part whose list holds a file stored whole, one as
// changed pages and one as a reference, with their page hashes in the
// part's block map. What the writers store is, byte for byte, the payloads
// in testdata/manifest-v3 (the block map as hex, 32 digits a page), and
// reading them back gives each entry its hashes.
func TestGoldenV3(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	const id, parent = "20261202T021500", "20261201T021500"
	t1 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }
	files := []struct {
		f     File
		pages [][]byte
	}{
		{File{Path: "base/5/1249", Type: TypeFile, Size: 16384, Mode: 0o600, MTime: t1, SHA256: strings.Repeat("a1", 32), Offset: 512, Pages: 2, Stored: StoredPages, Base: parent}, [][]byte{page(1), page(2)}},
		{File{Path: "base/5/1259", Type: TypeFile, Size: 8192, Mode: 0o600, MTime: t1, SHA256: strings.Repeat("b2", 32), Pages: 1, Stored: StoredRef, Base: parent}, [][]byte{page(3)}},
		{File{Path: "global/pg_control", Type: TypeFile, Size: 8192, Mode: 0o600, MTime: t1, SHA256: strings.Repeat("c3", 32), Offset: 9728}, nil},
	}
	key := PartKey("main", id, 1, codec.Zstd)
	list, blocks := NewFileList(key), NewBlockMap(key)
	for _, e := range files {
		if err := list.Add(e.f); err != nil {
			t.Fatal(err)
		}
		for _, p := range e.pages {
			blocks.Write(HashPage(nil, p))
		}
	}
	listRef, err := list.Store(ctx, store, FileListKey("main", id, 1))
	if err != nil {
		t.Fatal(err)
	}
	blocksRef, err := blocks.Store(ctx, store, BlockMapKey("main", id, 1))
	if err != nil {
		t.Fatal(err)
	}
	parts := []Part{{Number: 1, Key: key, Size: 600, SHA256: strings.Repeat("0", 63) + "1", DataSize: 20480, Files: 3, List: &listRef, Blocks: &blocksRef}}
	index, err := WriteIndex(ctx, store, "main", id, parts)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{
		Version: ManifestVersionIncremental, ID: id, Server: "main", Status: StatusDone, SystemIdentifier: 7443318127582425231,
		PGVersion: 150018, PGVersionString: "15.18", PGData: "/var/lib/postgresql/15/main",
		Timeline: 1, WALSegmentSize: 16 << 20, BeginLSN: "0/9000028", EndLSN: "0/9000138",
		BeginWAL: "000000010000000000000009", EndWAL: "000000010000000000000009",
		BeginTime: time.Date(2026, 12, 2, 2, 15, 0, 0, time.UTC), EndTime: time.Date(2026, 12, 2, 2, 15, 3, 0, time.UTC),
		Label: "cellar backup " + id, Method: "local", Fast: true, Compression: "zstd", DataSize: 32768, StoredSize: 600, FileCount: 3,
		CellarVersion: "1.2.0", Host: "db1", Tablespaces: []Tablespace{}, BackupLabel: "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n",
		PartCount: 1, Index: &index, Type: TypeIncr, Parent: parent, ChainLength: 2,
	}
	if err := WriteManifest(ctx, store, m); err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	json.Indent(&pretty, payload(t, store, ManifestKey("main", id)), "", "  ")
	pretty.WriteString("\n")
	golden := map[string][]byte{
		"manifest.json":          pretty.Bytes(),
		"index.jsonl":            payload(t, store, IndexKey("main", id)),
		"part-00001.files.jsonl": payload(t, store, FileListKey("main", id, 1)),
		"part-00001.blocks.hex":  hexLines(payload(t, store, BlockMapKey("main", id, 1))),
	}
	for name, got := range golden {
		path := filepath.Join(goldenV3, name)
		if *update {
			if err := os.MkdirAll(goldenV3, 0o755); err != nil {
				t.Fatal(err)
			}
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
			t.Errorf("%s differs from what this Cellar writes (go test ./catalog -run TestGoldenV3 -update rewrites it, for a change that raises the format version):\n%s", path, got)
		}
	}
	var decoded Manifest
	dec := json.NewDecoder(bytes.NewReader(golden["manifest.json"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&decoded); err != nil {
		t.Fatalf("the golden manifest does not decode: %v", err)
	}

	got, err := ReadManifest(ctx, store, "main", id)
	if err != nil || got.BackupType() != TypeIncr || got.Parent != parent || got.Chain() != 2 {
		t.Fatalf("read back: %+v %v", got, err)
	}
	c, err := OpenContents(ctx, store, got)
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	err = c.FilesWithBlocks(ctx, c.Parts()[0], func(f File, hashes []byte) error {
		e := files[i]
		i++
		var want []byte
		for _, p := range e.pages {
			want = HashPage(want, p)
		}
		if f.Path != e.f.Path || f.Stored != e.f.Stored || f.Base != e.f.Base || !bytes.Equal(hashes, want) {
			t.Errorf("entry %d: %+v with hashes %x, want %+v with %x", i, f, hashes, e.f, want)
		}
		return nil
	})
	if err != nil || i != len(files) {
		t.Fatalf("%d entries read: %v", i, err)
	}
	if f := files[0].f; f.TarName() != "base/5/1249"+DeltaSuffix {
		t.Errorf("the tar name of changed pages: %s", f.TarName())
	}
}

// hexLines prints a block map one page hash a line.
func hexLines(b []byte) []byte {
	var out bytes.Buffer
	for len(b) >= PageHashSize {
		out.WriteString(hex.EncodeToString(b[:PageHashSize]) + "\n")
		b = b[PageHashSize:]
	}
	return out.Bytes()
}
