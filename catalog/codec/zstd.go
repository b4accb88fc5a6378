package codec

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstd settings. The measurements behind them are the BenchmarkZstd*
// benchmarks in this package: 16 MiB of WAL-like data, on a 2-core AMD
// EPYC VM, medians of 8 runs.
const (
	// zstdEncoderConcurrency 1 compresses a stream on the calling
	// goroutine. Cellar runs one stream per file in parallel already, a
	// concurrent encoder would only add goroutines (and 770 allocations a
	// stream) for at best ~25% on one stream (42 ms with 1, 32-38 ms with
	// 2 or 4), and a synchronous encoder abandoned without Close leaks
	// nothing.
	zstdEncoderConcurrency = 1

	// zstdLowerEncoderMem false: WithLowerEncoderMem(true) costs 53% more
	// time at SpeedFastest (44 ms -> 68 ms a segment) and 63% at
	// SpeedDefault, to save 4 MiB of the 9 MiB a fastest encoder keeps
	// (8 of 18 MiB at default); pooled encoders are few, one per stream in
	// flight.
	zstdLowerEncoderMem = false

	// zstdDecoderConcurrency 1: the synchronous stream decoder is the
	// fastest here (8.7 ms a segment, against 11.4 ms with 2 blocks in
	// flight and 10.3 ms with 4, the package default), allocates nothing
	// per stream, and starts no goroutines.
	zstdDecoderConcurrency = 1

	// zstdMaxWindow bounds the window a frame may ask for, and so the
	// memory a corrupt or hostile object can make one reader allocate.
	// Cellar's encoders use windows of 4 MiB (fastest) and 8 MiB (the
	// other levels); the zstd format allows up to 3.75 TiB. It bounds the
	// window only, not the length of a stream.
	zstdMaxWindow = 64 << 20
)

// zstdEncoders pools encoders by zstd.EncoderLevel, which cannot be
// changed on a pooled encoder.
var zstdEncoders [int(zstd.SpeedBestCompression) + 1]sync.Pool

// zstdLevel maps a Cellar level (already checked) to an encoder level.
func zstdLevel(level int) zstd.EncoderLevel {
	if level == 0 {
		return zstd.SpeedFastest
	}
	return zstd.EncoderLevelFromZstd(level)
}

type zstdEncoder struct {
	e     *zstd.Encoder
	level zstd.EncoderLevel
}

func newZstdWriter(w io.Writer, level int) (io.WriteCloser, error) {
	l := zstdLevel(level)
	if e, ok := zstdEncoders[l].Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return &writer{enc: &zstdEncoder{e: e, level: l}}, nil
	}
	e, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(l),
		zstd.WithEncoderConcurrency(zstdEncoderConcurrency),
		zstd.WithLowerEncoderMem(zstdLowerEncoderMem),
		zstd.WithEncoderCRC(true), // the default; readers depend on it
		zstd.WithZeroFrames(true), // the default: an empty object is still a frame
	)
	if err != nil {
		return nil, err
	}
	return &writer{enc: &zstdEncoder{e: e, level: l}}, nil
}

func (z *zstdEncoder) write(p []byte) (int, error) { return z.e.Write(p) }

func (z *zstdEncoder) finish() error { return z.e.Close() }

func (z *zstdEncoder) release() {
	z.e.Reset(nil) // forget the caller's writer
	zstdEncoders[z.level].Put(z.e)
	z.e = nil
}

var zstdDecoders sync.Pool

type zstdDecoder struct {
	d        *zstd.Decoder
	resetErr error
}

func getZstdDecoder() (decoder, error) {
	if d, ok := zstdDecoders.Get().(*zstd.Decoder); ok {
		return &zstdDecoder{d: d}, nil
	}
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(zstdDecoderConcurrency),
		zstd.WithDecoderMaxMemory(zstdMaxWindow),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
	)
	if err != nil {
		return nil, err
	}
	return &zstdDecoder{d: d}, nil
}

// reset starts a stream. zstd.Decoder.Reset does not read from r (it is
// not a bytes.Buffer) and does not fail for a non-nil r; should that ever
// change, the error is reported by the first read.
func (z *zstdDecoder) reset(r io.Reader) {
	z.resetErr = z.d.Reset(r)
}

func (z *zstdDecoder) read(p []byte) (int, error) {
	if z.resetErr != nil {
		return 0, z.resetErr
	}
	return z.d.Read(p)
}

func (z *zstdDecoder) release(reuse bool) {
	if reuse && z.resetErr == nil {
		if z.d.Reset(nil) == nil { // forget the caller's reader
			zstdDecoders.Put(z.d)
			z.d = nil
			return
		}
	}
	z.d.Close() // stops any goroutines of a concurrent decoder
	z.d = nil
}
