package storagetest

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// Data returns a reader of n pseudo-random bytes determined by seed. It has
// only a Read method, so backends see it as a stream of unknown length.
func Data(seed uint64, n int64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return &onlyReader{r: io.LimitReader(rand.NewChaCha8(s), n)}
}

// Bytes returns the same bytes as Data, held in memory.
func Bytes(seed uint64, n int64) []byte {
	b, err := io.ReadAll(Data(seed, n))
	if err != nil {
		panic(err)
	}
	return b
}

// Digest returns the SHA-256 of Data(seed, n).
func Digest(seed uint64, n int64) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, Data(seed, n)); err != nil {
		panic(err)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

// onlyReader hides every method but Read (Seek, Len, WriterTo...), so that
// a backend cannot learn the size or rewind.
type onlyReader struct{ r io.Reader }

func (o *onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// hashAll reads r to the end and returns its length and SHA-256.
func hashAll(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return n, d, err
}

// FailingReader returns a reader that delivers n bytes of r, then calls
// cut (if not nil; typically a context's cancel) once and fails every
// further Read with err.
func FailingReader(r io.Reader, n int64, cut func(), err error) io.Reader {
	return &cutReader{r: r, n: n, cut: cut, err: err}
}

// cutReader delivers n bytes of r, then calls cut (which typically
// cancels the context) and fails every further Read with err.
type cutReader struct {
	r   io.Reader
	n   int64
	cut func()
	err error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		if c.cut != nil {
			c.cut()
			c.cut = nil
		}
		return 0, c.err
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}
