// Package codec is the compression layer under every object Cellar stores.
//
// The repository format records an object's codec by name, so the names of
// the Codec constants ("zstd", "s2", "gzip", "none") and the stream formats
// behind them are a stable contract: an object written by one version of
// Cellar must be readable by every later one.
//
// Writers and readers stream: neither holds a whole object in memory. Both
// are cheap to create over and over again, because the compressors and
// decompressors behind them are pooled; Close hands them back to the pool.
// Close never closes the io.Writer or io.Reader a stream was made on.
//
// A reader reports a stream that is damaged, truncated or followed by
// garbage with an error wrapping ErrCorrupt; it never panics and never ends
// a damaged stream with a clean io.EOF. (The "none" codec has no framing,
// so it cannot tell a truncated stream from a short one; the object
// envelope records the size and checksum of the original bytes for that.
// Nor is a second whole zstd or gzip stream after the first garbage: those
// formats define a concatenation of streams as one stream.)
package codec

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Codec names a compression format.
type Codec string

// The codecs. Their names are recorded in the repository: never change them.
const (
	// Zstd is a Zstandard stream (RFC 8878): one or more frames, each with
	// a content checksum. (A buffer compressed on several cores at once is
	// a frame per piece.)
	Zstd Codec = "zstd"
	// S2 is an S2 stream (github.com/klauspost/compress/s2): the Snappy
	// framing format with S2 blocks, every chunk CRC-32C checksummed. That
	// framing has no end, so a stream cut at a chunk boundary would read
	// as a shorter valid one; Cellar closes every S2 stream with an
	// end-of-stream chunk, of a "reserved skippable" type that other S2
	// and Snappy-framing readers pass over:
	//
	//	0xCE          chunk type
	//	0x12 0 0      chunk length, 18
	//	"cellar-end"  10 bytes
	//	size          8 bytes, little-endian: the uncompressed size
	//
	// and requires it, last, with the right size.
	S2 Codec = "s2"
	// Gzip is a gzip stream (RFC 1952).
	Gzip Codec = "gzip"
	// None stores the bytes as they are.
	None Codec = "none"
)

// all lists the codecs in the order error messages give them.
var all = [...]Codec{Zstd, S2, Gzip, None}

// ErrCorrupt marks the errors of a reader that met a stream it cannot
// decode: damaged, truncated or followed by something else. An error of the
// underlying io.Reader is returned as it is, not as ErrCorrupt.
var ErrCorrupt = errors.New("corrupt compressed stream")

var (
	errWriteClosed = errors.New("codec: write after Close")
	errReadClosed  = errors.New("codec: read after Close")
)

// Parse returns the codec with the given name, ignoring case.
func Parse(name string) (Codec, error) {
	for _, c := range all {
		if strings.EqualFold(name, string(c)) {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown compression %q (valid: zstd, s2, gzip, none)", name)
}

// canonical returns c itself when it is one of the codecs, otherwise what
// Parse makes of it, so that a name read back as "ZSTD" still works.
func (c Codec) canonical() (Codec, error) {
	switch c {
	case Zstd, S2, Gzip, None:
		return c, nil
	}
	return Parse(string(c))
}

// Extension returns the file-name extension for the codec, without the
// dot: "zst", "s2", "gz", and "" for None (and for a name that is not a
// codec).
func (c Codec) Extension() string {
	c, _ = c.canonical()
	switch c {
	case Zstd:
		return "zst"
	case S2:
		return "s2"
	case Gzip:
		return "gz"
	}
	return ""
}

// maxLevel returns the highest level of c, which is canonical.
func (c Codec) maxLevel() int {
	switch c {
	case Zstd:
		return 22
	case S2:
		return 3
	case Gzip:
		return 9
	}
	return 0
}

// forWriting returns c made canonical, after checking that it is a codec
// and that level is valid for it.
func (c Codec) forWriting(level int) (Codec, error) {
	c, err := c.canonical()
	if err != nil {
		return c, err
	}
	return c, c.checkLevel(level)
}

// checkLevel reports whether level is valid for c, which is canonical.
func (c Codec) checkLevel(level int) error {
	if c == None {
		return nil
	}
	if hi := c.maxLevel(); level < 0 || level > hi {
		return fmt.Errorf("%s compression level %d is out of range (valid: 1..%d, or 0 for the default)", c, level, hi)
	}
	return nil
}

// NewWriter returns a writer that compresses what is written to it onto w,
// at the given level. Level 0 is the codec's default, chosen for speed:
// every WAL segment is compressed as it is archived, and archiving must
// keep up with the server.
//
//	codec  level 0 is      valid levels
//	zstd   1 (fastest)     1..22, zstd's levels, mapped by zstd.EncoderLevelFromZstd
//	                       to klauspost's encoders: 1-2 fastest, 3-5 default,
//	                       6-9 better, 10-22 best
//	s2     1 (default)     1..3: default, better, best
//	gzip   1 (BestSpeed)   1..9, as in gzip
//	none   -               any; the level is ignored
//
// The caller must Close the writer to complete the stream. Close flushes
// the stream but does not close w; a writer abandoned without Close (after
// an error, say) holds no goroutines and is simply not reused.
//
// A writer is for one goroutine; any number of writers can be used at once.
func (c Codec) NewWriter(w io.Writer, level int) (io.WriteCloser, error) {
	c, err := c.forWriting(level)
	if err != nil {
		return nil, err
	}
	switch c {
	case Zstd:
		return newZstdWriter(w, level)
	case S2:
		return newS2Writer(w, level), nil
	case Gzip:
		return newGzipWriter(w, level)
	}
	return &noneWriter{w: w}, nil
}

// encoder is a pooled compressor.
type encoder interface {
	write(p []byte) (int, error)
	// finish completes the stream without closing the underlying writer.
	finish() error
	// release forgets the stream and returns the encoder to its pool.
	release()
}

// writer adapts an encoder to the contract of NewWriter.
type writer struct {
	enc      encoder
	err      error // sticky: a failed stream cannot be completed
	closed   bool
	closeErr error
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errWriteClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.enc.write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// Close completes the stream and returns the encoder to its pool, unless
// the stream failed: then the encoder is dropped, so that nothing of a
// failed stream can reach a later one. Later calls return the same error.
func (w *writer) Close() error {
	if w.closed {
		return w.closeErr
	}
	w.closed = true
	err := w.err
	if err == nil {
		err = w.enc.finish()
	}
	if err == nil {
		w.enc.release()
	}
	w.enc = nil
	w.closeErr = err
	return err
}

// NewReader returns a reader of the bytes decompressed from r. It does not
// read from r yet: errors in the stream, its header included, come from
// Read. Close returns the decompressor to the pool but does not close r;
// reading need not have reached the end.
//
// Read returns io.EOF only after the whole stream checked out (the "none"
// codec excepted, see the package documentation); damage is reported with
// an error wrapping ErrCorrupt, and an error of r is returned as it is.
func (c Codec) NewReader(r io.Reader) (io.ReadCloser, error) {
	c, err := c.canonical()
	if err != nil {
		return nil, err
	}
	switch c {
	case Zstd:
		return newReader(c, r, getZstdDecoder)
	case S2:
		return newReader(c, r, getS2Decoder)
	case Gzip:
		return newReader(c, r, getGzipDecoder)
	}
	return &noneReader{r: r}, nil
}

// decoder is a pooled decompressor.
type decoder interface {
	// reset starts a new stream from r; it must not read from r.
	reset(r io.Reader)
	// read reads decompressed bytes; io.EOF only at the checked end.
	read(p []byte) (int, error)
	// release forgets the stream and, with reuse, returns the decoder to
	// its pool. A decoder that met an error is not reused: errors are rare,
	// and a fresh decoder cannot carry anything over from a bad stream.
	release(reuse bool)
}

// reader adapts a decoder to the contract of NewReader.
type reader struct {
	codec  Codec
	src    source
	dec    decoder
	err    error // sticky
	closed bool
}

func newReader(c Codec, r io.Reader, get func() (decoder, error)) (io.ReadCloser, error) {
	dec, err := get()
	if err != nil {
		return nil, err
	}
	rd := &reader{codec: c, src: source{r: r}, dec: dec}
	dec.reset(&rd.src)
	return rd, nil
}

func (r *reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errReadClosed
	}
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.read(p)
	switch {
	case err == nil:
		return n, nil
	case r.src.err != nil:
		// r failed: that is not corruption; say what r said.
		err = r.src.err
	case err == io.EOF:
		// Every stream a writer makes has at least a header, so an empty
		// one is an object cut short at the very start.
		if r.src.n == 0 {
			err = fmt.Errorf("%w: %s: empty stream: %w", ErrCorrupt, r.codec, io.ErrUnexpectedEOF)
		}
	case !errors.Is(err, ErrCorrupt):
		err = fmt.Errorf("%w: %s: %w", ErrCorrupt, r.codec, err)
	}
	r.err = err
	return n, err
}

// Close returns the decompressor to its pool; it never closes the
// underlying reader. Closing twice is harmless.
func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.dec.release(r.err == nil || r.err == io.EOF)
	r.dec = nil
	r.src = source{}
	return nil
}

// source is the compressed input as a decoder sees it: it counts the bytes
// and remembers the first error of the underlying reader other than io.EOF,
// so that such an error is reported as itself rather than as corruption.
type source struct {
	r   io.Reader
	n   int64
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// noneWriter passes bytes through; Close does not close w.
type noneWriter struct {
	w      io.Writer
	closed bool
}

func (w *noneWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errWriteClosed
	}
	return w.w.Write(p)
}

func (w *noneWriter) Close() error {
	w.closed = true
	return nil
}

// noneReader passes bytes through; Close does not close r.
type noneReader struct {
	r      io.Reader
	closed bool
}

func (r *noneReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errReadClosed
	}
	return r.r.Read(p)
}

func (r *noneReader) Close() error {
	r.closed = true
	return nil
}
