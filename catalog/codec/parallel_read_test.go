package codec

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud/storagetest"
)

// readOdd reads r to its end in reads of random sizes.
func readOdd(r io.Reader, rng *rand.Rand) ([]byte, error) {
	var got []byte
	buf := make([]byte, 200000)
	for {
		n, err := r.Read(buf[:1+rng.IntN(len(buf))])
		got = append(got, buf[:n]...)
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// parallelStream is a zstd stream of src as a ParallelWriter writes it.
func parallelStream(t *testing.T, src []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewParallelWriter(&out, Zstd, 0, NewLimiter(0), 2)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(src)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestParallelReaderStreams reads, frame by frame, streams that are not
// a ParallelWriter's: one frame of unknown size (a stream encoder's), a
// frame of a ParallelWriter's stream followed by such a frame, and
// skippable frames between; each reads as the zstd stream reader reads it.
func TestParallelReaderStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	src := storagetest.Bytes(5, 5*ParallelPiece/2)
	var whole bytes.Buffer
	w, _ := Zstd.NewWriter(&whole, 0)
	w.Write(src)
	w.Close()
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 'a', 'b', 'c'}
	parallel := parallelStream(t, src)
	cases := map[string]struct {
		stream []byte
		want   []byte
	}{
		"a stream encoder's":          {whole.Bytes(), src},
		"pieces then a stream":        {append(append([]byte{}, parallel...), whole.Bytes()...), append(append([]byte{}, src...), src...)},
		"skippable frames among them": {append(append(append([]byte{}, skippable...), parallel...), skippable...), src},
		"a stream then pieces":        {append(append([]byte{}, whole.Bytes()...), parallel...), append(append([]byte{}, src...), src...)},
	}
	for name, c := range cases {
		r, _ := NewParallelReader(bytes.NewReader(c.stream), Zstd, NewLimiter(2), 3)
		got, err := readOdd(r, rng)
		r.Close()
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("%s: %d bytes, equal %v, %v", name, len(got), bytes.Equal(got, c.want), err)
		}
	}
}

// TestParallelReaderDamage reports a damaged, cut or extended stream as
// ErrCorrupt, an empty one too, and the source's own error as it is.
func TestParallelReaderDamage(t *testing.T) {
	src := storagetest.Bytes(7, 4*ParallelPiece)
	stream := parallelStream(t, src)
	flipped := append([]byte{}, stream...)
	flipped[len(flipped)/2] ^= 0x40
	cases := map[string][]byte{
		"a byte flipped":        flipped,
		"cut in a frame":        stream[:len(stream)-100],
		"cut in a frame header": stream[:len(parallelStream(t, src[:ParallelPiece]))+3],
		"followed by garbage":   append(append([]byte{}, stream...), "garbage"...),
		"empty":                 nil,
		"not zstd":              []byte(strings.Repeat("not a zstd stream ", 10)),
	}
	for name, b := range cases {
		r, _ := NewParallelReader(bytes.NewReader(b), Zstd, NewLimiter(0), 2)
		_, err := io.ReadAll(r)
		r.Close()
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	errNet := errors.New("connection reset")
	r, _ := NewParallelReader(io.MultiReader(bytes.NewReader(stream[:len(stream)/2]), &failingReader{err: errNet}), Zstd, NewLimiter(0), 2)
	_, err := io.ReadAll(r)
	r.Close()
	if !errors.Is(err, errNet) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("a failing source: %v, want its error and not ErrCorrupt", err)
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// TestParallelReaderClose stops its goroutines when closed before the
// end.
func TestParallelReaderClose(t *testing.T) {
	stream := parallelStream(t, storagetest.Bytes(9, 16*ParallelPiece))
	before := runtime.NumGoroutine()
	for range 20 {
		r, _ := NewParallelReader(bytes.NewReader(stream), Zstd, NewLimiter(0), 3)
		buf := make([]byte, 1000)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if _, err := r.Read(buf); err == nil {
			t.Fatal("a read after Close succeeded")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines left after Close, %d before", n, before)
	}
}
