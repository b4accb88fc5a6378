package catalog

import (
	"context"
	"errors"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

// Results of a restore drill.
const (
	DrillOK      = "OK"
	DrillFailed  = "FAILED"
	DrillRunning = "RUNNING"
)

// Drill is the record of one restore drill: a backup restored into a
// scratch directory, PostgreSQL started on it and recovered to a target,
// and a query run. A drill writes it RUNNING when it starts and rewrites it
// with its result when it ends; a RUNNING record whose process is gone is a
// drill that was killed.
type Drill struct {
	ID     string `json:"id"` // the start time, e.g. 20261203T150405.123Z
	Server string `json:"server"`
	Backup string `json:"backup"`
	// Target describes the recovery target ("end of WAL", "time
	// 2026-12-01 10:00:00+00", ...).
	Target    string    `json:"target"`
	Result    string    `json:"result"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	BeginTime time.Time `json:"begin_time"`
	EndTime   time.Time `json:"end_time,omitzero"`
	// Durations, in seconds: the files' restore, PostgreSQL's start and
	// WAL replay until the target was reached and connections accepted,
	// and the whole drill (the recovery time a disaster would take).
	RestoreSeconds float64 `json:"restore_seconds"`
	ReplaySeconds  float64 `json:"replay_seconds"`
	TotalSeconds   float64 `json:"total_seconds"`
	// The point recovery reached.
	ReachedLSN      string    `json:"reached_lsn,omitempty"`
	ReachedTime     time.Time `json:"reached_time,omitzero"`
	ReachedTimeline uint32    `json:"reached_timeline,omitempty"`
	// State is how PostgreSQL was left: "promoted" or "paused at the
	// target".
	State   string `json:"state,omitempty"`
	Amcheck string `json:"amcheck,omitempty"` // "OK", "skipped: ..." or empty when off
	Answer  string `json:"answer,omitempty"`
	Bytes   int64  `json:"bytes,omitempty"`
	Error   string `json:"error,omitempty"`
}

// DrillsPrefix is the prefix of a server's drill records.
func DrillsPrefix(server string) string { return server + "/drills/" }

// DrillKey is the key of the record of the drill id: keys list in time
// order.
func DrillKey(server, id string) string { return DrillsPrefix(server) + id + ".json" }

// drillIDLayout is a drill's id: the time it began, in UTC, to the
// millisecond (two drills may begin within a second).
const drillIDLayout = "20060102T150405.000Z"

var drillIDRe = regexp.MustCompile(`^\d{8}T\d{6}\.\d{3}Z$`)

// NewDrill records a drill that begins now, RUNNING, under a new id.
func NewDrill(ctx context.Context, store cloud.Storage, d Drill) (Drill, error) {
	for {
		d.BeginTime = time.Now().UTC()
		d.ID = d.BeginTime.Format(drillIDLayout)
		d.Result = DrillRunning
		err := PutJSON(ctx, store, DrillKey(d.Server, d.ID), "drill", d, true)
		if !errors.Is(err, cloud.ErrExist) {
			return d, err
		}
		time.Sleep(time.Millisecond)
	}
}

// WriteDrill replaces a drill's record.
func WriteDrill(ctx context.Context, store cloud.Storage, d Drill) error {
	return PutJSON(ctx, store, DrillKey(d.Server, d.ID), "drill", d, false)
}

// ValidDrillID says whether id has the form of a drill's id.
func ValidDrillID(id string) bool { return drillIDRe.MatchString(id) }

// DrillIDs lists the ids of a server's drill records, oldest first, from
// one paged listing.
func DrillIDs(ctx context.Context, store cloud.Storage, server string) ([]string, error) {
	prefix := DrillsPrefix(server)
	var ids []string
	err := store.List(ctx, prefix, func(o cloud.ObjectInfo) error {
		if id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), ".json"); ok && ValidDrillID(id) {
			ids = append(ids, id)
		}
		return nil
	})
	sort.Strings(ids)
	return ids, err
}

// ListDrills reads a server's drill records, oldest first, from one paged
// listing and a read of each of the newest limit (all when limit <= 0).
func ListDrills(ctx context.Context, store cloud.Storage, server string, limit int) ([]Drill, error) {
	ids, err := DrillIDs(ctx, store, server)
	if err != nil {
		return nil, err
	}
	if limit > 0 && len(ids) > limit {
		ids = ids[len(ids)-limit:]
	}
	return ReadDrills(ctx, store, server, ids)
}

// ReadDrills reads the records of the drills ids, several at once, in
// their order; a record removed since it was listed is left out.
func ReadDrills(ctx context.Context, store cloud.Storage, server string, ids []string) ([]Drill, error) {
	out := make([]Drill, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = GetJSON(ctx, store, DrillKey(server, id), "drill", &out[i])
			if errors.Is(errs[i], cloud.ErrNotExist) {
				errs[i] = nil // removed between the listing and now
			}
		})
	}
	wg.Wait()
	kept := out[:0]
	for i, err := range errs {
		if err != nil {
			return nil, err
		}
		if out[i].ID != "" {
			kept = append(kept, out[i])
		}
	}
	return kept, nil
}

// LastDrills returns, of drills (oldest first), the newest that finished
// and the newest that finished OK (nil when there is none).
func LastDrills(drills []Drill) (last, lastOK *Drill) {
	for i := len(drills) - 1; i >= 0; i-- {
		d := &drills[i]
		if d.Result == DrillRunning {
			continue
		}
		if last == nil {
			last = d
		}
		if d.Result == DrillOK {
			return last, d
		}
	}
	return last, nil
}
