package lockfile

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestLookNeverCreates(t *testing.T) {
	dir := t.TempDir()
	if h, held := Look(dir, "x.lock"); held || h != nil {
		t.Fatalf("Look of a missing lock = %v, %v; want not held", h, held)
	}
	if _, err := os.Lstat(filepath.Join(dir, "x.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Look created the lock file: %v", err)
	}
}

func TestTakeHoldsAndNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := Take(dir, "x.lock", Holder{Command: "backup"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetBackup("20261202T000000")
	h, held := Look(dir, "x.lock")
	if !held || h == nil || h.PID != os.Getpid() || h.Backup != "20261202T000000" || h.Command != "backup" || h.UID != os.Geteuid() {
		t.Fatalf("Look while held = %+v, %v", h, held)
	}
	start := time.Now()
	_, err = Take(dir, "x.lock", Holder{Command: "backup"})
	var he *HeldError
	if !errors.As(err, &he) || he.Holder == nil || he.Holder.PID != os.Getpid() || he.Holder.Backup != "20261202T000000" {
		t.Fatalf("second Take = %v; want a HeldError naming this process", err)
	}
	if time.Since(start) < retryFor {
		t.Fatalf("a held lock was refused after %v, before retrying for %v", time.Since(start), retryFor)
	}
	l.Release()
	if _, held := Look(dir, "x.lock"); held {
		t.Fatal("released lock still held")
	}
	l2, err := Take(dir, "x.lock", Holder{Command: "backup"})
	if err != nil {
		t.Fatalf("Take after Release: %v", err)
	}
	l2.Release()
}

// A look holds a shared lock for a moment: Takes racing with many looks
// must all succeed.
func TestLooksNeverMakeTakeFail(t *testing.T) {
	dir := t.TempDir()
	l, err := Take(dir, "x.lock", Holder{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					Look(dir, "x.lock")
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for i := range 200 {
		l, err := Take(dir, "x.lock", Holder{})
		if err != nil {
			t.Fatalf("Take %d while others look: %v", i, err)
		}
		l.Release()
	}
}

func TestModesFollowTheDirectoryNotTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, c := range []struct {
		dir, file os.FileMode
	}{
		{0o1777, 0o666}, // /tmp: every user
		{0o2770, 0o660}, // a group's directory
		{0o755, 0o644},  // only the owner creates; others may still lock read-only
		{0o700, 0o600},
	} {
		dir := filepath.Join(t.TempDir(), "locks")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, fileModeOf(c.dir)); err != nil {
			t.Fatal(err)
		}
		l, err := Take(dir, "x.lock", Holder{})
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
		fi, err := os.Stat(filepath.Join(dir, "x.lock"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.file {
			t.Errorf("lock file in a %o directory has mode %o, want %o", c.dir, fi.Mode().Perm(), c.file)
		}
		f, _, err := OpenShared(filepath.Join(dir, "x.log"), os.O_WRONLY|os.O_APPEND)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if fi, _ := os.Stat(filepath.Join(dir, "x.log")); fi.Mode().Perm() != c.file {
			t.Errorf("shared file in a %o directory has mode %o, want %o", c.dir, fi.Mode().Perm(), c.file)
		}
	}
}

// fileModeOf turns Unix mode bits (with 01000 sticky, 02000 setgid) into
// an os.FileMode.
func fileModeOf(m os.FileMode) os.FileMode {
	out := m & 0o777
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	return out
}

func TestBadDirectory(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dir  string
		want error
	}{
		{filepath.Join(base, "missing"), errNoDir},
		{file, errNotDir},
	} {
		_, err := Take(c.dir, "x.lock", Holder{})
		var d *DirError
		if !errors.As(err, &d) || !errors.Is(err, c.want) || d.Fix == "" {
			t.Errorf("Take in %s = %v; want a DirError %v with a fix", c.dir, err, c.want)
		}
		if CheckDir(c.dir) == nil {
			t.Errorf("CheckDir(%s) = nil", c.dir)
		}
	}
	if _, err := os.Stat(filepath.Join(base, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Error("Take created the missing lock directory")
	}
}

// A lock file an earlier version made private is opened up by the next
// run of its owner.
func TestPrivateLockFileHealed(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "x.lock")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Take(dir, "x.lock", Holder{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o666 {
		t.Fatalf("a private lock file has mode %v after its owner's run, want 0666", fi.Mode().Perm())
	}
}
