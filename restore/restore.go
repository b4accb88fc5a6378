// Package restore rebuilds a data directory from a base backup in the
// repository: parts downloaded and unpacked in parallel as they stream in,
// every file checked against the manifest, tablespaces where the user
// wants them, and recovery configured to reach a target with
// restore_command.
package restore

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
)

// Errors of a restore's preconditions; the errors returned wrap them.
var (
	ErrNoSuchTablespace = errors.New("has no such tablespace")
	ErrServerRunning    = errors.New("a PostgreSQL server is running on the destination")
	ErrTablespaceInside = errors.New("is inside the data directory")
	ErrNotEmpty         = errors.New("is not empty")
)

// runningError is ErrServerRunning with the server's pid and directory.
type runningError struct {
	pid int
	dir string
}

func (e *runningError) Error() string {
	return fmt.Sprintf("a PostgreSQL server (pid %d) is running on %s: stop it before restoring there", e.pid, e.dir)
}

func (e *runningError) Is(target error) bool { return target == ErrServerRunning }

// IncompleteMarker is the file a restore leaves in the data directory
// until it is done. While it is there, global/pg_control is missing too,
// so PostgreSQL refuses to start on a half-restored directory.
const IncompleteMarker = "CELLAR_RESTORE_INCOMPLETE"

// Recovery is what restore writes to make PostgreSQL recover.
type Recovery struct {
	// Settings are written, in order, to postgresql.auto.conf, e.g.
	// {"restore_command", "cellar wal-fetch main %f %p"}.
	Settings [][2]string
	// Signal is "recovery" or "standby" (the .signal file to create), or
	// "" for none.
	Signal string
}

// Options configure a restore.
type Options struct {
	Store    cloud.Storage
	Manifest *catalog.Manifest
	// Dest is the data directory to make. It must be missing or empty,
	// unless Delta.
	Dest string
	// Parallel is the number of parts downloaded and unpacked at once.
	Parallel int
	// Tablespaces maps a tablespace name to the directory where it goes;
	// a tablespace not named goes back to its recorded location.
	Tablespaces map[string]string
	// Delta re-syncs an existing directory: files whose size and checksum
	// match the manifest stay, the others are fetched, and files the
	// backup does not have are removed.
	Delta    bool
	Recovery Recovery
	Progress catalog.Progress
	Log      *slog.Logger
}

// Result says what a restore did.
type Result struct {
	Files, Fetched, Kept, Removed int
	Bytes                         int64
	Parts                         int
}

type restorer struct {
	o       Options
	m       *catalog.Manifest
	c       *catalog.Contents
	dest    string
	spc     map[string]string // "pg_tblspc/<oid>" -> directory
	mu      sync.Mutex
	res     Result
	control bool   // pg_control was restored (beside its place)
	owner   *owner // who gets the files, when restoring as root
	// A delta restore's plan: the entries of each part to fetch, and the
	// hashes of every path the backup has (8 bytes a file).
	fetch map[int][]uint64 // part -> bit set over its list
	want  []uint64
	seed  maphash.Seed
	// An incremental's chain, oldest first (chain.go): the files to write
	// with the position of their whole copy, and those rebuilt from pages.
	chain []catalog.Link
	need  []uint64
	marks marks
}

// Run restores the backup. On error the directory stays marked incomplete;
// running again with Delta finishes it.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Progress == nil {
		o.Progress = catalog.NoProgress{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Parallel < 1 {
		o.Parallel = 1
	}
	dest, err := filepath.Abs(o.Dest)
	if err != nil {
		return Result{}, err
	}
	r := &restorer{o: o, m: o.Manifest, dest: dest, spc: map[string]string{}, seed: maphash.MakeSeed()}
	if err := r.plan(); err != nil {
		return Result{}, err
	}
	if r.chain, err = catalog.OpenChain(ctx, o.Store, r.m); err != nil {
		return Result{}, err
	}
	r.c = r.chain[len(r.chain)-1].Contents
	if err := r.prepare(ctx); err != nil {
		return Result{}, err
	}
	fetch := r.fetchParts
	if len(r.chain) > 1 {
		fetch = r.fetchChain
	}
	if err := fetch(ctx); err != nil {
		return r.res, err
	}
	if err := r.finish(); err != nil {
		return r.res, err
	}
	return r.res, nil
}

// plan maps tablespaces to their directories and checks the destination.
func (r *restorer) plan() error {
	known := map[string]bool{}
	for _, t := range r.m.Tablespaces {
		known[t.Name] = true
		loc := t.Location
		if to, ok := r.o.Tablespaces[t.Name]; ok {
			loc = to
		}
		if !filepath.IsAbs(loc) {
			return fmt.Errorf("tablespace %s: %q is not an absolute path", t.Name, loc)
		}
		r.spc["pg_tblspc/"+strconv.FormatUint(uint64(t.OID), 10)] = filepath.Clean(loc)
	}
	for name := range r.o.Tablespaces {
		if !known[name] {
			var names []string
			for n := range known {
				names = append(names, n)
			}
			sort.Strings(names)
			have := "none"
			if len(names) > 0 {
				have = strings.Join(names, ", ")
			}
			return fmt.Errorf("tablespace mapping %s: backup %s %w (it has: %s)", name, r.m.ID, ErrNoSuchTablespace, have)
		}
	}
	if pid, running := runningServer(r.dest); running {
		return &runningError{pid: pid, dir: r.dest}
	}
	dirs := []string{r.dest}
	for _, loc := range r.spc {
		if loc == r.dest || strings.HasPrefix(loc, r.dest+"/") {
			return fmt.Errorf("tablespace location %s %w %s: map the tablespace elsewhere", loc, ErrTablespaceInside, r.dest)
		}
		dirs = append(dirs, loc)
	}
	if r.o.Delta {
		return nil
	}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("restore destination %s: %w", d, err)
		}
		if len(ents) > 0 {
			what := "the destination"
			if d != r.dest {
				what = "the tablespace location"
			}
			return fmt.Errorf("%s %s %w", what, d, ErrNotEmpty)
		}
	}
	return nil
}

// runningServer reports whether a postmaster.pid in dir names a live
// process.
func runningServer(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, processAlive(pid)
}

// local is where a manifest path goes.
func (r *restorer) local(p string) string {
	for prefix, loc := range r.spc {
		if p == prefix {
			return filepath.Join(r.dest, filepath.FromSlash(p)) // the link
		}
		if rest, ok := strings.CutPrefix(p, prefix+"/"); ok {
			return filepath.Join(loc, filepath.FromSlash(rest))
		}
	}
	return filepath.Join(r.dest, filepath.FromSlash(p))
}

// prepare makes the directories, marks the restore incomplete and, for a
// delta restore, decides what to fetch and removes what the backup does
// not have.
func (r *restorer) prepare(ctx context.Context) error {
	r.owner = ownerFor(r.dest)
	if err := os.MkdirAll(r.dest, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", r.dest, err)
	}
	if err := os.Chmod(r.dest, 0o700); err != nil {
		return err
	}
	marker := filepath.Join(r.dest, IncompleteMarker)
	text := fmt.Sprintf("cellar is restoring backup %s of server %s here; this directory is not usable until it finishes.\nRun the restore again with --delta to finish it.\n", r.m.ID, r.m.Server)
	if err := os.WriteFile(marker, []byte(text), 0o600); err != nil {
		return fmt.Errorf("marking %s: %w", r.dest, err)
	}
	// Without pg_control, PostgreSQL cannot start here by accident.
	if err := os.Remove(filepath.Join(r.dest, "global", "pg_control")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, loc := range r.spc {
		if err := os.MkdirAll(loc, 0o700); err != nil {
			return fmt.Errorf("creating tablespace directory %s: %w", loc, err)
		}
	}
	if !r.o.Delta && len(r.chain) == 1 {
		r.o.Progress.Start(r.m.DataSize)
		return nil
	}
	total, err := r.planFiles(ctx)
	if err != nil {
		return err
	}
	if r.o.Delta {
		if err := r.removeExtra(); err != nil {
			return err
		}
	}
	r.o.Progress.Start(total)
	return nil
}

// planFiles reads every part's file list of the backup restored and decides
// what to write: for a delta restore, the files that differ from the one
// in place (size and checksum), several parts at once; for a chain, from
// which backup each file's whole copy comes. It returns the bytes to
// write.
func (r *restorer) planFiles(ctx context.Context) (int64, error) {
	r.o.Progress.Stage("comparing")
	chain := len(r.chain) > 1
	newest := len(r.chain) - 1
	if !chain {
		r.fetch = map[int][]uint64{}
	}
	var total int64
	err := eachPart(ctx, r.c.Parts(), r.o.Parallel, func(ctx context.Context, p catalog.Part, _ []byte) error {
		var fetch []uint64
		if !chain {
			fetch = make([]uint64, (p.Files+63)/64)
		}
		var want, need []uint64
		var bytes int64
		var files, kept, missing int
		i := 0
		err := r.c.Files(ctx, p, func(f catalog.File) error {
			defer func() { i++ }()
			if r.o.Delta {
				want = append(want, r.hash(r.local(f.Path)))
			}
			if f.Type != catalog.TypeFile {
				if _, err := os.Lstat(r.local(f.Path)); err != nil {
					missing++
				}
				return nil
			}
			files++
			if r.o.Delta && f.Path != "global/pg_control" && sameFile(r.local(f.Path), f) {
				kept++
				return nil
			}
			switch {
			case !chain:
				if i/64 < len(fetch) {
					fetch[i/64] |= 1 << (i % 64)
				}
			case f.Stored == catalog.StoredWhole:
				need = append(need, r.needKey(f.Path, newest))
			default:
				first, ok := r.layerOf(f.Base)
				if !ok || first == newest {
					return fmt.Errorf("%w: backup %s: %s builds on backup %q, which is not in its chain", catalog.ErrBrokenChain, r.m.ID, f.Path, f.Base)
				}
				need = append(need, r.needKey(f.Path, first))
			}
			bytes += f.Size
			return nil
		})
		if err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.want = append(r.want, want...)
		r.need = append(r.need, need...)
		r.res.Files += files
		r.res.Kept += kept
		total += bytes
		// Directories and links are made again in any part fetched; a
		// part with nothing to fetch or make is not read.
		if !chain && (files > kept || missing > 0) {
			r.fetch[p.Number] = fetch
		}
		return nil
	})
	slices.Sort(r.want)
	slices.Sort(r.need)
	return total, err
}

func (r *restorer) hash(p string) uint64 { return maphash.String(r.seed, p) }

// sameFile reports whether the file at path has f's size and checksum.
func sameFile(path string, f catalog.File) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != f.Size {
		return false
	}
	in, err := os.Open(path)
	if err != nil {
		return false
	}
	defer in.Close()
	h := sha256.New()
	if _, err := io.Copy(h, in); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == f.SHA256
}

// removeExtra removes, for a delta restore, what the backup does not
// have. A path is known by its 64-bit hash: a collision (about one in
// ten million restores of a million files) leaves one stray file, which
// PostgreSQL ignores.
func (r *restorer) removeExtra() error {
	keep := func(p string) bool {
		_, ok := slices.BinarySearch(r.want, r.hash(p))
		return ok
	}
	roots := []string{r.dest}
	for _, loc := range r.spc {
		roots = append(roots, loc)
	}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if p == root || p == filepath.Join(r.dest, IncompleteMarker) || keep(p) {
				return nil
			}
			for _, loc := range r.spc {
				if p == loc {
					return nil
				}
			}
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			r.res.Removed++
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("removing what the backup does not have: %w", err)
		}
	}
	return nil
}

// eachPart calls fn for each part, parallel at once (each worker with a
// buffer of its own), and stops at the first error.
func eachPart(ctx context.Context, parts []catalog.Part, parallel int, fn func(context.Context, catalog.Part, []byte) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	queue := make(chan catalog.Part, len(parts))
	for _, p := range parts {
		queue <- p
	}
	close(queue)
	var wg sync.WaitGroup
	for range max(1, parallel) {
		wg.Go(func() {
			buf := make([]byte, partBuffer)
			for p := range queue {
				if ctx.Err() != nil {
					return
				}
				if err := fn(ctx, p, buf); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// fetchParts downloads and unpacks the parts (for a delta restore, those
// that hold a file to fetch), Parallel at once.
func (r *restorer) fetchParts(ctx context.Context) error {
	r.o.Progress.Stage("restoring")
	var parts []catalog.Part
	for _, p := range r.c.Parts() {
		if r.fetch == nil || r.fetch[p.Number] != nil {
			parts = append(parts, p)
		}
	}
	r.res.Parts = len(parts)
	err := eachPart(ctx, parts, r.o.Parallel, func(ctx context.Context, p catalog.Part, buf []byte) error {
		var bits []uint64
		if r.fetch != nil {
			bits = r.fetch[p.Number]
		}
		i, files := 0, 0
		err := eachEntry(ctx, r.o.Store, r.c, r.m, p, func(f *catalog.File, tr *tar.Reader) error {
			defer func() { i++ }()
			if f.Type == catalog.TypeFile {
				files++
				if bits != nil && (i/64 >= len(bits) || bits[i/64]&(1<<(i%64)) == 0) {
					return nil // kept by a delta restore; the tar reader skips it
				}
			}
			return r.entry(f, tr, buf)
		})
		if err == nil && r.fetch == nil {
			r.mu.Lock()
			r.res.Files += files
			r.mu.Unlock()
		}
		return err
	})
	if err != nil {
		return err
	}
	if r.res.Files != r.m.FileCount {
		return fmt.Errorf("%w: backup %s: its parts hold %d files, its manifest records %d", catalog.ErrCorrupt, r.m.ID, r.res.Files, r.m.FileCount)
	}
	return nil
}

// entry restores one tar entry, checking a file against its entry.
func (r *restorer) entry(f *catalog.File, tr *tar.Reader, buf []byte) error {
	return r.write(f, tr, buf, true)
}

// write restores one tar entry; a file is checked against its entry's
// checksum if check (else its size only: a file that a later backup's
// pages change is checked once rebuilt).
func (r *restorer) write(f *catalog.File, tr *tar.Reader, buf []byte, check bool) error {
	dst := r.local(f.Path)
	switch f.Type {
	case catalog.TypeDir:
		if loc, ok := r.spc[f.Path]; ok {
			return r.link(dst, loc)
		}
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return err
		}
		return os.Chmod(dst, fs.FileMode(f.Mode)&fs.ModePerm)
	case catalog.TypeSymlink:
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		_ = os.Remove(dst)
		return os.Symlink(f.Link, dst)
	}
	if f.Path == "global/pg_control" {
		dst += ".cellar-restore" // put in place last
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	wb := &writeBack{f: out}
	sinks := []io.Writer{wb, progressWriter{r.o.Progress}}
	if check {
		sinks = append(sinks, h)
	}
	var n int64
	if f.Size <= int64(len(buf)) {
		n, err = io.CopyBuffer(io.MultiWriter(sinks...), tr, buf)
	} else {
		n, err = pipeline(tr, io.MultiWriter(sinks...))
	}
	wb.flush()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restoring %s: %w", f.Path, err)
	}
	if !check && n != f.Size {
		return fmt.Errorf("%w: %s: %d bytes, the manifest records %d", catalog.ErrCorrupt, f.Path, n, f.Size)
	}
	if err := checkFile(f, n, h); check && err != nil {
		return err
	}
	if err := os.Chmod(dst, fs.FileMode(f.Mode)&fs.ModePerm); err != nil {
		return err
	}
	_ = os.Chtimes(dst, f.MTime, f.MTime)
	r.mu.Lock()
	r.control = r.control || f.Path == "global/pg_control"
	r.res.Fetched++
	r.res.Bytes += n
	r.mu.Unlock()
	return nil
}

type progressWriter struct{ p catalog.Progress }

func (w progressWriter) Write(b []byte) (int, error) { w.p.Add(int64(len(b))); return len(b), nil }

// link makes pg_tblspc/<oid> point to a tablespace's directory.
func (r *restorer) link(dst, loc string) error {
	if cur, err := os.Readlink(dst); err == nil && cur == loc {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	_ = os.Remove(dst)
	return os.Symlink(loc, dst)
}

// finish sets directory modes, writes the tablespace map and the recovery
// settings, syncs everything, puts pg_control in place and removes the
// marker.
func (r *restorer) finish() error {
	r.o.Progress.Stage("syncing")
	if len(r.spc) > 0 {
		var lines []string
		for _, t := range r.m.Tablespaces {
			lines = append(lines, fmt.Sprintf("%d %s", t.OID, r.spc["pg_tblspc/"+strconv.FormatUint(uint64(t.OID), 10)]))
		}
		if err := os.WriteFile(filepath.Join(r.dest, "tablespace_map"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return err
		}
	}
	if err := writeRecovery(r.dest, r.m.ID, r.o.Recovery); err != nil {
		return err
	}
	syncDirs := []string{r.dest}
	for _, loc := range r.spc {
		syncDirs = append(syncDirs, loc)
	}
	if err := r.chownAll(syncDirs); err != nil {
		return err
	}
	for _, d := range syncDirs {
		if err := syncFS(d); err != nil {
			return fmt.Errorf("syncing %s: %w", d, err)
		}
	}
	control := filepath.Join(r.dest, "global", "pg_control")
	if r.control {
		if err := os.Rename(control+".cellar-restore", control); err != nil {
			return err
		}
		if err := syncFS(filepath.Join(r.dest, "global")); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(r.dest, IncompleteMarker)); err != nil {
		return err
	}
	r.o.Progress.Done()
	return syncFS(r.dest)
}

// writeRecovery appends the recovery settings to postgresql.auto.conf and
// creates the signal file.
func writeRecovery(dest, id string, rec Recovery) error {
	for _, sig := range []string{"recovery.signal", "standby.signal"} {
		_ = os.Remove(filepath.Join(dest, sig))
	}
	if len(rec.Settings) > 0 {
		auto := filepath.Join(dest, "postgresql.auto.conf")
		var b strings.Builder
		old, err := os.ReadFile(auto)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		b.Write(old)
		if len(old) > 0 && !strings.HasSuffix(string(old), "\n") {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "# Recovery settings written by cellar restore of backup %s at %s\n", id, time.Now().UTC().Format(time.RFC3339))
		for _, kv := range rec.Settings {
			fmt.Fprintf(&b, "%s = '%s'\n", kv[0], strings.ReplaceAll(kv[1], "'", "''"))
		}
		if err := os.WriteFile(auto, []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	if rec.Signal != "" {
		return os.WriteFile(filepath.Join(dest, rec.Signal+".signal"), nil, 0o600)
	}
	return nil
}

// chownAll gives the restored files to the owner, when there is one.
func (r *restorer) chownAll(roots []string) error {
	if r.owner == nil {
		return nil
	}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, r.owner.uid, r.owner.gid)
		})
		if err != nil {
			return fmt.Errorf("giving the restored files to uid %d: %w", r.owner.uid, err)
		}
	}
	return nil
}

// writeBack writes to a file and starts the disk's write-back of every
// few megabytes as they are written, so that the disk works while the
// restore goes on and the sync at the end has little left to do.
type writeBack struct {
	f          *os.File
	off, start int64
}

const writeBackEvery = 8 << 20

func (w *writeBack) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.start >= writeBackEvery {
		w.flush()
	}
	return n, err
}

func (w *writeBack) flush() {
	if w.off > w.start {
		startWriteBack(w.f, w.start, w.off-w.start)
		w.start = w.off
	}
}

// pipeline copies r to w with the reading (here: decompressing and
// untarring) on this goroutine and the writing (hashing, writing to disk)
// on another, a few chunks apart: two cores for one large file.
func pipeline(r io.Reader, w io.Writer) (int64, error) {
	const chunk, depth = 512 << 10, 4
	full := make(chan []byte, depth)
	free := make(chan []byte, depth+1)
	for range depth + 1 {
		free <- make([]byte, chunk)
	}
	werr := make(chan error, 1)
	go func() {
		var err error
		for b := range full {
			if err == nil {
				_, err = w.Write(b)
			}
			free <- b[:cap(b)]
		}
		werr <- err
	}()
	var n int64
	var rerr error
	for {
		b := <-free
		k, err := io.ReadFull(r, b)
		n += int64(k)
		if k > 0 {
			full <- b[:k]
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	close(full)
	if err := <-werr; err != nil {
		return n, err
	}
	return n, rerr
}
