package catalog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"runtime"
	"runtime/debug"
	"sync"
)

// pieceSize is the piece of a buffer that one core compresses at a time
// when the codec allows it (codec.Concatenable): a 16 MiB WAL segment is
// 16 frames, compressed two or more at once. Each piece starts with an
// empty window; at 1 MiB the loss is about 0.5% of the size, and the
// compressors touch little memory.
const pieceSize = 1 << 20

// EncodeInMemory reads size bytes of r and returns EncodeBytes of them. A
// source shorter than size is an error.
func EncodeInMemory(h Header, level int, r io.ReaderAt, size int64) (Header, []byte, error) {
	if size < 0 {
		return h, nil, fmt.Errorf("invalid size %d", size)
	}
	src := make([]byte, size)
	if n, err := r.ReadAt(src, 0); n < len(src) {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("read %d bytes, expected %d: %w", n, size, io.ErrUnexpectedEOF)
		}
		return h, nil, err
	}
	return EncodeBytes(h, level, src)
}

// EncodeBytes compresses src while hashing it and returns the whole object
// (envelope header and payload) with the header's Size and SHA256 filled
// in. It is for objects whose compressed form may be held in memory, such
// as WAL segments: one pass over the source instead of a hashing pass and
// a compressing pass, and a stored object of known size.
//
// With a codec whose streams concatenate, src is compressed in pieces on
// as many cores as there are, while another goroutine hashes it.
//
// src may be a memory-mapped file: a fault while reading it (the file was
// truncated under the mapping) is returned as an error, not a crash.
func EncodeBytes(h Header, level int, src []byte) (Header, []byte, error) {
	npieces := (len(src) + pieceSize - 1) / pieceSize
	if !h.Codec.Concatenable() || npieces <= 1 {
		var payload bytes.Buffer
		err := guardFault(func() error {
			_, s, err := compress(&payload, h.Codec, level, bytes.NewReader(src))
			h.SHA256 = s
			return err
		})
		if err != nil {
			return h, nil, err
		}
		h.Size = int64(len(src))
		obj, err := envelope(h, payload.Bytes())
		return h, obj, err
	}
	var (
		out  = make([][]byte, npieces)
		errs = make([]error, npieces+1) // the last is the hasher's
		sum  [sha256.Size]byte
		wg   sync.WaitGroup
	)
	piece := func(i int) []byte { return src[i*pieceSize : min((i+1)*pieceSize, len(src))] }
	wg.Go(func() {
		errs[npieces] = guardFault(func() error { sum = sha256.Sum256(src); return nil })
	})
	next := make(chan int, npieces)
	for i := range npieces {
		next <- i
	}
	close(next)
	for range min(runtime.GOMAXPROCS(0), npieces) {
		wg.Go(func() {
			for i := range next {
				errs[i] = guardFault(func() (err error) {
					out[i], err = h.Codec.AppendStream(make([]byte, 0, pieceSize/4), piece(i), level)
					return err
				})
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return h, nil, err
		}
	}
	h.Size, h.SHA256 = int64(len(src)), hex.EncodeToString(sum[:])
	obj, err := envelope(h, out...)
	return h, obj, err
}

// guardFault runs f, turning a memory fault while it reads (a mapped file
// cut short) into an error.
func guardFault(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			re, ok := r.(runtime.Error)
			if _, fault := r.(interface{ Addr() uintptr }); !ok || !fault {
				panic(r)
			}
			err = fmt.Errorf("the file changed while it was read (%v)", re)
		}
	}()
	return f()
}

// envelope returns the envelope header for h followed by the payload's
// pieces.
func envelope(h Header, payload ...[]byte) ([]byte, error) {
	n := 512
	for _, p := range payload {
		n += len(p)
	}
	obj := bytes.NewBuffer(make([]byte, 0, n))
	if err := WriteHeader(obj, h); err != nil {
		return nil, err
	}
	for _, p := range payload {
		obj.Write(p)
	}
	return obj.Bytes(), nil
}

// GrowingObject encodes an object whose source grows at its end, as a WAL
// segment does while it streams in: each Object call returns the whole
// object for the source so far, hashing and (with a codec whose streams
// concatenate) compressing only what was added since the call before.
type GrowingObject struct {
	h       Header
	level   int
	sum     hash.Hash
	payload []byte
	done    int
}

// NewGrowingObject starts an object with header h (its Size and SHA256
// are filled in by Object).
func NewGrowingObject(h Header, level int) *GrowingObject {
	return &GrowingObject{h: h, level: level, sum: sha256.New()}
}

// Object returns the object for src and its header. src must begin with
// the source of the previous call.
func (g *GrowingObject) Object(src []byte) ([]byte, Header, error) {
	if len(src) < g.done {
		return nil, g.h, fmt.Errorf("the source shrank from %d to %d bytes", g.done, len(src))
	}
	add := src[g.done:]
	g.sum.Write(add)
	if g.h.Codec.Concatenable() {
		if len(add) > 0 || len(g.payload) == 0 { // an empty source is an empty stream
			p, err := g.h.Codec.AppendStream(g.payload, add, g.level)
			if err != nil {
				return nil, g.h, err
			}
			g.payload = p
		}
	} else {
		var b bytes.Buffer
		if _, _, err := compress(&b, g.h.Codec, g.level, bytes.NewReader(src)); err != nil {
			return nil, g.h, err
		}
		g.payload = b.Bytes()
	}
	g.done = len(src)
	h := g.h
	h.Size, h.SHA256 = int64(len(src)), hex.EncodeToString(g.sum.Sum(nil))
	obj, err := envelope(h, g.payload)
	return obj, h, err
}
