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
	"sync"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
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
	files  int
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
	pr, pw := io.Pipe()
	p := &partWriter{number: number, key: key, pw: pw, put: make(chan error, 1)}
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

// finish closes the tar and the compressed stream and waits until the
// part is durable.
func (p *partWriter) finish() (catalog.Part, error) {
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
	return catalog.Part{Number: p.number, Key: p.key, Size: p.stored.n, SHA256: hex.EncodeToString(p.stored.sum.Sum(nil)), DataSize: p.raw.n, Files: p.files}, nil
}

// add writes one entry to the part and returns its record, or ok false
// when a regular file vanished before it was opened.
func (p *partWriter) add(e entry, buf []byte, progress func(int64)) (catalog.File, bool, error) {
	f := e.File
	hdr := &tar.Header{Name: f.Path, Mode: int64(f.Mode), ModTime: f.MTime, Uname: "", Gname: ""}
	switch f.Type {
	case catalog.TypeDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, f.Path+"/"
	case catalog.TypeSymlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Link
	case catalog.TypeFile:
		return p.addFile(e, hdr, buf, progress)
	}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return f, false, err
	}
	f.Part, f.Offset = p.number, p.raw.n
	p.files++
	return f, true, nil
}

func (p *partWriter) addFile(e entry, hdr *tar.Header, buf []byte, progress func(int64)) (catalog.File, bool, error) {
	f := e.File
	in, err := os.Open(e.abs)
	if errors.Is(err, fs.ErrNotExist) {
		return f, false, nil // dropped (a table, a temporary file): WAL replay agrees
	}
	if err != nil {
		return f, false, fmt.Errorf("reading %s: %w", e.abs, err)
	}
	defer in.Close()
	adviseSequential(in)
	// The size recorded is the size when the directory was scanned. A file
	// that grew is read to that size (WAL replay writes the rest); one that
	// shrank is padded with zeros (WAL replay truncates it).
	hdr.Typeflag, hdr.Size = tar.TypeReg, f.Size
	if err := p.tw.WriteHeader(hdr); err != nil {
		return f, false, err
	}
	f.Part, f.Offset = p.number, p.raw.n
	f.SHA256, err = p.copyBody(f, in, buf, progress, true)
	if err != nil {
		return f, false, fmt.Errorf("reading %s: %w", e.abs, err)
	}
	p.files++
	return f, true, nil
}

// copyBody writes f.Size bytes of r, after f's tar header, and returns
// their SHA-256. A source that ends early is padded with zeros when pad
// (a file that shrank while it was read: WAL replay truncates it), and is
// an error otherwise.
func (p *partWriter) copyBody(f catalog.File, r io.Reader, buf []byte, progress func(int64), pad bool) (string, error) {
	sum := sha256.New()
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
		if _, err := p.tw.Write(buf[:n]); err != nil {
			return "", err
		}
		left -= int64(n)
		progress(int64(n))
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// writeParts writes the regular files into parts with parallel workers,
// each filling a part up to the part size and then starting the next one.
// It returns the files' records and the parts.
func (b *backup) writeParts(ctx context.Context, files []entry) ([]catalog.File, []catalog.Part, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	queue := make(chan entry)
	go func() {
		defer close(queue)
		for _, e := range files {
			select {
			case queue <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		mu      sync.Mutex
		records []catalog.File
		parts   []catalog.Part
		wg      sync.WaitGroup
	)
	finish := func(p *partWriter) error {
		part, err := p.finish()
		if err != nil {
			cancel(err)
			return err
		}
		mu.Lock()
		parts = append(parts, part)
		mu.Unlock()
		return nil
	}
	for range b.o.Parallel {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			var p *partWriter
			fail := func(err error) {
				if p != nil {
					p.abort(err)
				}
				cancel(err)
			}
			for e := range queue {
				if p == nil {
					var err error
					if p, err = b.openPart(ctx, b.nextPart()); err != nil {
						fail(err)
						return
					}
				}
				rec, ok, err := p.add(e, buf, b.progress)
				if err != nil {
					fail(err)
					return
				}
				if ok {
					mu.Lock()
					records = append(records, rec)
					mu.Unlock()
				}
				if p.raw.n >= b.o.PartSize {
					err := finish(p)
					p = nil
					if err != nil {
						return
					}
				}
			}
			if p != nil {
				if ctx.Err() != nil {
					p.abort(context.Cause(ctx))
					return
				}
				_ = finish(p)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, parts, err
	}
	return records, parts, nil
}

func (b *backup) nextPart() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.parts++
	return b.parts
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
