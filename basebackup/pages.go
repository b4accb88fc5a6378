package basebackup

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/cellar-backup/cellar/catalog"
)

// An incremental's entry of changed pages (named Path+catalog.DeltaSuffix
// in the tar stream) holds
//
//	count    4 bytes, big-endian: the number of pages that follow
//	numbers  count x 4 bytes, big-endian, ascending: their page numbers
//	pages    count x 8192 bytes: the pages
//
// Restore writes each page at its number x 8192 over the file the chain
// built so far, then truncates the file to the entry's size.

// pageHasher hashes what is written through it page by page into a block
// map.
type pageHasher struct {
	out  io.Writer
	page []byte // a partial page
	sums []byte
}

func (h *pageHasher) Write(p []byte) (int, error) {
	n := len(p)
	if len(h.page) > 0 {
		k := min(len(p), catalog.PageSize-len(h.page))
		h.page = append(h.page, p[:k]...)
		p = p[k:]
		if len(h.page) == catalog.PageSize {
			h.sums = catalog.HashPage(h.sums, h.page)
			h.page = h.page[:0]
		}
	}
	for len(p) >= catalog.PageSize {
		h.sums = catalog.HashPage(h.sums, p[:catalog.PageSize])
		p = p[catalog.PageSize:]
	}
	h.page = append(h.page, p...)
	if len(h.sums) >= 64<<10 {
		if _, err := h.out.Write(h.sums); err != nil {
			return 0, err
		}
		h.sums = h.sums[:0]
	}
	return n, nil
}

// flush writes the hashes left (a file is whole pages: nothing is left of
// a partial one).
func (h *pageHasher) flush() error {
	if len(h.page) > 0 {
		return fmt.Errorf("internal error: %d bytes of a partial page", len(h.page))
	}
	_, err := h.out.Write(h.sums)
	h.sums = h.sums[:0]
	return err
}

// pageSpool holds the changed pages of one file until the file has been
// read whole: in memory up to spoolMemory, then in an unlinked temporary
// file, so that memory stays bounded however much of a file changed.
type pageSpool struct {
	mem  bytes.Buffer
	file *os.File
	n    int64 // bytes in file
}

const spoolMemory = 8 << 20

func (s *pageSpool) reset() {
	s.mem.Reset()
	s.n = 0
}

func (s *pageSpool) Write(p []byte) (int, error) {
	if s.file == nil && s.mem.Len()+len(p) <= spoolMemory {
		return s.mem.Write(p)
	}
	if s.file == nil {
		f, err := os.CreateTemp("", "cellar-pages-*")
		if err != nil {
			return 0, fmt.Errorf("a temporary file for changed pages: %w", err)
		}
		_ = os.Remove(f.Name())
		s.file = f
	}
	n, err := s.file.WriteAt(p, s.n)
	s.n += int64(n)
	return n, err
}

// reader reads back what was written since reset.
func (s *pageSpool) reader() io.Reader {
	if s.file == nil || s.n == 0 {
		return bytes.NewReader(s.mem.Bytes())
	}
	return io.MultiReader(bytes.NewReader(s.mem.Bytes()), io.NewSectionReader(s.file, 0, s.n))
}

func (s *pageSpool) close() {
	if s != nil && s.file != nil {
		s.file.Close()
		s.file = nil
	}
}

// addChanged reads the relation file f whole, hashing its pages, and
// stores what changed since the parent's version of it: a reference when
// nothing did, the changed pages when some did, the file when all did.
func (p *partWriter) addChanged(f catalog.File, parent *parentFile, r io.ReadSeeker, buf []byte) error {
	if p.spool == nil {
		p.spool = &pageSpool{}
	}
	sp := p.spool
	sp.reset()
	buf = buf[:len(buf)/catalog.PageSize*catalog.PageSize]
	sum := newFileSum(f.Size)
	summed := false
	defer func() {
		if !summed {
			sum.close()
		}
	}()
	hashes := make([]byte, 0, f.Pages*catalog.PageHashSize)
	var changed []uint32
	for left, page := f.Size, int64(0); left > 0; {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), left)])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			clear(buf[n:]) // it shrank as it was read: WAL replay truncates it
			n, err = int(min(int64(len(buf)), left)), nil
		}
		if err != nil {
			return err
		}
		sum.Write(buf[:n])
		for off := 0; off < n; off, page = off+catalog.PageSize, page+1 {
			pg := buf[off : off+catalog.PageSize]
			at := len(hashes)
			hashes = catalog.HashPage(hashes, pg)
			if page >= parent.Pages || !bytes.Equal(hashes[at:], parent.hashes[page*catalog.PageHashSize:(page+1)*catalog.PageHashSize]) {
				changed = append(changed, uint32(page))
				if _, err := sp.Write(pg); err != nil {
					return err
				}
			}
		}
		left -= int64(n)
		p.b.progress(int64(n))
	}
	f.SHA256, summed = sum.Sum(), true
	if _, err := p.blocks.Write(hashes); err != nil {
		return err
	}
	f.Type, f.Part = catalog.TypeFile, p.number
	switch {
	case len(changed) == 0 && f.Size == parent.Size && f.SHA256 == parent.SHA256:
		f.Stored, f.Base = catalog.StoredRef, parent.base
		return p.note(f)
	case len(changed) == 0 && f.Size == parent.Size:
		// Equal page hashes but another checksum: trust neither, store
		// the file (its map is already written).
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return err
		}
		return p.writeWhole(f, r, buf)
	case int64(len(changed)) == f.Pages:
		return p.writeWhole(f, sp.reader(), buf)
	}
	f.Stored, f.Base = catalog.StoredPages, parent.base
	body := 4 + 4*int64(len(changed)) + int64(len(changed))*catalog.PageSize
	hdr := &tar.Header{Name: f.TarName(), Mode: int64(f.Mode), ModTime: f.MTime, Typeflag: tar.TypeReg, Size: body}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	f.Offset = p.raw.n
	head := binary.BigEndian.AppendUint32(make([]byte, 0, 4+4*len(changed)), uint32(len(changed)))
	for _, n := range changed {
		head = binary.BigEndian.AppendUint32(head, n)
	}
	if _, err := p.tw.Write(head); err != nil {
		return err
	}
	if _, err := io.CopyBuffer(p.tw, sp.reader(), buf); err != nil {
		return err
	}
	return p.note(f)
}

// writeWhole writes f, whose checksum and block map are known, whole from
// r.
func (p *partWriter) writeWhole(f catalog.File, r io.Reader, buf []byte) error {
	hdr := &tar.Header{Name: f.Path, Mode: int64(f.Mode), ModTime: f.MTime, Typeflag: tar.TypeReg, Size: f.Size}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	f.Offset = p.raw.n
	sum := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(p.tw, sum), io.LimitReader(r, f.Size), buf)
	if err != nil {
		return err
	}
	if n != f.Size || hex.EncodeToString(sum.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%s changed between two reads of one backup: %d bytes with another checksum", f.Path, n)
	}
	return p.note(f)
}
