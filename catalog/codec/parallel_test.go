package codec

import (
	"bytes"
	"errors"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"io"
	"math/rand/v2"
	"os/exec"
	"testing"
)

// TestParallelWriterRoundTrip writes streams of awkward sizes in awkward
// writes, with every codec, and reads them back whole.
func TestParallelWriterRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	mixed := make([]byte, 3*ParallelPiece+12345)
	for i := range mixed {
		if i%7 == 0 {
			mixed[i] = byte(rng.IntN(256))
		} else {
			mixed[i] = byte(i / 100)
		}
	}
	lim := NewLimiter(3)
	for _, c := range all {
		for _, n := range []int{0, 1, ParallelPiece - 1, ParallelPiece, ParallelPiece + 1, len(mixed)} {
			var out bytes.Buffer
			w, err := NewParallelWriter(&out, c, 0, lim, 2)
			if err != nil {
				t.Fatal(err)
			}
			src := mixed[:n]
			for off := 0; off < len(src); {
				k := min(len(src)-off, 1+rng.IntN(300000))
				if _, err := w.Write(src[off : off+k]); err != nil {
					t.Fatal(err)
				}
				off += k
			}
			if err := w.Close(); err != nil {
				t.Fatalf("%s %d: close: %v", c, n, err)
			}
			stream := out.Bytes()
			r, err := c.NewReader(bytes.NewReader(stream))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, src) {
				t.Fatalf("%s, %d bytes: read back %d bytes, equal %v, %v", c, n, len(got), bytes.Equal(got, src), err)
			}
			// And frame by frame in parallel, in reads of odd sizes.
			pr, err := NewParallelReader(bytes.NewReader(stream), c, lim, 2)
			if err != nil {
				t.Fatal(err)
			}
			got, err = readOdd(pr, rng)
			pr.Close()
			if err != nil || !bytes.Equal(got, src) {
				t.Fatalf("%s, %d bytes: read back in parallel %d bytes, equal %v, %v", c, n, len(got), bytes.Equal(got, src), err)
			}
		}
	}
}

// TestParallelWriterStandardTool checks that a zstd stream of several
// pieces decodes with the zstd command-line tool, as a part must.
func TestParallelWriterStandardTool(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Fatal("the zstd command is needed (make installs it)")
	}
	src := bytes.Repeat([]byte("cellar parallel pieces "), 200000)
	var out bytes.Buffer
	w, _ := NewParallelWriter(&out, Zstd, 0, NewLimiter(0), 4)
	w.Write(src)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("zstd", "-d", "-q", "-c")
	cmd.Stdin = &out
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, src) {
		t.Fatalf("zstd -d: %d bytes, equal %v, %v", len(got), bytes.Equal(got, src), err)
	}
}

// TestParallelWriterError returns the destination's error, from Write or
// at the latest from Close.
func TestParallelWriterError(t *testing.T) {
	src := storagetest.Bytes(3, 8*ParallelPiece)
	w, _ := NewParallelWriter(&failingWriter{limit: ParallelPiece}, Zstd, 0, NewLimiter(0), 2)
	_, werr := w.Write(src)
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("a failing destination went unnoticed")
	}
	for _, err := range []error{werr, cerr} {
		if err != nil && !errors.Is(err, errDiskFull) {
			t.Fatalf("error %v, want the destination's", err)
		}
	}
}
