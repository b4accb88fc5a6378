package pg

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestLSN(t *testing.T) {
	l, err := ParseLSN("16/B374D848")
	if err != nil || uint64(l) != 0x16B374D848 || l.String() != "16/B374D848" {
		t.Fatalf("ParseLSN: %v %v", l, err)
	}
	for _, bad := range []string{"", "16", "x/1", "1/", "1/2/3"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
	seg := int64(16 << 20)
	if n := LSN(0x5000028).SegmentName(1, seg); n != "000000010000000000000005" {
		t.Fatal(n)
	}
	// A stop LSN on a segment boundary needs the segment before it only.
	if n := LSN(0x6000000).PrevSegmentName(2, seg); n != "000000020000000000000005" {
		t.Fatal(n)
	}
	if n := LSN(0x6000001).PrevSegmentName(2, seg); n != "000000020000000000000006" {
		t.Fatal(n)
	}
}

func TestParseWALName(t *testing.T) {
	for name, want := range map[string]WALName{
		"000000010000000A000000FF":                 {Kind: Segment, Timeline: 1, Log: 10, Seg: 255},
		"000000020000000000000003.partial":         {Kind: Partial, Timeline: 2, Log: 0, Seg: 3},
		"000000010000000000000002.00000028.backup": {Kind: Backup, Timeline: 1, Log: 0, Seg: 2},
		"0000000A.history":                         {Kind: History, Timeline: 10},
	} {
		got, err := ParseWALName(name)
		want.Name = name
		if err != nil || got != want {
			t.Errorf("ParseWALName(%s) = %+v, %v; want %+v", name, got, err, want)
		}
	}
	for _, bad := range []string{"", "00000001000000000000000", "000000010000000000000001.gz", "00000001.HISTORY",
		"000000000000000000000001", "00000000.history", "../000000010000000000000001", "000000010000000000000001 ", "0000000g0000000000000001"} {
		if _, err := ParseWALName(bad); err == nil {
			t.Errorf("ParseWALName(%q) accepted a bad name", bad)
		}
	}
}

func TestSegmentArithmetic(t *testing.T) {
	w, _ := ParseWALName("0000000100000001000000FF")
	if got := w.Next(16 << 20); got != "000000010000000200000000" {
		t.Errorf("Next of ...1/FF with 16 MiB segments = %s", got)
	}
	w, _ = ParseWALName("000000010000000100000FFF")
	if got := w.Next(1 << 20); got != "000000010000000200000000" {
		t.Errorf("Next with 1 MiB segments = %s", got)
	}
	if got := SegmentNameOf(3, 0x1FF, 16<<20); got != "0000000300000001000000FF" {
		t.Errorf("SegmentNameOf = %s", got)
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
	h, err := ReadSegmentHeader(bytes.NewReader(page))
	if err != nil || h.SystemIdentifier != 7312345678901234567 || h.SegmentSize != 16<<20 {
		t.Fatalf("ReadSegmentHeader = %+v, %v", h, err)
	}
	w, _ := ParseWALName("000000010000000000000003")
	if err := h.Check(w); err != nil {
		t.Fatalf("Check: %v", err)
	}
	w, _ = ParseWALName("000000010000000000000004")
	if err := h.Check(w); err == nil {
		t.Fatal("Check accepted a segment under another name")
	}
	// The first segment of timeline 2 starts with timeline 1's header.
	w, _ = ParseWALName("000000020000000000000003")
	if err := h.Check(w); err != nil {
		t.Fatalf("Check of a new timeline's first segment: %v", err)
	}
	le.PutUint16(page[2:], 0)
	if _, err := ReadSegmentHeader(bytes.NewReader(page)); err == nil {
		t.Fatal("a page without a long header was accepted")
	}
}

func TestCompareWAL(t *testing.T) {
	names := []string{"000000010000000100000000", "000000020000000000000005", "000000010000000000000006", "000000010000000000000005"}
	var ws []WALName
	for _, n := range names {
		w, err := ParseWALName(n)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, c := range []struct {
		a, b int
		want int
	}{
		{3, 1, -1}, // same place, the earlier timeline first
		{1, 2, -1}, // timeline 2 at 5 before timeline 1 at 6
		{2, 0, -1}, // the log counts before the segment
		{0, 0, 0},
		{0, 3, 1},
	} {
		if got := CompareWAL(ws[c.a], ws[c.b]); got != c.want {
			t.Errorf("CompareWAL(%s, %s) = %d, want %d", names[c.a], names[c.b], got, c.want)
		}
	}
}
