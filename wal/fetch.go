package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
)

// FetchOptions say which WAL file to fetch where.
type FetchOptions struct {
	Store  cloud.Storage
	Server string
	// Name is the WAL file name restore_command asks for (%f).
	Name string
	// Dest is where to write it (%p).
	Dest string
}

// Fetch writes an archived WAL file to Dest, atomically, after checking
// its checksum. A file the repository does not have gives ErrNotFound.
func Fetch(ctx context.Context, o FetchOptions) error {
	w, err := catalog.ParseWALName(o.Name)
	if err != nil {
		return err
	}
	key := catalog.WALKey(o.Server, w)
	rc, err := o.Store.Get(ctx, key)
	if errors.Is(err, cloud.ErrNotExist) {
		return fmt.Errorf("%s: %w", o.Name, ErrNotFound)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	h, err := catalog.ReadHeader(rc)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if h.Type != "wal" || h.Name != o.Name {
		return fmt.Errorf("%s: %w: holds %s %q", key, catalog.ErrCorrupt, h.Type, h.Name)
	}
	body, err := catalog.Decode(rc, h)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	defer body.Close()
	return writeAtomic(o.Dest, body)
}

// writeAtomic writes r to a temporary file beside dest, fsyncs it and
// renames it over dest, so that PostgreSQL never sees a partial file. r is
// read to its end (where a verifying reader reports a bad checksum) before
// anything is renamed.
func writeAtomic(dest string, r io.Reader) error {
	dir := filepath.Dir(dest)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".cellar-tmp-*")
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
	if _, err := io.CopyBuffer(tmp, r, make([]byte, 1<<20)); err != nil {
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return err
	}
	done = true
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
