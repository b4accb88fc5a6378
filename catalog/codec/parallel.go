package codec

import (
	"errors"
	"io"
	"runtime"
	"sync"
)

// ParallelPiece is the piece of a stream that one core compresses at a
// time in a ParallelWriter.
const ParallelPiece = 1 << 20

// Limiter bounds how many pieces are compressed at once across several
// ParallelWriters: a buffered channel with one slot per core to use.
type Limiter chan struct{}

// NewLimiter returns a Limiter for n compressions at once; n < 1 means
// one per core.
func NewLimiter(n int) Limiter {
	if n < 1 {
		n = runtime.GOMAXPROCS(0)
	}
	return make(Limiter, n)
}

// NewParallelWriter returns a writer that compresses what is written to it
// with c and writes the stream to w. With a codec whose streams
// concatenate (Concatenable), and with S2 (whose chunks do), it cuts the stream into pieces of
// ParallelPiece bytes and compresses up to depth of them at once, each
// while holding a slot of lim, and writes them to w in order: a single
// large file keeps every core busy. Memory is bounded by depth pieces.
// Other codecs compress as one stream, with c.NewWriter.
//
// Close flushes and must be called; it does not close w.
func NewParallelWriter(w io.Writer, c Codec, level int, lim Limiter, depth int) (io.WriteCloser, error) {
	c, err := c.forWriting(level)
	if err != nil {
		return nil, err
	}
	piece := c.AppendStream
	switch {
	case c == S2:
		piece = func(dst, src []byte, level int) ([]byte, error) { return appendS2Body(dst, src, level) }
	case !c.Concatenable():
		return c.NewWriter(w, level)
	}
	if depth < 1 {
		depth = 1
	}
	p := &parallelWriter{c: c, piece: piece, level: level, out: w, lim: lim, jobs: make(chan *pieceJob, depth), done: make(chan struct{})}
	go p.drain()
	return p, nil
}

type pieceJob struct {
	src, dst []byte
	err      error
	ready    chan struct{}
}

type parallelWriter struct {
	c     Codec
	piece func(dst, src []byte, level int) ([]byte, error)
	n     int64 // bytes written
	level int
	out   io.Writer
	lim   Limiter
	jobs  chan *pieceJob
	done  chan struct{}
	buf   []byte
	wrote bool // a piece was submitted

	mu     sync.Mutex
	err    error
	closed bool
}

var pieceBufs = sync.Pool{New: func() any { b := make([]byte, 0, ParallelPiece); return &b }}

func getPiece() []byte { return (*pieceBufs.Get().(*[]byte))[:0] }

func putPiece(b []byte) {
	if cap(b) >= ParallelPiece && cap(b) <= 2*ParallelPiece {
		b = b[:0]
		pieceBufs.Put(&b)
	}
}

func (p *parallelWriter) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *parallelWriter) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *parallelWriter) Write(b []byte) (int, error) {
	if p.closed {
		return 0, errWriteClosed
	}
	if err := p.failed(); err != nil {
		return 0, err
	}
	n := 0
	for len(b) > 0 {
		if p.buf == nil {
			p.buf = getPiece()
		}
		k := copy(p.buf[len(p.buf):ParallelPiece], b)
		p.buf = p.buf[:len(p.buf)+k]
		p.n += int64(k)
		b = b[k:]
		n += k
		if len(p.buf) == ParallelPiece {
			p.submit()
		}
	}
	return n, p.failed()
}

// submit starts compressing the current piece and queues it for output,
// waiting while depth pieces are queued.
func (p *parallelWriter) submit() {
	j := &pieceJob{src: p.buf, ready: make(chan struct{})}
	p.buf = nil
	p.wrote = true
	go func() {
		if p.lim != nil {
			p.lim <- struct{}{}
		}
		j.dst, j.err = p.piece(getPiece(), j.src, p.level)
		if p.lim != nil {
			<-p.lim
		}
		close(j.ready)
	}()
	p.jobs <- j
}

// drain writes the compressed pieces in order.
func (p *parallelWriter) drain() {
	defer close(p.done)
	for j := range p.jobs {
		<-j.ready
		putPiece(j.src)
		err := j.err
		if err == nil && p.failed() == nil {
			_, err = p.out.Write(j.dst)
		}
		putPiece(j.dst)
		if err != nil {
			p.fail(err)
		}
	}
}

func (p *parallelWriter) Close() error {
	if p.closed {
		return errors.New("codec: Close called twice")
	}
	if len(p.buf) > 0 || !p.wrote {
		if p.buf == nil {
			p.buf = getPiece()
		}
		p.submit()
	}
	p.closed = true
	close(p.jobs)
	<-p.done
	if err := p.failed(); err != nil || p.c != S2 {
		return err
	}
	// An S2 stream ends with Cellar's end chunk; an empty one is a
	// whole empty stream.
	end := s2End(p.n)
	if p.n == 0 {
		var err error
		if end, err = p.c.AppendStream(nil, nil, p.level); err != nil {
			return err
		}
	}
	_, err := p.out.Write(end)
	return err
}
