package catalog_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
)

// decodeObject reads a whole stored object back through the verifier.
func decodeObject(t *testing.T, obj []byte) (catalog.Header, []byte) {
	t.Helper()
	r := bytes.NewReader(obj)
	h, err := catalog.ReadHeader(r)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := catalog.Decode(r, h)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading back: %v", err)
	}
	return h, got
}

// semiRandom is compressible but not trivially: random words from a small
// vocabulary.
func semiRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	words := [][]byte{[]byte("heap "), []byte("btree "), []byte("commit "), []byte("\x00\x00\x00\x00"), []byte("xlog ")}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(8) == 0 {
			var x [8]byte
			for i := range x {
				x[i] = byte(r.Uint32())
			}
			b.Write(x[:])
		} else {
			b.Write(words[r.IntN(len(words))])
		}
	}
	return b.Bytes()[:n]
}

// TestEncodeBytes encodes sources of one piece, of many pieces and of a
// ragged last piece, with every codec, and reads each back through Decode,
// which checks the size and checksum the header records.
func TestEncodeBytes(t *testing.T) {
	for _, n := range []int{0, 1, 1 << 20, 5<<20 + 3, 16 << 20} {
		data := semiRandom(n, uint64(n))
		sum := sha256.Sum256(data)
		for _, c := range []codec.Codec{codec.Zstd, codec.S2, codec.Gzip, codec.None} {
			h := catalog.Header{Type: "wal", Name: "x", Codec: c}
			got, obj, err := catalog.EncodeBytes(h, 0, data)
			if err != nil {
				t.Fatalf("%s %d bytes: %v", c, n, err)
			}
			if got.Size != int64(n) || got.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("%s %d bytes: header records %d bytes, sha256 %s", c, n, got.Size, got.SHA256)
			}
			stored, back := decodeObject(t, obj)
			if stored.Size != got.Size || stored.SHA256 != got.SHA256 || stored.Codec != c || !bytes.Equal(back, data) {
				t.Fatalf("%s %d bytes: read back %d bytes, header %+v", c, n, len(back), stored)
			}
			// The in-memory object is the same as the streamed one reads.
			_, obj2, err := catalog.EncodeInMemory(h, 0, bytes.NewReader(data), int64(n))
			if err != nil || !bytes.Equal(obj2, obj) {
				t.Fatalf("%s %d bytes: EncodeInMemory differs from EncodeBytes (%v)", c, n, err)
			}
		}
	}
}

// TestEncodeBytesCompresses checks that pieces cost little ratio: a
// multi-piece zstd object is within 2% of one stream of the same bytes.
func TestEncodeBytesCompresses(t *testing.T) {
	data := semiRandom(16<<20, 3)
	_, obj, err := catalog.EncodeBytes(catalog.Header{Type: "wal", Name: "x", Codec: codec.Zstd}, 0, data)
	if err != nil {
		t.Fatal(err)
	}
	var one bytes.Buffer
	w, _ := codec.Zstd.NewWriter(&one, 0)
	w.Write(data)
	w.Close()
	if float64(len(obj)) > 1.02*float64(one.Len())+512 {
		t.Fatalf("pieces: %d bytes, one stream: %d bytes", len(obj), one.Len())
	}
	if len(obj) > len(data)/2 {
		t.Fatalf("%d bytes compressed to %d", len(data), len(obj))
	}
}

func TestEncodeInMemoryShortSource(t *testing.T) {
	data := semiRandom(3<<20, 1)
	_, _, err := catalog.EncodeInMemory(catalog.Header{Type: "wal", Name: "x", Codec: codec.Zstd}, 0, bytes.NewReader(data), int64(len(data))+1)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("EncodeInMemory of a source shorter than its size = %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestGrowingObject: each object of a growing source reads back as the
// source so far, with its size and checksum, for every codec.
func TestGrowingObject(t *testing.T) {
	data := semiRandom(3<<20+77, 5)
	for _, c := range []codec.Codec{codec.Zstd, codec.S2, codec.Gzip, codec.None} {
		g := catalog.NewGrowingObject(catalog.Header{Type: "wal", Name: "x.partial", Codec: c, Streamed: true}, 0)
		for _, n := range []int{0, 100, 100, 8192, 1 << 20, 3<<20 + 77} {
			obj, h, err := g.Object(data[:n])
			if err != nil {
				t.Fatalf("%s at %d bytes: %v", c, n, err)
			}
			sum := sha256.Sum256(data[:n])
			stored, back := decodeObject(t, obj)
			if h.Size != int64(n) || stored.SHA256 != hex.EncodeToString(sum[:]) || !stored.Streamed || !bytes.Equal(back, data[:n]) {
				t.Fatalf("%s at %d bytes: read back %d bytes, header %+v", c, n, len(back), stored)
			}
		}
		if _, _, err := g.Object(data[:10]); err == nil {
			t.Fatalf("%s: a shrunk source was taken", c)
		}
	}
}
