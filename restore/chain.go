package restore

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
)

// An incremental backup is restored from its chain, oldest backup first:
// each backup's parts are read in parallel, and of each file only what the
// newest backup needs is written: the whole file from the backup its
// entry names as Base, then the changed pages of every later backup, then
// the file is truncated to the newest entry's size. A file that had pages
// applied is read back and checked against the newest manifest's SHA-256;
// a whole file is checked as it is written (and a reference is, by the
// backup's rule, a file whose checksum equals its parent's).
//
// What restore holds is 8 bytes per file of the newest backup (a hash of
// its path and the chain position of its whole copy) and 8 per file that
// had pages applied, whatever the files' sizes.

// layer is one backup of a chain.
type layer struct {
	m *catalog.Manifest
	c *catalog.Contents
}

// ErrChain marks a chain that does not hold what its newest backup needs.
var ErrChain = errors.New("the backup chain is broken")

// OpenChain reads the manifests and contents of the backups the backup m
// builds on, oldest (the full) first, ending with m itself.
func openChain(ctx context.Context, store cloud.Storage, m *catalog.Manifest) ([]layer, error) {
	var chain []layer
	for cur := m; ; {
		c, err := catalog.OpenContents(ctx, store, cur)
		if err != nil {
			return nil, err
		}
		chain = append(chain, layer{cur, c})
		if cur.Parent == "" {
			break
		}
		if len(chain) >= rebuilt {
			return nil, fmt.Errorf("%w: backup %s: a chain of more than %d backups", ErrChain, m.ID, rebuilt-1)
		}
		next, err := catalog.ReadManifest(ctx, store, cur.Server, cur.Parent)
		if err != nil {
			return nil, fmt.Errorf("%w: backup %s builds on %s: %w", ErrChain, cur.ID, cur.Parent, err)
		}
		cur = next
	}
	slices.Reverse(chain)
	return chain, nil
}

// Chain returns the ids of the backups a restore of m reads, oldest first,
// m last.
func Chain(ctx context.Context, store cloud.Storage, m *catalog.Manifest) ([]string, error) {
	chain, err := openChain(ctx, store, m)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(chain))
	for i, l := range chain {
		ids[i] = l.m.ID
	}
	return ids, nil
}

// layerOf is the chain position of the backup id.
func (r *restorer) layerOf(id string) (int, bool) {
	for i, l := range r.chain {
		if l.m.ID == id {
			return i, true
		}
	}
	return 0, false
}

// needKey packs a path's hash with a chain position and the rebuilt
// flag: the low byte (a chain is at most 127 backups here;
// incremental_max_chain allows 100).
func (r *restorer) needKey(path string, layer int) uint64 {
	return r.hash(path)&^0xff | uint64(layer)
}

// rebuilt flags a file that the newest backup holds as changed pages: it
// is checked once rebuilt, not as its whole copy is written.
const rebuilt = 0x80

// firstLayer is the chain position from which the file at path is
// written, if the restore writes it, and whether the newest backup
// changes pages of it.
func (r *restorer) firstLayer(path string) (layer int, changed, ok bool) {
	h := r.hash(path) &^ 0xff
	i, _ := slices.BinarySearch(r.need, h)
	if i < len(r.need) && r.need[i]&^0xff == h {
		b := int(r.need[i] & 0xff)
		return b &^ rebuilt, b&rebuilt != 0, true
	}
	return 0, false, false
}

// fetchChain writes the chain, one backup after the other.
func (r *restorer) fetchChain(ctx context.Context) error {
	r.o.Progress.Stage("restoring")
	newest := len(r.chain) - 1
	for k, l := range r.chain {
		if k == newest {
			slices.Sort(r.touched)
		}
		err := eachPart(ctx, l.c.Parts(), r.o.Parallel, func(ctx context.Context, p catalog.Part, buf []byte) error {
			return eachEntry(ctx, r.o.Store, l.c, l.m, p, func(f *catalog.File, tr *tar.Reader) error {
				if f.Type != catalog.TypeFile {
					if k == newest {
						return r.entry(f, tr, buf)
					}
					return nil
				}
				first, changed, ok := r.firstLayer(f.Path)
				if !ok || first > k {
					return nil
				}
				return r.layerEntry(k, first, changed, l.m, f, tr, buf)
			})
		})
		if err != nil {
			return err
		}
		r.res.Parts += len(l.c.Parts())
	}
	if r.res.Files != r.m.FileCount {
		return fmt.Errorf("%w: backup %s: its file lists hold %d files, its manifest records %d", catalog.ErrCorrupt, r.m.ID, r.res.Files, r.m.FileCount)
	}
	return nil
}

// layerEntry writes what backup k of the chain holds of a file whose
// whole copy comes from backup first.
func (r *restorer) layerEntry(k, first int, changed bool, m *catalog.Manifest, f *catalog.File, tr *tar.Reader, buf []byte) error {
	newest := k == len(r.chain)-1
	switch {
	case k == first && f.Stored == catalog.StoredWhole:
		return r.write(f, tr, buf, !changed)
	case k == first || f.Stored == catalog.StoredWhole:
		return fmt.Errorf("%w: backup %s stores %s as %q where its successors expect %s", ErrChain, m.ID, f.Path, f.Stored, map[bool]string{true: "the whole file", false: "changes"}[k == first])
	case f.Stored == catalog.StoredPages:
		if err := r.applyPages(m, f, tr, buf); err != nil {
			return err
		}
		if !newest {
			h := r.hash(f.Path)
			r.mu.Lock()
			r.touched = append(r.touched, h)
			r.mu.Unlock()
			return nil
		}
	case !newest: // a reference: the file is as the backup before left it
		return nil
	default:
		if _, ok := slices.BinarySearch(r.touched, r.hash(f.Path)); !ok {
			// Written whole by an older backup and checked against its
			// checksum, which a reference repeats.
			return nil
		}
	}
	return r.checkRebuilt(f, buf)
}

// applyPages writes a delta entry's pages over the file and truncates it
// to the entry's size.
func (r *restorer) applyPages(m *catalog.Manifest, f *catalog.File, tr *tar.Reader, buf []byte) error {
	dst := r.local(f.Path)
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%w: backup %s has changed pages of %s, which the backups before it do not hold: %v", ErrChain, m.ID, f.Path, err)
	}
	err = writePages(out, f, tr, buf, r.o.Progress)
	if err == nil {
		err = out.Truncate(f.Size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restoring %s from backup %s: %w", f.Path, m.ID, err)
	}
	return nil
}

// writePages reads a delta entry (see basebackup/pages.go) and writes its
// pages to out; with out nil it only checks the entry's structure.
func writePages(out *os.File, f *catalog.File, r io.Reader, buf []byte, prog catalog.Progress) error {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return fmt.Errorf("%w: %s: its changed pages end early", catalog.ErrCorrupt, f.Path)
	}
	count := binary.BigEndian.Uint32(head[:])
	if int64(count) > f.Pages {
		return fmt.Errorf("%w: %s: %d changed pages in a file of %d", catalog.ErrCorrupt, f.Path, count, f.Pages)
	}
	nums := make([]byte, 4*int(count))
	if _, err := io.ReadFull(r, nums); err != nil {
		return fmt.Errorf("%w: %s: its changed pages end early", catalog.ErrCorrupt, f.Path)
	}
	page := buf[:catalog.PageSize]
	prev := int64(-1)
	for i := range int(count) {
		n := int64(binary.BigEndian.Uint32(nums[4*i:]))
		if n <= prev || n >= f.Pages {
			return fmt.Errorf("%w: %s: page number %d out of order or past the file's %d pages", catalog.ErrCorrupt, f.Path, n, f.Pages)
		}
		prev = n
		if _, err := io.ReadFull(r, page); err != nil {
			return fmt.Errorf("%w: %s: its changed pages end early", catalog.ErrCorrupt, f.Path)
		}
		if out != nil {
			if _, err := out.WriteAt(page, n*catalog.PageSize); err != nil {
				return err
			}
		}
		prog.Add(catalog.PageSize)
	}
	if n, _ := io.Copy(io.Discard, r); n > 0 {
		return fmt.Errorf("%w: %s: %d bytes after its changed pages", catalog.ErrCorrupt, f.Path, n)
	}
	return nil
}

// checkRebuilt reads a file rebuilt from several backups and compares it
// with the newest backup's entry.
func (r *restorer) checkRebuilt(f *catalog.File, buf []byte) error {
	in, err := os.Open(r.local(f.Path))
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrChain, f.Path, err)
	}
	defer in.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, in, buf)
	if err != nil {
		return fmt.Errorf("checking %s: %w", f.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != f.Size || got != f.SHA256 {
		return fmt.Errorf("%w: %s rebuilt from the chain of backup %s: %d bytes with sha256 %s, the manifest records %d bytes with %s",
			catalog.ErrCorrupt, f.Path, r.m.ID, n, got, f.Size, f.SHA256)
	}
	return nil
}
