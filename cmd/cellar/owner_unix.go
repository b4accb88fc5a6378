//go:build unix

package main

import (
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/cellar-backup/cellar/cloud/fs"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
)

// repositoryOwner returns, for cellar running as root against a file://
// repository, the user and group that what root creates there (the
// identity, a backup, WAL from a cron-started receive-wal) is given to, so
// that the users who share the repository can go on reading and writing
// it: the owner of the repository's top directory, or, while it does not
// exist or belongs to root, the owner of the server's data directory (the
// user archive_command runs as). Otherwise nil: files belong to whoever
// runs cellar.
func repositoryOwner(s *config.Server) *fs.Owner {
	if os.Geteuid() != 0 || !strings.HasPrefix(s.Repository, "file:") {
		return nil
	}
	if u, err := url.Parse(s.Repository); err == nil {
		if root, err := fs.ParseURL(u); err == nil {
			if o := ownerOf(root); o != nil {
				return o
			}
		}
	}
	if s.PGData == "" {
		return nil
	}
	return ownerOf(s.PGData)
}

// ownerOf returns the owner of path, nil when it is root or unknown.
func ownerOf(path string) *fs.Owner {
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
