// Package storagetest is the conformance suite that every cloud.Storage
// backend runs, against the real server it talks to (MinIO,
// fake-gcs-server, Azurite) or the local filesystem. A behaviour is
// specified here once and proven against every backend.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

// Options tell the suite what the backend under test was configured with.
type Options struct {
	// PartSize and Concurrency are the upload buffer size and the number
	// of parts in flight; the memory test asserts that uploading an
	// unsized stream holds at most PartSize*Concurrency + 64 MiB of heap.
	PartSize    int64
	Concurrency int
}

// Run runs the conformance suite. newStorage returns a storage rooted at an
// empty location (a fresh prefix or bucket) that the test may fill.
func Run(t *testing.T, newStorage func(t *testing.T) cloud.Storage, opts Options) {
	// Backends run behind the wrapper that validates keys for all of
	// them, as they do in cellar.
	s := cloud.Checked(newStorage(t))
	t.Cleanup(func() { _ = s.Close() })
	for _, p := range Properties {
		t.Run(p.Name, func(t *testing.T) { p.Check(t, s, opts) })
	}
}

// Properties are the suite's checks, one function each, in the order Run
// runs them against one storage. A backend's test may run one alone.
var Properties = []struct {
	Name  string
	Check func(t *testing.T, s cloud.Storage, opts Options)
}{
	{"RoundTrip", CheckRoundTrip},
	{"Overwrite", CheckOverwrite},
	{"Missing", CheckMissing},
	{"DeleteAll", CheckDeleteAll},
	{"ListEmpty", CheckListEmpty},
	{"ListPaged", CheckListPaged},
	{"Create", CheckCreate},
	{"CreateRace", CheckCreateRace},
	{"CancelledPut", CheckCancelledPut},
	{"FailedReader", CheckFailedReader},
	{"ConcurrentPuts", CheckConcurrentPuts},
	{"GetCancelled", CheckGetCancelled},
	{"BadKey", CheckBadKey},
}

// CheckRoundTrip: objects of 0 bytes to 200 MiB, sized or not, come back whole and go.
func CheckRoundTrip(t *testing.T, s cloud.Storage, opts Options) {
	for _, n := range []int64{0, 1, 5<<20 + 1, 200 << 20} {
		for _, sized := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/sized=%v", n, sized), func(t *testing.T) {
				ctx := context.Background()
				key := fmt.Sprintf("roundtrip/%d-%v.bin", n, sized)
				size := cloud.SizeUnknown
				if sized {
					size = n
				}
				if err := s.Put(ctx, key, Data(uint64(n), n), size); err != nil {
					t.Fatalf("Put %d bytes: %v", n, err)
				}
				expectObject(t, s, key, n, Digest(uint64(n), n))
				if err := s.Delete(ctx, key); err != nil {
					t.Fatalf("Delete: %v", err)
				}
				expectMissing(t, s, key)
			})
		}
	}
}

// CheckOverwrite: Put replaces an object.
func CheckOverwrite(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	key := "overwrite/obj"
	mustPut(t, s, key, []byte("first version, longer than the second"))
	mustPut(t, s, key, []byte("second"))
	if got := mustGet(t, s, key); string(got) != "second" {
		t.Fatalf("after overwrite Get = %q, want %q", got, "second")
	}
	_ = s.Delete(ctx, key)
}

// CheckMissing: a missing object is ErrNotExist; deleting one is no error, twice neither.
func CheckMissing(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	expectMissing(t, s, "missing/never-written")
	if err := s.Delete(ctx, "missing/never-written"); err != nil {
		t.Fatalf("Delete of a missing key = %v, want nil", err)
	}
	mustPut(t, s, "missing/gone", []byte("x"))
	if err := s.Delete(ctx, "missing/gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	expectMissing(t, s, "missing/gone")
	if err := s.Delete(ctx, "missing/gone"); err != nil {
		t.Fatalf("second Delete = %v, want nil", err)
	}
}

// CheckDeleteAll: cloud.DeleteAll removes many keys, present or not, and nothing beside them.
func CheckDeleteAll(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	var keys []string
	for i := range 1203 {
		k := fmt.Sprintf("deleteall/%05d", i)
		if i%2 == 0 { // half of them exist; the others are missing
			if err := s.Put(ctx, k, strings.NewReader("x"), 1); err != nil {
				t.Fatal(err)
			}
		}
		keys = append(keys, k)
	}
	if err := s.Put(ctx, "deleteall-not/kept", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := cloud.DeleteAll(ctx, s, keys); err != nil {
		t.Fatalf("DeleteAll: %v", err)
	}
	left := 0
	if err := s.List(ctx, "deleteall", func(o cloud.ObjectInfo) error { left++; return nil }); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Fatalf("%d objects left after DeleteAll, want only deleteall-not/kept", left)
	}
}

// CheckListEmpty: listing an empty prefix gives nothing.
func CheckListEmpty(t *testing.T, s cloud.Storage, opts Options) {
	got := list(t, s, "nothing-here/")
	if len(got) != 0 {
		t.Fatalf("List of an empty prefix gave %d objects: %v", len(got), got)
	}
}

// CheckListPaged: List pages through thousands of objects in key order,
// stays inside its prefix, and stops at the callback's error.
func CheckListPaged(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	const n = 2500
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("many/%02d/obj-%05d", i%7, i)
	}
	// Neighbours that share the textual prefix but are outside it.
	mustPut(t, s, "many-not/obj", []byte("x"))
	mustPut(t, s, "man/obj", []byte("x"))
	parallel(t, 16, n, func(i int) error {
		return s.Put(ctx, want[i], bytes.NewReader([]byte(want[i])), int64(len(want[i])))
	})
	sort.Strings(want)
	var got []cloud.ObjectInfo
	if err := s.List(ctx, "many/", func(o cloud.ObjectInfo) error {
		got = append(got, o)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(got) != n {
		t.Fatalf("List gave %d objects, want %d", len(got), n)
	}
	for i, o := range got {
		if o.Key != want[i] {
			t.Fatalf("List[%d] = %q, want %q (order or content wrong)", i, o.Key, want[i])
		}
		if o.Size != int64(len(want[i])) {
			t.Fatalf("List[%d] %s size %d, want %d", i, o.Key, o.Size, len(want[i]))
		}
		if o.ModTime.IsZero() {
			t.Fatalf("List[%d] %s has no modification time", i, o.Key)
		}
	}
	// A sub-prefix lists only its own part.
	sub := list(t, s, "many/03/")
	if len(sub) != n/7+1 && len(sub) != n/7 {
		t.Fatalf("List many/03/ gave %d objects, want about %d", len(sub), n/7)
	}
	// Stopping early returns the callback's error.
	stop := errors.New("stop")
	count := 0
	err := s.List(ctx, "many/", func(cloud.ObjectInfo) error {
		count++
		if count == 10 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || count != 10 {
		t.Fatalf("List stopped by callback: err=%v after %d calls, want %v after 10", err, count, stop)
	}
	parallel(t, 16, n, func(i int) error { return s.Delete(ctx, want[i]) })
	_ = s.Delete(ctx, "many-not/obj")
	_ = s.Delete(ctx, "man/obj")
	if left := list(t, s, "many/"); len(left) != 0 {
		t.Fatalf("%d objects left after deleting all", len(left))
	}
}

// CheckCreate: a conditional create stores once and then refuses with ErrExist.
func CheckCreate(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	for _, n := range []int64{0, 1000, 3*opts.PartSize + 17} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			key := fmt.Sprintf("create/%d", n)
			if err := cloud.Create(ctx, s, key, Data(uint64(n), n), cloud.SizeUnknown); err != nil {
				t.Fatalf("first Create: %v", err)
			}
			err := cloud.Create(ctx, s, key, Data(uint64(n)+1, n+5), cloud.SizeUnknown)
			if !errors.Is(err, cloud.ErrExist) {
				t.Fatalf("second Create = %v, want ErrExist", err)
			}
			expectObject(t, s, key, n, Digest(uint64(n), n))
			_ = s.Delete(ctx, key)
		})
	}
}

// CheckCreateRace: of racing conditional creates, exactly one wins.
func CheckCreateRace(t *testing.T, s cloud.Storage, opts Options) {
	RaceCreates(t, s, "race/obj", 8, 64<<10)
	_ = s.Delete(context.Background(), "race/obj")
}

// CheckCancelledPut: a Put whose context is cancelled leaves no object.
func CheckCancelledPut(t *testing.T, s cloud.Storage, opts Options) {
	for _, n := range []int64{100 << 10, 2*opts.PartSize + 1000} {
		for _, create := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/create=%v", n, create), func(t *testing.T) {
				key := fmt.Sprintf("cancelled/%d-%v", n, create)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				r := &cutReader{r: Data(7, n*2), n: n, cut: cancel, err: context.Canceled}
				var err error
				if create {
					err = cloud.Create(ctx, s, key, r, cloud.SizeUnknown)
				} else {
					err = s.Put(ctx, key, r, cloud.SizeUnknown)
				}
				if err == nil {
					t.Fatalf("Put cancelled after %d bytes succeeded", n)
				}
				expectMissing(t, s, key)
				if got := list(t, s, "cancelled/"); len(got) != 0 {
					t.Fatalf("cancelled Put left %v visible", got)
				}
			})
		}
	}
}

// CheckFailedReader: a Put whose reader fails leaves no object.
func CheckFailedReader(t *testing.T, s cloud.Storage, opts Options) {
	boom := errors.New("disk read error")
	r := &cutReader{r: Data(8, 1<<20), n: 300 << 10, err: boom}
	err := s.Put(context.Background(), "failed/obj", r, cloud.SizeUnknown)
	if err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	expectMissing(t, s, "failed/obj")
}

// CheckConcurrentPuts: Puts to many keys at once all land.
func CheckConcurrentPuts(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	const n = 8
	const size = 3<<20 + 5
	parallel(t, n, n, func(i int) error {
		return s.Put(ctx, fmt.Sprintf("concurrent/%d", i), Data(uint64(100+i), size), cloud.SizeUnknown)
	})
	for i := range n {
		key := fmt.Sprintf("concurrent/%d", i)
		expectObject(t, s, key, size, Digest(uint64(100+i), size))
		_ = s.Delete(ctx, key)
	}
}

// CheckGetCancelled: reading a Get whose context is cancelled stops with an error.
func CheckGetCancelled(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	const size = 20 << 20
	if err := s.Put(ctx, "getcancel/obj", Data(9, size), size); err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithCancel(ctx)
	rc, err := s.Get(gctx, "getcancel/obj")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.Copy(io.Discard, rc)
	_ = rc.Close()
	if err == nil {
		t.Fatal("reading a Get whose context was cancelled ran to the end without error")
	}
	_ = s.Delete(ctx, "getcancel/obj")
}

// CheckBadKey: malformed keys are refused.
func CheckBadKey(t *testing.T, s cloud.Storage, opts Options) {
	ctx := context.Background()
	for _, key := range []string{"", "/abs", "a/../b", "dir/"} {
		if err := s.Put(ctx, key, bytes.NewReader(nil), 0); err == nil {
			t.Errorf("Put(%q) accepted a malformed key", key)
		}
	}
}

// RunMemoryBound uploads 1 GiB from a stream of unknown length and asserts
// that the heap never grows by more than PartSize*Concurrency + 64 MiB.
func RunMemoryBound(t *testing.T, s cloud.Storage, opts Options) {
	runMemoryBound(t, s, opts, "heap", func() (uint64, error) { return heapBytes(), nil })
}

// RunMemoryBoundRSS is RunMemoryBound for the process's resident set
// instead of the heap, for a backend whose SDK buffers data outside the Go
// heap (in memory-mapped buffers), which the heap figure does not see. It
// skips where the resident set cannot be read (it comes from /proc).
func RunMemoryBoundRSS(t *testing.T, s cloud.Storage, opts Options) {
	if _, err := rssBytes(); err != nil {
		t.Skipf("no resident set size on this system: %v", err)
	}
	runMemoryBound(t, s, opts, "resident set", rssBytes)
}

// runMemoryBound uploads 1 GiB from a stream of unknown length, sampling
// a memory figure (what names it) every 5 ms, and asserts that it never
// grows by more than PartSize*Concurrency + 64 MiB.
func runMemoryBound(t *testing.T, s cloud.Storage, opts Options, what string, sample func() (uint64, error)) {
	const size = 1 << 30
	bound := uint64(opts.PartSize)*uint64(opts.Concurrency) + 64<<20
	// A low GC target so that the sampled figure is close to what is live,
	// not garbage waiting for a collection.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	base, _ := sample()
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if m, err := sample(); err == nil && m > peak.Load() {
				peak.Store(m)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	ctx := context.Background()
	err := s.Put(ctx, "memory/1GiB", Data(1, size), cloud.SizeUnknown)
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatalf("Put 1 GiB: %v", err)
	}
	grew := uint64(0)
	if p := peak.Load(); p > base {
		grew = p - base
	}
	t.Logf("uploading 1 GiB from an unsized stream grew the %s by %d MiB (bound %d MiB)", what, grew>>20, bound>>20)
	if grew > bound {
		t.Errorf("the %s grew by %d MiB while uploading 1 GiB, bound is part size x concurrency + 64 MiB = %d MiB", what, grew>>20, bound>>20)
	}
	info, err := s.Stat(ctx, "memory/1GiB")
	if err != nil || info.Size != size {
		t.Fatalf("Stat after 1 GiB upload = %+v, %v", info, err)
	}
	_ = s.Delete(ctx, "memory/1GiB")
}

func heapBytes() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// rssBytes returns the resident set size of this process (Linux).
func rssBytes() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}

// Bench reports upload and download throughput and allocations for a
// 256 MiB object.
func Bench(b *testing.B, s cloud.Storage) {
	const size = 256 << 20
	ctx := context.Background()
	data := Bytes(42, size)
	key := fmt.Sprintf("bench/%d", rand.Uint64())
	b.Run("Upload256MiB", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Put(ctx, key, &onlyReader{r: bytes.NewReader(data)}, cloud.SizeUnknown); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Download256MiB", func(b *testing.B) {
		if err := s.Put(ctx, key, bytes.NewReader(data), size); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		b.ReportAllocs()
		buf := make([]byte, 1<<20)
		for b.Loop() {
			rc, err := s.Get(ctx, key)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(io.Discard, rc, buf)
			_ = rc.Close()
			if err != nil || n != size {
				b.Fatalf("read %d bytes, %v", n, err)
			}
		}
	})
	_ = s.Delete(ctx, key)
}

func expectObject(t *testing.T, s cloud.Storage, key string, n int64, digest [32]byte) {
	t.Helper()
	ctx := context.Background()
	info, err := s.Stat(ctx, key)
	if err != nil {
		t.Fatalf("Stat %s: %v", key, err)
	}
	if info.Size != n || info.Key != key {
		t.Fatalf("Stat %s = key %q size %d, want size %d", key, info.Key, info.Size, n)
	}
	rc, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	got, d, err := hashAll(rc)
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	if got != n || d != digest {
		t.Fatalf("Get %s: %d bytes, digest match %v; want %d bytes, identical", key, got, d == digest, n)
	}
	objs := list(t, s, key)
	if len(objs) != 1 || objs[0].Key != key || objs[0].Size != n {
		t.Fatalf("List %s = %+v, want the one object of %d bytes", key, objs, n)
	}
}

func expectMissing(t *testing.T, s cloud.Storage, key string) {
	t.Helper()
	ctx := context.Background()
	if info, err := s.Stat(ctx, key); !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("Stat %s = %+v, %v; want ErrNotExist", key, info, err)
	}
	rc, err := s.Get(ctx, key)
	if err == nil {
		_ = rc.Close()
	}
	if !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("Get %s = %v, want ErrNotExist", key, err)
	}
}

func mustPut(t *testing.T, s cloud.Storage, key string, b []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("Put %s: %v", key, err)
	}
}

func mustGet(t *testing.T, s cloud.Storage, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return b
}

func list(t *testing.T, s cloud.Storage, prefix string) []cloud.ObjectInfo {
	t.Helper()
	var got []cloud.ObjectInfo
	if err := s.List(context.Background(), prefix, func(o cloud.ObjectInfo) error {
		got = append(got, o)
		return nil
	}); err != nil {
		t.Fatalf("List %s: %v", prefix, err)
	}
	return got
}

// parallel runs fn(0..n-1) with the given number of workers and fails the
// test on the first error.
func parallel(t *testing.T, workers, n int, fn func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

// RaceCreates runs racers conditional creates of key at once, racer i
// writing the unsized stream Data(i, size), and fails the test unless
// exactly one succeeds and every other gets cloud.ErrExist. It returns the
// winner's i.
func RaceCreates(t *testing.T, s cloud.Storage, key string, racers int, size int64) int {
	t.Helper()
	ctx := context.Background()
	var won atomic.Int32
	var winner atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := cloud.Create(ctx, s, key, Data(uint64(i), size), cloud.SizeUnknown)
			if err == nil {
				won.Add(1)
				winner.Store(int64(i))
			} else if !errors.Is(err, cloud.ErrExist) {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("racing Create: %v", err)
		}
	}
	if won.Load() != 1 {
		t.Fatalf("%d racing creates succeeded, want exactly 1", won.Load())
	}
	return int(winner.Load())
}
