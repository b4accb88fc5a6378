package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/s2"
)

// The end-of-stream chunk that closes every S2 stream Cellar writes; the
// documentation of S2 gives its layout. A reader requires it after the last
// data chunk, with the uncompressed size of the stream, and nothing after
// it, so that a stream cut anywhere, even at a chunk boundary or to
// nothing, is an error. Other S2 readers (s2d) skip it.
const (
	s2EndChunk = 0xce
	s2EndMagic = "cellar-end"
	s2EndLen   = len(s2EndMagic) + 8
)

// s2Writers pools writers by level (1..3); the level cannot be changed on
// a pooled writer.
var s2Writers [4]sync.Pool

type s2Encoder struct {
	w     *s2.Writer
	level int
	n     int64 // uncompressed bytes written
}

func newS2Writer(w io.Writer, level int) io.WriteCloser {
	if level == 0 {
		level = 1
	}
	if e, ok := s2Writers[level].Get().(*s2.Writer); ok {
		e.Reset(w)
		return &writer{enc: &s2Encoder{w: e, level: level}}
	}
	// Concurrency 1 encodes on the calling goroutine: Cellar already runs
	// one stream per file in parallel, and a concurrent s2.Writer keeps a
	// goroutine until Close, which a writer abandoned after an error would
	// leak.
	opts := []s2.WriterOption{s2.WriterConcurrency(1)}
	switch level {
	case 2:
		opts = append(opts, s2.WriterBetterCompression())
	case 3:
		opts = append(opts, s2.WriterBestCompression())
	}
	return &writer{enc: &s2Encoder{w: s2.NewWriter(w, opts...), level: level}}
}

func (e *s2Encoder) write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	e.n += int64(n)
	return n, err
}

func (e *s2Encoder) finish() error {
	// Flush first: AddSkippableBlock does not, and the end-of-stream
	// chunk must follow every data chunk.
	if err := e.w.Flush(); err != nil {
		return err
	}
	var end [s2EndLen]byte
	copy(end[:], s2EndMagic)
	binary.LittleEndian.PutUint64(end[len(s2EndMagic):], uint64(e.n))
	// This also writes the stream identifier of an empty stream.
	if err := e.w.AddSkippableBlock(s2EndChunk, end[:]); err != nil {
		return err
	}
	return e.w.Close()
}

func (e *s2Encoder) release() {
	e.w.Reset(nil) // forget the caller's writer
	s2Writers[e.level].Put(e.w)
	e.w = nil
}

var s2Decoders sync.Pool

type s2Decoder struct {
	r      *s2.Reader
	src    countingReader // what r reads
	n      int64          // uncompressed bytes read
	end    bool           // the end-of-stream chunk was read
	endOff int64          // where it ended in src
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func getS2Decoder() (decoder, error) {
	if d, ok := s2Decoders.Get().(*s2Decoder); ok {
		return d, nil
	}
	d := new(s2Decoder)
	// The default maximum block size, 4 MiB, bounds a reader's buffers.
	d.r = s2.NewReader(nil, s2.ReaderSkippableCB(s2EndChunk, d.readEnd))
	return d, nil
}

func (d *s2Decoder) reset(r io.Reader) {
	d.src = countingReader{r: r}
	d.r.Reset(&d.src)
	d.n = 0
	d.end = false
	d.endOff = 0
}

func (d *s2Decoder) read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if n > 0 && d.end {
		return 0, fmt.Errorf("%w: s2: data after the end-of-stream chunk", ErrCorrupt)
	}
	d.n += int64(n)
	if err == io.EOF {
		if !d.end {
			return n, fmt.Errorf("%w: s2: truncated (no end-of-stream chunk after %d bytes): %w", ErrCorrupt, d.n, io.ErrUnexpectedEOF)
		}
		// s2.Reader reads whole chunks and no further, so this catches
		// any chunk after the end, even one without data.
		if extra := d.src.n - d.endOff; extra > 0 {
			return n, fmt.Errorf("%w: s2: %d bytes after the end-of-stream chunk", ErrCorrupt, extra)
		}
	}
	return n, err
}

// readEnd checks the end-of-stream chunk. s2.Reader calls it only once the
// bytes of every chunk before it have been read, so d.n is the size of the
// stream so far.
func (d *s2Decoder) readEnd(r io.Reader) error {
	if d.end {
		return errors.New("a second end-of-stream chunk")
	}
	var b [s2EndLen + 1]byte
	n, _ := io.ReadFull(r, b[:])
	if n != s2EndLen || !bytes.Equal(b[:len(s2EndMagic)], []byte(s2EndMagic)) {
		return errors.New("malformed end-of-stream chunk")
	}
	if size := binary.LittleEndian.Uint64(b[len(s2EndMagic):]); size != uint64(d.n) {
		return fmt.Errorf("the stream has %d bytes, its end-of-stream chunk records %d", d.n, size)
	}
	d.end = true
	d.endOff = d.src.n
	return nil
}

func (d *s2Decoder) release(reuse bool) {
	d.r.Reset(nil) // forget the caller's reader
	d.src = countingReader{}
	if reuse {
		s2Decoders.Put(d)
	}
}

// appendS2Body appends src to dst as S2 chunks, after a stream identifier
// and without the end-of-stream chunk: pieces made so follow one another in
// a stream that s2End closes.
func appendS2Body(dst, src []byte, level int) ([]byte, error) {
	if len(src) == 0 {
		return dst, nil
	}
	buf := bytes.NewBuffer(dst)
	enc := newS2Writer(buf, level).(*writer).enc.(*s2Encoder)
	defer enc.release()
	if _, err := enc.w.Write(src); err != nil {
		return dst, err
	}
	if err := enc.w.Flush(); err != nil {
		return dst, err
	}
	return buf.Bytes(), nil
}

// s2End returns the end-of-stream chunk of a stream of n bytes.
func s2End(n int64) []byte {
	out := make([]byte, 4, 4+s2EndLen)
	out[0], out[1] = s2EndChunk, byte(s2EndLen)
	out = append(out, s2EndMagic...)
	return binary.LittleEndian.AppendUint64(out, uint64(n))
}
