package retention

import (
	"context"
	"errors"
	"sync"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// Removed is what carrying out a plan removed, or would remove.
type Removed struct {
	Backups  []RemovedBackup `json:"backups"`
	WALFiles int             `json:"wal_files"`
	WALBytes int64           `json:"wal_bytes"`
	Bytes    int64           `json:"bytes_freed"`
	Objects  int             `json:"objects"`
}

// RemovedBackup is one backup removed.
type RemovedBackup struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	Parts  int    `json:"parts"`
	Bytes  int64  `json:"bytes"`
}

// Inventory is a server's catalog and WAL listing as read once, for
// callers that show it as well as decide on it.
type Inventory struct {
	// Backups is the catalog, oldest first; Input.Backups holds the same
	// backups in the same order, as Decide sees them.
	Backups  []catalog.BackupInfo
	Input    Input
	WALSizes map[string]int64 // stored size by WAL file name
}

// Gather reads what Decide needs from the repository: the catalog and the
// WAL listing, with the WAL files' stored sizes.
func Gather(ctx context.Context, store cloud.Storage, server string) (*Inventory, error) {
	list, err := catalog.ListBackups(ctx, store, server)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{Backups: list, WALSizes: map[string]int64{}}
	in := &inv.Input
	for _, b := range list {
		rb := Backup{ID: b.ID(), Status: b.Status(), Keep: b.Keep}
		if b.Started != nil {
			rb.Host = b.Started.Host
		}
		if m := b.Manifest; m != nil {
			rb.EndTime, rb.Timeline, rb.BeginWAL, rb.EndWAL = m.EndTime, m.Timeline, m.BeginWAL, m.EndWAL
		}
		in.Backups = append(in.Backups, rb)
	}
	in.WALSegmentSize = 16 << 20
	if id, err := catalog.ReadIdentity(ctx, store, server); err == nil {
		in.WALSegmentSize = id.WALSegmentSize
	} else if !errors.Is(err, cloud.ErrNotExist) {
		return nil, err
	}
	err = catalog.ListWALFiles(ctx, store, server, func(w pg.WALName, o cloud.ObjectInfo) error {
		in.WAL = append(in.WAL, w)
		inv.WALSizes[w.Name] = o.Size
		return nil
	})
	if err != nil {
		return nil, err
	}
	return inv, nil
}

// backupWorkers is how many backups Execute removes at once.
const backupWorkers = 8

// Execute carries out a plan: each backup leaves the catalog first (its
// manifest and marker), then its parts and its keep marker go; then the
// WAL files, in batches. With dryRun it only counts.
func Execute(ctx context.Context, store cloud.Storage, server string, p Plan, walSizes map[string]int64, dryRun bool) (Removed, error) {
	var r Removed
	// Backups go several at once (each one's own order kept), each a
	// few requests; the results keep the plan's order.
	ids := append(append([]string(nil), p.Obsolete...), p.Failed...)
	removed := make([]RemovedBackup, len(ids))
	errs := make([]error, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(backupWorkers, len(ids)) {
		wg.Go(func() {
			for i := range next {
				removed[i], errs[i] = removeBackup(ctx, store, server, ids[i], p.Reason[ids[i]], dryRun)
			}
		})
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, rb := range removed {
		if errs[i] != nil {
			return r, errs[i]
		}
		r.Backups = append(r.Backups, rb)
		r.Bytes += rb.Bytes
		r.Objects += rb.Parts + 1
	}
	var keys []string
	for _, name := range p.WAL {
		w, err := pg.ParseWALName(name)
		if err != nil {
			continue
		}
		keys = append(keys, catalog.WALKey(server, w))
		r.WALFiles++
		r.WALBytes += walSizes[name]
	}
	r.Bytes += r.WALBytes
	r.Objects += len(keys)
	if !dryRun {
		if err := cloud.DeleteAll(ctx, store, keys); err != nil {
			return r, err
		}
	}
	return r, nil
}

// RemoveBackup removes one backup: manifest and marker first, so that it
// leaves the catalog at once, then its parts and keep marker.
func RemoveBackup(ctx context.Context, store cloud.Storage, server, id, reason string) (RemovedBackup, error) {
	return removeBackup(ctx, store, server, id, reason, false)
}

func removeBackup(ctx context.Context, store cloud.Storage, server, id, reason string, dryRun bool) (RemovedBackup, error) {
	rb := RemovedBackup{ID: id, Reason: reason}
	var parts []string
	err := store.List(ctx, catalog.PartsPrefix(server, id), func(o cloud.ObjectInfo) error {
		parts = append(parts, o.Key)
		rb.Bytes += o.Size
		return nil
	})
	if err != nil {
		return rb, err
	}
	rb.Parts = len(parts)
	if dryRun {
		return rb, nil
	}
	if err := cloud.DeleteAll(ctx, store, []string{catalog.ManifestKey(server, id), catalog.StartedKey(server, id)}); err != nil {
		return rb, err
	}
	if err := cloud.DeleteAll(ctx, store, parts); err != nil {
		return rb, err
	}
	return rb, store.Delete(ctx, catalog.KeepKey(server, id))
}
