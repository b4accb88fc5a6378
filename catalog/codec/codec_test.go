package codec

import (
	"bytes"
	stdgzip "compress/gzip"
	"errors"
	"fmt"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/s2"
)

// compressing are the codecs with a framed stream format.
var compressing = []Codec{Zstd, S2, Gzip}

// compress returns data compressed in one Write.
func compress(tb testing.TB, c Codec, level int, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := c.NewWriter(&buf, level)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// decompress reads a whole stream.
func decompress(c Codec, comp []byte) ([]byte, error) {
	r, err := c.NewReader(bytes.NewReader(comp))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Codec
	}{
		{"zstd", Zstd}, {"ZSTD", Zstd}, {"Zstd", Zstd},
		{"s2", S2}, {"S2", S2},
		{"gzip", Gzip}, {"GZip", Gzip},
		{"none", None}, {"NONE", None},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "lz4", "zst", "gz", " zstd", "zstd ", "snappy", "off", "zstd\n"} {
		got, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) = %q, want an error", in, got)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "zstd, s2, gzip, none") {
			t.Errorf("Parse(%q): error %q should be one line listing the valid names", in, msg)
		}
	}
}

func TestNamesAreStable(t *testing.T) {
	// These strings are written into every repository.
	for c, want := range map[Codec][2]string{
		Zstd: {"zstd", "zst"},
		S2:   {"s2", "s2"},
		Gzip: {"gzip", "gz"},
		None: {"none", ""},
	} {
		if string(c) != want[0] || c.Extension() != want[1] {
			t.Errorf("%q: name %q extension %q, want %q %q", c, string(c), c.Extension(), want[0], want[1])
		}
	}
	if ext := Codec("ZSTD").Extension(); ext != "zst" {
		t.Errorf(`Codec("ZSTD").Extension() = %q`, ext)
	}
	if ext := Codec("lz4").Extension(); ext != "" {
		t.Errorf(`Codec("lz4").Extension() = %q`, ext)
	}
}

func TestUnknownCodec(t *testing.T) {
	if _, err := Codec("lz4").NewWriter(io.Discard, 0); err == nil {
		t.Error("NewWriter of an unknown codec: no error")
	}
	if _, err := Codec("").NewReader(strings.NewReader("")); err == nil {
		t.Error("NewReader of the empty codec name: no error")
	}
	// A name as Parse accepts it works, whatever its case.
	comp := compress(t, Codec("ZSTD"), 0, []byte("hello"))
	if got, err := decompress(Codec("Zstd"), comp); err != nil || string(got) != "hello" {
		t.Errorf("round trip through non-canonical names: %q, %v", got, err)
	}
}

func TestLevels(t *testing.T) {
	for _, tc := range []struct {
		c       Codec
		valid   []int
		invalid []int
		rng     string
	}{
		{Zstd, []int{0, 1, 2, 3, 5, 6, 9, 10, 19, 22}, []int{-1, -5, 23, 100}, "1..22"},
		{S2, []int{0, 1, 2, 3}, []int{-1, 4, 9}, "1..3"},
		{Gzip, []int{0, 1, 5, 9}, []int{-1, -2, -3, 10}, "1..9"},
		{None, []int{-7, 0, 1, 9, 22, 1000}, nil, ""},
	} {
		for _, l := range tc.valid {
			w, err := tc.c.NewWriter(io.Discard, l)
			if err != nil {
				t.Errorf("%s level %d: %v", tc.c, l, err)
				continue
			}
			if err := w.Close(); err != nil {
				t.Errorf("%s level %d: Close: %v", tc.c, l, err)
			}
		}
		for _, l := range tc.invalid {
			w, err := tc.c.NewWriter(io.Discard, l)
			if err == nil {
				w.Close()
				t.Errorf("%s level %d: no error", tc.c, l)
				continue
			}
			if !strings.Contains(err.Error(), tc.rng) || !strings.Contains(err.Error(), fmt.Sprint(l)) {
				t.Errorf("%s level %d: error %q should name the level and the range %s", tc.c, l, err, tc.rng)
			}
		}
	}
}

// writeUneven writes data in pieces of varying size, some empty.
func writeUneven(w io.Writer, data []byte, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 7))
	for len(data) > 0 {
		n := min(len(data), r.IntN(3)*r.IntN(300<<10))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// readUneven reads r to the end with reads of varying size.
func readUneven(r io.Reader, seed uint64) ([]byte, error) {
	rng := rand.New(rand.NewPCG(seed, 8))
	var out []byte
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf[:1+rng.IntN(len(buf))])
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func TestRoundTrip(t *testing.T) {
	inputs := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"1byte", []byte{0x5a}},
		{"random1MiB", storagetest.Bytes(1, 1<<20)},
		{"wal16MiB", walData(t)},
	}
	for _, c := range all {
		levels := []int{0, 1, c.maxLevel()}
		if c == None {
			levels = []int{0}
		}
		for _, level := range levels {
			for _, in := range inputs {
				t.Run(fmt.Sprintf("%s/%d/%s", c, level, in.name), func(t *testing.T) {
					if testing.Short() && len(in.data) > 1<<20 && level != 0 {
						t.Skip("short")
					}
					t.Parallel()
					var buf bytes.Buffer
					w, err := c.NewWriter(&buf, level)
					if err != nil {
						t.Fatal(err)
					}
					if err := writeUneven(w, in.data, uint64(level)); err != nil {
						t.Fatal(err)
					}
					if err := w.Close(); err != nil {
						t.Fatal(err)
					}
					if c != None && buf.Len() == 0 {
						t.Fatal("an empty stream: every compressed stream must have a header")
					}
					r, err := c.NewReader(bytes.NewReader(buf.Bytes()))
					if err != nil {
						t.Fatal(err)
					}
					got, err := readUneven(r, uint64(len(in.data)))
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, in.data) {
						t.Fatalf("got %d bytes back, not the %d written", len(got), len(in.data))
					}
					// At the end, Read keeps returning io.EOF.
					if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
						t.Fatalf("Read after the end = %d, %v", n, err)
					}
					if err := r.Close(); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}

// cutPoints returns the lengths to cut a stream of n bytes to: all of
// them for a short stream, else the start, the middle, the last bytes and
// a spread in between.
func cutPoints(n int) []int {
	if n <= 2048 {
		cuts := make([]int, n)
		for i := range cuts {
			cuts[i] = i
		}
		return cuts
	}
	cuts := []int{0, 1, 2, 3, 4, 10, 17, n / 2}
	for i := 1; i <= 32; i++ {
		cuts = append(cuts, n-i)
	}
	r := rand.New(rand.NewPCG(uint64(n), 3))
	for range 64 {
		cuts = append(cuts, r.IntN(n))
	}
	return cuts
}

// s2ChunkEnds returns the offset after every chunk of an S2 stream: the
// places where the S2 framing itself could not tell that data is missing.
func s2ChunkEnds(tb testing.TB, comp []byte) []int {
	var ends []int
	for off := 0; off < len(comp); {
		if off+4 > len(comp) {
			tb.Fatalf("s2 chunk header cut at %d", off)
		}
		off += 4 + int(comp[off+1]) | int(comp[off+2])<<8 | int(comp[off+3])<<16
		ends = append(ends, off)
	}
	return ends
}

// checkCorrupt reads a damaged stream and requires an ErrCorrupt error
// (rather than io.EOF or a panic) or, with benignOK, the original bytes.
func checkCorrupt(t *testing.T, c Codec, comp, orig []byte, what string, benignOK bool) (benign bool) {
	t.Helper()
	got, err := decompress(c, comp)
	switch {
	case err == nil && benignOK && bytes.Equal(got, orig):
		return true
	case err == nil:
		t.Errorf("%s %s: read %d bytes (of %d) and no error", c, what, len(got), len(orig))
	case !errors.Is(err, ErrCorrupt):
		t.Errorf("%s %s: error %v does not wrap ErrCorrupt", c, what, err)
	}
	return false
}

func TestTruncated(t *testing.T) {
	inputs := [][]byte{
		nil,
		[]byte("x"),
		walLike(64<<10, 2),          // a couple of KiB compressed: every cut
		walLike(3<<20, 3),           // several s2 chunks
		walData(t),                  // "cut in half" on the real thing
		storagetest.Bytes(4, 1<<20), // incompressible
	}
	for _, c := range compressing {
		t.Run(string(c), func(t *testing.T) {
			t.Parallel()
			for _, data := range inputs {
				comp := compress(t, c, 0, data)
				cuts := cutPoints(len(comp))
				if c == S2 {
					for _, end := range s2ChunkEnds(t, comp) {
						if end < len(comp) {
							cuts = append(cuts, end)
						}
					}
				}
				for _, n := range cuts {
					checkCorrupt(t, c, comp[:n], data, fmt.Sprintf("%d-byte input cut to %d of %d bytes", len(data), n, len(comp)), false)
				}
			}
		})
	}
}

// TestTrailingGarbage appends bytes to a stream: anything but another
// whole stream is corruption. zstd and gzip define a concatenation of
// streams as a valid stream (and Cellar's envelope checks the size and
// checksum of the result); Cellar's s2 streams end with their end chunk.
func TestTrailingGarbage(t *testing.T) {
	data := walLike(256<<10, 5)
	for _, c := range compressing {
		comp := compress(t, c, 0, data)
		for _, tail := range [][]byte{{0}, []byte("garbage"), comp[:10], comp[:len(comp)-1]} {
			bad := append(bytes.Clone(comp), tail...)
			checkCorrupt(t, c, bad, data, fmt.Sprintf("with %d bytes appended", len(tail)), false)
		}
		two := append(bytes.Clone(comp), comp...)
		got, err := decompress(c, two)
		if c == S2 {
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("s2: two streams in a row: %v, want ErrCorrupt", err)
			}
		} else if err != nil || !bytes.Equal(got, append(bytes.Clone(data), data...)) {
			t.Errorf("%s: two streams in a row: %d bytes, %v", c, len(got), err)
		}
	}
}

// TestBitFlips flips one bit in every byte of a stream in turn. A flip
// must be reported as corruption, or leave the data as it was: in highly
// repetitive data some flips only change which of several identical
// earlier bytes a match copies (a zero from 1 or from 2 bytes back), or
// hit a header field that does not describe the data (gzip's MTIME, the
// zstd window size).
func TestBitFlips(t *testing.T) {
	data := append(walLike(48<<10, 6), storagetest.Bytes(6, 2<<10)...)
	for _, c := range compressing {
		t.Run(string(c), func(t *testing.T) {
			t.Parallel()
			comp := compress(t, c, 0, data)
			bad := make([]byte, len(comp))
			var harmless []int
			for i := range comp {
				copy(bad, comp)
				bad[i] ^= 1 << (i % 8)
				if checkCorrupt(t, c, bad, data, fmt.Sprintf("bit %d of byte %d flipped", i%8, i), true) {
					harmless = append(harmless, i)
				}
			}
			t.Logf("%d bytes flipped, %d harmlessly", len(comp), len(harmless))
			if len(harmless) > len(comp)/20 {
				t.Errorf("%d of %d flips went unnoticed: are checksums checked?", len(harmless), len(comp))
			}
		})
	}
	// And some flips in the 16 MiB stream.
	wal := walData(t)
	for _, c := range compressing {
		comp := compress(t, c, 0, wal)
		r := rand.New(rand.NewPCG(7, 7))
		for range 8 {
			bad := bytes.Clone(comp)
			i := r.IntN(len(bad))
			bad[i] ^= 1 << r.IntN(8)
			checkCorrupt(t, c, bad, wal, fmt.Sprintf("16 MiB stream with byte %d flipped", i), true)
		}
	}
}

func TestZstdWindowLimit(t *testing.T) {
	// A frame that asks for a 1 GiB window: magic, frame header
	// descriptor (no flags), window descriptor (exponent 20: 2^30), then a
	// one-byte raw last block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x09, 0x00, 0x00, 'x'}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := decompress(Zstd, frame)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a 1 GiB window: %v, want ErrCorrupt", err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 32<<20 {
		t.Errorf("rejecting the frame allocated %d bytes", grown)
	}
	// The same frame with a 64 MiB window (exponent 16) is within bounds.
	frame[5] = 16 << 3
	if got, err := decompress(Zstd, frame); err != nil || string(got) != "x" {
		t.Errorf("a 64 MiB window: %q, %v", got, err)
	}
}

// errReader returns data, then err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReaderErrorsPassThrough(t *testing.T) {
	errNet := errors.New("connection reset")
	data := walLike(2<<20, 8)
	for _, c := range all {
		comp := compress(t, c, 0, data)
		for _, n := range []int{0, 5, len(comp) / 2, len(comp) - 1} {
			r, err := c.NewReader(&errReader{data: comp[:n], err: errNet})
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(r)
			r.Close()
			if !errors.Is(err, errNet) || errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: the source failing after %d bytes: %v, want the source's error", c, n, err)
			}
		}
	}
}

// closeRecorder is an io.Writer and io.Reader that notes Close.
type closeRecorder struct {
	bytes.Buffer
	closed bool
}

func (c *closeRecorder) Close() error {
	c.closed = true
	return nil
}

func TestCloseLeavesUnderlyingOpen(t *testing.T) {
	for _, c := range all {
		var dst closeRecorder
		w, err := c.NewWriter(&dst, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("some bytes"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Errorf("%s: second Close: %v", c, err)
		}
		if _, err := w.Write([]byte("more")); err == nil {
			t.Errorf("%s: Write after Close: no error", c)
		}
		if dst.closed {
			t.Errorf("%s: the writer's Close closed the underlying writer", c)
		}
		src := &closeRecorder{}
		src.Write(dst.Bytes())
		r, err := c.NewReader(src)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(r); err != nil || string(got) != "some bytes" {
			t.Errorf("%s: %q, %v", c, got, err)
		}
		r.Close()
		if err := r.Close(); err != nil {
			t.Errorf("%s: second Close: %v", c, err)
		}
		if _, err := r.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: Read after Close: no error", c)
		}
		if src.closed {
			t.Errorf("%s: the reader's Close closed the underlying reader", c)
		}
	}
}

func TestNewReaderDoesNotRead(t *testing.T) {
	for _, c := range all {
		src := &errReader{err: errors.New("must not be read")}
		r, err := c.NewReader(src)
		if err != nil {
			t.Errorf("%s: %v", c, err)
			continue
		}
		r.Close()
	}
}

// failingWriter accepts limit bytes, then fails.
type failingWriter struct {
	limit int
	n     int
}

var errDiskFull = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > w.limit {
		k := w.limit - w.n
		w.n = w.limit
		return k, errDiskFull
	}
	w.n += len(p)
	return len(p), nil
}

// TestPoolReuseAfterFailure runs failed, abandoned and half-read streams
// through the pools and checks that every later stream is intact and,
// since compression is deterministic, byte for byte what a stream after
// only clean ones produces.
func TestPoolReuseAfterFailure(t *testing.T) {
	a := walLike(1<<20, 10)
	b := walLike(1<<20, 11)
	for _, c := range compressing {
		for _, level := range []int{0, c.maxLevel()} {
			want := compress(t, c, level, b)
			for round := range 6 {
				// A stream whose destination fails part way.
				w, err := c.NewWriter(&failingWriter{limit: 1000 + round*5000}, level)
				if err != nil {
					t.Fatal(err)
				}
				_, werr := w.Write(a)
				cerr := w.Close()
				if !errors.Is(werr, errDiskFull) && !errors.Is(cerr, errDiskFull) {
					t.Fatalf("%s: writing to a full disk: Write %v, Close %v", c, werr, cerr)
				}
				if err := w.Close(); !errors.Is(cerr, errDiskFull) && err != cerr {
					t.Fatalf("%s: a second Close gave %v after %v", c, err, cerr)
				}
				// A stream abandoned without Close.
				w, _ = c.NewWriter(io.Discard, level)
				w.Write(a[:len(a)/2+round])
				// A stream closed after part of the data.
				w, _ = c.NewWriter(io.Discard, level)
				w.Write(a[:round*1000])
				w.Close()
				// A corrupt stream read to its error, and a good one read
				// half way, both closed.
				bad := compress(t, c, level, a)
				bad[len(bad)/2] ^= 0x10
				if _, err := decompress(c, bad); err == nil {
					t.Fatalf("%s: a flipped bit went unnoticed", c)
				}
				r, _ := c.NewReader(bytes.NewReader(compress(t, c, level, a)))
				io.ReadFull(r, make([]byte, 100_000+round))
				r.Close()

				got := compress(t, c, level, b)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s level %d round %d: the stream differs from a clean one", c, level, round)
				}
				back, err := decompress(c, got)
				if err != nil || !bytes.Equal(back, b) {
					t.Fatalf("%s level %d round %d: round trip: %v", c, level, round, err)
				}
			}
		}
	}
}

func TestConcurrent(t *testing.T) {
	wal := walData(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 12))
			for i := range 12 {
				c := all[(g+i)%len(all)]
				level := r.IntN(c.maxLevel() + 1)
				off := r.IntN(len(wal) - (1 << 20))
				data := wal[off : off+r.IntN(1<<20)]
				var buf bytes.Buffer
				w, err := c.NewWriter(&buf, level)
				if err != nil {
					t.Error(err)
					return
				}
				if err := writeUneven(w, data, uint64(i)); err != nil {
					t.Error(err)
					return
				}
				if err := w.Close(); err != nil {
					t.Error(err)
					return
				}
				rd, err := c.NewReader(&buf)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := readUneven(rd, uint64(i))
				rd.Close()
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("goroutine %d, %s level %d: %d of %d bytes back, %v", g, c, level, len(got), len(data), err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestPooling checks that a writer and a reader are cheap once the pools
// are warm: a new zstd encoder alone allocates over 600 KiB.
func TestPooling(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	data := []byte(`{"system_identifier":"7391240839284730982","wal_segment_size":16777216}`)
	for _, c := range compressing {
		comp := compress(t, c, 0, data)
		var buf bytes.Buffer
		allocs := testing.AllocsPerRun(50, func() {
			buf.Reset()
			w, _ := c.NewWriter(&buf, 0)
			w.Write(data)
			w.Close()
			r, _ := c.NewReader(bytes.NewReader(comp))
			io.Copy(io.Discard, r)
			r.Close()
		})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const runs = 50
		for range runs {
			buf.Reset()
			w, _ := c.NewWriter(&buf, 0)
			w.Write(data)
			w.Close()
			r, _ := c.NewReader(bytes.NewReader(comp))
			io.Copy(io.Discard, r)
			r.Close()
		}
		runtime.ReadMemStats(&after)
		perRun := (after.TotalAlloc - before.TotalAlloc) / runs
		t.Logf("%s: %.0f allocations, %d bytes per write+read", c, allocs, perRun)
		if perRun > 64<<10 {
			t.Errorf("%s: %d bytes allocated per small write+read: is pooling working?", c, perRun)
		}
	}
}

func TestStockReaders(t *testing.T) {
	// Cellar's streams are standard streams: the stock readers read them.
	data := walLike(3<<20, 13)
	zr, err := stdgzip.NewReader(bytes.NewReader(compress(t, Gzip, 0, data)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(zr); err != nil || !bytes.Equal(got, data) {
		t.Errorf("compress/gzip: %d bytes, %v", len(got), err)
	}
	// A plain s2.Reader skips the end-of-stream chunk.
	for _, in := range [][]byte{nil, data} {
		got, err := io.ReadAll(s2.NewReader(bytes.NewReader(compress(t, S2, 0, in))))
		if err != nil || !bytes.Equal(got, in) {
			t.Errorf("s2.Reader: %d bytes, %v", len(got), err)
		}
	}
}

// TestLongStream checks that the decoders' memory bounds limit windows,
// not stream lengths: base-backup parts run to gigabytes.
func TestLongStream(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	wal := walData(t)
	const copies = 6 // 96 MiB, more than zstdMaxWindow
	for _, c := range compressing {
		var buf bytes.Buffer
		w, err := c.NewWriter(&buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		for range copies {
			if _, err := w.Write(wal); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := c.NewReader(&buf)
		if err != nil {
			t.Fatal(err)
		}
		part := make([]byte, len(wal))
		for i := range copies {
			if _, err := io.ReadFull(r, part); err != nil {
				t.Fatalf("%s: copy %d: %v", c, i, err)
			}
			if !bytes.Equal(part, wal) {
				t.Fatalf("%s: copy %d differs", c, i)
			}
		}
		if n, err := r.Read(part); n != 0 || err != io.EOF {
			t.Fatalf("%s: at the end: %d, %v", c, n, err)
		}
		r.Close()
	}
}
