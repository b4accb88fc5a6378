// Package fs is the local-directory repository backend (file:///abs/path).
//
// Every write is atomic: the data goes to a hidden temporary file in the
// destination directory, is fsynced, and is then renamed (Put) or hard-linked
// without replacing (Create) to its name, and the directory is fsynced. A
// reader therefore sees an object whole or not at all, and a crash leaves at
// most a hidden temporary file that List never shows.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

// tempPrefix starts the names of files being written. List skips them.
const tempPrefix = ".cellar-tmp-"

// Config configures a local-directory repository.
type Config struct {
	// Root is the absolute path of the repository directory. It is created
	// on the first write if missing.
	Root string
	// Owner, when set, owns every file and directory the repository
	// creates: a process running as root gives them to the user that
	// PostgreSQL's archive_command runs as, so that both can go on
	// using the repository. It needs the privilege to chown.
	Owner *Owner
}

// Owner is a numeric user and group.
type Owner struct{ UID, GID int }

// Storage is a repository in a local directory.
//
// Modes follow the repository's top directory, whatever the umask of the
// user who writes: a directory is made with the top directory's mode, a
// file with its read and write bits. A repository in a directory of mode
// 0700 stays private to its owner; one in a directory of mode 2750 owned
// by a group is readable by that group (a monitoring user running check),
// one of mode 2770 is writable by it too. A top directory that does not
// exist yet is made 0700.
type Storage struct {
	root  string
	owner *Owner
	// dirMode and fileMode are the modes of what the repository makes.
	dirMode, fileMode fs.FileMode
}

// ParseURL returns the directory named by a file:///abs/path URL.
func ParseURL(u *url.URL) (string, error) {
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file repository URL %q names host %q: use file:///absolute/path", u.Redacted(), u.Host)
	}
	if u.Path == "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("file repository URL %q needs an absolute path: use file:///absolute/path", u.Redacted())
	}
	return filepath.Clean(u.Path), nil
}

// New opens the repository in cfg.Root.
func New(_ context.Context, cfg Config) (*Storage, error) {
	if !filepath.IsAbs(cfg.Root) {
		return nil, fmt.Errorf("file repository path %q is not absolute", cfg.Root)
	}
	if fi, err := os.Stat(cfg.Root); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("file repository path %q is not a directory", cfg.Root)
	}
	st := &Storage{root: filepath.Clean(cfg.Root), owner: cfg.Owner, dirMode: 0o700, fileMode: 0o600}
	if fi, err := os.Stat(cfg.Root); err == nil {
		st.dirMode = fi.Mode().Perm() | 0o700 | fi.Mode()&fs.ModeSetgid
		st.fileMode = fi.Mode().Perm()&0o666 | 0o600
	}
	return st, nil
}

var (
	_ cloud.Storage = (*Storage)(nil)
	_ cloud.Creator = (*Storage)(nil)
)

// path is the file of key. The key is validated here too, beside
// cloud.Checked: a key that could name a file outside the root (../) is
// never opened, whoever calls.
func (s *Storage) path(key string) (string, error) {
	if err := cloud.ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put writes the object atomically, replacing any object under key.
func (s *Storage) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.write(ctx, key, r, size, false)
}

// Create writes the object only if key does not exist yet.
func (s *Storage) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.write(ctx, key, r, size, true)
}

func (s *Storage) write(ctx context.Context, key string, r io.Reader, size int64, exclusive bool) error {
	op := "put"
	if exclusive {
		op = "create"
	}
	name, err := s.path(key)
	if err != nil {
		return cloud.OpError(op, key, err)
	}
	if exclusive {
		// Fail early without reading the stream when the object exists;
		// the link below is what makes it safe against races.
		if _, err := os.Lstat(name); err == nil {
			return cloud.OpError(op, key, cloud.ErrExist)
		}
	}
	dir := filepath.Dir(name)
	if err := s.mkdirAll(dir); err != nil {
		return cloud.OpError(op, key, translate(err))
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return cloud.OpError(op, key, translate(err))
	}
	if err := s.own(tmp.Name(), tmp.Chmod, s.fileMode); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return cloud.OpError(op, key, err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	n, err := io.CopyBuffer(tmp, cloud.ContextReader(ctx, r), make([]byte, 1<<20))
	if err != nil {
		return cloud.OpError(op, key, err)
	}
	if err := cloud.CheckSize(n, size); err != nil {
		return cloud.OpError(op, key, err)
	}
	if err := tmp.Sync(); err != nil {
		return cloud.OpError(op, key, err)
	}
	if err := tmp.Close(); err != nil {
		return cloud.OpError(op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return cloud.OpError(op, key, err)
	}
	if exclusive {
		err = os.Link(tmp.Name(), name)
		if errors.Is(err, fs.ErrExist) {
			return cloud.OpError(op, key, cloud.ErrExist)
		}
		if err == nil {
			_ = os.Remove(tmp.Name())
		}
	} else {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		return cloud.OpError(op, key, err)
	}
	committed = true
	return cloud.OpError(op, key, syncDir(dir))
}

// mkdirAll makes dir and its missing parents, each with the repository's
// directory mode and owned by the configured owner.
func (s *Storage) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := s.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return s.own(dir, func(m fs.FileMode) error { return os.Chmod(dir, m) }, s.dirMode)
}

// own gives what the repository made at path its mode (with chmod, which
// the umask does not touch) and its owner, when one is configured. The
// owner comes first: a chown may clear the set-group-ID bit.
func (s *Storage) own(path string, chmod func(fs.FileMode) error, mode fs.FileMode) error {
	if s.owner != nil {
		if err := os.Lchown(path, s.owner.UID, s.owner.GID); err != nil {
			return err
		}
	}
	if mode == 0o600 || mode == 0o700 {
		return nil // what Mkdir and CreateTemp made already
	}
	return chmod(mode)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// Get opens the object.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	name, err := s.path(key)
	if err != nil {
		return nil, cloud.OpError("get", key, err)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, cloud.OpError("get", key, translate(err))
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		_ = f.Close()
		return nil, cloud.OpError("get", key, cloud.ErrNotExist)
	}
	// Only Read and Close, so that io.Copy cannot bypass the context
	// check through (*os.File).WriteTo.
	return cloud.ContextReadCloser(ctx, f), nil
}

// Stat describes the object.
func (s *Storage) Stat(_ context.Context, key string) (cloud.ObjectInfo, error) {
	name, err := s.path(key)
	if err != nil {
		return cloud.ObjectInfo{}, cloud.OpError("stat", key, err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		return cloud.ObjectInfo{}, cloud.OpError("stat", key, translate(err))
	}
	if fi.IsDir() {
		return cloud.ObjectInfo{}, cloud.OpError("stat", key, cloud.ErrNotExist)
	}
	return cloud.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the directory tree under prefix in lexical key order.
func (s *Storage) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	// Start in the deepest directory that the prefix names whole.
	base := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		base = prefix[:i]
	}
	if base != "" {
		if err := cloud.ValidKey(base); err != nil {
			return cloud.OpError("list", prefix, err)
		}
	}
	err := s.walk(ctx, base, prefix, fn)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// walk lists directory dir (a key prefix without trailing slash, "" for the
// root) and calls fn for each file whose key starts with prefix, in the
// order of their full keys.
func (s *Storage) walk(ctx context.Context, dir, prefix string, fn func(cloud.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(dir)))
	if err != nil {
		if dir != "" && errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return err
	}
	type item struct {
		key string // full key; directories end with a slash
		ent fs.DirEntry
	}
	items := make([]item, 0, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		k := e.Name()
		if dir != "" {
			k = dir + "/" + k
		}
		if e.IsDir() {
			k += "/"
			// Descend only where keys with the prefix can be.
			if !strings.HasPrefix(k, prefix) && !strings.HasPrefix(prefix, k) {
				continue
			}
		} else if !strings.HasPrefix(k, prefix) {
			continue
		}
		items = append(items, item{k, e})
	}
	// Sorting with the trailing slash gives the order of the full keys.
	sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
	for _, it := range items {
		if it.ent.IsDir() {
			if err := s.walk(ctx, strings.TrimSuffix(it.key, "/"), prefix, fn); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		fi, err := it.ent.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted while listing
		}
		if err != nil {
			return cloud.OpError("list", it.key, err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if err := fn(cloud.ObjectInfo{Key: it.key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the object; a missing object is not an error.
func (s *Storage) Delete(_ context.Context, key string) error {
	name, err := s.path(key)
	if err != nil {
		return cloud.OpError("delete", key, err)
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return cloud.OpError("delete", key, translate(err))
	}
	return nil
}

// CleanTemp removes the temporary files of interrupted writes (a killed
// process's) under prefix, a directory ("main/") or "" for all, last
// changed before before.
func (s *Storage) CleanTemp(ctx context.Context, prefix string, before time.Time) (int, error) {
	n := 0
	err := filepath.WalkDir(filepath.Join(s.root, filepath.FromSlash(prefix)), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		if info, err := d.Info(); err == nil && info.ModTime().Before(before) && os.Remove(path) == nil {
			n++
		}
		return nil
	})
	return n, err
}

// Close does nothing.
func (s *Storage) Close() error { return nil }

// String names the repository.
func (s *Storage) String() string { return "file://" + s.root }

func translate(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: %v", cloud.ErrNotExist, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w (check the permissions of the repository directory for the user running cellar): %v", cloud.ErrPermission, err)
	}
	return err
}
