//go:build unix

package repo

import (
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/cellar-backup/cellar/cloud/fs"
)

// FileOwner returns, for cellar running as root against a file://
// repository, the user and group that what root creates there (the
// identity, a backup, WAL from a cron-started receive-wal) is given to, so
// that the users who share the repository can go on reading and writing
// it: the owner of the repository's top directory, or, while it does not
// exist or belongs to root, the owner of the server's data directory (the
// user archive_command runs as). Otherwise nil: files belong to whoever
// runs cellar.
func FileOwner(repository, pgdata string) *fs.Owner {
	if os.Geteuid() != 0 || !strings.HasPrefix(repository, "file:") {
		return nil
	}
	if u, err := url.Parse(repository); err == nil {
		if root, err := fs.ParseURL(u); err == nil {
			if o := OwnerOf(root); o != nil {
				return o
			}
		}
	}
	if pgdata == "" {
		return nil
	}
	return OwnerOf(pgdata)
}

// OwnerOf returns the owner of path, nil when it is root or unknown.
func OwnerOf(path string) *fs.Owner {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return &fs.Owner{UID: int(st.Uid), GID: int(st.Gid)}
}
