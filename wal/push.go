// Package wal archives WAL files into the repository (wal-push, for
// PostgreSQL's archive_command) and fetches them back (wal-fetch, for
// restore_command).
package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

var (
	// ErrConflict: the repository holds this WAL file with other content.
	ErrConflict = errors.New("archived with different content")
	// ErrWrongCluster: the WAL file comes from another cluster than the
	// one the server's repository belongs to.
	ErrWrongCluster = errors.New("WAL from another cluster")
	// ErrNotFound: the repository has no such WAL file.
	ErrNotFound = errors.New("WAL file not found in the repository")
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
}

// PushResult says what a push did.
type PushResult struct {
	Name string
	Key  string
	// AlreadyArchived is true when the repository already held this file
	// with identical content (PostgreSQL re-archives after a crash).
	AlreadyArchived bool
	Size            int64
}

// Push archives one WAL file. It returns only once the object is durable
// in the repository, and never replaces an archived file: identical
// content is success, different content is ErrConflict.
func Push(ctx context.Context, o PushOptions) (PushResult, error) {
	name := filepath.Base(o.Path)
	w, err := catalog.ParseWALName(name)
	if err != nil {
		return PushResult{}, err
	}
	f, err := os.Open(o.Path)
	if err != nil {
		return PushResult{}, fmt.Errorf("opening %s: %w", o.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return PushResult{}, err
	}
	h := catalog.Header{Type: "wal", Name: name, Codec: o.Codec}
	if w.Kind == catalog.Segment || w.Kind == catalog.Partial {
		sh, err := checkSegment(f, fi.Size(), w)
		if err != nil {
			return PushResult{}, fmt.Errorf("%s: %w", o.Path, err)
		}
		h.SystemIdentifier = sh.SystemIdentifier
		if err := checkIdentity(ctx, o, sh); err != nil {
			return PushResult{}, err
		}
	}
	if h.Size, h.SHA256, err = digestAt(f); err != nil {
		return PushResult{}, fmt.Errorf("reading %s: %w", o.Path, err)
	}
	key := catalog.WALKey(o.Server, w)
	res := PushResult{Name: name, Key: key, Size: h.Size}
	err = create(ctx, o.Store, key, h, o.Level, f)
	if errors.Is(err, cloud.ErrExist) {
		return res, sameContent(ctx, o.Store, key, h, &res)
	}
	return res, err
}

// checkSegment reads a segment's header and checks it against its name
// and size.
func checkSegment(f *os.File, size int64, w catalog.WALName) (catalog.SegmentHeader, error) {
	sh, err := catalog.ReadSegmentHeader(io.NewSectionReader(f, 0, size))
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
// refuses WAL from any other cluster afterwards.
func checkIdentity(ctx context.Context, o PushOptions, sh catalog.SegmentHeader) error {
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	id, err := catalog.EnsureIdentity(ctx, o.Store, o.Server, catalog.Identity{
		SystemIdentifier: sh.SystemIdentifier,
		WALSegmentSize:   sh.SegmentSize,
		CreatedAt:        now().UTC(),
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
	return nil
}

func digestAt(f *os.File) (int64, string, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	return catalog.Digest(io.NewSectionReader(f, 0, fi.Size()))
}

// create encodes the file into the repository with a conditional create,
// streaming: the envelope is produced into a pipe that the upload reads.
// If the file changes while it is read, the encoder fails the pipe and no
// object appears.
func create(ctx context.Context, store cloud.Storage, key string, h catalog.Header, level int, f *os.File) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(catalog.Encode(pw, h, level, io.NewSectionReader(f, 0, h.Size+1)))
	}()
	err := cloud.Create(ctx, store, key, pr, cloud.SizeUnknown)
	pr.CloseWithError(errors.New("upload ended"))
	return err
}

// sameContent compares an existing object with what was to be pushed.
func sameContent(ctx context.Context, store cloud.Storage, key string, h catalog.Header, res *PushResult) error {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("reading the archived %s to compare: %w", h.Name, err)
	}
	defer rc.Close()
	old, err := catalog.ReadHeader(rc)
	if err != nil {
		return fmt.Errorf("the archived %s (%s) is unreadable: %w", h.Name, key, err)
	}
	if old.Size == h.Size && old.SHA256 == h.SHA256 {
		res.AlreadyArchived = true
		return nil
	}
	return fmt.Errorf("%s is already %s (%d bytes, sha256 %.12s; this file %d bytes, sha256 %.12s): refusing to overwrite it. Another cluster may be archiving to the same server in the repository, or this server was restored without a new timeline",
		h.Name, ErrConflict, old.Size, old.SHA256, h.Size, h.SHA256)
}
