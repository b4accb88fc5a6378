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
	sum  string // once Sum returned
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

// Sum returns the checksum of what was written; nothing may be written
// after. It may be called again.
func (s *fileSum) Sum() string {
	switch {
	case s.sum != "":
	case s.ch == nil:
		s.sum = hex.EncodeToString(s.h.Sum(nil))
	default:
		close(s.ch)
		s.sum = <-s.done
	}
	return s.sum
}

// close ends the goroutine of a sum, if Sum did not (on an error).
func (s *fileSum) close() { s.Sum() }
