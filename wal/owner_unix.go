//go:build unix

package wal

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// The spools under pg_wal and the files wal-fetch writes belong to
// PostgreSQL's user, who runs archive_command and restore_command. When
// root runs wal-push or wal-fetch by hand, what it makes in a directory is
// given to that directory's owner, so that PostgreSQL's next call can
// still write, read and remove it.

// giveToOwnerOf gives path to the owner of dir, when this process runs as
// root and dir belongs to another user.
func giveToOwnerOf(path, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return os.Lchown(path, int(st.Uid), int(st.Gid))
}

// mkdirOwned makes dir and its missing parents (0700), each given to the
// owner of the directory it was made in.
func mkdirOwned(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirOwned(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	return giveToOwnerOf(dir, parent)
}
