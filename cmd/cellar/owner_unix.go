//go:build unix

package main

import (
	"os"
	"strings"
	"syscall"

	"github.com/cellar-backup/cellar/cloud/fs"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
)

// repositoryOwner returns, for cellar running as root against a file://
// repository, the owner of the server's data directory: what root creates
// there (the identity, a backup) is given to that user, the one that
// archive_command runs as, so that wal-push can go on reading and writing
// the repository. Otherwise nil: files belong to whoever runs cellar.
func repositoryOwner(s *config.Server) *fs.Owner {
	if os.Geteuid() != 0 || s.PGData == "" || !strings.HasPrefix(s.Repository, "file:") {
		return nil
	}
	fi, err := os.Stat(s.PGData)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return &fs.Owner{UID: int(st.Uid), GID: int(st.Gid)}
}
