// Package mem is an in-memory cloud.Storage for unit tests of the packages
// above the storage layer. It keeps whole objects in memory; never use it
// for real data.
package mem

import (
	"bytes"
	"context"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

type object struct {
	data    []byte
	modTime time.Time
}

// Storage is an in-memory repository.
type Storage struct {
	mu      sync.Mutex
	objects map[string]object
	now     func() time.Time
}

// New returns an empty in-memory repository. now is the clock used for
// modification times; nil means time.Now.
func New(now func() time.Time) *Storage {
	if now == nil {
		now = time.Now
	}
	return &Storage{objects: map[string]object{}, now: now}
}

var (
	_ cloud.Storage = (*Storage)(nil)
	_ cloud.Creator = (*Storage)(nil)
)

func (s *Storage) read(ctx context.Context, op, key string, r io.Reader, size int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, r)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = cloud.CheckSize(n, size)
	}
	return buf.Bytes(), cloud.OpError(op, key, err)
}

// Put stores the object.
func (s *Storage) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	b, err := s.read(ctx, "put", key, r, size)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objects[key] = object{b, s.now()}
	return nil
}

// Create stores the object only if key is absent.
func (s *Storage) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	b, err := s.read(ctx, "create", key, r, size)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objects[key]; ok {
		return cloud.OpError("create", key, cloud.ErrExist)
	}
	s.objects[key] = object{b, s.now()}
	return nil
}

func (s *Storage) lookup(op, key string) (object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return object{}, cloud.OpError(op, key, cloud.ErrNotExist)
	}
	return o, nil
}

// Get returns the object's content.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	o, err := s.lookup("get", key)
	if err != nil {
		return nil, err
	}
	return cloud.ContextReadCloser(ctx, io.NopCloser(bytes.NewReader(o.data))), nil
}

// Stat describes the object.
func (s *Storage) Stat(_ context.Context, key string) (cloud.ObjectInfo, error) {
	o, err := s.lookup("stat", key)
	if err != nil {
		return cloud.ObjectInfo{}, err
	}
	return cloud.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List calls fn for the objects under prefix in key order.
func (s *Storage) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	s.mu.Lock()
	var infos []cloud.ObjectInfo
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, cloud.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the object.
func (s *Storage) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.objects, key)
	return nil
}

// Close does nothing.
func (s *Storage) Close() error { return nil }
