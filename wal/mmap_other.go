//go:build !linux

package wal

import (
	"errors"
	"os"
)

func mapFile(*os.File, int64) ([]byte, func(), error) {
	return nil, nil, errors.ErrUnsupported
}

// ReadAhead does nothing on this system.
func ReadAhead(string) {}

func startWriteback(*os.File) {}
