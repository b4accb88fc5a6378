package codec

import (
	"bytes"
	"os/exec"
	"sync"
	"testing"
)

func TestConcatenable(t *testing.T) {
	want := map[Codec]bool{Zstd: true, S2: false, Gzip: true, None: true, "ZSTD": true, "lz4": false}
	for c, ok := range want {
		if got := c.Concatenable(); got != ok {
			t.Errorf("%q.Concatenable() = %v, want %v", c, got, ok)
		}
	}
}

// TestAppendStream checks that pieces compressed one by one with
// AppendStream, one after another, read back as the whole with the
// ordinary reader, and that each piece is a stream of its own.
func TestAppendStream(t *testing.T) {
	data := walLike(5<<20+333, 21)
	cuts := []int{0, 1, 1 << 20, 3<<20 + 7, len(data)}
	for _, c := range all {
		if !c.Concatenable() {
			continue
		}
		for _, level := range []int{0, c.maxLevel()} {
			var comp []byte
			prefix := []byte("kept")
			comp = append(comp, prefix...)
			for i := 1; i < len(cuts); i++ {
				piece := data[cuts[i-1]:cuts[i]]
				before := len(comp)
				var err error
				comp, err = c.AppendStream(comp, piece, level)
				if err != nil {
					t.Fatalf("%s level %d: %v", c, level, err)
				}
				got, err := decompress(c, comp[before:])
				if err != nil || !bytes.Equal(got, piece) {
					t.Fatalf("%s level %d: piece %d alone: %d bytes, %v; want %d", c, level, i, len(got), err, len(piece))
				}
			}
			if !bytes.HasPrefix(comp, prefix) {
				t.Fatalf("%s: AppendStream overwrote dst", c)
			}
			got, err := decompress(c, comp[len(prefix):])
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s level %d: concatenation: %d bytes, %v; want %d", c, level, len(got), err, len(data))
			}
		}
	}
	if _, err := Zstd.AppendStream(nil, data, 23); err == nil {
		t.Error("AppendStream accepted zstd level 23")
	}
	if _, err := Codec("lz4").AppendStream(nil, data, 0); err == nil {
		t.Error("AppendStream accepted an unknown codec")
	}
}

// TestAppendStreamConcurrent compresses pieces on many goroutines at
// once, as EncodeBytes does.
func TestAppendStreamConcurrent(t *testing.T) {
	data := walLike(1<<20, 5)
	want, err := Zstd.AppendStream(nil, data, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 4 {
				got, err := Zstd.AppendStream(nil, data, 0)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("concurrent AppendStream: %d bytes, %v; want the same %d bytes", len(got), err, len(want))
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestAppendStreamStockTool checks that the zstd command-line tool reads
// a concatenation of frames as the whole, as users restoring by hand
// would read it.
func TestAppendStreamStockTool(t *testing.T) {
	zstd, err := exec.LookPath("zstd")
	if err != nil {
		t.Fatal("the zstd command is missing (make test installs it)")
	}
	data := walLike(3<<20, 8)
	var comp []byte
	for i := 0; i < len(data); i += 1 << 20 {
		comp, _ = Zstd.AppendStream(comp, data[i:min(i+1<<20, len(data))], 0)
	}
	cmd := exec.Command(zstd, "-d", "-c", "-q")
	cmd.Stdin = bytes.NewReader(comp)
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("zstd -d: %d bytes, %v; want %d", len(got), err, len(data))
	}
}
