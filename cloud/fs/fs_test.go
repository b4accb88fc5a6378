package fs_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/fs"
	"github.com/cellar-backup/cellar/cloud/storagetest"
)

func newStorage(t *testing.T) cloud.Storage {
	s, err := fs.New(context.Background(), fs.Config{Root: filepath.Join(t.TempDir(), "repo")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The file backend writes through a 1 MiB copy buffer; it is given the
// same nominal part size and concurrency as the cloud backends so that
// the suite's sizes match.
var opts = storagetest.Options{PartSize: 16 << 20, Concurrency: 4}

func TestConformance(t *testing.T) { storagetest.Run(t, newStorage, opts) }

func TestMemoryBound(t *testing.T) { storagetest.RunMemoryBound(t, newStorage(t), opts) }

func BenchmarkStorage(b *testing.B) {
	s, err := fs.New(context.Background(), fs.Config{Root: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	storagetest.Bench(b, s)
}

func TestNoTempFilesLeft(t *testing.T) {
	root := t.TempDir()
	s, _ := fs.New(context.Background(), fs.Config{Root: root})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "a/b", strings.NewReader("data"), 4); err == nil {
		t.Fatal("Put with a cancelled context succeeded")
	}
	if err := s.Put(context.Background(), "a/c", strings.NewReader("data"), 5); err == nil {
		t.Fatal("Put with a short stream succeeded")
	}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestListOrderAcrossDirectories(t *testing.T) {
	s := newStorage(t)
	ctx := context.Background()
	for _, k := range []string{"a/b", "a-c", "a0", "a/a/z"} {
		if err := s.Put(ctx, k, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := s.List(ctx, "a", func(o cloud.ObjectInfo) error { got = append(got, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	want := "a-c a/a/z a/b a0"
	if strings.Join(got, " ") != want {
		t.Fatalf("List order = %v, want %s", got, want)
	}
}

func TestParseURL(t *testing.T) {
	for in, want := range map[string]string{"file:///var/lib/cellar": "/var/lib/cellar", "file://localhost/x/": "/x"} {
		u, _ := url.Parse(in)
		got, err := fs.ParseURL(u)
		if err != nil || got != want {
			t.Errorf("ParseURL(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"file://host/x", "file:relative/path"} {
		u, _ := url.Parse(in)
		if _, err := fs.ParseURL(u); err == nil {
			t.Errorf("ParseURL(%s) accepted a bad URL", in)
		}
	}
}

func TestStatBelowFile(t *testing.T) {
	root := t.TempDir()
	s, _ := fs.New(context.Background(), fs.Config{Root: root})
	if err := os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A key below a regular file cannot exist.
	_, err := s.Stat(context.Background(), "file/below")
	if !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("Stat below a file = %v, want ErrNotExist", err)
	}
}

// TestOwner gives what the repository creates to the configured owner.
func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root, as the test suite does: it needs chown")
	}
	root := t.TempDir()
	s, err := fs.New(context.Background(), fs.Config{Root: root, Owner: &fs.Owner{UID: 65534, GID: 65534}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "main/wal/x/y", strings.NewReader("data"), 4); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"main", "main/wal", "main/wal/x", "main/wal/x/y"} {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
			t.Errorf("%s is owned by %d:%d, want 65534:65534", p, st.Uid, st.Gid)
		}
	}
}

// TestModesFollowTheTopDirectory: whatever the umask, directories get the
// repository's top directory's mode (set-group-ID included) and files its
// read and write bits, so a group that may read the top directory may read
// every object.
func TestModesFollowTheTopDirectory(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, c := range []struct {
		top, dir, file os.FileMode
	}{
		{0o700, 0o700, 0o600},
		{0o750 | os.ModeSetgid, 0o750 | os.ModeSetgid, 0o640},
		{0o770 | os.ModeSetgid, 0o770 | os.ModeSetgid, 0o660},
	} {
		root := filepath.Join(t.TempDir(), "repo")
		if err := os.Mkdir(root, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(root, c.top); err != nil {
			t.Fatal(err)
		}
		s, err := fs.New(context.Background(), fs.Config{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Put(context.Background(), "main/wal/x/y", strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(context.Background(), "main/wal/x/z", strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
		for p, want := range map[string]os.FileMode{"main": c.dir, "main/wal/x": c.dir, "main/wal/x/y": c.file, "main/wal/x/z": c.file} {
			fi, err := os.Stat(filepath.Join(root, p))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode() & (os.ModePerm | os.ModeSetgid); got != want {
				t.Errorf("top %v: %s has mode %v, want %v", c.top, p, got, want)
			}
		}
	}
}

// TestCleanTemp: the temporary files of a killed writer go once old
// enough; fresh ones (a write in progress) and objects stay.
func TestCleanTemp(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "repo")
	s, err := fs.New(ctx, fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "main/wal/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(root, "main", "wal", ".cellar-tmp-123")
	fresh := filepath.Join(root, "main", ".cellar-tmp-456")
	other := filepath.Join(root, "other", ".cellar-tmp-789")
	for _, p := range []string{old, fresh, other} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(old, past, past)
	os.Chtimes(other, past, past)
	n, err := s.CleanTemp(ctx, "main/", time.Now().Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("CleanTemp = %d, %v; want 1", n, err)
	}
	for p, want := range map[string]bool{old: false, fresh: true, other: true, filepath.Join(root, "main", "wal", "x"): true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists %v, want %v", p, err == nil, want)
		}
	}
	var _ cloud.TempCleaner = s
}
