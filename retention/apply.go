package retention

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

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
	// Objects counts the parts, their file lists, the index and the
	// manifest.
	Objects int `json:"-"`
}

// InputOf is what Decide needs of a catalog read with its WAL: each
// backup with its state, the WAL listing and the segment size. The caller
// adds the policy and the clock.
func InputOf(c *catalog.Catalog) Input {
	in := Input{WAL: c.WALNames(), WALSegmentSize: c.WALSegmentSize}
	for _, e := range c.Backups {
		b := Backup{ID: e.ID, Status: e.Status, Keep: e.Keep, Host: e.Host}
		if m := e.Manifest; m != nil {
			b.EndTime, b.Timeline, b.BeginWAL, b.EndWAL, b.Parent = m.EndTime, m.Timeline, m.BeginWAL, m.EndWAL, m.Parent
		}
		in.Backups = append(in.Backups, b)
	}
	return in
}

// backupWorkers is how many backups Execute removes at once.
const backupWorkers = 8

// Execute carries out a plan: each backup leaves the catalog first (its
// manifest and marker), then its parts and its keep marker go; then the
// WAL files, in batches. A backup goes only once the backups of the plan
// that build on it are gone (see removalRounds), so that an interrupted
// run never leaves an incremental without its parent. With dryRun it only
// counts.
func Execute(ctx context.Context, store cloud.Storage, server string, p Plan, walSizes map[string]int64, dryRun bool) (Removed, error) {
	var r Removed
	// Backups go several at once (each one's own order kept), each a
	// few requests, round after round; the results keep the plan's order.
	ids := append(append([]string(nil), p.Obsolete...), p.Failed...)
	removed := make([]RemovedBackup, len(ids))
	for _, round := range removalRounds(ids, p.BuildsOn) {
		errs := make([]error, len(ids))
		next := make(chan int)
		var wg sync.WaitGroup
		for range min(backupWorkers, len(round)) {
			wg.Go(func() {
				for i := range next {
					removed[i], errs[i] = removeBackup(ctx, store, server, ids[i], p.Reason[ids[i]], dryRun)
				}
			})
		}
		for _, i := range round {
			next <- i
		}
		close(next)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				// Not a parent of a backup that may still be there.
				return r, err
			}
		}
	}
	for _, rb := range removed {
		r.Backups = append(r.Backups, rb)
		r.Bytes += rb.Bytes
		r.Objects += rb.Objects
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

// removalRounds orders the removal of the backups ids (indexes into ids,
// in rounds): a backup comes a round after every backup of ids that
// builds on it (buildsOn names each one's parent), directly or not; those
// that no backup of ids builds on come first.
func removalRounds(ids []string, buildsOn map[string]string) [][]int {
	if len(ids) == 0 {
		return nil
	}
	at := make(map[string]int, len(ids))
	for i, id := range ids {
		at[id] = i
	}
	round := make([]int, len(ids))
	last := 0
	for i := range ids {
		// Up the chain, within ids; at most len(ids) steps.
		c := ids[i]
		for d := 1; d <= len(ids); d++ {
			j, ok := at[buildsOn[c]]
			if !ok {
				break
			}
			round[j] = max(round[j], d)
			last = max(last, d)
			c = ids[j]
		}
	}
	rounds := make([][]int, last+1)
	for i := range ids {
		rounds[round[i]] = append(rounds[round[i]], i)
	}
	return rounds
}

// RemoveBackup removes one backup: manifest and marker first, so that it
// leaves the catalog at once, then its parts and keep marker.
func RemoveBackup(ctx context.Context, store cloud.Storage, server, id, reason string) (RemovedBackup, error) {
	return removeBackup(ctx, store, server, id, reason, false)
}

func removeBackup(ctx context.Context, store cloud.Storage, server, id, reason string, dryRun bool) (RemovedBackup, error) {
	rb := RemovedBackup{ID: id, Reason: reason}
	var parts []string // and file lists and the index
	err := store.List(ctx, catalog.PartsPrefix(server, id), func(o cloud.ObjectInfo) error {
		parts = append(parts, o.Key)
		rb.Bytes += o.Size
		rb.Objects++
		if strings.Contains(path.Base(o.Key), ".tar") {
			rb.Parts++
		}
		return nil
	})
	if err != nil {
		return rb, err
	}
	rb.Objects++ // the manifest
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

// OrphanParts lists the backups that have parts in the repository but
// neither manifest nor marker in cat (a backup killed before its marker
// was written, or one whose removal was interrupted), whose newest part
// was written before before; never one that a finished backup of cat
// names as its parent.
func OrphanParts(ctx context.Context, store cloud.Storage, cat *catalog.Catalog, before time.Time) ([]string, error) {
	known := map[string]bool{}
	for _, b := range cat.Backups {
		known[b.ID] = true
		if b.Manifest != nil && b.Manifest.Parent != "" {
			known[b.Manifest.Parent] = true
		}
	}
	newest := map[string]time.Time{}
	prefix := catalog.BasePrefix(cat.Server)
	err := store.List(ctx, prefix, func(o cloud.ObjectInfo) error {
		id, _, ok := strings.Cut(strings.TrimPrefix(o.Key, prefix), "/")
		if ok && catalog.ValidBackupID(id) && !known[id] && o.ModTime.After(newest[id]) {
			newest[id] = o.ModTime
		}
		return nil
	})
	var out []string
	for id, t := range newest {
		if t.Before(before) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, err
}

// StaleChunks removes the streamed chunks (receive-wal's, synchronous) of
// segments that cat holds whole (a receive-wal that stopped before it
// cleaned them up, with archive_command pushing the segment), and of those
// whose WAL the plan p removes.
func StaleChunks(ctx context.Context, store cloud.Storage, cat *catalog.Catalog, p Plan) error {
	whole := map[string]bool{}
	for _, w := range cat.WAL {
		if w.Kind == pg.Segment {
			whole[w.Name] = true
		}
	}
	for _, name := range p.WAL {
		if w, err := pg.ParseWALName(name); err == nil && w.Kind != pg.History {
			whole[w.SegmentName()] = true
		}
	}
	return catalog.DeleteChunks(ctx, store, cat.Server, func(seg string) bool { return whole[seg] })
}

// Why a backup may not be deleted by hand.
var (
	ErrKept            = errors.New("the backup is kept")
	ErrBelowRedundancy = errors.New("below the minimum redundancy")
	ErrParent          = errors.New("incremental backups build on it")
)

// CheckDelete says whether the backup e of cat may be deleted by hand: not
// when it is kept, nor when a finished backup builds on it (see
// Dependents), nor when a finished backup's going would leave fewer than
// minimumRedundancy finished backups.
func CheckDelete(cat *catalog.Catalog, e catalog.Entry, minimumRedundancy int) error {
	if e.Keep {
		return ErrKept
	}
	if direct, _ := Dependents(cat, e.ID); len(direct) > 0 {
		return fmt.Errorf("backup %s: %w: %s", e.ID, ErrParent, strings.Join(direct, ", "))
	}
	if left := len(cat.Done()) - 1; e.Status == catalog.StatusDone && left < minimumRedundancy {
		return fmt.Errorf("deleting backup %s would leave %d backups, %w of %d", e.ID, left, ErrBelowRedundancy, minimumRedundancy)
	}
	return nil
}

// Dependents are the finished backups of cat that build on the backup id:
// those that name it as their parent (direct), and those that build on
// them in turn (indirect), each newest first, the order to delete them in.
func Dependents(cat *catalog.Catalog, id string) (direct, indirect []string) {
	children := map[string][]string{}
	for _, b := range cat.Done() {
		if m := b.Manifest; m != nil && m.Parent != "" && m.Parent != b.ID {
			children[m.Parent] = append(children[m.Parent], b.ID)
		}
	}
	seen := map[string]bool{id: true}
	direct = children[id]
	for _, c := range direct {
		seen[c] = true
	}
	for queue := slices.Clone(direct); len(queue) > 0; queue = queue[1:] {
		for _, c := range children[queue[0]] {
			if !seen[c] {
				seen[c] = true
				indirect = append(indirect, c)
				queue = append(queue, c)
			}
		}
	}
	newestFirst := func(a, b string) int { return strings.Compare(b, a) }
	slices.SortFunc(direct, newestFirst)
	slices.SortFunc(indirect, newestFirst)
	return direct, indirect
}
