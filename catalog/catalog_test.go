package catalog_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/pg"
)

func TestKeys(t *testing.T) {
	w, _ := pg.ParseWALName("0000000200000005000000A1")
	h, _ := pg.ParseWALName("00000002.history")
	for got, want := range map[string]string{
		catalog.WALKey("main", w):        "main/wal/0000000200000005/0000000200000005000000A1",
		catalog.WALKey("main", h):        "main/wal/history/00000002.history",
		catalog.IdentityKey("main"):      "main/identity",
		catalog.WALDirPrefix("db", 1, 0): "db/wal/0000000100000000/",
	} {
		if got != want {
			t.Errorf("key %s, want %s", got, want)
		}
		if err := cloud.ValidKey(got); err != nil && !strings.HasSuffix(got, "/") {
			t.Errorf("%s is not a valid key: %v", got, err)
		}
	}
}

func TestEnvelope(t *testing.T) {
	data := bytes.Repeat([]byte("cellar wal payload "), 50000)
	size, sum, err := catalog.Digest(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []codec.Codec{codec.Zstd, codec.S2, codec.Gzip, codec.None} {
		h := catalog.Header{Type: "wal", Name: "x", Codec: c, Size: size, SHA256: sum}
		var buf bytes.Buffer
		if err := catalog.Encode(&buf, h, 0, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		stored := buf.Bytes()
		read := func(b []byte) ([]byte, error) {
			r := bytes.NewReader(b)
			h, err := catalog.ReadHeader(r)
			if err != nil {
				return nil, err
			}
			rc, err := catalog.Decode(r, h)
			if err != nil {
				return nil, err
			}
			defer rc.Close()
			return io.ReadAll(rc)
		}
		got, err := read(stored)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip: %v", c, err)
		}
		// A flipped payload byte, a truncated object, a changed header
		// checksum: every one is an error, never silent data.
		flipped := bytes.Clone(stored)
		flipped[len(flipped)-10] ^= 0x40
		truncated := stored[:len(stored)-100]
		// The same payload under a header that records another checksum.
		var lying bytes.Buffer
		h2 := h
		h2.SHA256 = strings.Repeat("0", 64)
		if err := catalog.WriteHeader(&lying, h2); err != nil {
			t.Fatal(err)
		}
		lying.Write(stored[12+binary.BigEndian.Uint32(stored[8:12]):])
		for what, b := range map[string][]byte{"flipped": flipped, "truncated": truncated, "lying": lying.Bytes()} {
			if _, err := read(b); !errors.Is(err, catalog.ErrCorrupt) {
				t.Errorf("%s: reading a %s object = %v, want ErrCorrupt", c, what, err)
			}
		}
		// The header of a newer format is refused with advice.
		newer := bytes.Clone(stored)
		newer[7] = catalog.FormatVersion + 1
		if _, err := read(newer); err == nil || !strings.Contains(err.Error(), "upgrade cellar") {
			t.Errorf("%s: newer format: %v", c, err)
		}
	}
	// Encode notices a source that is not what the header says.
	h := catalog.Header{Type: "wal", Name: "x", Codec: codec.None, Size: size, SHA256: sum}
	if err := catalog.Encode(io.Discard, h, 0, bytes.NewReader(data[1:])); err == nil {
		t.Error("Encode of changed data succeeded")
	}
}

func TestIdentity(t *testing.T) {
	ctx := context.Background()
	store := mem.New(nil)
	if _, err := catalog.ReadIdentity(ctx, store, "main"); !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("ReadIdentity of a new repository = %v", err)
	}
	first, err := catalog.EnsureIdentity(ctx, store, "main", catalog.Identity{SystemIdentifier: 1 << 63, WALSegmentSize: 16 << 20})
	if err != nil || first.SystemIdentifier != 1<<63 {
		t.Fatalf("EnsureIdentity = %+v, %v", first, err)
	}
	again, err := catalog.EnsureIdentity(ctx, store, "main", catalog.Identity{SystemIdentifier: 42})
	if err != nil || again.SystemIdentifier != 1<<63 {
		t.Fatalf("EnsureIdentity did not keep the first identity: %+v, %v", again, err)
	}
	// A corrupted identity is an error, not a silent default.
	rc, _ := store.Get(ctx, catalog.IdentityKey("main"))
	b, _ := io.ReadAll(rc)
	b[len(b)-3] ^= 1
	_ = store.Put(ctx, catalog.IdentityKey("main"), bytes.NewReader(b), int64(len(b)))
	if _, err := catalog.ReadIdentity(ctx, store, "main"); !errors.Is(err, catalog.ErrCorrupt) {
		t.Fatalf("ReadIdentity of a corrupted object = %v, want ErrCorrupt", err)
	}
}
