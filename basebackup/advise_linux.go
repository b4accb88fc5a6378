package basebackup

import (
	"os"

	"golang.org/x/sys/unix"
)

// adviseSequential tells the kernel a file is read once, front to back:
// a larger read-ahead.
func adviseSequential(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
}
