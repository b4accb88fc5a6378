//go:build !unix

package wal

import "os"

func giveToOwnerOf(path, dir string) error { return nil }

func mkdirOwned(dir string) error { return os.MkdirAll(dir, 0o700) }
