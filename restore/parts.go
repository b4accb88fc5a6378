package restore

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

// decodeSlots bound the frames of parts decoded at once, across the parts
// read in parallel: one per core.
var decodeSlots = codec.NewLimiter(0)

// decodeDepth is the most frames of one part decoded ahead of its reader.
const decodeDepth = 2

// eachEntry reads part p of a backup as a stream, its tar stream and its
// file list side by side, and calls fn with each entry and the tar reader
// positioned at its data. The tar stream must hold exactly the entries of
// the list, in the list's order; the stored object's size and checksum
// are checked at its end. Nothing of the part is held in memory.
func eachEntry(ctx context.Context, store cloud.Storage, c *catalog.Contents, m *catalog.Manifest, p catalog.Part, fn func(*catalog.File, *tar.Reader) error) error {
	rc, err := store.Get(ctx, p.Key)
	if err != nil {
		return fmt.Errorf("part %s: %w", p.Key, err)
	}
	defer rc.Close()
	stored := &hashingReader{r: rc, h: sha256.New()}
	zr, err := codec.NewParallelReader(stored, codec.Codec(m.Compression), decodeSlots, decodeDepth)
	if err != nil {
		return fmt.Errorf("part %s: %w", p.Key, err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	err = c.Files(ctx, p, func(f catalog.File) error {
		if f.Stored == catalog.StoredRef {
			return fn(&f, nil) // unchanged: no entry in the tar stream
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%w: part %s ends before %s, which its file list holds", catalog.ErrCorrupt, p.Key, f.Path)
		}
		if err != nil {
			return fmt.Errorf("%w: part %s: %v", catalog.ErrCorrupt, p.Key, err)
		}
		if name, want := strings.TrimSuffix(hdr.Name, "/"), strings.TrimSuffix(f.TarName(), "/"); name != want {
			return fmt.Errorf("%w: part %s holds %s where its file list has %s", catalog.ErrCorrupt, p.Key, name, want)
		}
		return fn(&f, tr)
	})
	if err != nil {
		if !strings.Contains(err.Error(), p.Key) {
			err = fmt.Errorf("part %s of backup %s: %w", p.Key, m.ID, err)
		}
		return err
	}
	if hdr, err := tr.Next(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("%w: part %s holds %s, which its file list does not", catalog.ErrCorrupt, p.Key, hdr.Name)
		}
		return fmt.Errorf("%w: part %s: %v", catalog.ErrCorrupt, p.Key, err)
	}
	// Read to the end of the compressed stream, so that its checks run.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return fmt.Errorf("%w: part %s: %v", catalog.ErrCorrupt, p.Key, err)
	}
	if _, err := io.Copy(io.Discard, stored); err != nil {
		return fmt.Errorf("part %s: %w", p.Key, err)
	}
	if got := hex.EncodeToString(stored.h.Sum(nil)); stored.n != p.Size || got != p.SHA256 {
		return fmt.Errorf("%w: part %s: %d bytes with sha256 %s, the backup records %d bytes with %s", catalog.ErrCorrupt, p.Key, stored.n, got, p.Size, p.SHA256)
	}
	return nil
}

// hashingReader hashes and counts what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

// checkFile compares what was read of a file with its manifest entry.
func checkFile(f *catalog.File, n int64, sum hash.Hash) error {
	if got := hex.EncodeToString(sum.Sum(nil)); n != f.Size || got != f.SHA256 {
		return fmt.Errorf("%w: %s: %d bytes with sha256 %s, the manifest records %d bytes with %s", catalog.ErrCorrupt, f.Path, n, got, f.Size, f.SHA256)
	}
	return nil
}
