package basebackup

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

// fileSum is a file's SHA-256. For a large file it is computed on a
// goroutine of its own, a few chunks behind the reader, so that the
// checksum and the rest of the file's work (page hashes, tar, comparing
// with the parent) run on two cores: one 1 GiB relation segment is
// otherwise one core's work.
type fileSum struct {
	h    hash.Hash
	ch   chan []byte
	free chan []byte
	done chan string
}

// asyncSumMin is the size from which a file's checksum has a goroutine.
const asyncSumMin = 4 << 20

func newFileSum(size int64) *fileSum {
	s := &fileSum{h: sha256.New()}
	if size < asyncSumMin {
		return s
	}
	s.ch, s.free, s.done = make(chan []byte, 4), make(chan []byte, 6), make(chan string, 1)
	go func() {
		for b := range s.ch {
			s.h.Write(b)
			s.free <- b
		}
		s.done <- hex.EncodeToString(s.h.Sum(nil))
	}()
	return s
}

// Write hashes a copy of p.
func (s *fileSum) Write(p []byte) (int, error) {
	if s.ch == nil {
		return s.h.Write(p)
	}
	var b []byte
	select {
	case b = <-s.free:
	default:
	}
	s.ch <- append(b[:0], p...)
	return len(p), nil
}

// Sum returns the checksum of what was written; the sum is done after.
func (s *fileSum) Sum() string {
	if s.ch == nil {
		return hex.EncodeToString(s.h.Sum(nil))
	}
	close(s.ch)
	return <-s.done
}

// close ends the goroutine of a sum left unfinished (on an error).
func (s *fileSum) close() {
	if s.ch != nil {
		s.Sum()
	}
}
