package pg

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL WAL location, written "16/B374D848".
type LSN uint64

// ParseLSN reads an LSN in PostgreSQL's text form.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if ok {
		h, err1 := strconv.ParseUint(hi, 16, 32)
		l, err2 := strconv.ParseUint(lo, 16, 32)
		if err1 == nil && err2 == nil {
			return LSN(h<<32 | l), nil
		}
	}
	return 0, fmt.Errorf("%q is not an LSN (expected e.g. 16/B374D848)", s)
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// SegNo is the number of the segment that holds the byte at l.
func (l LSN) SegNo(segSize int64) uint64 { return uint64(l) / uint64(segSize) }

// SegmentStart is where the segment that holds the byte at l starts.
func (l LSN) SegmentStart(segSize int64) LSN { return LSN(l.SegNo(segSize) * uint64(segSize)) }

// SegmentName is the name of the WAL segment of the timeline that holds
// the byte at l.
func (l LSN) SegmentName(timeline uint32, segSize int64) string {
	return SegmentNameOf(timeline, l.SegNo(segSize), segSize)
}

// PrevSegmentName is the name of the segment that holds the byte before
// l: the last segment needed to reach l, as PostgreSQL names a backup's
// stop segment.
func (l LSN) PrevSegmentName(timeline uint32, segSize int64) string {
	if l == 0 {
		return l.SegmentName(timeline, segSize)
	}
	return (l - 1).SegmentName(timeline, segSize)
}
