package catalog

import (
	"context"
	"fmt"
	"io"

	"github.com/zeebo/blake3"
)

// A part's block map (<server>/base/<id>/part-NNNNN.blocks) holds, for each
// entry of its file list that has Pages, that many page hashes, in list
// order: the first PageHashSize bytes of the BLAKE3 hash of each PageSize
// page of the file as it was read. An incremental backup compares a
// relation file's pages with its parent's map and stores those that
// differ; content, not LSNs or times, decides.

// PageSize is PostgreSQL's block size, the unit of an incremental backup.
const PageSize = 8192

// PageHashSize is the size of a page's hash in a block map.
const PageHashSize = 16

const typeBlockMap = "block-map"

// An entry of changed pages (StoredPages, named Path+DeltaSuffix) holds
// records of a 4-byte big-endian page number and the page, in ascending
// page order, then EndOfPages, then zeros to the tar entry's size.
const (
	PageRecordSize = 4 + PageSize
	EndOfPages     = 0xFFFFFFFF
)

// BlockMapKey is the key of the block map of part n of a backup.
func BlockMapKey(server, id string, n int) string {
	return fmt.Sprintf("%spart-%05d.blocks", PartsPrefix(server, id), n)
}

// NewBlockMap starts the block map of the part stored under key.
func NewBlockMap(key string) *ObjectWriter { return newObjectWriter(typeBlockMap, key) }

// HashPage appends the hash of page to dst.
func HashPage(dst, page []byte) []byte {
	sum := blake3.Sum256(page)
	return append(dst, sum[:PageHashSize]...)
}

// FilesWithBlocks calls fn for each entry of part p with its page hashes
// (nil for an entry without; fn may keep them). Both objects' checksums
// are checked at their ends: an error wrapping ErrCorrupt then, after fn
// has seen the entries.
func (c *Contents) FilesWithBlocks(ctx context.Context, p Part, fn func(File, []byte) error) error {
	if p.Blocks == nil {
		return fmt.Errorf("part %s has no block map", p.Key)
	}
	return readObject(ctx, c.store, *p.Blocks, typeBlockMap, func(blocks io.Reader) error {
		err := c.Files(ctx, p, func(f File) error {
			var hashes []byte
			if f.Pages > 0 {
				if f.Pages > 1<<40/PageHashSize {
					return fmt.Errorf("%w: %s has %d pages", ErrCorrupt, f.Path, f.Pages)
				}
				hashes = make([]byte, f.Pages*PageHashSize)
				if _, err := io.ReadFull(blocks, hashes); err != nil {
					return fmt.Errorf("%s: %w: its block map ends before the hashes of %s", p.Blocks.Key, ErrCorrupt, f.Path)
				}
			}
			return fn(f, hashes)
		})
		if err != nil {
			return err
		}
		if n, _ := io.Copy(io.Discard, blocks); n > 0 {
			return fmt.Errorf("%s: %w: %d bytes more than its file list's pages", p.Blocks.Key, ErrCorrupt, n)
		}
		return nil
	})
}
