package basebackup

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// partWriter streams one part: a tar stream, compressed, uploaded as it
// is written. Nothing is visible in the repository before Close returns
// without error.
type partWriter struct {
	number int
	key    string
	tw     *tar.Writer
	raw    *counter // the tar stream, before compression
	zw     io.WriteCloser
	pw     *io.PipeWriter
	stored *counter // the compressed stream, as uploaded
	put    chan error
	b      *backup
	list   *catalog.ObjectWriter // the part's entries, in tar order
	blocks *catalog.ObjectWriter // their page hashes
}

// counter counts (and optionally hashes) what passes through it.
type counter struct {
	w   io.Writer
	n   int64
	sum hash.Hash
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.sum != nil {
		c.sum.Write(p[:n])
	}
	return n, err
}

func (b *backup) openPart(ctx context.Context, number int) (*partWriter, error) {
	key := catalog.PartKey(b.o.Server, b.id, number, b.o.Codec)
	if catalog.Sealing(b.o.Store) {
		key += catalog.SealedSuffix // age -d | zstd -d | tar -x
	}
	pr, pw := io.Pipe()
	p := &partWriter{number: number, key: key, pw: pw, put: make(chan error, 1), b: b, list: catalog.NewFileList(key), blocks: catalog.NewBlockMap(key)}
	p.stored = &counter{w: pw, sum: sha256.New()}
	zw, err := codec.NewParallelWriter(p.stored, b.o.Codec, b.o.Level, b.lim, 4)
	if err != nil {
		return nil, err
	}
	p.zw = zw
	p.raw = &counter{w: zw}
	p.tw = tar.NewWriter(p.raw)
	go func() {
		err := b.o.Store.Put(ctx, key, pr, cloud.SizeUnknown)
		pr.CloseWithError(err) // unblock the writer if the upload gave up
		p.put <- err
	}()
	return p, nil
}

// abort cancels the part: its upload fails and leaves nothing behind.
func (p *partWriter) abort(err error) {
	p.pw.CloseWithError(err)
	<-p.put
}

// note adds an entry written to the part's file list (which does not
// repeat the part's number) and to the backup's totals.
func (p *partWriter) note(f catalog.File) error {
	p.b.tally(f)
	f.Part = 0
	return p.list.Add(f)
}

// finish closes the tar and the compressed stream, waits until the part
// is durable and then stores its file list.
func (p *partWriter) finish(ctx context.Context) (catalog.Part, error) {
	err := p.tw.Close()
	if err == nil {
		err = p.zw.Close()
	}
	if err != nil {
		p.abort(err)
		return catalog.Part{}, fmt.Errorf("part %s: %w", p.key, err)
	}
	p.pw.Close()
	if err := <-p.put; err != nil {
		return catalog.Part{}, fmt.Errorf("uploading %s: %w", p.key, err)
	}
	part := catalog.Part{Number: p.number, Key: p.key, Size: p.stored.n, SHA256: hex.EncodeToString(p.stored.sum.Sum(nil)), DataSize: p.raw.n, Files: p.list.Len()}
	o := p.b.o
	blocksKey := catalog.BlockMapKey(o.Server, p.b.id, p.number)
	blocks, err := p.blocks.Store(ctx, o.Store, blocksKey)
	if err != nil {
		return part, fmt.Errorf("storing the block map %s: %w", blocksKey, err)
	}
	part.Blocks = &blocks
	listKey := catalog.FileListKey(o.Server, p.b.id, p.number)
	ref, err := p.list.Store(ctx, o.Store, listKey)
	if err != nil {
		return part, fmt.Errorf("storing the file list %s: %w", listKey, err)
	}
	part.List = &ref
	return part, nil
}

// add writes one entry of the walk to the part and its file list; a
// regular file that vanished before it was opened is left out.
func (p *partWriter) add(e entry, buf []byte) error {
	f := e.File
	if f.Type == catalog.TypeFile {
		return p.addFile(e, buf)
	}
	hdr := &tar.Header{Name: f.Path, Mode: int64(f.Mode), ModTime: f.MTime}
	switch f.Type {
	case catalog.TypeDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, f.Path+"/"
	case catalog.TypeSymlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Link
	}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	f.Part, f.Offset = p.number, p.raw.n
	return p.note(f)
}

func (p *partWriter) addFile(e entry, buf []byte) error {
	in, err := os.Open(e.abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // dropped (a table, a temporary file): WAL replay agrees
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.abs, err)
	}
	defer in.Close()
	adviseSequential(in)
	// The size recorded is the size when the directory was scanned. A file
	// that grew is read to that size (WAL replay writes the rest); one that
	// shrank is padded with zeros (WAL replay truncates it).
	f := e.File
	if pg.IsRelationPath(f.Path) && f.Size%catalog.PageSize == 0 {
		f.Pages = f.Size / catalog.PageSize
		if e.parent != nil && e.parent.Pages > 0 && e.parent.Mode == f.Mode {
			err = p.addChanged(f, e.parent, in, buf)
		} else {
			err = p.addReader(f, in, buf, p.b.progress, true)
		}
	} else {
		err = p.addReader(f, in, buf, p.b.progress, true)
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.abs, err)
	}
	return nil
}

// addReader writes the regular file f, f.Size bytes of r (padded with
// zeros if r ends early and pad), to the part and its file list.
func (p *partWriter) addReader(f catalog.File, r io.Reader, buf []byte, progress func(int64), pad bool) error {
	hdr := &tar.Header{Name: f.Path, Mode: int64(f.Mode), ModTime: f.MTime, Typeflag: tar.TypeReg, Size: f.Size}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	f.Type, f.Part, f.Offset = catalog.TypeFile, p.number, p.raw.n
	var pages *pageHasher
	if f.Pages > 0 {
		pages = &pageHasher{out: p.blocks}
	}
	sum, err := p.copyBody(f, r, buf, progress, pad, pages)
	if err != nil {
		return err
	}
	if pages != nil {
		if err := pages.flush(); err != nil {
			return err
		}
	}
	f.SHA256 = sum
	return p.note(f)
}

// copyBody writes f.Size bytes of r, after f's tar header, and returns
// their SHA-256. A source that ends early is padded with zeros when pad
// (a file that shrank while it was read: WAL replay truncates it), and is
// an error otherwise.
func (p *partWriter) copyBody(f catalog.File, r io.Reader, buf []byte, progress func(int64), pad bool, pages *pageHasher) (string, error) {
	sum := newFileSum(f.Size)
	defer sum.close()
	for left := f.Size; left > 0; {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), left)])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if !pad {
				return "", fmt.Errorf("%s ended %d bytes early", f.Path, left-int64(n))
			}
			clear(buf[n:])
			n, err = int(min(int64(len(buf)), left)), nil
		}
		if err != nil {
			return "", err
		}
		sum.Write(buf[:n])
		if pages != nil {
			pages.Write(buf[:n])
		}
		if _, err := p.tw.Write(buf[:n]); err != nil {
			return "", err
		}
		left -= int64(n)
		progress(int64(n))
	}
	return sum.Sum(), nil
}

// Parts are cut from the walk in path order, so that each part's file
// list is in path order and follows the previous part's: a reader can
// merge a backup's lists with a walk of a directory without holding
// either. A part is cut before the entry that would take it past the
// batch size (a larger file makes a part of its own) or at maxPartEntries.
const (
	firstBatchSize = 32 << 20
	maxPartEntries = 20_000
)

// batch is a run of entries, in path order, that becomes one part.
type batch struct {
	number int
	ents   []entry
	bytes  int64
}

// batchSize is the tar size at which part n is cut: small parts first, so
// that a small cluster keeps every worker busy, doubling with each round
// of Parallel parts up to PartSize.
func (b *backup) batchSize(n int) int64 {
	return min(int64(firstBatchSize)<<min((n-1)/b.o.Parallel, 20), b.o.PartSize)
}

// writeParts writes what walk emits into parts: the walk cuts batches, and
// parallel workers each write a batch as one part, then its file list. It
// returns the parts. What it holds is a few batches of entries and each
// part's file list, compressed, whatever the number of files.
func (b *backup) writeParts(ctx context.Context, walk func(emit func(entry) error) error) ([]catalog.Part, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	queue := make(chan batch)
	go func() {
		defer close(queue)
		var cur batch
		sent := 0
		send := func() error {
			cur.number = b.nextPart()
			select {
			case queue <- cur:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			cur, sent = batch{}, sent+1
			return nil
		}
		err := walk(func(e entry) error {
			if len(cur.ents) > 0 && (cur.bytes+e.Size > b.batchSize(sent+1) || len(cur.ents) >= maxPartEntries) {
				if err := send(); err != nil {
					return err
				}
			}
			cur.ents = append(cur.ents, e)
			cur.bytes += e.Size
			return nil
		})
		if err == nil && len(cur.ents) > 0 {
			err = send()
		}
		if err != nil {
			cancel(err)
		}
	}()
	var (
		mu    sync.Mutex
		parts []catalog.Part
		wg    sync.WaitGroup
	)
	for range b.o.Parallel {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for bt := range queue {
				part, err := b.writeBatch(ctx, bt, buf)
				if err != nil {
					cancel(err)
					continue // drain the queue
				}
				mu.Lock()
				parts = append(parts, part)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return parts, err
	}
	return parts, nil
}

// writeBatch writes one batch as a part and stores its file list.
func (b *backup) writeBatch(ctx context.Context, bt batch, buf []byte) (catalog.Part, error) {
	if err := context.Cause(ctx); err != nil {
		return catalog.Part{}, err
	}
	p, err := b.openPart(ctx, bt.number)
	if err != nil {
		return catalog.Part{}, err
	}
	for _, e := range bt.ents {
		err := p.add(e, buf)
		if err == nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		if err != nil {
			p.abort(err)
			return catalog.Part{}, err
		}
	}
	return p.finish(ctx)
}

// tally adds an entry stored to the backup's totals.
func (b *backup) tally(f catalog.File) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dataSize += f.Size
	if f.Type == catalog.TypeFile {
		b.fileCount++
	}
	if rest, ok := strings.CutPrefix(f.Path, "pg_tblspc/"); ok {
		oid, _, _ := strings.Cut(rest, "/")
		if b.spcSize == nil {
			b.spcSize = map[string]int64{}
		}
		b.spcSize[oid] += f.Size
	}
}

func (b *backup) nextPart() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.parts++
	return b.parts
}
