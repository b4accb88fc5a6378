//go:build !linux

package basebackup

import "os"

func adviseSequential(*os.File) {}
