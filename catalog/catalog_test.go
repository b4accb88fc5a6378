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
)

func TestParseWALName(t *testing.T) {
	for name, want := range map[string]catalog.WALName{
		"000000010000000A000000FF":                 {Kind: catalog.Segment, Timeline: 1, Log: 10, Seg: 255},
		"000000020000000000000003.partial":         {Kind: catalog.Partial, Timeline: 2, Log: 0, Seg: 3},
		"000000010000000000000002.00000028.backup": {Kind: catalog.Backup, Timeline: 1, Log: 0, Seg: 2},
		"0000000A.history":                         {Kind: catalog.History, Timeline: 10},
	} {
		got, err := catalog.ParseWALName(name)
		want.Name = name
		if err != nil || got != want {
			t.Errorf("ParseWALName(%s) = %+v, %v; want %+v", name, got, err, want)
		}
	}
	for _, bad := range []string{"", "00000001000000000000000", "000000010000000000000001.gz", "00000001.HISTORY",
		"000000000000000000000001", "00000000.history", "../000000010000000000000001", "000000010000000000000001 ", "0000000g0000000000000001"} {
		if _, err := catalog.ParseWALName(bad); err == nil {
			t.Errorf("ParseWALName(%q) accepted a bad name", bad)
		}
	}
}

func TestSegmentArithmetic(t *testing.T) {
	w, _ := catalog.ParseWALName("0000000100000001000000FF")
	if got := w.Next(16 << 20); got != "000000010000000200000000" {
		t.Errorf("Next of ...1/FF with 16 MiB segments = %s", got)
	}
	w, _ = catalog.ParseWALName("000000010000000100000FFF")
	if got := w.Next(1 << 20); got != "000000010000000200000000" {
		t.Errorf("Next with 1 MiB segments = %s", got)
	}
	if got := catalog.SegmentNameOf(3, 0x1FF, 16<<20); got != "0000000300000001000000FF" {
		t.Errorf("SegmentNameOf = %s", got)
	}
}

func TestKeys(t *testing.T) {
	w, _ := catalog.ParseWALName("0000000200000005000000A1")
	h, _ := catalog.ParseWALName("00000002.history")
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

func TestSegmentHeader(t *testing.T) {
	page := make([]byte, 8192)
	le := binary.LittleEndian
	le.PutUint16(page[0:], 0xD110)
	le.PutUint16(page[2:], 0x0002)
	le.PutUint32(page[4:], 1)
	le.PutUint64(page[8:], 3*16<<20)
	le.PutUint64(page[24:], 7312345678901234567)
	le.PutUint32(page[32:], 16<<20)
	le.PutUint32(page[36:], 8192)
	h, err := catalog.ReadSegmentHeader(bytes.NewReader(page))
	if err != nil || h.SystemIdentifier != 7312345678901234567 || h.SegmentSize != 16<<20 {
		t.Fatalf("ReadSegmentHeader = %+v, %v", h, err)
	}
	w, _ := catalog.ParseWALName("000000010000000000000003")
	if err := h.Check(w); err != nil {
		t.Fatalf("Check: %v", err)
	}
	w, _ = catalog.ParseWALName("000000010000000000000004")
	if err := h.Check(w); err == nil {
		t.Fatal("Check accepted a segment under another name")
	}
	// The first segment of timeline 2 starts with timeline 1's header.
	w, _ = catalog.ParseWALName("000000020000000000000003")
	if err := h.Check(w); err != nil {
		t.Fatalf("Check of a new timeline's first segment: %v", err)
	}
	le.PutUint16(page[2:], 0)
	if _, err := catalog.ReadSegmentHeader(bytes.NewReader(page)); err == nil {
		t.Fatal("a page without a long header was accepted")
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
