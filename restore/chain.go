package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cellar-backup/cellar/catalog"
)

// An incremental backup is restored from its chain, newest backup first:
// each backup's parts are read in parallel, and of each file only what the
// newest backup needs is written, each page once: the newest backup sets
// the file's size and writes its changed pages, each older one the changed
// pages that no newer one wrote, and the backup its entry names as Base
// the pages left from its whole copy. A file that had pages applied is
// hashed a chunk behind that last write and checked against the newest
// manifest's SHA-256; a whole file is checked as it is written (and a
// reference is, by the backup's rule, a file whose checksum equals its
// parent's).
//
// What restore holds is 8 bytes per file of the newest backup (a hash of
// its path and the chain position of its whole copy) and, for a file that
// some backup holds as changed pages, a bit per page.

// layerOf is the chain position of the backup id.
func (r *restorer) layerOf(id string) (int, bool) {
	for i, l := range r.chain {
		if l.Manifest.ID == id {
			return i, true
		}
	}
	return 0, false
}

// needKey packs a path's hash with a chain position in the low byte (a
// chain is at most catalog.MaxChain backups).
func (r *restorer) needKey(path string, layer int) uint64 {
	return r.hash(path)&^0xff | uint64(layer)
}

// firstLayer is the chain position from which the file at path is
// written, if the restore writes it.
func (r *restorer) firstLayer(path string) (int, bool) {
	h := r.hash(path) &^ 0xff
	i, _ := slices.BinarySearch(r.need, h)
	if i < len(r.need) && r.need[i]&^0xff == h {
		return int(r.need[i] & 0xff), true
	}
	return 0, false
}

// marks are the pages of a file already written by a newer backup of the
// chain, a bit per page, for the files that some backup holds as changed
// pages (1 bit per 8 KiB of those files).
type marks struct {
	mu    sync.Mutex
	files map[uint64]*pageMarks // path hash -> marks
}

type pageMarks struct {
	bits   []uint64
	sha256 string // what the rebuilt file must hold
}

func (m *marks) of(h uint64) *pageMarks {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.files[h]
}

func (m *marks) set(h uint64, pm *pageMarks) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.files == nil {
		m.files = map[uint64]*pageMarks{}
	}
	m.files[h] = pm
}

func (pm *pageMarks) marked(page int64) bool { return pm.bits[page/64]&(1<<(page%64)) != 0 }

// chunkPages is the most pages gathered for one write.
const chunkPages = 32

// fetchChain writes the chain newest backup first, so that each page is
// written once: a backup's changed pages go where no newer backup wrote,
// and the whole copy fills the pages left, checking the file as it goes.
func (r *restorer) fetchChain(ctx context.Context) error {
	r.o.Progress.Stage("restoring")
	newest := len(r.chain) - 1
	for k := newest; k >= 0; k-- {
		l := r.chain[k]
		err := eachPart(ctx, l.Contents.Parts(), r.o.Parallel, func(ctx context.Context, p catalog.Part, buf []byte) error {
			return eachEntry(ctx, r.o.Store, l.Contents, l.Manifest, p, func(f *catalog.File, tr *tar.Reader) error {
				if f.Type != catalog.TypeFile {
					if k == newest {
						return r.entry(f, tr, buf)
					}
					return nil
				}
				first, ok := r.firstLayer(f.Path)
				if !ok || first > k {
					return nil
				}
				return r.layerEntry(k, first, l.Manifest, f, tr, buf)
			})
		})
		if err != nil {
			return err
		}
		r.res.Parts += len(l.Contents.Parts())
	}
	if r.res.Files != r.m.FileCount {
		return fmt.Errorf("%w: backup %s: its file lists hold %d files, its manifest records %d", catalog.ErrCorrupt, r.m.ID, r.res.Files, r.m.FileCount)
	}
	return nil
}

// layerEntry writes what backup k of the chain holds of a file whose
// whole copy comes from backup first (k >= first).
func (r *restorer) layerEntry(k, first int, m *catalog.Manifest, f *catalog.File, tr *tar.Reader, buf []byte) error {
	newest := k == len(r.chain)-1
	switch {
	case k == first && f.Stored == catalog.StoredWhole:
		if pm := r.marks.of(r.hash(f.Path)); pm != nil {
			return r.fillPages(m, f, tr, pm, buf)
		}
		// Whole and checked against this backup's checksum, which the
		// newer backups' references repeat.
		return r.entry(f, tr, buf)
	case k == first || f.Stored == catalog.StoredWhole:
		return fmt.Errorf("%w: backup %s stores %s as %q where its successors expect %s", catalog.ErrBrokenChain, m.ID, f.Path, f.Stored, map[bool]string{true: "the whole file", false: "changes"}[k == first])
	case !newest && f.Stored == catalog.StoredRef:
		return nil // a newer backup set its size, an older one has its bytes
	}
	flags := os.O_RDWR
	if newest {
		// The file takes its final size; older backups fill its pages.
		flags |= os.O_CREATE
		if err := os.MkdirAll(filepath.Dir(r.local(f.Path)), 0o700); err != nil {
			return err
		}
	}
	out, err := os.OpenFile(r.local(f.Path), flags, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %s of backup %s: %v", catalog.ErrBrokenChain, f.Path, m.ID, err)
	}
	if newest {
		err = out.Truncate(f.Size)
	}
	if err == nil && f.Stored == catalog.StoredPages {
		err = r.applyPages(out, f, tr, buf)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restoring %s from backup %s: %w", f.Path, m.ID, err)
	}
	return nil
}

// applyPages writes the pages of a delta entry that no newer backup wrote
// (and that lie within the file's final size) and marks them.
func (r *restorer) applyPages(out *os.File, f *catalog.File, tr *tar.Reader, buf []byte) error {
	fi, err := out.Stat()
	if err != nil {
		return err
	}
	final := fi.Size() / catalog.PageSize
	h := r.hash(f.Path)
	pm := r.marks.of(h)
	if pm == nil {
		// The newest entry of changed pages: newer ones are references
		// with its checksum.
		pm = &pageMarks{bits: make([]uint64, (final+63)/64), sha256: f.SHA256}
		r.marks.set(h, pm)
	}
	// Pages are gathered a chunk at a time (they come in ascending order)
	// behind the first PageSize bytes of buf, which readPages reads into.
	w := chunkWriter{out: out, chunk: buf[catalog.PageSize : catalog.PageSize*(1+chunkPages)]}
	err = readPages(f, tr, buf[:catalog.PageSize], func(n int64, page []byte) error {
		r.o.Progress.Add(catalog.PageSize)
		if n >= final || pm.marked(n) {
			return nil
		}
		pm.bits[n/64] |= 1 << (n % 64)
		return w.add(n, page)
	})
	if err != nil {
		return err
	}
	return w.flush()
}

// chunkWriter gathers the pages of one chunk (in ascending order) and
// writes each run of consecutive ones at once.
type chunkWriter struct {
	out   *os.File
	chunk []byte // chunkPages pages
	at    int64  // the chunk's number
	pages []int64
}

func (w *chunkWriter) add(n int64, page []byte) error {
	if len(w.pages) > 0 && n/chunkPages != w.at {
		if err := w.flush(); err != nil {
			return err
		}
	}
	w.at = n / chunkPages
	i := n % chunkPages
	copy(w.chunk[i*catalog.PageSize:], page)
	w.pages = append(w.pages, n)
	return nil
}

func (w *chunkWriter) flush() error {
	defer func() { w.pages = w.pages[:0] }()
	// Each run of consecutive pages is one write.
	for i := 0; i < len(w.pages); {
		j := i + 1
		for j < len(w.pages) && w.pages[j] == w.pages[j-1]+1 {
			j++
		}
		lo, hi := w.pages[i]%chunkPages, w.pages[j-1]%chunkPages+1
		if _, err := w.out.WriteAt(w.chunk[lo*catalog.PageSize:hi*catalog.PageSize], w.pages[i]*catalog.PageSize); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// fillPages writes the pages of a whole copy that no newer backup wrote
// (each run of them at once). It is the last write to the file, so the
// file is final a chunk at a time behind it: a goroutine reads each
// chunk back as it is done and hashes it, and the file is checked against
// the newest entry of changed pages (whose checksum newer references
// repeat) when both are through.
func (r *restorer) fillPages(m *catalog.Manifest, f *catalog.File, tr *tar.Reader, pm *pageMarks, buf []byte) error {
	out, err := os.OpenFile(r.local(f.Path), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %s of backup %s: %v", catalog.ErrBrokenChain, f.Path, m.ID, err)
	}
	defer out.Close()
	fi, err := out.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	final := size / catalog.PageSize
	done := make(chan int64, 8) // the end of what is final
	sum := make(chan string, 1)
	go func() {
		h := sha256.New()
		rb := make([]byte, chunkPages*catalog.PageSize)
		var at int64
		for end := range done {
			for at < end {
				n, err := out.ReadAt(rb[:min(int64(len(rb)), end-at)], at)
				h.Write(rb[:n])
				at += int64(n)
				if err != nil {
					break
				}
			}
		}
		sum <- hex.EncodeToString(h.Sum(nil))
	}()
	finished := false
	defer func() {
		if !finished {
			close(done)
			<-sum
		}
	}()
	w := chunkWriter{out: out, chunk: buf[:chunkPages*catalog.PageSize]}
	for n := int64(0); n*catalog.PageSize < f.Size; n++ {
		if n%chunkPages == 0 && n > 0 {
			if err := w.flush(); err != nil {
				return fmt.Errorf("restoring %s from backup %s: %w", f.Path, m.ID, err)
			}
			done <- min(n*catalog.PageSize, size)
		}
		page := w.chunk[n%chunkPages*catalog.PageSize:][:catalog.PageSize]
		if _, err := io.ReadFull(tr, page); err != nil {
			return fmt.Errorf("%w: %s of backup %s: %v", catalog.ErrCorrupt, f.Path, m.ID, err)
		}
		r.o.Progress.Add(catalog.PageSize)
		if n < final && !pm.marked(n) {
			w.at = n / chunkPages
			w.pages = append(w.pages, n)
		}
	}
	if err := w.flush(); err != nil {
		return fmt.Errorf("restoring %s from backup %s: %w", f.Path, m.ID, err)
	}
	done <- size // pages past the whole copy's end came from newer backups
	close(done)
	finished = true
	if got := <-sum; got != pm.sha256 {
		return fmt.Errorf("%w: %s rebuilt from the chain of backup %s: %d bytes with sha256 %s, the manifest records %s",
			catalog.ErrCorrupt, f.Path, r.m.ID, size, got, pm.sha256)
	}
	r.mu.Lock()
	r.res.Fetched++
	r.mu.Unlock()
	return out.Close()
}

// readPages reads a delta entry (see basebackup/pages.go), checking its
// structure, and calls fn with each page and its number.
func readPages(f *catalog.File, r io.Reader, buf []byte, fn func(n int64, page []byte) error) error {
	var rec [4]byte
	page := buf[:catalog.PageSize]
	for prev := int64(-1); ; {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			return fmt.Errorf("%w: %s: its changed pages end early", catalog.ErrCorrupt, f.Path)
		}
		v := binary.BigEndian.Uint32(rec[:])
		if v == catalog.EndOfPages {
			break
		}
		n := int64(v)
		if n <= prev || n >= f.Pages {
			return fmt.Errorf("%w: %s: page number %d out of order or past the file's %d pages", catalog.ErrCorrupt, f.Path, n, f.Pages)
		}
		prev = n
		if _, err := io.ReadFull(r, page); err != nil {
			return fmt.Errorf("%w: %s: its changed pages end early", catalog.ErrCorrupt, f.Path)
		}
		if err := fn(n, page); err != nil {
			return err
		}
	}
	// The padding, zeros.
	for {
		k, err := r.Read(page)
		if !bytes.Equal(page[:k], zeroPage[:k]) {
			return fmt.Errorf("%w: %s: data after its changed pages", catalog.ErrCorrupt, f.Path)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

var zeroPage [catalog.PageSize]byte

// partBuffer is the buffer of each worker of eachPart: room for a chunk
// of pages and one page.
const partBuffer = (chunkPages + 1) * catalog.PageSize
