package codec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// maxParallelFrame is the largest frame content (as its header declares
// it) that a ParallelReader decodes on its own: a ParallelWriter's frames
// hold ParallelPiece bytes each.
const maxParallelFrame = 4 * ParallelPiece

// frameHeaderMax is the most bytes a zstd frame header takes (magic,
// descriptor, window, dictionary id, content size).
const frameHeaderMax = 4 + 1 + 1 + 4 + 8

// NewParallelReader returns a reader of the bytes decompressed from r, as
// NewReader does, that decodes up to depth zstd frames at once, each while
// holding a slot of lim (frames are independent: a ParallelWriter cuts its
// stream into frames of ParallelPiece bytes). A single large part then
// keeps every core busy when it is restored. The stream is cut into frames
// as it is read, from their headers and block headers; a frame that does
// not declare its content size, or declares more than maxParallelFrame,
// and everything after it, is read as NewReader reads it. Other codecs
// read as with NewReader.
//
// Memory is bounded by depth frames, compressed and decompressed. Close
// must be called; reading need not have reached the end. r may still be
// read by the reader's goroutine after Close, until that read returns;
// r is read to its end before Read returns io.EOF.
func NewParallelReader(r io.Reader, c Codec, lim Limiter, depth int) (io.ReadCloser, error) {
	c, err := c.canonical()
	if err != nil {
		return nil, err
	}
	if c != Zstd {
		return c.NewReader(r)
	}
	depth = max(depth, 1)
	p := &parallelReader{src: source{r: r}, lim: lim, jobs: make(chan *frameJob, depth), stop: make(chan struct{})}
	p.br = bufio.NewReaderSize(&p.src, 64<<10)
	go p.split()
	return p, nil
}

type frameJob struct {
	src, dst []byte
	err      error
	ready    chan struct{}
	rest     io.Reader // instead of a frame: the rest of the stream, read as one
	end      error     // instead of a frame: the end of the stream (io.EOF) or an error
}

type parallelReader struct {
	src  source
	br   *bufio.Reader
	lim  Limiter
	jobs chan *frameJob
	stop chan struct{}

	cur    *frameJob // being read
	off    int       // in cur.dst
	seq    io.ReadCloser
	err    error // sticky
	closed bool
}

var frameDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithDecoderMaxMemory(maxParallelFrame),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
	)
})

var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, ParallelPiece+ParallelPiece/8); return &b }}

func getFrameBuf() []byte { return (*frameBufs.Get().(*[]byte))[:0] }

func putFrameBuf(b []byte) {
	if cap(b) <= maxParallelFrame+maxParallelFrame/8 {
		frameBufs.Put(&b)
	}
}

// send queues j, or reports false when the reader was closed.
func (p *parallelReader) send(j *frameJob) bool {
	select {
	case p.jobs <- j:
		return true
	case <-p.stop:
		return false
	}
}

// split cuts the stream into frames and starts a decode of each.
func (p *parallelReader) split() {
	defer close(p.jobs)
	for n := 0; ; n++ {
		frame, whole, skip, err := p.nextFrame()
		switch {
		case err == io.EOF && n == 0:
			err = fmt.Errorf("%w: %s: empty stream: %w", ErrCorrupt, Zstd, io.ErrUnexpectedEOF)
		case err != nil && p.src.err != nil:
			err = p.src.err // r failed: say what r said
		}
		if err != nil {
			p.send(&frameJob{end: err})
			return
		}
		if skip {
			putFrameBuf(frame)
			continue
		}
		if !whole {
			// The rest is read as one stream, this frame first.
			p.send(&frameJob{rest: io.MultiReader(bytes.NewReader(frame), p.br)})
			return
		}
		j := &frameJob{src: frame, ready: make(chan struct{})}
		if !p.send(j) {
			putFrameBuf(frame)
			return
		}
		go func() {
			defer close(j.ready)
			p.lim <- struct{}{}
			defer func() { <-p.lim }()
			d, err := frameDecoder()
			if err == nil {
				j.dst, err = d.DecodeAll(j.src, getFrameBuf())
			}
			if err != nil {
				j.err = fmt.Errorf("%w: %s: %v", ErrCorrupt, Zstd, err)
			}
			putFrameBuf(j.src)
			j.src = nil
		}()
	}
}

// nextFrame reads the next frame of the stream; whole is false for one
// that is to be decoded as a stream (its bytes so far are returned), skip
// true for a skippable frame. io.EOF at a frame boundary is the end.
func (p *parallelReader) nextFrame() (frame []byte, whole, skip bool, err error) {
	head, perr := p.br.Peek(frameHeaderMax)
	if len(head) == 0 {
		return nil, false, false, perr
	}
	var h zstd.Header
	if err := h.Decode(head); err != nil {
		return nil, false, false, fmt.Errorf("%w: %s: %v", ErrCorrupt, Zstd, err)
	}
	frame = getFrameBuf()
	take := func(n int) error {
		at := len(frame)
		frame = append(frame, make([]byte, n)...)
		if _, err := io.ReadFull(p.br, frame[at:]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if p.src.err != nil {
				return p.src.err
			}
			return fmt.Errorf("%w: %s: frame cut short: %w", ErrCorrupt, Zstd, err)
		}
		return nil
	}
	if h.Skippable {
		return frame, true, true, take(h.HeaderSize + int(h.SkippableSize))
	}
	if err := take(h.HeaderSize); err != nil {
		return nil, false, false, err
	}
	if !h.HasFCS || h.FrameContentSize > maxParallelFrame {
		return frame, false, false, nil
	}
	for {
		if err := take(3); err != nil {
			return nil, false, false, err
		}
		bh := uint32(frame[len(frame)-3]) | uint32(frame[len(frame)-2])<<8 | uint32(frame[len(frame)-1])<<16
		size := int(bh >> 3)
		switch bh >> 1 & 3 {
		case 1: // RLE: one byte repeated
			size = 1
		case 3:
			return nil, false, false, fmt.Errorf("%w: %s: reserved block type", ErrCorrupt, Zstd)
		}
		if size > maxParallelFrame {
			return nil, false, false, fmt.Errorf("%w: %s: block of %d bytes", ErrCorrupt, Zstd, size)
		}
		if err := take(size); err != nil {
			return nil, false, false, err
		}
		if bh&1 == 1 {
			break
		}
	}
	if h.HasCheckSum {
		if err := take(4); err != nil {
			return nil, false, false, err
		}
	}
	return frame, true, false, nil
}

func (p *parallelReader) Read(b []byte) (int, error) {
	if p.closed {
		return 0, errReadClosed
	}
	for p.err == nil {
		if p.seq != nil {
			n, err := p.seq.Read(b)
			if err != nil {
				p.err = err
			}
			return n, err
		}
		if p.cur != nil && p.off < len(p.cur.dst) {
			n := copy(b, p.cur.dst[p.off:])
			p.off += n
			return n, nil
		}
		p.release()
		j, ok := <-p.jobs
		switch {
		case !ok:
			p.err = errors.New("codec: internal error: frames ended without an end")
		case j.end != nil:
			p.err = j.end
		case j.rest != nil:
			seq, err := Zstd.NewReader(j.rest)
			if err != nil {
				p.err = err
			}
			p.seq = seq
		default:
			<-j.ready
			p.cur, p.off = j, 0
			p.err = j.err
		}
	}
	return 0, p.err
}

// release returns the current frame's buffer.
func (p *parallelReader) release() {
	if p.cur != nil {
		putFrameBuf(p.cur.dst)
		p.cur = nil
	}
}

// Close stops the splitting and returns the buffers of the frames it
// reads no more.
func (p *parallelReader) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	p.release()
	close(p.stop)
	if p.seq != nil {
		p.seq.Close()
	}
	go func() {
		for j := range p.jobs {
			if j.ready != nil {
				<-j.ready
				putFrameBuf(j.dst)
			}
		}
	}()
	return nil
}
