package wal

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// The prefetch spool holds segments fetched ahead of PostgreSQL's requests
// (FetchOptions.SpoolDir). Each is one file named
//
//	<segment>.<size>.<crc32c>
//
// where size is the number of bytes and crc32c their CRC-32C (Castagnoli),
// 8 hex digits. A prefetch writes a temporary file (.<segment>.cellar-tmp-*),
// reads the object to its end through the envelope's verifier (size and
// SHA-256 of the original bytes, as the repository recorded them), computes
// the CRC-32C of what it wrote, starts its write-back (without waiting for
// it), and only then renames the file to that name; so a file with a final
// name was complete and verified when it got it. Before a spooled segment
// is handed to PostgreSQL it is checked again against the size and CRC-32C
// in its name and discarded (then fetched from the repository) if it does
// not match, which also catches a copy torn by a crash; a good one is
// fsynced (its write-back long under way, this is cheap) and renamed to the
// destination (or copied, checking again, if the spool is on another
// filesystem). The second check guards the local copy against damage and
// truncation, and the CRC-32C (hardware-assisted, 1-2 ms a 16 MiB segment
// against 11 ms for SHA-256 here) keeps it off the critical path of
// recovery: PostgreSQL waits for every restore_command.
//
// Once a segment has been served, every spooled segment that PostgreSQL
// will not ask for any more goes: those of the same timeline up to the one
// served and all of other timelines (recovery has moved to this timeline).
// Files older than spoolMaxAge and temporary files of killed runs go too.

var spoolName = regexp.MustCompile(`^([0-9A-F]{24})\.([0-9]+)\.([0-9a-f]{8})$`)

// spooled is one prefetched segment in the spool.
type spooled struct {
	path   string
	name   string
	size   int64
	crc32c string
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// spoolFileName is the name of a spooled segment.
func spoolFileName(name string, size int64, crc uint32) string {
	return fmt.Sprintf("%s.%d.%08x", name, size, crc)
}

type prefetchSpool struct {
	dir      string
	files    map[string][]spooled // by segment name
	inFlight map[string]bool      // segments another process is fetching
	log      *slog.Logger
}

// inFlightName marks a segment that a prefetch is fetching right now:
// .<segment>.prefetching, created exclusively and holding the process ID
// of the prefetch, removed once the segment is spooled or the prefetch
// gave up (or as a temporary file of a killed run). A call that needs a
// segment in flight waits for that process rather than download it again.
var inFlightName = regexp.MustCompile(`^\.([0-9A-F]{24})\.prefetching$`)

func (sp *prefetchSpool) inFlightPath(name string) string {
	return filepath.Join(sp.dir, "."+name+".prefetching")
}

// openPrefetchSpool lists the spool, removing what is too old.
func openPrefetchSpool(dir string, now time.Time, log *slog.Logger) *prefetchSpool {
	sp := &prefetchSpool{dir: dir, files: map[string][]spooled{}, inFlight: map[string]bool{}, log: log}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return sp
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		name, age := e.Name(), now.Sub(fi.ModTime())
		var why string
		m := spoolName.FindStringSubmatch(name)
		switch {
		case strings.HasPrefix(name, "."):
			if age > tempMaxAge {
				why = "temporary file of a killed run"
			} else if f := inFlightName.FindStringSubmatch(name); f != nil {
				if pid := sp.inFlightBy(f[1]); pid != 0 && !processAlive(pid) {
					why = "mark of a prefetch that is gone"
				} else {
					sp.inFlight[f[1]] = true
				}
			}
		case m == nil:
			// Not ours: leave it.
		case age > spoolMaxAge:
			why = "older than " + spoolMaxAge.String()
		default:
			if !sp.add(filepath.Join(dir, name), m) {
				why = "bad size in its name"
			}
		}
		if why != "" {
			err := os.Remove(filepath.Join(dir, name))
			sp.log.Debug("removed from the prefetch spool", "file", name, "reason", why, "error", err)
		}
	}
	return sp
}

// add records the spooled file at path, whose name matched spoolName as m;
// false if the size in its name is bad.
func (sp *prefetchSpool) add(path string, m []string) bool {
	size, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return false
	}
	sp.files[m[1]] = append(sp.files[m[1]], spooled{path: path, name: m[1], size: size, crc32c: m[3]})
	return true
}

// rescan looks for spooled copies of name again.
func (sp *prefetchSpool) rescan(name string) {
	delete(sp.files, name)
	paths, _ := filepath.Glob(filepath.Join(sp.dir, name+".*"))
	for _, p := range paths {
		if m := spoolName.FindStringSubmatch(filepath.Base(p)); m != nil {
			sp.add(p, m)
		}
	}
}

// take moves the spooled segment called name to dest, after checking it.
// A spooled file that does not check out is removed. It returns the
// segment's size, and false when the spool had no good copy.
func (sp *prefetchSpool) take(name, dest string) (int64, bool) {
	files := sp.files[name]
	delete(sp.files, name)
	for _, f := range files {
		err := handOver(f, dest)
		if err == nil {
			return f.size, true
		}
		sp.log.Debug("discarded a prefetched segment; fetching it from the repository", "file", f.path, "error", err)
		os.Remove(f.path)
	}
	return 0, false
}

// handOver checks a spooled segment against the size and checksum in its
// name and moves it to dest, atomically.
func handOver(f spooled, dest string) error {
	src, err := os.Open(f.path)
	if err != nil {
		return err
	}
	c := &checkingReader{r: src, name: f.path, size: f.size, want: f.crc32c, sum: crc32.New(castagnoli)}
	_, err = io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
	if err == nil {
		// The prefetch only started the write-back; it is done by now,
		// or nearly, so this is cheap.
		err = src.Sync()
	}
	src.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(f.path, dest); err == nil {
		return syncDir(filepath.Dir(dest))
	}
	// Most likely another filesystem: copy, checking again on the way.
	src, err = os.Open(f.path)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := writeAtomic(dest, &checkingReader{r: src, name: f.path, size: f.size, want: f.crc32c, sum: crc32.New(castagnoli)}); err != nil {
		return err
	}
	return os.Remove(f.path)
}

// wanted returns the segments to prefetch after w: each of the next n
// that is neither spooled nor being fetched, or none while enough of them
// are. A call that waits for its own prefetches refills the spool only
// once the segment right after w is missing, so that it does the
// downloads for about n calls at once. With detached prefetches (refill
// early), the spool is refilled once fewer than half of the next n are
// spooled or in flight: the downloads of one refill share a process, and
// it has the replay of half the spool to finish before PostgreSQL asks.
func (sp *prefetchSpool) wanted(w pg.WALName, segSize int64, n int, refillEarly bool) []string {
	if n <= 0 || segSize < 1<<20 || segSize > 1<<30 || segSize&(segSize-1) != 0 {
		return nil
	}
	segNo := w.SegNo(segSize)
	var names []string
	for i := uint64(1); i <= uint64(n); i++ {
		name := pg.SegmentNameOf(w.Timeline, segNo+i, segSize)
		if len(sp.files[name]) == 0 && !sp.inFlight[name] {
			names = append(names, name)
		} else if i == 1 && !refillEarly {
			return nil // the spool still runs ahead of recovery
		}
	}
	if refillEarly && n-len(names) >= (n+1)/2 {
		return nil
	}
	return names
}

// prepare makes the spool directory, and reports whether prefetching can
// go on.
func (sp *prefetchSpool) prepare(o FetchOptions) bool {
	if o.SpoolDir == "" {
		// The default spool is beside Dest: never create Dest's
		// directory along with it.
		if _, err := os.Stat(filepath.Dir(o.Dest)); err != nil {
			return false
		}
	}
	if err := mkdirOwned(sp.dir); err != nil {
		sp.log.Debug("no prefetch: cannot create the spool", "dir", sp.dir, "error", err)
		return false
	}
	return true
}

// errInFlight says that another process is fetching the segment.
var errInFlight = errors.New("being prefetched by another call")

// markInFlight marks name as being fetched by process pid. A mark that
// exists already is ErrExist, unless it is pid's own.
func (sp *prefetchSpool) markInFlight(name string, pid int) error {
	f, err := os.OpenFile(sp.inFlightPath(name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) && sp.inFlightBy(name) == pid {
			return nil
		}
		return err
	}
	_ = giveToOwnerOf(f.Name(), sp.dir)
	_, err = fmt.Fprintf(f, "%d\n", pid)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// inFlightBy returns the process ID in name's mark, 0 when there is none
// (or it is unreadable: being written, or damaged).
func (sp *prefetchSpool) inFlightBy(name string) int {
	b, err := os.ReadFile(sp.inFlightPath(name))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// awaitInFlight waits while another live process is fetching name, so
// that the caller takes the segment from the spool instead of downloading
// it a second time. It returns at once when there is no such process, and
// when ctx ends.
func (sp *prefetchSpool) awaitInFlight(ctx context.Context, name string) {
	pid := sp.inFlightBy(name)
	if pid == 0 || pid == os.Getpid() || !processAlive(pid) {
		return
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := os.Stat(sp.inFlightPath(name)); err != nil {
			return
		}
		if n%100 == 99 && !processAlive(pid) {
			return // killed before it could remove its mark
		}
	}
}

// prefetch fetches one segment into the spool. ErrNotFound is the end of
// the archive.
func (sp *prefetchSpool) prefetch(ctx context.Context, o FetchOptions, name string) error {
	w, err := pg.ParseWALName(name)
	if err != nil {
		return err
	}
	if err := sp.markInFlight(name, os.Getpid()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errInFlight
		}
		return err
	}
	defer os.Remove(sp.inFlightPath(name))
	if done, _ := filepath.Glob(filepath.Join(sp.dir, name+".*")); len(done) > 0 {
		return errInFlight // spooled meanwhile
	}
	body, h, err := openWAL(ctx, o.Store, o.Server, w)
	if err != nil {
		return err
	}
	defer body.Close()
	if h.Size < 0 {
		return fmt.Errorf("%s: %w: header records size %d", name, catalog.ErrCorrupt, h.Size)
	}
	crc := crc32.New(castagnoli)
	return writeAtomicNamed(sp.dir, name, io.TeeReader(body, crc), func() string {
		return spoolFileName(name, h.Size, crc.Sum32())
	}, false)
}

// cleanPast removes the spooled segments PostgreSQL will not ask for now
// that it has w: those of w's timeline up to w, and all of other timelines.
func (sp *prefetchSpool) cleanPast(w pg.WALName) {
	for name, files := range sp.files {
		n, err := pg.ParseWALName(name)
		if err == nil && n.Timeline == w.Timeline && name > w.Name {
			continue
		}
		for _, f := range files {
			err := os.Remove(f.path)
			sp.log.Debug("removed from the prefetch spool", "file", filepath.Base(f.path), "reason", "recovery is past it", "error", err)
		}
		delete(sp.files, name)
	}
}

// checkingReader passes r through and fails at its end if the bytes do not
// have the expected size and checksum (sum's, as hex).
type checkingReader struct {
	r    io.Reader
	name string
	size int64
	want string
	sum  hash.Hash
	n    int64
}

func (c *checkingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.sum.Write(p[:n])
	c.n += int64(n)
	if err == io.EOF {
		if got := hex.EncodeToString(c.sum.Sum(nil)); c.n != c.size || got != c.want {
			return n, fmt.Errorf("%w: %s has %d bytes with checksum %s, it was spooled with %d bytes and checksum %s", catalog.ErrCorrupt, c.name, c.n, got, c.size, c.want)
		}
	}
	return n, err
}

// AwaitPrefetches waits, up to limit, until no live process prefetches
// into the spool of a data directory's pg_wal (or spoolDir when set), so
// that the directory can be removed without a prefetch writing into it
// afterwards. It reports whether none is left.
func AwaitPrefetches(spoolDir, pgWAL string, limit time.Duration) bool {
	dir := spoolDir
	if dir == "" {
		dir = filepath.Join(pgWAL, "cellar", "prefetch")
	}
	sp := &prefetchSpool{dir: dir}
	deadline := time.Now().Add(limit)
	for {
		busy := false
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if f := inFlightName.FindStringSubmatch(e.Name()); f != nil {
				if pid := sp.inFlightBy(f[1]); pid != 0 && processAlive(pid) {
					busy = true
				}
			}
		}
		if !busy {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
