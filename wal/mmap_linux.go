package wal

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps a file read-only and asks the kernel to read all of it
// ahead, so that the disk works ahead of the compressors, which read the
// mapping directly: no copy into a buffer, and no buffer to fault in.
func mapFile(f *os.File, size int64) (data []byte, unmap func(), err error) {
	if size == 0 {
		return nil, func() {}, nil
	}
	data, err = unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	_ = unix.Madvise(data, unix.MADV_WILLNEED)
	return data, func() { _ = unix.Munmap(data) }, nil
}

// ReadAhead asks the kernel to start reading the file at path into the
// page cache, for a caller that will read it soon: wal-push calls it
// before it reads its configuration and opens the repository, so the disk
// is busy meanwhile. Errors are ignored; the later read reports them.
func ReadAhead(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED)
}

// startWriteback starts writing f's dirty pages to disk without waiting
// for them, so that a later fsync finds little left to do.
func startWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
