// Package cloud defines the one storage interface that every repository
// backend implements: the local filesystem, S3, Google Cloud Storage and
// Azure Blob Storage. Backends live in subpackages; callers depend only on
// this package.
//
// Keys are slash-separated paths relative to the repository root, such as
// "wal/0000000100000000/000000010000000000000001.zst". A key never starts or
// ends with a slash and never contains "." or ".." segments.
package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Named errors. Backends translate their SDK's errors into these; callers
// test with errors.Is.
var (
	// ErrNotExist: the object (or the bucket/container) does not exist.
	ErrNotExist = errors.New("object does not exist")
	// ErrExist: a conditional create found the object already present.
	ErrExist = errors.New("object already exists")
	// ErrPermission: the credentials were refused. Never retried.
	ErrPermission = errors.New("access denied")
	// ErrNoBucket: the bucket or container named by the repository URL is
	// missing. Never retried.
	ErrNoBucket = errors.New("bucket or container does not exist")
)

// SizeUnknown is passed to Put when the length of the stream is not known
// in advance.
const SizeUnknown int64 = -1

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Storage is the interface every backend implements. All methods are safe
// for concurrent use.
type Storage interface {
	// Put stores the stream under key, replacing any object there. The
	// object becomes visible whole, or not at all: a Put that fails or
	// whose context is cancelled leaves no (new) object behind. size is the
	// exact length of r, or SizeUnknown.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the object for reading. A missing object gives ErrNotExist.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object. A missing object gives ErrNotExist.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix, in
	// lexical key order, fetching one page at a time. An empty result is
	// not an error. If fn returns an error, List stops and returns it.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object. Deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the backend's resources.
	Close() error
}

// Creator is implemented by backends that can create an object only if it
// does not exist yet, atomically, with the store's native precondition.
// Every backend in this module implements it.
type Creator interface {
	// Create stores the stream under key only if no object exists there.
	// If one does, it returns an error that wraps ErrExist and leaves the
	// existing object untouched.
	Create(ctx context.Context, key string, r io.Reader, size int64) error
}

// Create stores r under key only if key is absent, using the backend's
// native conditional create.
func Create(ctx context.Context, s Storage, key string, r io.Reader, size int64) error {
	c, ok := s.(Creator)
	if !ok {
		return fmt.Errorf("create %s: %T has no conditional create", key, s)
	}
	return c.Create(ctx, key, r, size)
}

// ValidKey reports whether key is a well-formed object key.
func ValidKey(key string) error {
	if key == "" {
		return errors.New("empty object key")
	}
	if strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("object key %q must not start or end with a slash", key)
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("object key %q has an empty, \".\" or \"..\" segment", key)
		}
	}
	return nil
}

// JoinPrefix joins a repository prefix (as taken from a URL path, possibly
// with leading or trailing slashes, possibly empty) and a key into the name
// the store uses.
func JoinPrefix(prefix, key string) string {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return key
	}
	return prefix + "/" + key
}

// TrimPrefix is the inverse of JoinPrefix.
func TrimPrefix(prefix, name string) string {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return name
	}
	return strings.TrimPrefix(name, prefix+"/")
}

// OpError wraps an error with the operation and key it happened on, so
// that a message names the object.
func OpError(op, key string, err error) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, key: key, err: err}
}

type opError struct {
	op, key string
	err     error
}

func (e *opError) Error() string {
	if e.key == "" {
		return e.op + ": " + e.err.Error()
	}
	return e.op + " " + e.key + ": " + e.err.Error()
}
func (e *opError) Unwrap() error { return e.err }

// BatchDeleter is implemented by backends that delete many objects in one
// request (S3's DeleteObjects).
type BatchDeleter interface {
	// DeleteBatch removes the objects; missing ones are not an error. It
	// takes at most MaxBatchDelete keys.
	DeleteBatch(ctx context.Context, keys []string) error
}

// TempCleaner is implemented by backends whose interrupted writes can
// leave something behind that List never shows (the filesystem's
// temporary files of a killed process).
type TempCleaner interface {
	// CleanTemp removes what interrupted writes under prefix left that
	// is older than before, and says how many it removed.
	CleanTemp(ctx context.Context, prefix string, before time.Time) (int, error)
}

// MaxBatchDelete is the most keys one DeleteBatch call takes.
const MaxBatchDelete = 1000

// DeleteAll removes the objects, in batches where the backend has them,
// otherwise with several deletes at once.
func DeleteAll(ctx context.Context, s Storage, keys []string) error {
	// Batches go 4 at a time; single deletes 16 at a time.
	workers, size, del := 16, 1, func(batch []string) error { return s.Delete(ctx, batch[0]) }
	if b, ok := s.(BatchDeleter); ok {
		workers, size, del = 4, MaxBatchDelete, func(batch []string) error { return b.DeleteBatch(ctx, batch) }
	}
	next := make(chan []string)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			var first error
			for batch := range next {
				if err := del(batch); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		}()
	}
	for len(keys) > 0 && ctx.Err() == nil {
		n := min(len(keys), size)
		next <- keys[:n]
		keys = keys[n:]
	}
	close(next)
	var first error
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// NoAnswer rewrites err, when ctx ran out of time, into a line that names
// where the requests went (where), the limit and, if given, the setting
// that sets it. Other errors come back as they are.
func NoAnswer(ctx context.Context, err error, limit time.Duration, where, setting string) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return err
	}
	msg := fmt.Sprintf("no answer within %v from %s: check that setting, the network and the server", limit, where)
	if setting != "" {
		msg += " (the limit is " + setting + ")"
	}
	return fmt.Errorf("%s: %w", msg, err)
}
