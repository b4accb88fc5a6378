package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// FetchOptions say which WAL file to fetch where.
type FetchOptions struct {
	Store  cloud.Storage
	Server string
	// Name is the WAL file name restore_command asks for (%f).
	Name string
	// Dest is where to write it (%p).
	Dest string
	// Prefetch is how many of the following segments of the same
	// timeline to fetch ahead into the spool; 0 turns prefetching off (a
	// segment already in the spool is still used).
	Prefetch int
	// SpoolDir is where prefetched segments wait until PostgreSQL asks
	// for them; empty means <dir of Dest>/cellar/prefetch.
	SpoolDir string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives debug messages about prefetching and the spool; nil
	// discards them.
	Log *slog.Logger
	// Detach, when set, starts the prefetch of the named segments
	// elsewhere (another process that runs Prefetch) and returns its
	// process ID, so that Fetch returns as soon as the requested file is
	// in place: PostgreSQL waits for every restore_command, and replay
	// with it. When it fails, Fetch prefetches itself.
	Detach func(names []string) (pid int, err error)
}

func (o FetchOptions) now() time.Time { return clock(o.Now) }

func (o FetchOptions) spoolDir() string { return spoolDir(o.SpoolDir, o.Dest, "prefetch") }

// FetchResult says what a fetch did.
type FetchResult struct {
	Name string
	Size int64
	// FromSpool is true when an earlier call had prefetched the file: it
	// was checked against its recorded checksum and moved to Dest.
	FromSpool bool
	// Prefetched are the following segments this call stored in the
	// spool, in order.
	Prefetched []string
	// Detached are the segments whose prefetch this call started with
	// FetchOptions.Detach.
	Detached []string
}

// Fetch writes an archived WAL file to Dest, atomically, after checking
// its checksum. A file the repository does not have gives ErrNotFound.
//
// For a segment, Fetch first looks in the prefetch spool (waiting for a
// segment that another process is fetching into it). When the segment is
// not there, Fetch downloads it and, concurrently, the following Prefetch
// segments of the same timeline that are missing, and waits for them
// before it returns: the call waits anyway, and the next calls are served
// from the spool. A call served from the spool refills it, once fewer
// than half of the next Prefetch segments are spooled or being fetched:
// with FetchOptions.Detach it hands the missing ones to another process
// and returns at once; without, it fetches them itself (only once the
// segment right after the requested one is missing) and waits. A segment
// missing from the repository (the end of the archive) is not an error
// for a prefetch, and no prefetch fails the call.
func Fetch(ctx context.Context, o FetchOptions) (FetchResult, error) {
	w, err := pg.ParseWALName(o.Name)
	if err != nil {
		return FetchResult{}, err
	}
	res := FetchResult{Name: o.Name}
	if w.Kind != pg.Segment {
		res.Size, err = fetchTo(ctx, o, w, o.Dest)
		return res, err
	}
	sp := openPrefetchSpool(o.spoolDir(), o.now(), logger(o.Log))
	size, fromSpool := sp.take(w.Name, o.Dest)
	if !fromSpool && sp.inFlight[w.Name] {
		// Another process is fetching it: wait for that rather than
		// download it twice.
		sp.awaitInFlight(ctx, w.Name)
		sp.rescan(w.Name)
		size, fromSpool = sp.take(w.Name, o.Dest)
	}

	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	prefetch := func(segSize int64) {
		// A call served from the spool hands the refill on and returns;
		// a call that downloads anyway downloads the next ones with it.
		detach := o.Detach != nil && fromSpool
		next := sp.wanted(w, segSize, o.Prefetch, detach)
		if len(next) == 0 || !sp.prepare(o) {
			return
		}
		if detach {
			pid, err := o.Detach(next)
			if err == nil {
				for _, name := range next {
					_ = sp.markInFlight(name, pid)
				}
				res.Detached = next
				return
			}
			sp.log.Debug("prefetching in this call: could not start it apart", "error", err)
		}
		wg.Go(func() {
			got := sp.prefetchAll(pctx, o, next)
			mu.Lock()
			res.Prefetched = append(res.Prefetched, got...)
			mu.Unlock()
		})
	}

	if fromSpool {
		res.Size, res.FromSpool = size, true
		prefetch(size)
	} else {
		body, h, err := openSegment(ctx, o.Store, o.Server, w)
		if err != nil {
			return res, err
		}
		prefetch(h.Size)
		err = writeAtomic(o.Dest, body)
		body.Close()
		if err != nil {
			cancel()
			wg.Wait()
			return res, err
		}
		res.Size = h.Size
	}
	wg.Wait()
	slices.Sort(res.Prefetched)
	sp.cleanPast(w)
	return res, nil
}

// Prefetch fetches the named segments into the spool of o (its SpoolDir,
// or beside its Dest), concurrently, skipping any that is spooled or being
// fetched already; it is the work that FetchOptions.Detach starts. It
// returns the segments it stored, in order. Failures only leave a segment
// out: Fetch fetches it when PostgreSQL asks.
func Prefetch(ctx context.Context, o FetchOptions, names []string) []string {
	sp := openPrefetchSpool(o.spoolDir(), o.now(), logger(o.Log))
	var todo []string
	for _, name := range names {
		// The caller of Detach marked them with this process's ID.
		mine := !sp.inFlight[name] || sp.inFlightBy(name) == os.Getpid()
		if len(sp.files[name]) == 0 && mine {
			todo = append(todo, name)
		}
	}
	if len(todo) == 0 || !sp.prepare(o) {
		return nil
	}
	got := sp.prefetchAll(ctx, o, todo)
	slices.Sort(got)
	return got
}

// prefetchAll fetches segments into the spool concurrently and returns
// those it stored.
func (sp *prefetchSpool) prefetchAll(ctx context.Context, o FetchOptions, names []string) []string {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got []string
	)
	for _, name := range names {
		wg.Go(func() {
			if err := sp.prefetch(ctx, o, name); err != nil {
				sp.log.Debug("not prefetched", "wal", name, "error", err)
				return
			}
			mu.Lock()
			got = append(got, name)
			mu.Unlock()
		})
	}
	wg.Wait()
	return got
}

// fetchTo writes a WAL file from the repository to dest.
func fetchTo(ctx context.Context, o FetchOptions, w pg.WALName, dest string) (int64, error) {
	body, h, err := openWAL(ctx, o.Store, o.Server, w)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	return h.Size, writeAtomic(dest, body)
}

// openWAL opens an archived WAL file and returns a reader of its original
// bytes, which fails at the end at the latest if they do not match the
// checksum in the object's header.
func openWAL(ctx context.Context, store cloud.Storage, server string, w pg.WALName) (io.ReadCloser, catalog.Header, error) {
	body, h, err := openObject(ctx, store, catalog.WALKey(server, w), "wal", w.Name)
	if errors.Is(err, cloud.ErrNotExist) {
		return nil, h, fmt.Errorf("%s: %w", w.Name, ErrNotFound)
	}
	return body, h, err
}

// openObject opens the object under key, which must be of type typ and
// name name (an error wrapping cloud.ErrNotExist when there is none), and
// returns a reader of its original bytes that verifies them by the end.
func openObject(ctx context.Context, store cloud.Storage, key, typ, name string) (io.ReadCloser, catalog.Header, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return nil, catalog.Header{}, err
	}
	h, err := catalog.ReadHeader(rc)
	if err == nil && (h.Type != typ || h.Name != name) {
		err = fmt.Errorf("%w: holds %s %q", catalog.ErrCorrupt, h.Type, h.Name)
	}
	var body io.ReadCloser
	if err == nil {
		body, err = catalog.Decode(rc, h)
	}
	if err != nil {
		rc.Close()
		return nil, h, fmt.Errorf("%s: %w", key, err)
	}
	return readClosers{body, rc}, h, nil
}

// openSegment opens an archived segment. When the segment is not there
// but receive-wal stored part of it (its .partial and the chunks after
// that), or PostgreSQL archived a .partial of it at a promotion, it
// serves that, padded with zeros to a whole segment: recovery replays to
// the end of what was received and stops there. Prefetching never does
// this: a streamed segment may still grow.
func openSegment(ctx context.Context, store cloud.Storage, server string, w pg.WALName) (io.ReadCloser, catalog.Header, error) {
	body, h, err := openWAL(ctx, store, server, w)
	if !errors.Is(err, ErrNotFound) {
		return body, h, err
	}
	data, found, serr := streamedSegment(ctx, store, server, w)
	if serr != nil {
		return nil, h, serr
	}
	if !found {
		return nil, h, err
	}
	id, err := catalog.ReadIdentity(ctx, store, server)
	if err == nil && int64(len(data)) > id.WALSegmentSize {
		err = fmt.Errorf("%w: the streamed %s holds %d bytes, more than a segment", catalog.ErrCorrupt, w.Name, len(data))
	}
	if err != nil {
		return nil, h, err
	}
	h = catalog.Header{Type: "wal", Name: w.Name, Size: id.WALSegmentSize}
	pad := io.LimitReader(zeros{}, id.WALSegmentSize-int64(len(data)))
	return io.NopCloser(io.MultiReader(bytes.NewReader(data), pad)), h, nil
}

// streamedSegment reads what the repository has of a segment that was
// not archived whole: its .partial, then the streamed chunks from where
// that ends, up to the first gap (what follows a gap was never reported
// durable to PostgreSQL). Every piece's checksum is verified. A chunk
// that vanishes while it is read (receive-wal folded it into a newer
// .partial) starts the reading over.
func streamedSegment(ctx context.Context, store cloud.Storage, server string, w pg.WALName) ([]byte, bool, error) {
	pw, err := pg.ParseWALName(w.Name + ".partial")
	if err != nil {
		return nil, false, nil
	}
	for attempt := 0; ; attempt++ {
		data, found, err := readStreamed(ctx, store, server, w.Name, pw)
		if errors.Is(err, cloud.ErrNotExist) && attempt < 3 {
			continue
		}
		return data, found, err
	}
}

func readStreamed(ctx context.Context, store cloud.Storage, server, name string, pw pg.WALName) ([]byte, bool, error) {
	var data []byte
	found := false
	body, _, err := openWAL(ctx, store, server, pw)
	switch {
	case err == nil:
		data, err = io.ReadAll(body)
		body.Close()
		if err != nil {
			return nil, false, err
		}
		found = true
	case !errors.Is(err, ErrNotFound):
		return nil, false, err
	}
	var keys []string
	err = store.List(ctx, catalog.ChunkPrefix(server, name), func(o cloud.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	for _, k := range keys {
		body, h, err := openObject(ctx, store, k, "wal-chunk", name)
		if err != nil {
			return nil, false, err // ErrNotExist: read again
		}
		if h.Offset > int64(len(data)) {
			body.Close()
			break // a gap
		}
		b, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", k, err)
		}
		if end := h.Offset + int64(len(b)); end > int64(len(data)) {
			data = append(data, b[int64(len(data))-h.Offset:]...)
		}
		found = true
	}
	return data, found, nil
}

// zeros reads zero bytes without end.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// readClosers reads from the first and closes all.
type readClosers []io.ReadCloser

func (r readClosers) Read(p []byte) (int, error) { return r[0].Read(p) }

func (r readClosers) Close() error {
	var errs []error
	for _, c := range r {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// writeAtomic writes r to a temporary file beside dest, fsyncs it and
// renames it over dest, so that PostgreSQL never sees a partial file. r is
// read to its end (where a verifying reader reports a bad checksum) before
// anything is renamed.
func writeAtomic(dest string, r io.Reader) error {
	base := filepath.Base(dest)
	return writeAtomicNamed(filepath.Dir(dest), base, r, func() string { return base }, true)
}

// writeAtomicNamed writes r to a temporary file in dir, fsyncs it and
// renames it to the name that final returns once all of r is written
// (a name may depend on the content). Unless durable, it only starts the
// file's write-back instead of waiting for it, and does not sync dir: for
// a spool file, which is checked before use and made durable then.
func writeAtomicNamed(dir, base string, r io.Reader, final func() string, durable bool) error {
	tmp, err := os.CreateTemp(dir, "."+base+".cellar-tmp-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := giveToOwnerOf(tmp.Name(), dir); err != nil {
		return err
	}
	if _, err := io.CopyBuffer(tmp, r, make([]byte, 1<<20)); err != nil {
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return err
		}
	} else {
		startWriteback(tmp)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, final())); err != nil {
		return err
	}
	done = true
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
