//go:build unix

package restore

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cellar-backup/cellar/pg"
)

func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// syncFS flushes the filesystem that holds dir: one call instead of an
// fsync per restored file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return err
	}
	return f.Sync()
}

type owner struct{ uid, gid int }

// ownerFor returns, for a restore run as root, the owner of dest or, when
// dest is new, of its parent directory: the restored files are given to
// that user (the one PostgreSQL runs as, in the usual layout). Nil when
// not root or when that owner is root.
func ownerFor(dest string) *owner {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, d := range []string{dest, filepath.Dir(dest)} {
		fi, err := os.Stat(d)
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Uid == 0 {
			return nil
		}
		return &owner{uid: int(st.Uid), gid: int(st.Gid)}
	}
	return nil
}

// startWriteBack asks the kernel to start writing a range of the file to
// disk, without waiting.
func startWriteBack(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// StartOwner is the user a restore into dest gives the files to, and so
// the user that VerifyStart runs PostgreSQL as: nil when this process is
// not root (it runs as itself) or the files stay root's.
func StartOwner(dest string) *pg.Owner {
	o := ownerFor(dest)
	if o == nil {
		return nil
	}
	return &pg.Owner{UID: o.uid, GID: o.gid}
}
