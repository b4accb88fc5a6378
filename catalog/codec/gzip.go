package codec

import (
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// gzipWriters pools writers by level (1..9); the level cannot be changed
// on a pooled writer.
var gzipWriters [gzip.BestCompression + 1]sync.Pool

type gzipEncoder struct {
	w     *gzip.Writer
	level int
}

func newGzipWriter(w io.Writer, level int) (io.WriteCloser, error) {
	if level == 0 {
		level = gzip.BestSpeed
	}
	if z, ok := gzipWriters[level].Get().(*gzip.Writer); ok {
		z.Reset(w)
		return &writer{enc: &gzipEncoder{w: z, level: level}}, nil
	}
	z, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return nil, err
	}
	return &writer{enc: &gzipEncoder{w: z, level: level}}, nil
}

func (e *gzipEncoder) write(p []byte) (int, error) { return e.w.Write(p) }

// finish writes the gzip trailer; gzip.Writer.Close does not close the
// underlying writer.
func (e *gzipEncoder) finish() error { return e.w.Close() }

func (e *gzipEncoder) release() {
	e.w.Reset(nil) // forget the caller's writer
	gzipWriters[e.level].Put(e.w)
	e.w = nil
}

var gzipDecoders sync.Pool

// gzipDecoder reads the gzip header on the first read rather than in
// reset, which gzip.Reader.Reset does, so that NewReader never reads.
type gzipDecoder struct {
	z       gzip.Reader
	r       io.Reader
	started bool
}

func getGzipDecoder() (decoder, error) {
	if d, ok := gzipDecoders.Get().(*gzipDecoder); ok {
		return d, nil
	}
	return new(gzipDecoder), nil
}

func (d *gzipDecoder) reset(r io.Reader) {
	d.r = r
	d.started = false
}

func (d *gzipDecoder) read(p []byte) (int, error) {
	if !d.started {
		d.started = true
		// Reset reads the header: io.EOF means an empty stream, which the
		// caller reports as truncated. The reader stays in multistream
		// mode, so that anything after the first member must be another
		// valid member, not garbage.
		if err := d.z.Reset(d.r); err != nil {
			return 0, err
		}
	}
	return d.z.Read(p)
}

func (d *gzipDecoder) release(reuse bool) {
	// gzip.Reader cannot be reset to nothing; d.r is the reader's source,
	// which forgets the caller's reader on Close.
	d.r = nil
	if reuse {
		gzipDecoders.Put(d)
	}
}
