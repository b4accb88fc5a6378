package pg

import (
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"16MB": 16 << 20, "1GB": 1 << 30, "8192kB": 8 << 20, "512": 512} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MB", "16 parsecs", "x16MB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) took it", bad)
		}
	}
}

func TestHistory(t *testing.T) {
	h := ParseHistory([]byte("1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5A000A0\tbefore 2026-12-01\n"))
	if len(h) != 2 || h[0] != (HistoryEntry{1, 0x3000000}) || h[1] != (HistoryEntry{2, 0x5A000A0}) {
		t.Fatalf("ParseHistory = %+v", h)
	}
	for _, c := range []struct {
		pos  LSN
		want uint32
	}{{0x1000000, 1}, {0x2FFFFFF, 1}, {0x3000000, 2}, {0x5A0009F, 2}, {0x5A000A0, 3}, {0x9000000, 3}} {
		if got := TimelineAt(h, 3, c.pos); got != c.want {
			t.Errorf("TimelineAt(%s) = %d, want %d", c.pos, got, c.want)
		}
	}
}
