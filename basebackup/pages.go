package basebackup

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/cellar-backup/cellar/catalog"
)

// An incremental's entry of changed pages (named Path+catalog.DeltaSuffix
// in the tar stream) holds records, in ascending page order, of
//
//	number   4 bytes, big-endian: the page's number
//	page     8192 bytes
//
// then the 4 bytes FF FF FF FF, then zeros to the entry's size. The entry
// is written as the file is read, from its first changed page on, so its
// size is what the records could take if every page from there on had
// changed; the padding compresses to next to nothing. Restore writes each
// page at its number x 8192 and gives the file the size its list entry
// records.

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

// addChanged reads the relation file f whole, hashing its pages, and
// stores what changed since the parent's version of it: a reference when
// nothing did, else the changed pages, streamed into the part as they are
// found (the entry begins at the first changed page, its size bounding
// the records that can follow, the rest padding).
func (p *partWriter) addChanged(f catalog.File, parent *parentFile, r io.ReadSeeker, buf []byte) error {
	buf = buf[:len(buf)/catalog.PageSize*catalog.PageSize]
	sum := newFileSum(f.Size)
	defer sum.close()
	hashes := make([]byte, 0, f.Pages*catalog.PageHashSize)
	var (
		started bool  // the entry's header is written
		left    int64 // of the entry's body
		rec     [4]byte
	)
	f.Type, f.Part, f.Stored, f.Base = catalog.TypeFile, p.number, catalog.StoredPages, parent.base
	start := func(first int64) error {
		left = 4 + (f.Pages-first)*catalog.PageRecordSize
		hdr := &tar.Header{Name: f.TarName(), Mode: int64(f.Mode), ModTime: f.MTime, Typeflag: tar.TypeReg, Size: left}
		if err := p.tw.WriteHeader(hdr); err != nil {
			return err
		}
		f.Offset, started = p.raw.n, true
		return nil
	}
	for remaining, page := f.Size, int64(0); remaining > 0; {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), remaining)])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			clear(buf[n:]) // it shrank as it was read: WAL replay truncates it
			n, err = int(min(int64(len(buf)), remaining)), nil
		}
		if err != nil {
			return err
		}
		sum.Write(buf[:n])
		for off := 0; off < n; off, page = off+catalog.PageSize, page+1 {
			pg := buf[off : off+catalog.PageSize]
			at := len(hashes)
			hashes = catalog.HashPage(hashes, pg)
			if page < parent.Pages && bytes.Equal(hashes[at:], parent.hashes[page*catalog.PageHashSize:(page+1)*catalog.PageHashSize]) {
				continue
			}
			if !started {
				if err := start(page); err != nil {
					return err
				}
			}
			binary.BigEndian.PutUint32(rec[:], uint32(page))
			if _, err := p.tw.Write(rec[:]); err != nil {
				return err
			}
			if _, err := p.tw.Write(pg); err != nil {
				return err
			}
			left -= catalog.PageRecordSize
		}
		remaining -= int64(n)
		p.b.progress(int64(n))
	}
	f.SHA256 = sum.Sum()
	if _, err := p.blocks.Write(hashes); err != nil {
		return err
	}
	switch {
	case started:
	case f.Size == parent.Size && f.SHA256 == parent.SHA256:
		f.Stored, f.Offset = catalog.StoredRef, 0
		return p.note(f)
	case f.Size == parent.Size:
		// Equal page hashes but another checksum: trust neither, store
		// the file (its map is already written).
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return err
		}
		f.Stored, f.Base = catalog.StoredWhole, ""
		return p.writeWhole(f, r, buf)
	default: // it only shrank
		if err := start(f.Pages); err != nil {
			return err
		}
	}
	binary.BigEndian.PutUint32(rec[:], catalog.EndOfPages)
	if _, err := p.tw.Write(rec[:]); err != nil {
		return err
	}
	// The padding: zeros, which compress to next to nothing.
	clear(buf)
	for left -= 4; left > 0; {
		n, err := p.tw.Write(buf[:min(int64(len(buf)), left)])
		if err != nil {
			return err
		}
		left -= int64(n)
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
