package codec

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// benchLevels are the levels benchmarked per codec: the default (0) and
// one level per distinct encoder behind the others.
var benchLevels = []struct {
	codec  Codec
	levels []int
}{
	{Zstd, []int{0, 3, 7, 19}}, // fastest, default, better, best
	{S2, []int{0, 2, 3}},       // default, better, best
	{Gzip, []int{0, 6, 9}},     // 1 (BestSpeed), gzip's default, best
	{None, []int{0}},
}

// chunk is the size of the writes and reads in the benchmarks: catalog
// copies objects through 256 KiB buffers.
const chunk = 256 << 10

// compressChunked compresses data onto buf in chunk-sized writes.
func compressChunked(tb testing.TB, c Codec, level int, buf *bytes.Buffer, data []byte) {
	w, err := c.NewWriter(buf, level)
	if err != nil {
		tb.Fatal(err)
	}
	for p := data; len(p) > 0; {
		n := min(len(p), chunk)
		if _, err := w.Write(p[:n]); err != nil {
			tb.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// drain reads r to the end through buf and returns the byte count.
func drain(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func BenchmarkCompress(b *testing.B) {
	data := walData(b)
	for _, bl := range benchLevels {
		for _, level := range bl.levels {
			b.Run(fmt.Sprintf("%s/%d", bl.codec, level), func(b *testing.B) {
				buf := bytes.NewBuffer(make([]byte, 0, len(data)+len(data)/8))
				// Warm the pool: the timings are of a reused encoder, as
				// in a process that compresses more than one object.
				compressChunked(b, bl.codec, level, buf, data)
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for b.Loop() {
					buf.Reset()
					compressChunked(b, bl.codec, level, buf, data)
				}
				b.ReportMetric(float64(len(data))/float64(buf.Len()), "ratio")
			})
		}
	}
}

func BenchmarkDecompress(b *testing.B) {
	data := walData(b)
	for _, bl := range benchLevels {
		b.Run(string(bl.codec), func(b *testing.B) {
			var comp bytes.Buffer
			compressChunked(b, bl.codec, 0, &comp, data)
			buf := make([]byte, chunk)
			read := func() {
				r, err := bl.codec.NewReader(bytes.NewReader(comp.Bytes()))
				if err != nil {
					b.Fatal(err)
				}
				n, err := drain(r, buf)
				if err != nil || n != int64(len(data)) {
					b.Fatalf("read %d bytes, %v", n, err)
				}
				r.Close()
			}
			read() // warm the pool
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				read()
			}
			b.ReportMetric(float64(len(data))/float64(comp.Len()), "ratio")
		})
	}
}

// BenchmarkNewWriter measures what a small object (4 KiB) costs per
// stream: with pooling, the compressor's setup is paid once per process,
// not per object.
func BenchmarkNewWriter(b *testing.B) {
	data := walData(b)[walPageSize : walPageSize+4096]
	for _, c := range all {
		b.Run(string(c), func(b *testing.B) {
			var buf bytes.Buffer
			compressChunked(b, c, 0, &buf, data) // warm the pool
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				compressChunked(b, c, 0, &buf, data)
			}
		})
	}
	// For comparison: a new zstd encoder for every object, as
	// zstd.NewWriter without pooling would do.
	b.Run("zstd-unpooled", func(b *testing.B) {
		var buf bytes.Buffer
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			e, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			if err != nil {
				b.Fatal(err)
			}
			e.Write(data)
			if err := e.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The benchmarks below back the zstd settings in zstd.go. They drive the
// zstd package directly, with one encoder or decoder reused across
// iterations (as the pools do), on the 16 MiB WAL-like segment.

// BenchmarkZstdEncoderLowMem compares WithLowerEncoderMem off and on:
// "stream" is the steady-state speed of a reused encoder, "new" the cost
// of creating one (what a pool miss costs).
func BenchmarkZstdEncoderLowMem(b *testing.B) {
	data := walData(b)
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		for _, low := range []bool{false, true} {
			opts := []zstd.EOption{
				zstd.WithEncoderLevel(level),
				zstd.WithEncoderConcurrency(1),
				zstd.WithLowerEncoderMem(low),
			}
			name := fmt.Sprintf("%s/lowmem=%v", level, low)
			b.Run(name+"/stream", func(b *testing.B) {
				buf := bytes.NewBuffer(make([]byte, 0, len(data)))
				e, err := zstd.NewWriter(nil, opts...)
				if err != nil {
					b.Fatal(err)
				}
				benchZstdStream(b, e, buf, data)
			})
			b.Run(name+"/new", func(b *testing.B) {
				small := data[walPageSize : walPageSize+4096]
				var buf bytes.Buffer
				b.ReportAllocs()
				for b.Loop() {
					buf.Reset()
					e, err := zstd.NewWriter(&buf, opts...)
					if err != nil {
						b.Fatal(err)
					}
					e.Write(small)
					if err := e.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkZstdEncoderConcurrency shows what a concurrent stream encoder
// would gain on one stream; Cellar runs streams in parallel instead.
func BenchmarkZstdEncoderConcurrency(b *testing.B) {
	data := walData(b)
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			buf := bytes.NewBuffer(make([]byte, 0, len(data)))
			e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(n))
			if err != nil {
				b.Fatal(err)
			}
			benchZstdStream(b, e, buf, data)
		})
	}
}

// benchZstdStream times compressing data with e, reused: warmed up first,
// then Reset for every stream. The warmup-B metric is what the first
// stream allocated: the buffers a pooled encoder keeps.
func benchZstdStream(b *testing.B, e *zstd.Encoder, buf *bytes.Buffer, data []byte) {
	run := func() {
		buf.Reset()
		e.Reset(buf)
		for p := data; len(p) > 0; p = p[min(len(p), chunk):] {
			e.Write(p[:min(len(p), chunk)])
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	run()
	runtime.ReadMemStats(&after)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc), "warmup-B")
}

// BenchmarkZstdDecoderConcurrency compares stream decoders with 1, 2 and 4
// blocks in flight (4 is the zstd package's default).
func BenchmarkZstdDecoderConcurrency(b *testing.B) {
	data := walData(b)
	var comp bytes.Buffer
	compressChunked(b, Zstd, 0, &comp, data)
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(n), zstd.WithDecoderMaxMemory(zstdMaxWindow))
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			buf := make([]byte, chunk)
			run := func() {
				if err := d.Reset(bytes.NewReader(comp.Bytes())); err != nil {
					b.Fatal(err)
				}
				if n, err := drain(d, buf); err != nil || n != int64(len(data)) {
					b.Fatalf("read %d bytes, %v", n, err)
				}
			}
			run()
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				run()
			}
		})
	}
}
