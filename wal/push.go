// Package wal archives WAL files into the repository (wal-push, for
// PostgreSQL's archive_command) and fetches them back (wal-fetch, for
// restore_command).
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
	"sync"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

var (
	// ErrConflict: the repository holds this WAL file with other content.
	ErrConflict = errors.New("archived with different content")
	// ErrWrongCluster: the WAL file comes from another cluster than the
	// one the server's repository belongs to.
	ErrWrongCluster = errors.New("WAL from another cluster")
	// ErrNotFound: the repository has no such WAL file.
	ErrNotFound = errors.New("WAL file not found in the repository")
	// ErrNoSlot and ErrLogicalSlot are receive-wal's: the replication
	// slot is missing, or not a physical one.
	ErrNoSlot      = errors.New("does not exist")
	ErrLogicalSlot = errors.New("is a logical slot")
)

// PushOptions say what to archive where.
type PushOptions struct {
	Store  cloud.Storage
	Server string
	// Path is the file to archive (archive_command's %p).
	Path  string
	Codec codec.Codec
	Level int
	// Version is the running Cellar's, recorded in a new identity.
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Parallel is how many segments one call may push at once: Path and
	// up to Parallel-1 of the following segments that PostgreSQL has
	// marked ready in archive_status beside it. 0 or 1 pushes Path alone.
	Parallel int
	// SpoolDir is where segments pushed ahead are remembered until
	// PostgreSQL asks for them; empty means <dir of Path>/cellar/pushed.
	SpoolDir string
	// Log receives debug messages about pushes ahead and the spool; nil
	// discards them.
	Log *slog.Logger
}

func (o PushOptions) now() time.Time { return clock(o.Now) }

func (o PushOptions) spoolDir() string { return spoolDir(o.SpoolDir, o.Path, "pushed") }

// clock reads now, or the real clock when now is nil.
func clock(now func() time.Time) time.Time {
	if now != nil {
		return now()
	}
	return time.Now()
}

// spoolDir is the explicit spool directory, or by default
// <directory of walPath>/cellar/<kind>, that is under pg_wal.
func spoolDir(explicit, walPath, kind string) string {
	if explicit != "" {
		return explicit
	}
	return filepath.Join(filepath.Dir(walPath), "cellar", kind)
}

// PushResult says what a push did.
type PushResult struct {
	Name string
	Key  string
	// AlreadyArchived is true when the repository already held this file
	// with identical content (PostgreSQL re-archives after a crash, or an
	// earlier call pushed it ahead).
	AlreadyArchived bool
	Size            int64
	SHA256          string
	// FromSpool is true when an earlier call pushed this segment ahead:
	// the spool entry matched the file and the object is still in the
	// repository, so nothing was uploaded.
	FromSpool bool
	// Ahead are the following segments this call pushed ahead, in order.
	Ahead []AheadResult
}

// AheadResult is one segment pushed ahead. Err is why it was not; its own
// call will push it.
type AheadResult struct {
	PushResult
	Err error
}

// Push archives one WAL file. It returns only once the object is durable
// in the repository, and never replaces an archived file: identical
// content is success, different content is ErrConflict.
//
// For a segment, Push first looks in the spool: if an earlier call pushed
// it ahead, the file still has the recorded size and checksum and the
// object is still in the repository, it returns at once. Otherwise it
// pushes the segment and, concurrently, up to Parallel-1 of the following
// segments marked ready, and remembers each of those in the spool once it
// is durable. A failure to push one of those never fails this call.
// PostgreSQL's archive_status files are only read, never written.
func Push(ctx context.Context, o PushOptions) (PushResult, error) {
	name := filepath.Base(o.Path)
	w, err := pg.ParseWALName(name)
	if err != nil {
		return PushResult{}, err
	}
	p := &pusher{o: o, log: logger(o.Log)}
	if w.Kind != pg.Segment {
		return p.push(ctx, o.Path, w)
	}
	sp := newPushSpool(o, p.log)
	sp.clean(name)
	if res, ok := sp.answer(ctx, o, w); ok {
		return res, nil
	}
	var ahead []string
	if o.Parallel > 1 {
		ahead = sp.candidates(name, o.Parallel-1)
	}
	if len(ahead) == 0 {
		return p.push(ctx, o.Path, w)
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]AheadResult, len(ahead))
	var wg sync.WaitGroup
	for i, next := range ahead {
		wg.Go(func() {
			results[i] = p.pushAhead(actx, sp, filepath.Join(filepath.Dir(o.Path), next))
		})
	}
	res, err := p.push(ctx, o.Path, w)
	if err != nil {
		// This call fails and PostgreSQL retries it: do not keep it
		// waiting for the others.
		cancel()
	}
	wg.Wait()
	res.Ahead = results
	return res, err
}

// pusher pushes files for one call, checking the repository's identity
// once for all of them.
type pusher struct {
	o   PushOptions
	log *slog.Logger

	mu       sync.Mutex
	verified *pg.SegmentHeader // the header whose identity was checked
}

// pushAhead pushes a following segment and remembers it in the spool once
// it is durable.
func (p *pusher) pushAhead(ctx context.Context, sp *pushSpool, path string) AheadResult {
	name := filepath.Base(path)
	w, err := pg.ParseWALName(name)
	if err != nil {
		return AheadResult{PushResult: PushResult{Name: name}, Err: err}
	}
	res, err := p.push(ctx, path, w)
	if err == nil {
		err = sp.remember(res)
	}
	if err != nil {
		p.log.Debug("not pushed ahead; its own call will push it", "wal", name, "error", err)
	}
	return AheadResult{PushResult: res, Err: err}
}

// push archives one file.
func (p *pusher) push(ctx context.Context, path string, w pg.WALName) (PushResult, error) {
	o := p.o
	name := w.Name
	f, err := os.Open(path)
	if err != nil {
		return PushResult{Name: name}, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return PushResult{Name: name}, err
	}
	h := catalog.Header{Type: "wal", Name: name, Codec: o.Codec}
	key := catalog.WALKey(o.Server, w)
	var check func() error // the identity check, for WAL with a header
	if w.Kind == pg.Segment || w.Kind == pg.Partial {
		sh, err := checkSegment(f, fi.Size(), w)
		if err != nil {
			return PushResult{Name: name}, fmt.Errorf("%s: %w", path, err)
		}
		h.SystemIdentifier = sh.SystemIdentifier
		check = func() error { return p.checkIdentity(ctx, sh) }
	}
	// While the file is compressed: the identity check, then a look at
	// what the repository already has under the key. PostgreSQL archives
	// a file again after a crash; finding it there saves the upload, and
	// saves sending a large body that the server refuses (MinIO resets
	// the connection when it refuses a conditional write, and the SDK
	// retries that with backoff). Nothing is stored before both are done.
	var archived *catalog.Header
	pre := make(chan error, 1)
	go func() {
		if check != nil {
			if err := check(); err != nil {
				pre <- err
				return
			}
		}
		var err error
		archived, err = archivedHeader(ctx, o.Store, key, name)
		pre <- err
	}()
	// One pass over a file that fits in memory: compress and hash it, then
	// store an object of known size. A larger one is hashed here and
	// compressed as it streams to the repository.
	inMemory := fi.Size() <= inMemoryLimit
	var obj []byte
	if !inMemory {
		h.Size, h.SHA256, err = catalog.Digest(io.NewSectionReader(f, 0, fi.Size()))
	} else if data, unmap, merr := mapFile(f, fi.Size()); merr == nil {
		h, obj, err = catalog.EncodeBytes(h, o.Level, data)
		unmap()
	} else {
		h, obj, err = catalog.EncodeInMemory(h, o.Level, f, fi.Size())
	}
	if perr := <-pre; perr != nil {
		return PushResult{Name: name}, perr
	}
	if err != nil {
		return PushResult{Name: name}, fmt.Errorf("reading %s: %w", path, err)
	}
	res := PushResult{Name: name, Key: key, Size: h.Size, SHA256: h.SHA256}
	// In a sealed repository, the MAC by which a repeated push is
	// recognised without opening what is archived.
	h.MAC, h.MACKey, _ = catalog.MACOf(o.Store, h.SHA256)
	// A .partial that receive-wal streamed is replaced by PostgreSQL's
	// own copy of the segment; anything else archived is never replaced.
	replace := archived != nil && w.Kind == pg.Partial && archived.Streamed
	if archived != nil && !replace {
		return res, compareArchived(*archived, h, &res)
	}
	switch {
	case inMemory && replace:
		err = o.Store.Put(ctx, key, bytes.NewReader(obj), int64(len(obj)))
	case inMemory:
		err = cloud.Create(ctx, o.Store, key, bytes.NewReader(obj), int64(len(obj)))
	default:
		err = create(ctx, o.Store, key, h, o.Level, f, replace)
	}
	if errors.Is(err, cloud.ErrExist) {
		// Another push stored it meanwhile: compare.
		return res, sameContent(ctx, o.Store, key, h, &res)
	}
	return res, err
}

// inMemoryLimit is the largest file pushed in one pass through memory
// (WAL segments up to 64 MiB); larger ones are hashed, then streamed.
const inMemoryLimit = 64 << 20

// checkSegment reads a segment's header and checks it against its name
// and size.
func checkSegment(f *os.File, size int64, w pg.WALName) (pg.SegmentHeader, error) {
	sh, err := pg.ReadSegmentHeader(io.NewSectionReader(f, 0, size))
	if err != nil {
		return sh, err
	}
	if size != sh.SegmentSize {
		return sh, fmt.Errorf("the file has %d bytes, its header says segments have %d", size, sh.SegmentSize)
	}
	if err := sh.Check(w); err != nil {
		return sh, fmt.Errorf("not the segment its name says: %w", err)
	}
	return sh, nil
}

// checkIdentity records the cluster's identity on the first push and
// refuses WAL from any other cluster afterwards. Within one call, a header
// of the cluster already checked needs no second look.
func (p *pusher) checkIdentity(ctx context.Context, sh pg.SegmentHeader) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.verified; v != nil && v.SystemIdentifier == sh.SystemIdentifier && v.SegmentSize == sh.SegmentSize {
		return nil
	}
	o := p.o
	id, err := catalog.EnsureIdentity(ctx, o.Store, o.Server, catalog.Identity{
		SystemIdentifier: sh.SystemIdentifier,
		WALSegmentSize:   sh.SegmentSize,
		CreatedAt:        o.now().UTC(),
		CreatedBy:        "cellar " + o.Version,
	})
	if err != nil {
		return fmt.Errorf("reading the repository's identity for server %s: %w", o.Server, err)
	}
	if id.SystemIdentifier != sh.SystemIdentifier {
		return fmt.Errorf("%w: the repository of server %s belongs to the cluster with system identifier %d, this WAL was written by %d: point this server at its own repository or prefix",
			ErrWrongCluster, o.Server, id.SystemIdentifier, sh.SystemIdentifier)
	}
	if id.WALSegmentSize != sh.SegmentSize {
		return fmt.Errorf("%w: the repository of server %s holds WAL segments of %d bytes, this one has %d", ErrWrongCluster, o.Server, id.WALSegmentSize, sh.SegmentSize)
	}
	p.verified = &sh
	return nil
}

// create encodes the file into the repository with a conditional create
// (or, with replace, a plain write), streaming: the envelope is produced into a pipe that the upload reads.
// If the file changes while it is read, the encoder fails the pipe and no
// object appears.
func create(ctx context.Context, store cloud.Storage, key string, h catalog.Header, level int, f *os.File, replace bool) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(catalog.Encode(pw, h, level, io.NewSectionReader(f, 0, h.Size+1)))
	}()
	store1 := cloud.Create
	if replace {
		store1 = func(ctx context.Context, s cloud.Storage, key string, r io.Reader, size int64) error {
			return s.Put(ctx, key, r, size)
		}
	}
	err := store1(ctx, store, key, pr, cloud.SizeUnknown)
	pr.CloseWithError(errors.New("upload ended"))
	return err
}

// sameContent compares an existing object with what was to be pushed.
func sameContent(ctx context.Context, store cloud.Storage, key string, h catalog.Header, res *PushResult) error {
	old, err := archivedHeader(ctx, store, key, h.Name)
	if err != nil {
		return err
	}
	if old == nil {
		return fmt.Errorf("reading the archived %s to compare: %w", h.Name, cloud.ErrNotExist)
	}
	return compareArchived(*old, h, res)
}

// archivedHeader reads the envelope header of what the repository has
// under key, or returns nil when it has nothing there.
func archivedHeader(ctx context.Context, store cloud.Storage, key, name string) (*catalog.Header, error) {
	// As stored: of a sealed object, its outer header, which holds its
	// MAC (this host need not be able to open it).
	old, err := catalog.ClearHeader(ctx, store, key)
	if errors.Is(err, cloud.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the archived %s (%s) is unreadable: %w", name, key, err)
	}
	return &old, nil
}

// compareArchived succeeds when the archived object holds the same bytes
// as this file, and otherwise refuses to go on.
func compareArchived(old, h catalog.Header, res *PushResult) error {
	if old.Encryption == catalog.EncryptionAge {
		switch {
		case old.MAC == "" || h.MAC == "":
			return fmt.Errorf("%s is already archived, encrypted, and this push cannot tell whether it holds the same bytes: set encryption = age and the encryption_recipients it was archived with", h.Name)
		case old.MACKey != h.MACKey:
			return fmt.Errorf("%s is already archived, encrypted to other encryption_recipients (key %s, this push %s): it cannot tell whether it holds the same bytes; push it with the recipients it was archived with", h.Name, old.MACKey, h.MACKey)
		case old.MAC == h.MAC:
			res.AlreadyArchived = true
			return nil
		}
		return fmt.Errorf("%s is already %w (encrypted, with another MAC than this file's): refusing to overwrite it. Another cluster may be archiving to the same server in the repository, or this server was restored without a new timeline",
			h.Name, ErrConflict)
	}
	if old.Size == h.Size && old.SHA256 == h.SHA256 {
		res.AlreadyArchived = true
		return nil
	}
	return fmt.Errorf("%s is already %w (%d bytes, sha256 %.12s; this file %d bytes, sha256 %.12s): refusing to overwrite it. Another cluster may be archiving to the same server in the repository, or this server was restored without a new timeline",
		h.Name, ErrConflict, old.Size, old.SHA256, h.Size, h.SHA256)
}
