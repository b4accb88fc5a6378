//go:build !unix

package repo

import (
	"github.com/cellar-backup/cellar/cloud/fs"
)

func FileOwner(repository, pgdata string) *fs.Owner { return nil }
func OwnerOf(string) *fs.Owner                      { return nil }
