package wal_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cellar-backup/cellar/wal"
)

// TestPrefetchSpoolOnAnotherFilesystem: when the spool (wal_spool_dir) is
// not on pg_wal's filesystem, a spooled segment is copied, checked again,
// instead of renamed.
func TestPrefetchSpoolOnAnotherFilesystem(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "cellar-wal-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	dir := pgWAL(t)
	var a, b syscall.Statfs_t
	if syscall.Statfs(shm, &a) != nil || syscall.Statfs(dir, &b) != nil || a.Type == b.Type {
		t.Skip("/dev/shm is not another filesystem here")
	}
	store := newCounting()
	archive(t, store, 1, 1, 3)
	dest := filepath.Join(dir, "RECOVERYXLOG")
	o := wal.FetchOptions{Store: store, Server: server, Dest: dest, Prefetch: 2, SpoolDir: filepath.Join(shm, "main", "prefetch")}
	for n := uint64(1); n <= 3; n++ {
		o.Name = segName(1, n)
		res, err := wal.Fetch(context.Background(), o)
		if err != nil || res.FromSpool != (n > 1) {
			t.Fatalf("fetch %d: %+v, %v", n, res, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, segment(1, n)) {
			t.Fatalf("fetch %d: not the archived segment", n)
		}
		if store.getsOf(o.Name) != 1 {
			t.Fatalf("fetch %d: %d Gets", n, store.getsOf(o.Name))
		}
	}
	if got := spooled(t, o.SpoolDir); len(got) != 0 {
		t.Fatalf("spool: %v", got)
	}
	noTempFiles(t, dir)
	noTempFiles(t, shm)
}
