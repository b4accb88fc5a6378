package wal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// The push spool remembers the segments that a call of wal-push pushed
// ahead of PostgreSQL, so that PostgreSQL's own call for one of them can
// return at once. It is a directory (PushOptions.SpoolDir) with one file
// per segment, <segment>.json, holding a pushEntry: the object's key and
// the size and SHA-256 of the file that was pushed. An entry is written
// atomically (temporary file, fsync, rename, fsync of the directory) and
// only once the object is durable in the repository.
//
// An entry is trusted only when the file still has the recorded size and
// checksum and a Stat finds the object in the repository; anything else
// (a changed file, a repository that lost the object, an unreadable entry)
// makes the call push the segment as if there were no entry. An entry is
// used once: the call PostgreSQL makes for its segment removes it. Entries
// whose segment PostgreSQL no longer has marked ready, entries older than
// spoolMaxAge and temporary files of killed runs are removed too.

const (
	// spoolMaxAge is how long a spool entry or prefetched segment is kept
	// when nobody asks for it.
	spoolMaxAge = 24 * time.Hour
	// tempMaxAge is how long a temporary file may go unmodified before it
	// counts as left behind by a killed run. A live writer touches its file
	// with every write.
	tempMaxAge = 10 * time.Minute
	// entrySuffix ends the name of a push spool entry.
	entrySuffix = ".json"
)

// pushEntry is the content of a push spool entry.
type pushEntry struct {
	Name     string    `json:"name"`
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	PushedAt time.Time `json:"pushed_at"`
}

type pushSpool struct {
	dir string
	// ready holds the segments PostgreSQL has marked ready in the
	// archive_status directory beside the pushed file; nil when there is
	// no such directory (a file pushed by hand from elsewhere).
	ready map[string]bool
	now   func() time.Time
	log   *slog.Logger
}

func newPushSpool(o PushOptions, log *slog.Logger) *pushSpool {
	sp := &pushSpool{dir: o.spoolDir(), now: o.now, log: log}
	ents, err := os.ReadDir(filepath.Join(filepath.Dir(o.Path), "archive_status"))
	if err == nil {
		sp.ready = map[string]bool{}
		for _, e := range ents {
			if name, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
				sp.ready[name] = true
			}
		}
	}
	return sp
}

func (sp *pushSpool) entryPath(name string) string {
	return filepath.Join(sp.dir, name+entrySuffix)
}

// clean removes entries nobody will ask for: those whose segment is no
// longer marked ready (PostgreSQL archived it by another call), those older
// than spoolMaxAge, and temporary files of killed runs. current, the file
// being pushed, is kept for answer to judge.
func (sp *pushSpool) clean(current string) {
	ents, err := os.ReadDir(sp.dir)
	if err != nil {
		return
	}
	now := sp.now()
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		name, age := e.Name(), now.Sub(fi.ModTime())
		var why string
		switch segment := strings.TrimSuffix(name, entrySuffix); {
		case strings.HasPrefix(name, "."):
			if age > tempMaxAge {
				why = "temporary file of a killed run"
			}
		case age > spoolMaxAge:
			why = "older than " + spoolMaxAge.String()
		case sp.ready != nil && !sp.ready[segment] && segment != current:
			why = "PostgreSQL no longer has it ready"
		}
		if why != "" {
			err := os.Remove(filepath.Join(sp.dir, name))
			sp.log.Debug("removed from the push spool", "file", name, "reason", why, "error", err)
		}
	}
}

// answer returns the result for a segment that an earlier call pushed
// ahead, if the spool remembers it and the memory checks out: the file has
// the recorded size and checksum and the object is in the repository. The
// entry is removed either way: PostgreSQL has asked for its segment.
func (sp *pushSpool) answer(ctx context.Context, o PushOptions, w pg.WALName) (PushResult, bool) {
	path := sp.entryPath(w.Name)
	b, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			sp.log.Debug("push spool entry unreadable; pushing", "wal", w.Name, "error", err)
		}
		return PushResult{}, false
	}
	defer func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			sp.log.Debug("removing a push spool entry", "file", path, "error", err)
		}
	}()
	var e pushEntry
	key := catalog.WALKey(o.Server, w)
	if err := json.Unmarshal(b, &e); err != nil || e.Name != w.Name || e.Key != key {
		sp.log.Debug("push spool entry does not describe this segment; pushing", "wal", w.Name, "entry", string(b))
		return PushResult{}, false
	}
	size, sum, err := digestFile(o.Path)
	if err != nil {
		return PushResult{}, false // the push reports it
	}
	if size != e.Size || sum != e.SHA256 {
		sp.log.Debug("the segment changed since it was pushed ahead; pushing", "wal", w.Name,
			"bytes", size, "sha256", sum, "pushed_bytes", e.Size, "pushed_sha256", e.SHA256)
		return PushResult{}, false
	}
	if _, err := o.Store.Stat(ctx, key); err != nil {
		sp.log.Debug("pushed ahead but not found in the repository; pushing again", "wal", w.Name, "key", key, "error", err)
		return PushResult{}, false
	}
	return PushResult{Name: w.Name, Key: key, AlreadyArchived: true, Size: size, SHA256: sum, FromSpool: true}, true
}

// candidates returns up to n segments after the named one that PostgreSQL
// has marked ready and that the spool does not remember yet, oldest first.
func (sp *pushSpool) candidates(after string, n int) []string {
	var names []string
	for name := range sp.ready {
		if name <= after {
			continue
		}
		if w, err := pg.ParseWALName(name); err != nil || w.Kind != pg.Segment {
			continue
		}
		if _, err := os.Stat(sp.entryPath(name)); err == nil {
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) > n {
		names = names[:n]
	}
	return names
}

// remember records a segment pushed ahead. Call it only once the object is
// durable.
func (sp *pushSpool) remember(res PushResult) error {
	if err := mkdirOwned(sp.dir); err != nil {
		return err
	}
	js, err := json.Marshal(pushEntry{Name: res.Name, Key: res.Key, Size: res.Size, SHA256: res.SHA256, PushedAt: sp.now().UTC()})
	if err != nil {
		return err
	}
	return writeAtomic(sp.entryPath(res.Name), bytes.NewReader(js))
}

// digestFile returns the size and SHA-256 of a file.
func digestFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	return catalog.Digest(f)
}

// logger returns l, or a logger that discards everything.
func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// TidySpools removes from the push and prefetch spools of a data
// directory's WAL (walDir, its pg_wal; pushDir and prefetchDir as in
// PushOptions and FetchOptions, "" for the defaults under walDir) what
// no call will use, by the rules each call applies to its own spool. It is
// for cron: after a recovery has ended, or when archiving has stopped,
// PostgreSQL makes no more calls that would tidy them. A spool this user
// may not read is left alone.
func TidySpools(walDir, pushDir, prefetchDir string, now time.Time, log *slog.Logger) {
	log = logger(log)
	probe := filepath.Join(walDir, "000000010000000000000001")
	push := newPushSpool(PushOptions{Path: probe, SpoolDir: pushDir, Now: func() time.Time { return now }}, log)
	push.clean("")
	openPrefetchSpool(spoolDir(prefetchDir, probe, "prefetch"), now, log)
}
