// Package pg is what is PostgreSQL's and not Cellar's: LSNs, WAL file
// names and segment headers, the physical replication protocol (with
// BASE_BACKUP), and the SQL that reads the server's state (the archiver,
// WAL switches, replication). It is a base layer beside cloud: every other
// package may use it, and it uses neither.
package pg

import (
	"fmt"
	"regexp"
	"strconv"
)

// WALKind is the kind of file PostgreSQL archives.
type WALKind int

// The kinds of WAL files.
const (
	Segment WALKind = iota + 1 // 000000010000000000000001
	Partial                    // 000000010000000000000001.partial
	Backup                     // 000000010000000000000001.00000028.backup
	History                    // 00000002.history
)

func (k WALKind) String() string {
	switch k {
	case Segment:
		return "segment"
	case Partial:
		return "partial segment"
	case Backup:
		return "backup history file"
	case History:
		return "timeline history file"
	}
	return "unknown"
}

// WALName is a parsed WAL file name.
type WALName struct {
	Name     string
	Kind     WALKind
	Timeline uint32
	// Log and Seg are the two halves of the segment number for segments,
	// partial segments and backup history files.
	Log, Seg uint32
}

var walNameRe = regexp.MustCompile(`^(?:([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial|\.[0-9A-F]{8}\.backup)?|([0-9A-F]{8})\.history)$`)

// ParseWALName parses the name of a file that PostgreSQL archives.
func ParseWALName(name string) (WALName, error) {
	m := walNameRe.FindStringSubmatch(name)
	if m == nil {
		return WALName{}, fmt.Errorf("%q is not a WAL file name: expected a 24-hex-digit segment (optionally .partial), a .backup or a .history file", name)
	}
	hex := func(s string) uint32 {
		v, _ := strconv.ParseUint(s, 16, 32)
		return uint32(v)
	}
	if m[5] != "" {
		w := WALName{Name: name, Kind: History, Timeline: hex(m[5])}
		if w.Timeline == 0 {
			return WALName{}, fmt.Errorf("%q names timeline 0, which does not exist", name)
		}
		return w, nil
	}
	w := WALName{Name: name, Kind: Segment, Timeline: hex(m[1]), Log: hex(m[2]), Seg: hex(m[3])}
	switch {
	case m[4] == ".partial":
		w.Kind = Partial
	case m[4] != "":
		w.Kind = Backup
	}
	if w.Timeline == 0 {
		return WALName{}, fmt.Errorf("%q names timeline 0, which does not exist", name)
	}
	return w, nil
}

// SegmentName is the 24-hex-digit name of the segment that w is, or that a
// partial segment or backup history file belongs to.
func (w WALName) SegmentName() string {
	return fmt.Sprintf("%08X%08X%08X", w.Timeline, w.Log, w.Seg)
}

// SegNo is the segment number (log * segments-per-log + seg) for a
// segment size in bytes.
func (w WALName) SegNo(segSize int64) uint64 {
	return uint64(w.Log)*SegmentsPerLog(segSize) + uint64(w.Seg)
}

// SegmentsPerLog is how many segments of segSize bytes make one 4 GiB
// "log" (the middle eight hex digits of a segment name).
func SegmentsPerLog(segSize int64) uint64 {
	return 0x100000000 / uint64(segSize)
}

// SegmentNameOf returns the name of segment segNo on a timeline.
func SegmentNameOf(timeline uint32, segNo uint64, segSize int64) string {
	per := SegmentsPerLog(segSize)
	return fmt.Sprintf("%08X%08X%08X", timeline, uint32(segNo/per), uint32(segNo%per))
}

// Next returns the name of the segment after w on the same timeline.
func (w WALName) Next(segSize int64) string {
	return SegmentNameOf(w.Timeline, w.SegNo(segSize)+1, segSize)
}

// CompareWAL orders WAL files by their place in the WAL stream across
// timelines: by log and segment, then by timeline (a segment of a later
// timeline continues where the earlier one was switched away from). It
// returns -1, 0 or +1.
func CompareWAL(a, b WALName) int {
	switch {
	case a.Log != b.Log:
		return cmpU32(a.Log, b.Log)
	case a.Seg != b.Seg:
		return cmpU32(a.Seg, b.Seg)
	}
	return cmpU32(a.Timeline, b.Timeline)
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
