package wal

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// Timeline summarises the archived WAL of one timeline.
type Timeline struct {
	Timeline uint32 `json:"timeline"`
	First    string `json:"first,omitempty"`
	Last     string `json:"last,omitempty"`
	Segments int    `json:"segments"`
	// Size is the WAL's own size (segments x segment size); StoredSize is
	// what the repository holds for them, compressed.
	Size       int64   `json:"size"`
	StoredSize int64   `json:"stored_size"`
	Ratio      float64 `json:"compression_ratio"`
	Partial    int     `json:"partial_segments"`
	Backup     int     `json:"backup_files"`
	History    bool    `json:"history_file"`
	Gaps       []Gap   `json:"gaps"`
}

// Gap is a run of missing segments between two archived ones.
type Gap struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Count uint64 `json:"segments"`
}

// ListWAL summarises a server's archived WAL per timeline, in timeline
// order, from one paged listing of the server's WAL prefix.
func ListWAL(ctx context.Context, store cloud.Storage, server string) ([]Timeline, error) {
	segSize := int64(16 << 20)
	if id, err := catalog.ReadIdentity(ctx, store, server); err == nil {
		segSize = id.WALSegmentSize
	} else if !errors.Is(err, cloud.ErrNotExist) {
		return nil, err
	}
	byTL := map[uint32]*Timeline{}
	last := map[uint32]uint64{}
	get := func(tl uint32) *Timeline {
		t, ok := byTL[tl]
		if !ok {
			t = &Timeline{Timeline: tl, Gaps: []Gap{}}
			byTL[tl] = t
		}
		return t
	}
	err := catalog.ListWALFiles(ctx, store, server, func(w pg.WALName, o cloud.ObjectInfo) error {
		name := w.Name
		t := get(w.Timeline)
		t.StoredSize += o.Size
		switch w.Kind {
		case pg.History:
			t.History = true
			return nil
		case pg.Backup:
			t.Backup++
			return nil
		case pg.Partial:
			t.Partial++
			return nil
		}
		// Keys list in segment order within a timeline.
		n := w.SegNo(segSize)
		if t.Segments > 0 && n > last[w.Timeline]+1 {
			t.Gaps = append(t.Gaps, Gap{
				From:  pg.SegmentNameOf(w.Timeline, last[w.Timeline]+1, segSize),
				To:    pg.SegmentNameOf(w.Timeline, n-1, segSize),
				Count: n - last[w.Timeline] - 1,
			})
		}
		if t.Segments == 0 {
			t.First = name
		}
		t.Last = name
		t.Segments++
		t.Size += segSize
		last[w.Timeline] = n
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]Timeline, 0, len(byTL))
	for _, t := range byTL {
		if t.StoredSize > 0 && t.Size > 0 {
			t.Ratio = float64(t.Size) / float64(t.StoredSize)
		}
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Timeline < out[j].Timeline })
	return out, nil
}

// WaitArchived waits until the WAL file name is in the repository, looking
// twice a second, or until ctx ends (its error then).
func WaitArchived(ctx context.Context, store cloud.Storage, server, name string) error {
	w, err := pg.ParseWALName(name)
	if err != nil {
		return err
	}
	key := catalog.WALKey(server, w)
	for {
		_, err := store.Stat(ctx, key)
		if err == nil {
			return nil
		}
		if !errors.Is(err, cloud.ErrNotExist) && ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
