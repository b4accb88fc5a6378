package pg

import (
	"encoding/binary"
	"fmt"
	"io"
)

// The long page header at the start of every WAL segment
// (XLogLongPageHeaderData in PostgreSQL's xlog_internal.h), little-endian
// on the platforms PostgreSQL archives from here:
//
//	0  uint16 xlp_magic
//	2  uint16 xlp_info        (XLP_LONG_HEADER = 0x0002)
//	4  uint32 xlp_tli
//	8  uint64 xlp_pageaddr
//	16 uint32 xlp_rem_len
//	24 uint64 xlp_sysid
//	32 uint32 xlp_seg_size
//	36 uint32 xlp_xlog_blcksz
const (
	longHeaderLen = 40
	xlpLongHeader = 0x0002
)

// SegmentHeader is what the first page of a WAL segment says about the
// cluster that wrote it.
type SegmentHeader struct {
	Magic            uint16
	Timeline         uint32
	PageAddr         uint64
	SystemIdentifier uint64
	SegmentSize      int64
	BlockSize        uint32
}

// ReadSegmentHeader reads the long page header of a WAL segment.
func ReadSegmentHeader(r io.Reader) (SegmentHeader, error) {
	var b [longHeaderLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return SegmentHeader{}, fmt.Errorf("reading the WAL page header: %w", err)
	}
	le := binary.LittleEndian
	h := SegmentHeader{
		Magic:            le.Uint16(b[0:]),
		Timeline:         le.Uint32(b[4:]),
		PageAddr:         le.Uint64(b[8:]),
		SystemIdentifier: le.Uint64(b[24:]),
		SegmentSize:      int64(le.Uint32(b[32:])),
		BlockSize:        le.Uint32(b[36:]),
	}
	if le.Uint16(b[2:])&xlpLongHeader == 0 {
		return SegmentHeader{}, fmt.Errorf("the first page has no long header (xlp_info %#x): not the start of a WAL segment", le.Uint16(b[2:]))
	}
	if !validSegmentSize(h.SegmentSize) {
		return SegmentHeader{}, fmt.Errorf("the header's segment size %d is not a power of two between 1 MiB and 1 GiB", h.SegmentSize)
	}
	if h.BlockSize == 0 || h.BlockSize&(h.BlockSize-1) != 0 || h.BlockSize > 65536 {
		return SegmentHeader{}, fmt.Errorf("the header's block size %d is not valid", h.BlockSize)
	}
	return h, nil
}

func validSegmentSize(n int64) bool {
	return n >= 1<<20 && n <= 1<<30 && n&(n-1) == 0
}

// Check verifies that the header belongs to the segment called name: the
// page address of its first byte, and a timeline no later than the name's
// (the first segment of a new timeline starts as a copy of the old
// timeline's, with the old timeline in its first page header).
func (h SegmentHeader) Check(w WALName) error {
	if h.Timeline > w.Timeline {
		return fmt.Errorf("its header says timeline %d, its name timeline %d", h.Timeline, w.Timeline)
	}
	if want := w.SegNo(h.SegmentSize) * uint64(h.SegmentSize); h.PageAddr != want {
		return fmt.Errorf("its header says it starts at %X/%X, its name at %X/%X", h.PageAddr>>32, uint32(h.PageAddr), want>>32, uint32(want))
	}
	return nil
}
