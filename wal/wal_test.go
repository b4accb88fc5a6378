package wal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/wal"
)

const (
	segSize = 1 << 20
	sysID   = 7312345678901234567
	server  = "main"
)

// counting is an in-memory repository whose calls are counted, the counts
// asked for by WAL file name.
type counting struct{ *storagetest.Counting }

func newCounting() *counting { return &counting{storagetest.NewCounting(mem.New(nil))} }

func (c *counting) createsOf(name string) int { return c.Writes(walKey(name)) }
func (c *counting) getsOf(name string) int    { return c.Gets(walKey(name)) }
func (c *counting) statsOf(name string) int   { return c.Stats(walKey(name)) }

func walKey(name string) string {
	w, err := pg.ParseWALName(name)
	if err != nil {
		panic(err)
	}
	return catalog.WALKey(server, w)
}

// segName is the name of segment segNo of a timeline.
func segName(tli uint32, segNo uint64) string { return pg.SegmentNameOf(tli, segNo, segSize) }

// segment returns the bytes of a valid 1 MiB segment: a long page header
// (see catalog/pgwal.go) and pseudo-random content.
func segment(tli uint32, segNo uint64) []byte {
	b := make([]byte, segSize)
	r := rand.New(rand.NewPCG(uint64(tli), segNo))
	for i := 64; i < len(b); i += 8 {
		// Half random, half zero: compressible like real WAL.
		if (i/4096)%2 == 0 {
			binary.LittleEndian.PutUint64(b[i:], r.Uint64())
		}
	}
	le := binary.LittleEndian
	le.PutUint16(b[0:], 0xD110)
	le.PutUint16(b[2:], 0x0002)
	le.PutUint32(b[4:], tli)
	le.PutUint64(b[8:], segNo*segSize)
	le.PutUint64(b[24:], sysID)
	le.PutUint32(b[32:], segSize)
	le.PutUint32(b[36:], 8192)
	return b
}

// pgWAL makes a pg_wal directory with archive_status and returns it.
func pgWAL(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pg_wal")
	if err := os.MkdirAll(filepath.Join(dir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// finish writes a segment into pg_wal and marks it ready, as PostgreSQL
// does when it completes one.
func finish(t *testing.T, dir string, tli uint32, segNo uint64) string {
	t.Helper()
	name := segName(tli, segNo)
	writeFile(t, filepath.Join(dir, name), segment(tli, segNo))
	writeFile(t, filepath.Join(dir, "archive_status", name+".ready"), nil)
	return name
}

// archived does what PostgreSQL does when archive_command returned 0.
func archived(t *testing.T, dir, name string) {
	t.Helper()
	st := filepath.Join(dir, "archive_status", name)
	if err := os.Rename(st+".ready", st+".done"); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func pushOpts(store cloud.Storage, path string, parallel int) wal.PushOptions {
	return wal.PushOptions{Store: store, Server: server, Path: path, Codec: codec.Zstd, Version: "test", Parallel: parallel}
}

func aheadNames(res wal.PushResult) []string {
	var names []string
	for _, a := range res.Ahead {
		if a.Err == nil {
			names = append(names, a.Name)
		}
	}
	return names
}

// noTempFiles fails if a temporary file is left anywhere below dir.
func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "cellar-tmp") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

// noDoneFiles fails if anything but the test (standing in for PostgreSQL)
// wrote a .done file.
func noDoneFiles(t *testing.T, dir string, byPostgres ...string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dir, "archive_status"))
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".done"); ok && !slices.Contains(byPostgres, name) {
			t.Errorf("%s was written, and not by PostgreSQL", e.Name())
		}
	}
}

// fetchBack fetches a WAL file from the repository without any spool and
// compares it with want.
func fetchBack(t *testing.T, store cloud.Storage, name string, want []byte) {
	t.Helper()
	dest := filepath.Join(t.TempDir(), name)
	if _, err := wal.Fetch(context.Background(), wal.FetchOptions{Store: store, Server: server, Name: name, Dest: dest}); err != nil {
		t.Fatalf("fetch %s: %v", name, err)
	}
	got, err := os.ReadFile(dest)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("fetch %s: %d bytes, identical %v, %v", name, len(got), bytes.Equal(got, want), err)
	}
}

func TestPushAhead(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	dir := pgWAL(t)
	var names []string
	for n := uint64(1); n <= 6; n++ {
		names = append(names, finish(t, dir, 1, n))
	}
	// Ready files that are not segments are never pushed ahead.
	backup := names[0] + ".00000028.backup"
	writeFile(t, filepath.Join(dir, backup), []byte("START WAL LOCATION: 0/1000028\n"))
	writeFile(t, filepath.Join(dir, "archive_status", backup+".ready"), nil)
	writeFile(t, filepath.Join(dir, "archive_status", "00000002.history.ready"), nil)

	res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[0]), 4))
	if err != nil || res.FromSpool || res.AlreadyArchived {
		t.Fatalf("push %s: %+v, %v", names[0], res, err)
	}
	if got := aheadNames(res); !slices.Equal(got, names[1:4]) {
		t.Fatalf("pushed ahead %v, want %v (%+v)", got, names[1:4], res.Ahead)
	}
	if n := store.createsOf(backup); n != 0 {
		t.Fatalf("the backup history file was pushed ahead")
	}
	for _, name := range names[1:4] {
		if _, err := os.Stat(filepath.Join(dir, "cellar", "pushed", name+".json")); err != nil {
			t.Errorf("no spool entry for %s: %v", name, err)
		}
	}
	noDoneFiles(t, dir)

	// PostgreSQL's own calls for the segments pushed ahead upload nothing.
	archived(t, dir, names[0])
	for _, name := range names[1:4] {
		res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, name), 4))
		if err != nil || !res.FromSpool || !res.AlreadyArchived || len(res.Ahead) != 0 {
			t.Fatalf("push %s: %+v, %v; want it answered from the spool", name, res, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "cellar", "pushed", name+".json")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the spool entry for %s outlived PostgreSQL's call: %v", name, err)
		}
		if n := store.statsOf(name); n != 1 {
			t.Errorf("%s: %d Stats, want one to see that the object is still there", name, n)
		}
		archived(t, dir, name)
	}
	// The next call pushes its segment and what remains ready.
	res, err = wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[4]), 4))
	if err != nil || res.FromSpool || !slices.Equal(aheadNames(res), names[5:]) {
		t.Fatalf("push %s: %+v, %v", names[4], res, err)
	}
	archived(t, dir, names[4])
	if res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[5]), 4)); err != nil || !res.FromSpool {
		t.Fatalf("push %s: %+v, %v", names[5], res, err)
	}
	archived(t, dir, names[5])

	for i, name := range names {
		if n := store.createsOf(name); n != 1 {
			t.Errorf("%s was uploaded %d times", name, n)
		}
		fetchBack(t, store, name, segment(1, uint64(i+1)))
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "cellar", "pushed")); len(ents) != 0 {
		t.Errorf("the push spool still holds %v", ents)
	}
	noDoneFiles(t, dir, names...)
	noTempFiles(t, dir)
}

func TestPushSpoolIsNotTrustedBlindly(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	dir := pgWAL(t)
	var names []string
	for n := uint64(1); n <= 4; n++ {
		names = append(names, finish(t, dir, 1, n))
	}
	if res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[0]), 4)); err != nil || len(aheadNames(res)) != 3 {
		t.Fatalf("push: %+v, %v", res, err)
	}
	archived(t, dir, names[0])

	t.Run("ObjectGone", func(t *testing.T) {
		// The repository lost the object (restored, or another spool):
		// the segment is pushed again, never assumed.
		w, _ := pg.ParseWALName(names[1])
		if err := store.Delete(ctx, catalog.WALKey(server, w)); err != nil {
			t.Fatal(err)
		}
		res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[1]), 1))
		if err != nil || res.FromSpool || res.AlreadyArchived {
			t.Fatalf("push: %+v, %v; want a new upload", res, err)
		}
		if n := store.createsOf(names[1]); n != 2 {
			t.Fatalf("%d uploads, want 2", n)
		}
		fetchBack(t, store, names[1], segment(1, 2))
	})
	t.Run("FileChanged", func(t *testing.T) {
		// The file is not what was pushed: it is pushed again, which here
		// finds different content in the repository and refuses.
		b := segment(1, 3)
		b[segSize/2] ^= 0xFF
		writeFile(t, filepath.Join(dir, names[2]), b)
		res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[2]), 1))
		if !errors.Is(err, wal.ErrConflict) || res.FromSpool {
			t.Fatalf("push of a changed file: %+v, %v; want ErrConflict", res, err)
		}
		if n := store.createsOf(names[2]); n != 1 {
			t.Fatalf("%d uploads, want 1: the conflict is found before any upload", n)
		}
		fetchBack(t, store, names[2], segment(1, 3))
	})
	t.Run("EntryUnreadable", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "cellar", "pushed", names[3]+".json"), []byte("{\"name\": \"trunc"))
		res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[3]), 1))
		if err != nil || res.FromSpool || !res.AlreadyArchived {
			t.Fatalf("push: %+v, %v; want a push that finds identical content", res, err)
		}
		// Found while the file was compressed: nothing was sent again.
		if n := store.createsOf(names[3]); n != 1 {
			t.Fatalf("%d uploads of an archived segment, want 1", n)
		}
	})
	noDoneFiles(t, dir, names[0])
	noTempFiles(t, dir)
}

func TestPushAheadFailuresDoNotFailThePush(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	dir := pgWAL(t)
	first := finish(t, dir, 1, 1)
	// Ready, but gone; ready, but not a segment; ready and fine.
	missing := segName(1, 2)
	writeFile(t, filepath.Join(dir, "archive_status", missing+".ready"), nil)
	garbage := finish(t, dir, 1, 3)
	writeFile(t, filepath.Join(dir, garbage), bytes.Repeat([]byte{1}, segSize))
	good := finish(t, dir, 1, 4)

	res, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, first), 8))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if got := aheadNames(res); !slices.Equal(got, []string{good}) || len(res.Ahead) != 3 {
		t.Fatalf("ahead: %+v", res.Ahead)
	}
	for _, name := range []string{missing, garbage} {
		if _, err := os.Stat(filepath.Join(dir, "cellar", "pushed", name+".json")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a spool entry for %s, which was not pushed", name)
		}
	}
	// The failed ones fail their own call.
	if _, err := wal.Push(ctx, pushOpts(store, filepath.Join(dir, garbage), 8)); err == nil {
		t.Error("push of a garbage segment succeeded")
	}
}

func TestPushRacingCalls(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	dir := pgWAL(t)
	var names []string
	for n := uint64(1); n <= 8; n++ {
		names = append(names, finish(t, dir, 1, n))
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	results := make([]wal.PushResult, 8)
	for i := range errs {
		wg.Go(func() {
			results[i], errs[i] = wal.Push(ctx, pushOpts(store, filepath.Join(dir, names[i%3]), 4))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("racing push: %v", err)
		}
	}
	// Every segment asked for is archived, and so is every segment a call
	// says it pushed ahead. Which segments are pushed ahead depends on the
	// race: a call answered from the spool pushes nothing ahead.
	archived := map[string]bool{names[0]: true, names[1]: true, names[2]: true}
	for _, res := range results {
		for _, a := range res.Ahead {
			if a.Err == nil {
				archived[a.Name] = true
			}
		}
	}
	for i, name := range names {
		if archived[name] {
			fetchBack(t, store, name, segment(1, uint64(i+1)))
		}
	}
	noDoneFiles(t, dir)
	noTempFiles(t, dir)
}

func TestPushSpoolCleaning(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	dir := pgWAL(t)
	spool := filepath.Join(t.TempDir(), "spool")
	var names []string
	for n := uint64(1); n <= 5; n++ {
		names = append(names, finish(t, dir, 1, n))
	}
	o := pushOpts(store, filepath.Join(dir, names[0]), 3)
	o.SpoolDir = spool
	if res, err := wal.Push(ctx, o); err != nil || len(aheadNames(res)) != 2 {
		t.Fatalf("push: %+v, %v", res, err)
	}
	entries := func() []string {
		ents, _ := os.ReadDir(spool)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	if got := entries(); !slices.Equal(got, []string{names[1] + ".json", names[2] + ".json"}) {
		t.Fatalf("spool: %v", got)
	}
	// PostgreSQL archived names[1] by a call that did not remove its
	// entry (a manual push, say): the next call cleans it away. A
	// temporary file of a killed run goes once it is old.
	archived(t, dir, names[0])
	archived(t, dir, names[1])
	tmp := filepath.Join(spool, "."+names[4]+".json.cellar-tmp-1")
	writeFile(t, tmp, nil)
	o.Path = filepath.Join(dir, names[3])
	o.Parallel = 1
	if _, err := wal.Push(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := entries(); !slices.Equal(got, []string{"." + names[4] + ".json.cellar-tmp-1", names[2] + ".json"}) {
		t.Fatalf("spool after cleaning: %v", got)
	}
	// A day later everything left is gone.
	o.Now = func() time.Time { return time.Now().Add(25 * time.Hour) }
	o.Path = filepath.Join(dir, names[4])
	if _, err := wal.Push(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := entries(); len(got) != 0 {
		t.Fatalf("spool after a day: %v", got)
	}
}

func TestPushByHandMakesNoSpool(t *testing.T) {
	store := newCounting()
	dir := t.TempDir()
	name := segName(1, 1)
	writeFile(t, filepath.Join(dir, name), segment(1, 1))
	if _, err := wal.Push(context.Background(), pushOpts(store, filepath.Join(dir, name), 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cellar")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a push from outside pg_wal made a spool: %v", err)
	}
}

// archive pushes segments first..last of a timeline into the store.
func archive(t *testing.T, store cloud.Storage, tli uint32, first, last uint64) {
	t.Helper()
	if c, ok := store.(*counting); ok {
		store = c.Storage // count the calls of the code under test only
	}
	dir := t.TempDir()
	for n := first; n <= last; n++ {
		name := segName(tli, n)
		writeFile(t, filepath.Join(dir, name), segment(tli, n))
		if _, err := wal.Push(context.Background(), pushOpts(store, filepath.Join(dir, name), 1)); err != nil {
			t.Fatal(err)
		}
	}
}

var inFlightMark = regexp.MustCompile(`^\.[0-9A-F]{24}\.prefetching$`)

var spoolFile = regexp.MustCompile(`^([0-9A-F]{24})\.1048576\.[0-9a-f]{8}$`)

// spooled returns the segments in the prefetch spool, and fails on any
// other file there.
func spooled(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if inFlightMark.MatchString(e.Name()) {
			continue // a prefetch in flight
		}
		m := spoolFile.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("unexpected file in the prefetch spool: %s", e.Name())
			continue
		}
		names = append(names, m[1])
	}
	return names
}

type fetcher struct {
	t      *testing.T
	store  *counting
	dir    string // pg_wal
	now    func() time.Time
	detach func([]string) (int, error)
}

func (f *fetcher) fetch(tli uint32, segNo uint64) (wal.FetchResult, error) {
	dest := filepath.Join(f.dir, "RECOVERYXLOG")
	os.Remove(dest)
	res, err := wal.Fetch(context.Background(), wal.FetchOptions{
		Store: f.store, Server: server, Name: segName(tli, segNo), Dest: dest, Prefetch: 3, Now: f.now,
		Detach: f.detach,
	})
	if err == nil {
		got, rerr := os.ReadFile(dest)
		if rerr != nil || !bytes.Equal(got, segment(tli, segNo)) {
			f.t.Fatalf("fetch %s: %d bytes, not the archived segment (%v)", segName(tli, segNo), len(got), rerr)
		}
	}
	return res, err
}

func (f *fetcher) spool() string { return filepath.Join(f.dir, "cellar", "prefetch") }

func TestPrefetch(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 8)
	store.GetDelay = 20 * time.Millisecond
	f := &fetcher{t: t, store: store, dir: pgWAL(t)}

	res, err := f.fetch(1, 1)
	if err != nil || res.FromSpool || !slices.Equal(res.Prefetched, []string{segName(1, 2), segName(1, 3), segName(1, 4)}) {
		t.Fatalf("fetch 1: %+v, %v", res, err)
	}
	if store.MaxGetsInFlight() < 2 {
		t.Errorf("the prefetches did not run concurrently with the fetch (at most %d Gets at once)", store.MaxGetsInFlight())
	}
	if got := spooled(t, f.spool()); !slices.Equal(got, res.Prefetched) {
		t.Fatalf("spool: %v", got)
	}
	// The next ones come from the spool without a Get; the spool still
	// runs ahead, so nothing else is fetched either.
	for n := uint64(2); n <= 3; n++ {
		res, err := f.fetch(1, n)
		if err != nil || !res.FromSpool || len(res.Prefetched) != 0 || store.getsOf(segName(1, n)) != 1 {
			t.Fatalf("fetch %d: %+v, %v, %d Gets", n, res, err, store.getsOf(segName(1, n)))
		}
	}
	if got := spooled(t, f.spool()); !slices.Equal(got, []string{segName(1, 4)}) {
		t.Fatalf("spool: %v", got)
	}
	// The last spooled one refills the spool, up to the end of the archive.
	res, err = f.fetch(1, 4)
	if err != nil || !res.FromSpool || !slices.Equal(res.Prefetched, []string{segName(1, 5), segName(1, 6), segName(1, 7)}) {
		t.Fatalf("fetch 4: %+v, %v", res, err)
	}
	if res, err := f.fetch(1, 5); err != nil || !res.FromSpool {
		t.Fatalf("fetch 5: %+v, %v", res, err)
	}
	if res, err := f.fetch(1, 6); err != nil || !res.FromSpool {
		t.Fatalf("fetch 6: %+v, %v", res, err)
	}
	res, err = f.fetch(1, 7)
	if err != nil || !res.FromSpool || !slices.Equal(res.Prefetched, []string{segName(1, 8)}) {
		t.Fatalf("fetch 7 (segments 9 and 10 do not exist): %+v, %v", res, err)
	}
	if res, err := f.fetch(1, 8); err != nil || !res.FromSpool {
		t.Fatalf("fetch 8: %+v, %v", res, err)
	}
	if _, err := f.fetch(1, 9); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("fetch 9: %v", err)
	}
	for n := uint64(1); n <= 8; n++ {
		if g := store.getsOf(segName(1, n)); g != 1 {
			t.Errorf("%s: %d Gets", segName(1, n), g)
		}
	}
	if got := spooled(t, f.spool()); len(got) != 0 {
		t.Errorf("spool at the end: %v", got)
	}
	noTempFiles(t, f.dir)
}

func TestPrefetchSpoolIsVerified(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 6)
	f := &fetcher{t: t, store: store, dir: pgWAL(t)}
	if _, err := f.fetch(1, 1); err != nil {
		t.Fatal(err)
	}
	path := func(n uint64) string {
		ents, _ := os.ReadDir(f.spool())
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), segName(1, n)+".") {
				return filepath.Join(f.spool(), e.Name())
			}
		}
		t.Fatalf("segment %d is not in the spool", n)
		return ""
	}
	// A flipped byte, a truncated file: discarded, fetched again.
	b, _ := os.ReadFile(path(2))
	b[segSize/3] ^= 1
	writeFile(t, path(2), b)
	if err := os.Truncate(path(3), segSize/2); err != nil {
		t.Fatal(err)
	}
	for n := uint64(2); n <= 3; n++ {
		res, err := f.fetch(1, n)
		if err != nil || res.FromSpool || store.getsOf(segName(1, n)) != 2 {
			t.Fatalf("fetch %d over a damaged spool file: %+v, %v, %d Gets", n, res, err, store.getsOf(segName(1, n)))
		}
	}
	// A temporary file is never taken for a spooled segment, and a fresh
	// one is left to whoever writes it.
	tmp := filepath.Join(f.spool(), "."+filepath.Base(path(4))+".cellar-tmp-42")
	writeFile(t, tmp, segment(1, 5))
	res, err := f.fetch(1, 4)
	if err != nil || !res.FromSpool {
		t.Fatalf("fetch 4: %+v, %v", res, err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("a fresh temporary file was removed: %v", err)
	}
	// An old one is removed.
	f.now = func() time.Time { return time.Now().Add(time.Hour) }
	if _, err := f.fetch(1, 5); err != nil {
		t.Fatal(err)
	}
	noTempFiles(t, f.dir)
}

func TestPrefetchSpoolCleaning(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 6)
	archive(t, store, 2, 3, 6)
	f := &fetcher{t: t, store: store, dir: pgWAL(t)}
	if _, err := f.fetch(1, 1); err != nil {
		t.Fatal(err)
	}
	if got := spooled(t, f.spool()); len(got) != 3 {
		t.Fatalf("spool: %v", got)
	}
	// A probe for a file that does not exist changes nothing.
	if _, err := f.fetch(3, 2); !errors.Is(err, wal.ErrNotFound) {
		t.Fatal(err)
	}
	if got := spooled(t, f.spool()); len(got) != 3 {
		t.Fatalf("spool after a probe: %v", got)
	}
	// Recovery moves to timeline 2 in segment 3: timeline 1's segments
	// will not be asked for again.
	res, err := f.fetch(2, 3)
	if err != nil || res.FromSpool {
		t.Fatal(res, err)
	}
	if got := spooled(t, f.spool()); !slices.Equal(got, []string{segName(2, 4), segName(2, 5), segName(2, 6)}) {
		t.Fatalf("spool after the timeline switch: %v", got)
	}
	// History files are fetched as ever and leave the spool alone.
	src := filepath.Join(t.TempDir(), "00000002.history")
	writeFile(t, src, []byte("1\t0/3000000\tno recovery target specified\n"))
	if _, err := wal.Push(context.Background(), pushOpts(store, src, 4)); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(f.dir, "RECOVERYHISTORY")
	res, err = wal.Fetch(context.Background(), wal.FetchOptions{Store: store, Server: server, Name: "00000002.history", Dest: dest, Prefetch: 3})
	if err != nil || res.FromSpool || len(res.Prefetched) != 0 {
		t.Fatalf("fetch of a history file: %+v, %v", res, err)
	}
	if got := spooled(t, f.spool()); len(got) != 3 {
		t.Fatalf("spool after a history file: %v", got)
	}
	// A day later, whatever is left is stale.
	f.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
	if _, err := f.fetch(1, 6); err != nil {
		t.Fatal(err)
	}
	if got := spooled(t, f.spool()); len(got) != 0 {
		t.Fatalf("spool a day later: %v", got)
	}
	noTempFiles(t, f.dir)
}

func TestPrefetchOff(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 3)
	dir := pgWAL(t)
	res, err := wal.Fetch(context.Background(), wal.FetchOptions{Store: store, Server: server, Name: segName(1, 1), Dest: filepath.Join(dir, "RECOVERYXLOG")})
	if err != nil || len(res.Prefetched) != 0 {
		t.Fatal(res, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cellar")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a fetch without prefetch made a spool: %v", err)
	}
}

func TestFetchToAMissingDirectory(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 3)
	dir := filepath.Join(t.TempDir(), "missing")
	_, err := wal.Fetch(context.Background(), wal.FetchOptions{Store: store, Server: server, Name: segName(1, 1), Dest: filepath.Join(dir, "RECOVERYXLOG"), Prefetch: 2})
	if err == nil {
		t.Fatal("a fetch into a missing directory succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the fetch created the destination's directory: %v", err)
	}
}

// TestPrefetchDetached is the prefetch as wal-fetch runs it: a call served
// from the spool hands its refill to another process (here: a recorder,
// then Prefetch) and never waits for a download.
func TestPrefetchDetached(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 8)
	var handed [][]string
	// The "other process" is this one: it marks the segments with its
	// own ID, and Prefetch below takes them up as its own.
	f := &fetcher{t: t, store: store, dir: pgWAL(t), detach: func(names []string) (int, error) {
		handed = append(handed, names)
		return os.Getpid(), nil
	}}
	opts := wal.FetchOptions{Store: store, Server: server, Dest: filepath.Join(f.dir, "RECOVERYXLOG")}
	// A call that downloads anyway fetches the next ones with it.
	res, err := f.fetch(1, 1)
	if err != nil || res.FromSpool || len(res.Detached) != 0 || !slices.Equal(res.Prefetched, []string{segName(1, 2), segName(1, 3), segName(1, 4)}) {
		t.Fatalf("fetch 1: %+v, %v", res, err)
	}
	// With 3 ahead, the spool is refilled once fewer than 2 of the next 3
	// are there: every other call hands on two.
	want := map[uint64][]string{2: nil, 3: {segName(1, 5), segName(1, 6)}, 4: nil}
	for n := uint64(2); n <= 4; n++ {
		res, err := f.fetch(1, n)
		if err != nil || !res.FromSpool || !slices.Equal(res.Detached, want[n]) {
			t.Fatalf("fetch %d: %+v, %v; want it from the spool and %v handed on", n, res, err, want[n])
		}
		if got := wal.Prefetch(context.Background(), opts, res.Detached); !slices.Equal(got, res.Detached) {
			t.Fatalf("Prefetch after fetch %d: %v", n, got)
		}
	}
	// A segment being fetched by another process is left to it, by
	// Fetch and by another Prefetch alike.
	marker := func(n uint64) string { return filepath.Join(f.spool(), "."+segName(1, n)+".prefetching") }
	writeFile(t, marker(8), nil)
	os.Remove(filepath.Join(f.spool(), spooledName(t, f.spool(), segName(1, 6))))
	res, err = f.fetch(1, 5)
	if err != nil || !res.FromSpool || !slices.Equal(res.Detached, []string{segName(1, 6), segName(1, 7)}) {
		t.Fatalf("fetch 5 with 6 gone and 8 in flight: %+v, %v", res, err)
	}
	if got := wal.Prefetch(context.Background(), wal.FetchOptions{Store: store, Server: server, Dest: opts.Dest}, []string{segName(1, 8)}); len(got) != 0 {
		t.Fatalf("Prefetch of a segment in flight elsewhere stored %v", got)
	}
	// A Detach that fails leaves the prefetch to the call itself. (The
	// other processes give up first.)
	for n := uint64(6); n <= 8; n++ {
		os.Remove(marker(n))
	}
	f.detach = func([]string) (int, error) { return 0, errors.New("no process") }
	if got := wal.Prefetch(context.Background(), opts, []string{segName(1, 6)}); len(got) != 1 {
		t.Fatalf("Prefetch 6: %v", got)
	}
	res, err = f.fetch(1, 6)
	if err != nil || !res.FromSpool || len(res.Detached) != 0 || !slices.Equal(res.Prefetched, []string{segName(1, 7), segName(1, 8)}) {
		t.Fatalf("fetch 6 with a failing Detach: %+v, %v", res, err)
	}
}

// spooledName returns the file name of a spooled segment.
func spooledName(t *testing.T, dir, name string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, name+".*"))
	if len(m) != 1 {
		t.Fatalf("%s spooled %d times", name, len(m))
	}
	return filepath.Base(m[0])
}

// TestFetchWaitsForSegmentInFlight asks for a segment that another live
// process is prefetching: the call waits for it to land in the spool and
// takes it from there, instead of downloading it a second time.
func TestFetchWaitsForSegmentInFlight(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 4)
	f := &fetcher{t: t, store: store, dir: pgWAL(t)}
	if err := os.MkdirAll(f.spool(), 0o700); err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	seg := segName(1, 2)
	marker := filepath.Join(f.spool(), "."+seg+".prefetching")
	writeFile(t, marker, []byte(fmt.Sprintf("%d\n", other.Process.Pid)))
	spool := f.spool()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The other process: its download lands, then its mark goes.
		time.Sleep(100 * time.Millisecond)
		elsewhere := t.TempDir()
		got := wal.Prefetch(context.Background(), wal.FetchOptions{Store: store.Storage, Server: server, SpoolDir: elsewhere}, []string{seg})
		if len(got) != 1 {
			t.Errorf("Prefetch elsewhere: %v", got)
		}
		m, _ := filepath.Glob(filepath.Join(elsewhere, seg+".*"))
		if len(m) == 1 {
			os.Rename(m[0], filepath.Join(spool, filepath.Base(m[0])))
		}
		os.Remove(marker)
	}()
	res, err := f.fetch(1, 2)
	<-done
	if err != nil || !res.FromSpool || store.getsOf(seg) != 0 {
		t.Fatalf("fetch of a segment in flight: %+v, %v, %d Gets of its own; want it from the spool", res, err, store.getsOf(seg))
	}
	// A mark whose process is gone is no reason to wait.
	other.Process.Kill()
	other.Wait()
	f = &fetcher{t: t, store: store, dir: pgWAL(t)}
	if err := os.MkdirAll(f.spool(), 0o700); err != nil {
		t.Fatal(err)
	}
	seg = segName(1, 4)
	writeFile(t, filepath.Join(f.spool(), "."+seg+".prefetching"), []byte(fmt.Sprintf("%d\n", other.Process.Pid)))
	before := store.getsOf(seg)
	res, err = f.fetch(1, 4)
	if err != nil || res.FromSpool || store.getsOf(seg) != before+1 {
		t.Fatalf("fetch past a dead mark: %+v, %v, %d Gets", res, err, store.getsOf(seg)-before)
	}
}

func TestNamesStandby(t *testing.T) {
	for ssn, want := range map[string]bool{
		"cellar_receive_wal":                     true,
		"FIRST 1 (standby1, cellar_receive_wal)": true,
		"ANY 2 (a,Cellar_Receive_Wal,b)":         true,
		`"cellar_receive_wal"`:                   true,
		"*":                                      true,
		"":                                       false,
		"standby1, standby2":                     false,
		"FIRST 1 (cellar_receive_wal_2, other)":  false,
	} {
		if got := wal.NamesStandby(ssn, "cellar_receive_wal"); got != want {
			t.Errorf("NamesStandby(%q) = %v, want %v", ssn, got, want)
		}
	}
}

// TestFetchAssemblesStreamedSegment: a segment that receive-wal was
// streaming comes back from its .partial and the chunks after it, up to
// the first gap, padded with zeros to a whole segment.
func TestFetchAssemblesStreamedSegment(t *testing.T) {
	store := newCounting()
	archive(t, store, 1, 1, 2) // the identity, and segments before
	ctx := context.Background()
	name := segName(1, 3)
	full := segment(1, 3)
	put := func(key string, h catalog.Header, data []byte) {
		t.Helper()
		_, obj, err := catalog.EncodeBytes(h, 0, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Storage.Put(ctx, key, bytes.NewReader(obj), int64(len(obj))); err != nil {
			t.Fatal(err)
		}
	}
	pw, _ := pg.ParseWALName(name + ".partial")
	put(catalog.WALKey(server, pw), catalog.Header{Type: "wal", Name: pw.Name, Codec: codec.Zstd, Streamed: true}, full[:1000])
	chunk := func(from, to int) {
		put(catalog.ChunkKey(server, name, int64(from), int64(to)), catalog.Header{Type: "wal-chunk", Name: name, Offset: int64(from), Codec: codec.Zstd}, full[from:to])
	}
	chunk(500, 1500)  // overlaps the .partial
	chunk(1500, 1700) // a later run's, of the same start
	chunk(1500, 4000) // follows on
	chunk(1700, 2000) // inside what is there
	chunk(5000, 6000) // after a gap: never reported durable
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	res, err := wal.Fetch(ctx, wal.FetchOptions{Store: store, Server: server, Name: name, Dest: dest})
	if err != nil || res.Size != segSize {
		t.Fatalf("fetch of a streamed segment: %+v, %v", res, err)
	}
	got, _ := os.ReadFile(dest)
	want := append(append([]byte(nil), full[:4000]...), make([]byte, segSize-4000)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("the streamed segment came back wrong: %d bytes", len(got))
	}
	// A damaged chunk is an error, not a shorter segment.
	chunk(1500, 4000)
	key := catalog.ChunkKey(server, name, 1500, 4000)
	rc, _ := store.Storage.Get(ctx, key)
	obj, _ := io.ReadAll(rc)
	rc.Close()
	obj[len(obj)-1] ^= 0xff
	store.Storage.Put(ctx, key, bytes.NewReader(obj), int64(len(obj)))
	if _, err := wal.Fetch(ctx, wal.FetchOptions{Store: store, Server: server, Name: name, Dest: dest}); err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("fetch with a damaged chunk: %v", err)
	}
	// Nothing streamed of a segment: not found.
	if _, err := wal.Fetch(ctx, wal.FetchOptions{Store: store, Server: server, Name: segName(1, 9), Dest: dest}); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("fetch of a segment never streamed: %v", err)
	}
}

// TestTidySpoolsAndOwners: root's wal-fetch and wal-push give what they
// make under pg_wal to pg_wal's owner, so that PostgreSQL's own calls can
// use and remove it; TidySpools (cron) removes a day-old prefetch and
// entries of segments PostgreSQL no longer has ready, when no call of
// PostgreSQL's comes to do it.
func TestTidySpoolsAndOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root, as the test suite does: it needs chown")
	}
	store := newCounting()
	archive(t, store, 1, 1, 6)
	f := &fetcher{t: t, store: store, dir: pgWAL(t)}
	const uid, gid = 65534, 65534 // nobody, PostgreSQL's user here
	for _, d := range []string{filepath.Dir(f.dir), f.dir, filepath.Join(f.dir, "archive_status")} {
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.fetch(1, 1); err != nil {
		t.Fatal(err)
	}
	if got := spooled(t, f.spool()); len(got) != 3 {
		t.Fatalf("spool: %v", got)
	}
	name := finish(t, f.dir, 1, 7)
	seg := filepath.Join(f.dir, name)
	if _, err := wal.Push(context.Background(), pushOpts(store, seg, 4)); err != nil {
		t.Fatal(err)
	}
	finish(t, f.dir, 1, 8)
	if _, err := wal.Push(context.Background(), pushOpts(store, seg, 4)); err != nil {
		t.Fatal(err)
	}
	pushed := filepath.Join(f.dir, "cellar", "pushed")
	err := filepath.WalkDir(filepath.Join(f.dir, "cellar"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d, want pg_wal's owner %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(f.dir, "RECOVERYXLOG")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uid {
		t.Errorf("the fetched file is not pg_wal's owner's: %v", err)
	}
	if ents, _ := os.ReadDir(pushed); len(ents) != 1 {
		t.Fatalf("push spool: %d entries, want the one for the segment pushed ahead", len(ents))
	}

	// Today nothing goes but what PostgreSQL no longer has ready.
	wal.TidySpools(f.dir, "", "", time.Now(), nil)
	if got := spooled(t, f.spool()); len(got) != 3 {
		t.Fatalf("spool tidied too early: %v", got)
	}
	if ents, _ := os.ReadDir(pushed); len(ents) != 1 {
		t.Fatalf("push spool tidied too early: %d entries", len(ents))
	}
	archived(t, f.dir, segName(1, 8)) // archived by another call
	wal.TidySpools(f.dir, "", "", time.Now(), nil)
	if ents, _ := os.ReadDir(pushed); len(ents) != 0 {
		t.Fatalf("push spool keeps an entry PostgreSQL no longer has ready: %d entries", len(ents))
	}
	// A day later, the prefetched segments nobody asked for go.
	wal.TidySpools(f.dir, "", "", time.Now().Add(25*time.Hour), nil)
	if got := spooled(t, f.spool()); len(got) != 0 {
		t.Fatalf("spool a day later: %v", got)
	}
}
