package basebackup

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// An incremental backup walks the data directory as a full one does and
// merges the walk, path by path, with its parent's file lists (which are
// in the same path order), so that it holds one parent entry at a time
// whatever the number of files. A relation file is read whole and its
// pages hashed; the pages whose hash differs from the parent's block map
// are stored, or, when none does, a reference to the backup that holds
// the file. Everything else is stored whole.

// ErrParent marks a parent that an incremental cannot build on because
// it is missing or damaged.
var ErrParent = errors.New("the parent backup cannot be used")

// parentFile is the parent's entry of a relation file.
type parentFile struct {
	catalog.File
	hashes []byte // its page hashes
	base   string // the backup that holds the file whole
}

// chooseParent decides what the backup builds on: nil for a full backup,
// with the reason logged when an incremental was asked for. A parent that
// is named but missing, or damaged, is an error.
func (b *backup) chooseParent(ctx context.Context, srv *Server) (*catalog.Manifest, error) {
	o := b.o
	if o.Type == catalog.TypeFull && o.Parent == "" {
		return nil, nil
	}
	full := func(why string, args ...any) (*catalog.Manifest, error) {
		o.Log.Info("taking a full backup instead of an incremental: "+fmt.Sprintf(why, args...), "server", o.Server)
		b.typ = catalog.TypeFull
		return nil, nil
	}
	list, err := catalog.ListBackups(ctx, o.Store, o.Server)
	if err != nil {
		return nil, err
	}
	var parent *catalog.Manifest
	for _, bi := range list {
		m := bi.Manifest
		if m == nil || m.Status != catalog.StatusDone {
			continue
		}
		switch {
		case o.Parent != "":
			if m.ID == o.Parent {
				parent = m
			}
		case o.Type == catalog.TypeIncr, o.Type == catalog.TypeDiff && m.BackupType() == catalog.TypeFull:
			parent = m // the newest wins: the list is oldest first
		}
	}
	switch {
	case parent == nil && o.Parent != "":
		return nil, fmt.Errorf("--parent %s: %w: server %s has no finished backup with that id (see list-backups)", o.Parent, ErrParent, o.Server)
	case parent == nil && o.Type == catalog.TypeDiff:
		return full("there is no finished full backup to build a diff on")
	case parent == nil:
		return full("there is no finished backup to build on")
	case o.Type == catalog.TypeDiff && parent.BackupType() != catalog.TypeFull:
		return nil, fmt.Errorf("--parent %s: a diff builds on a full backup, and %s is %s: use --type incr", parent.ID, parent.ID, parent.BackupType())
	case parent.SystemIdentifier != srv.SystemIdentifier:
		return full("the parent %s is of the cluster %d, PostgreSQL is cluster %d", parent.ID, parent.SystemIdentifier, srv.SystemIdentifier)
	case parent.PGVersion/10000 != srv.Version/10000:
		return full("the parent %s is of PostgreSQL %d, the server runs %d", parent.ID, parent.PGVersion/10000, srv.Version/10000)
	case parent.WALSegmentSize != srv.WALSegmentSize:
		return full("the parent %s has WAL segments of %d bytes, the server %d", parent.ID, parent.WALSegmentSize, srv.WALSegmentSize)
	case parent.Compression != string(o.Codec):
		return full("the parent %s is compressed with %s, this backup with %s (compression)", parent.ID, parent.Compression, o.Codec)
	case parent.Method == "stream":
		return full("the parent %s was taken with backup_method = stream, whose file lists are not in path order", parent.ID)
	case parent.Sealed:
		return full("the parent %s is encrypted and this host has no encryption_identity_file to read its block maps", parent.ID)
	case (parent.Encryption == catalog.EncryptionAge) != catalog.Sealing(o.Store):
		return full("the parent %s is %s and this backup would not be (encryption)", parent.ID, map[bool]string{true: "encrypted", false: "not encrypted"}[parent.Encryption == catalog.EncryptionAge])
	case parent.Chain()+1 > o.MaxChain:
		return full("the chain on %s would hold %d backups, incremental_max_chain is %d", parent.ID, parent.Chain()+1, o.MaxChain)
	}
	c, err := b.checkChain(ctx, parent)
	if err != nil {
		return nil, err
	}
	for _, p := range c.Parts() {
		if p.Blocks == nil {
			return full("the parent %s has no block maps (an older Cellar took it)", parent.ID)
		}
	}
	b.parentContents = c
	return parent, nil
}

// checkChain checks that every object of the parent and of the backups it
// builds on is in the repository (the parent's lists and block maps are
// read, and their checksums checked, as the backup goes), before anything
// is uploaded. It returns the parent's contents and records the chain.
func (b *backup) checkChain(ctx context.Context, parent *catalog.Manifest) (*catalog.Contents, error) {
	o := b.o
	chain, err := catalog.OpenChain(ctx, o.Store, parent)
	if err != nil {
		return nil, fmt.Errorf("the chain of backup %s, which this incremental builds on: %w: %w", parent.ID, ErrParent, err)
	}
	for _, l := range chain {
		m := l.Manifest
		b.chain = append(b.chain, m.ID)
		for _, p := range l.Contents.Parts() {
			keys := []string{p.Key}
			if p.List != nil {
				keys = append(keys, p.List.Key)
			}
			if p.Blocks != nil {
				keys = append(keys, p.Blocks.Key)
			}
			for _, k := range keys {
				oi, err := o.Store.Stat(ctx, k)
				if errors.Is(err, cloud.ErrNotExist) {
					return nil, fmt.Errorf("backup %s, which this incremental builds on: %w: %s is missing from the repository (take a full backup: --type full)", m.ID, ErrParent, k)
				}
				if err != nil {
					return nil, err
				}
				// A sealed part is larger than what it holds by age's
				// overhead: its size is checked when it is opened.
				if k == p.Key && oi.Size != p.Size && !strings.HasSuffix(k, catalog.SealedSuffix) {
					return nil, fmt.Errorf("backup %s, which this incremental builds on: %w: %s holds %d bytes, the backup records %d (take a full backup: --type full)", m.ID, ErrParent, k, oi.Size, p.Size)
				}
			}
		}
	}
	return chain[len(chain)-1].Contents, nil
}

// parentEntries yields the parent's entries with their page hashes, in
// path order: every part but the last (the files PostgreSQL returned at
// the stop). err is set when the iteration ended on an error.
func parentEntries(ctx context.Context, parent *catalog.Manifest, c *catalog.Contents, err *error) iter.Seq[parentFile] {
	return func(yield func(parentFile) bool) {
		parts := c.Parts()
		prev := ""
		for _, p := range parts[:max(0, len(parts)-1)] {
			e := c.FilesWithBlocks(ctx, p, func(f catalog.File, hashes []byte) error {
				if prev != "" && catalog.ComparePaths(prev, f.Path) >= 0 {
					return fmt.Errorf("%w: the file lists of backup %s are not in path order (%s after %s)", catalog.ErrCorrupt, parent.ID, f.Path, prev)
				}
				prev = f.Path
				base := f.Base
				if base == "" {
					base = parent.ID
				}
				if !yield(parentFile{File: f, hashes: hashes, base: base}) {
					return errStop
				}
				return nil
			})
			if e != nil {
				if e != errStop {
					*err = fmt.Errorf("reading the parent backup %s: %w", parent.ID, e)
				}
				return
			}
		}
	}
}

var errStop = errors.New("stop")

// mergeParent returns a walk that attaches to each relation file the
// parent's entry of the same path, if any.
func mergeParent(ctx context.Context, parent *catalog.Manifest, c *catalog.Contents, walk func(emit func(entry) error) error) func(emit func(entry) error) error {
	return func(emit func(entry) error) error {
		var perr error
		next, stop := iter.Pull(parentEntries(ctx, parent, c, &perr))
		defer stop()
		cur, ok := next()
		err := walk(func(e entry) error {
			if e.Type == catalog.TypeFile && pg.IsRelationPath(e.Path) {
				for ok && catalog.ComparePaths(cur.Path, e.Path) < 0 {
					cur, ok = next()
				}
				if ok && cur.Path == e.Path && cur.Type == catalog.TypeFile {
					pf := cur
					e.parent = &pf
				}
			}
			return emit(e)
		})
		if err != nil {
			return err
		}
		for ok { // to the end, so that the lists' checksums are checked
			_, ok = next()
		}
		return perr
	}
}

// parentStillThere checks, before the manifest is written, that the
// chain's manifests are still in the repository: a delete or retention
// run on another host may have removed an older parent named with
// --parent while the backup ran.
func (b *backup) parentStillThere(ctx context.Context) error {
	for _, id := range b.chain {
		if _, err := b.o.Store.Stat(ctx, catalog.ManifestKey(b.o.Server, id)); err != nil {
			return fmt.Errorf("backup %s, which this incremental builds on, is gone from the repository (deleted while the backup ran?): %w", id, err)
		}
	}
	return nil
}
