package codec

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
)

// WAL-like test data: the same bytes on every run.

const (
	walPageSize    = 8192
	walSegmentSize = 16 << 20
)

var (
	walOnce    sync.Once
	walSegment []byte
)

// walData returns a shared 16 MiB WAL-like segment. Callers must not
// modify it.
func walData(tb testing.TB) []byte {
	tb.Helper()
	walOnce.Do(func() { walSegment = walLike(walSegmentSize, 1) })
	return walSegment
}

// walLike returns size bytes (rounded down to whole 8 KiB pages) that look
// like a PostgreSQL WAL segment that was switched before it was full, as
// archive_timeout does on a quiet server: pages with a page header and a
// stream of records (heap and index inserts, commits, now and then a full
// page image) up to the switch, zero pages after it. The same seed gives
// the same bytes.
func walLike(size int, seed uint64) []byte {
	buf := make([]byte, size)
	pages := size / walPageSize
	if pages == 0 {
		return buf
	}
	g := &walGen{
		rng:   rand.New(rand.NewPCG(seed, 0xce11a5)),
		xid:   74312,
		ts:    800_000_000_000_000, // microseconds since 2000-01-01
		id:    1_000_000,
		block: 4242,
	}
	// The switch comes somewhere between a fifth and a half of the way in.
	active := pages/5 + g.rng.IntN(pages*3/10+1)
	active = max(active, 1)
	segStart := uint64(0x2A000000)
	var pending []byte // the part of a record that continues on the next page
	for p := range active {
		pg := buf[p*walPageSize : (p+1)*walPageSize]
		info := uint16(0)
		if len(pending) > 0 {
			info |= 0x0001 // XLP_FIRST_IS_CONTRECORD
		}
		hdr := 24
		if p == 0 {
			info |= 0x0002 // XLP_LONG_HEADER
			hdr = 40
			binary.LittleEndian.PutUint64(pg[24:], 7391240839284730982) // system identifier
			binary.LittleEndian.PutUint32(pg[32:], walSegmentSize)
			binary.LittleEndian.PutUint32(pg[36:], walPageSize)
		}
		binary.LittleEndian.PutUint16(pg[0:], 0xD116) // XLOG_PAGE_MAGIC
		binary.LittleEndian.PutUint16(pg[2:], info)
		binary.LittleEndian.PutUint32(pg[4:], 1) // timeline
		binary.LittleEndian.PutUint64(pg[8:], segStart+uint64(p*walPageSize))
		binary.LittleEndian.PutUint32(pg[16:], uint32(len(pending)))
		off := hdr
		limit := walPageSize
		if p == active-1 {
			// The switch record ends the segment part way into a page.
			limit = hdr + g.rng.IntN(walPageSize-hdr)
		}
		for off < limit {
			if len(pending) == 0 {
				pending = g.record(segStart + uint64(p*walPageSize+off))
			}
			n := copy(pg[off:limit], pending)
			pending = pending[n:]
			off += n
			off = (off + 7) &^ 7 // records are MAXALIGNed
		}
	}
	return buf
}

type walGen struct {
	rng     *rand.Rand
	xid     uint32
	ts      uint64
	id      uint64
	block   uint32
	prevLSN uint64
	rec     []byte
}

var walWords = []string{
	"pending", "shipped", "delivered", "cancelled", "refunded", "express",
	"standard", "warehouse", "north", "south", "east", "west", "customer",
	"order", "invoice", "priority", "gift", "wrap", "note", "returned",
}

// record returns the next WAL record, written at lsn.
func (g *walGen) record(lsn uint64) []byte {
	r := g.rng
	b := g.rec[:0]
	b = append(b, make([]byte, 24)...) // XLogRecord, filled in below
	var rmid, info byte
	switch k := r.IntN(100); {
	case k < 55: // heap insert of an "orders" row
		rmid, info = 10, 0x00
		b = g.blockRef(b, 16391)
		b = binary.LittleEndian.AppendUint32(b, g.xid) // t_xmin
		b = binary.LittleEndian.AppendUint32(b, 0)     // t_xmax
		b = binary.LittleEndian.AppendUint16(b, uint16(r.IntN(120)))
		b = append(b, 0x02, 0x09, 0x18, 0x00) // infomask, hoff
		b = binary.LittleEndian.AppendUint64(b, g.id)
		b = binary.LittleEndian.AppendUint64(b, g.ts)
		b = binary.LittleEndian.AppendUint32(b, uint32(r.IntN(50000))) // amount in cents
		for range 2 + r.IntN(4) {
			b = append(b, walWords[r.IntN(len(walWords))]...)
			b = append(b, ' ')
		}
		var uuid [16]byte
		for i := range uuid {
			uuid[i] = byte(r.Uint32())
		}
		b = append(b, uuid[:]...)
		g.id++
	case k < 80: // btree insert of the new id
		rmid, info = 11, 0x00
		b = g.blockRef(b, 16397)
		b = binary.LittleEndian.AppendUint64(b, g.id)
		b = binary.LittleEndian.AppendUint32(b, g.block)
		b = binary.LittleEndian.AppendUint16(b, uint16(r.IntN(200)))
	case k < 96: // commit
		rmid, info = 1, 0x00
		b = binary.LittleEndian.AppendUint64(b, g.ts)
		b = binary.LittleEndian.AppendUint32(b, 0x10) // xinfo
		g.xid++
	default: // full page image of a heap page: row after row, then a hole
		rmid, info = 10, 0x00
		b = g.blockRef(b, 16391)
		rows := 20 + r.IntN(60)
		for i := range rows {
			b = binary.LittleEndian.AppendUint32(b, g.xid-uint32(r.IntN(500)))
			b = binary.LittleEndian.AppendUint64(b, g.id-uint64(rows-i))
			b = binary.LittleEndian.AppendUint64(b, g.ts-uint64(r.IntN(1e9)))
			b = append(b, walWords[r.IntN(len(walWords))]...)
			b = append(b, walWords[r.IntN(len(walWords))]...)
			b = binary.LittleEndian.AppendUint32(b, r.Uint32())
		}
	}
	if r.IntN(40) == 0 {
		g.block++
	}
	g.ts += uint64(r.IntN(5000))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b))) // xl_tot_len
	binary.LittleEndian.PutUint32(b[4:], g.xid)
	binary.LittleEndian.PutUint64(b[8:], g.prevLSN)
	b[16], b[17] = info, rmid
	binary.LittleEndian.PutUint32(b[20:], r.Uint32()) // xl_crc
	g.prevLSN = lsn
	g.rec = b
	return b
}

// blockRef appends a block reference: tablespace, database, relation and
// block number.
func (g *walGen) blockRef(b []byte, rel uint32) []byte {
	b = append(b, 0, 0x20, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, 1663)
	b = binary.LittleEndian.AppendUint32(b, 16384)
	b = binary.LittleEndian.AppendUint32(b, rel)
	return binary.LittleEndian.AppendUint32(b, g.block)
}
