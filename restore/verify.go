package restore

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// VerifyOptions configure a verification of a backup.
type VerifyOptions struct {
	Store    cloud.Storage
	Manifest *catalog.Manifest
	Parallel int
	// ToLatest checks the WAL on to the last segment archived on the
	// backup's timeline, not only to the backup's end.
	ToLatest bool
	Progress catalog.Progress
}

// Problem is one thing found wrong, naming the object or file.
type Problem struct {
	Object string `json:"object"`
	Error  string `json:"error"`
}

// VerifyResult is what a verification found.
type VerifyResult struct {
	Parts int `json:"parts_checked"`
	Files int `json:"files_checked"`
	WAL   int `json:"wal_segments_checked"`
	// Ancestors are the backups an incremental builds on, oldest first,
	// whose parts were checked too.
	Ancestors []string  `json:"ancestors,omitempty"`
	FirstWAL  string    `json:"first_wal"`
	LastWAL   string    `json:"last_wal"`
	Problems  []Problem `json:"problems"`
}

// Verify re-reads every part of the backup and checks each file against
// the manifest, then checks that every WAL segment from the backup's
// begin to its end (or to the last archived, with ToLatest) is in the
// repository and intact. It returns an error only when it could not do
// that; what it found wrong is in the result.
func Verify(ctx context.Context, o VerifyOptions) (VerifyResult, error) {
	if o.Progress == nil {
		o.Progress = catalog.NoProgress{}
	}
	m := o.Manifest
	res := VerifyResult{Problems: []Problem{}}
	var mu sync.Mutex
	add := func(obj string, err error) {
		mu.Lock()
		res.Problems = append(res.Problems, Problem{obj, err.Error()})
		mu.Unlock()
	}
	// An incremental's chain: the backups it builds on, then itself.
	chain, err := catalog.OpenChain(ctx, o.Store, m)
	if err != nil {
		var ce *catalog.ChainError
		if ctx.Err() != nil || !errors.As(err, &ce) {
			return res, err
		}
		add(ce.Key, ce.Err)
		return res, nil
	}
	var total int64
	for _, l := range chain {
		for _, p := range l.Contents.Parts() {
			total += p.DataSize
		}
	}
	o.Progress.Start(total)
	for i, l := range chain {
		self := i == len(chain)-1
		if !self {
			res.Ancestors = append(res.Ancestors, l.Manifest.ID)
		}
		// A part found wrong is a problem, not an error: every part is read.
		err := eachPart(ctx, l.Contents.Parts(), o.Parallel, func(ctx context.Context, p catalog.Part, buf []byte) error {
			n, err := verifyPart(ctx, o.Store, l.Contents, l.Manifest, p, buf, o.Progress)
			mu.Lock()
			res.Parts++
			if self {
				res.Files += n
			}
			mu.Unlock()
			if err != nil {
				add(p.Key, err)
			}
			return nil
		})
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return res, err
		}
	}
	o.Progress.Done()
	if err := verifyWAL(ctx, o, &res, add); err != nil {
		return res, err
	}
	sort.Slice(res.Problems, func(i, j int) bool { return res.Problems[i].Object < res.Problems[j].Object })
	return res, nil
}

// verifyPart reads one part to its end and checks every entry in it
// against its file list, and returns the number of entries checked.
func verifyPart(ctx context.Context, store cloud.Storage, c *catalog.Contents, m *catalog.Manifest, p catalog.Part, buf []byte, prog catalog.Progress) (int, error) {
	var bad []string
	n := 0
	err := eachEntry(ctx, store, c, m, p, func(f *catalog.File, tr *tar.Reader) error {
		n++
		switch {
		case f.Type != catalog.TypeFile || f.Stored == catalog.StoredRef:
			return nil
		case f.Stored == catalog.StoredPages:
			// The part's checksum covers the pages; restore checks the
			// file rebuilt from them.
			if err := readPages(f, tr, buf, func(int64, []byte) error { prog.Add(catalog.PageSize); return nil }); err != nil {
				bad = append(bad, strings.TrimPrefix(err.Error(), catalog.ErrCorrupt.Error()+": "))
			}
			return nil
		}
		h := sha256.New()
		size, err := io.CopyBuffer(io.MultiWriter(h, progressWriter{prog}), tr, buf)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", catalog.ErrCorrupt, f.Path, err)
		}
		if err := checkFile(f, size, h); err != nil {
			bad = append(bad, strings.TrimPrefix(err.Error(), catalog.ErrCorrupt.Error()+": "))
		}
		return nil
	})
	if err != nil {
		bad = append(bad, strings.TrimPrefix(err.Error(), catalog.ErrCorrupt.Error()+": "))
	}
	if len(bad) > 0 {
		return n, fmt.Errorf("%w: %s", catalog.ErrCorrupt, strings.Join(bad, "; "))
	}
	return n, nil
}

// verifyWAL checks the backup's WAL, segment by segment, reading each one
// whole so that its checksum is checked.
func verifyWAL(ctx context.Context, o VerifyOptions, res *VerifyResult, add func(string, error)) error {
	m := o.Manifest
	first, err := pg.ParseWALName(m.BeginWAL)
	if err != nil {
		return err
	}
	last, err := pg.ParseWALName(m.EndWAL)
	if err != nil {
		return err
	}
	segSize := m.WALSegmentSize
	end := last.SegNo(segSize)
	if o.ToLatest {
		err := catalog.ListWALFiles(ctx, o.Store, m.Server, func(w pg.WALName, _ cloud.ObjectInfo) error {
			if w.Kind == pg.Segment && w.Timeline == m.Timeline && w.SegNo(segSize) > end {
				end = w.SegNo(segSize)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for n := first.SegNo(segSize); n <= end; n++ {
		name := pg.SegmentNameOf(m.Timeline, n, segSize)
		w, _ := pg.ParseWALName(name)
		key := catalog.WALKey(m.Server, w)
		if res.FirstWAL == "" {
			res.FirstWAL = name
		}
		res.LastWAL = name
		res.WAL++
		if err := readWAL(ctx, o.Store, key, name); err != nil {
			if errors.Is(err, cloud.ErrNotExist) {
				err = errors.New("missing from the repository")
			}
			add(name, err)
		}
	}
	return nil
}

func readWAL(ctx context.Context, store cloud.Storage, key, name string) error {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	h, err := catalog.ReadHeader(rc)
	if err != nil {
		return err
	}
	if h.Name != name {
		return fmt.Errorf("%w: the object holds %s", catalog.ErrCorrupt, h.Name)
	}
	body, err := catalog.Decode(rc, h)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(io.Discard, body)
	return err
}
