package catalog_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
)

// TestEncodeBytesTruncatedMapping maps a file, cuts it short under the
// mapping, and encodes: reading the lost pages faults, and that must come
// back as an error, not crash the process.
func TestEncodeBytesTruncatedMapping(t *testing.T) {
	for _, c := range []codec.Codec{codec.Zstd, codec.S2} {
		path := filepath.Join(t.TempDir(), "seg")
		if err := os.WriteFile(path, semiRandom(8<<20, 2), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		data, err := unix.Mmap(int(f.Fd()), 0, 8<<20, unix.PROT_READ, unix.MAP_SHARED)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, 1<<20); err != nil {
			t.Fatal(err)
		}
		_, _, err = catalog.EncodeBytes(catalog.Header{Type: "wal", Name: "x", Codec: c}, 0, data)
		unix.Munmap(data)
		if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
			t.Fatalf("%s: encoding a mapping cut short = %v, want an error", c, err)
		}
	}
}
