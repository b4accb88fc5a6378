//go:build !unix

package main

import (
	"github.com/cellar-backup/cellar/cloud/fs"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
)

func repositoryOwner(*config.Server) *fs.Owner { return nil }
func ownerOf(string) *fs.Owner                 { return nil }
