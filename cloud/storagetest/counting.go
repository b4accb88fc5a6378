package storagetest

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

// Counting wraps a Storage and counts, per key, the calls made to it, for
// tests that prove how many requests a workflow sends (a bounded listing,
// one GET per segment, no second upload). It passes conditional creates
// through to a backend that has them, and can slow Gets down (GetDelay)
// to show that they overlap (MaxGetsInFlight). It is safe for concurrent
// use.
type Counting struct {
	cloud.Storage
	// GetDelay is slept at the start of every Get.
	GetDelay time.Duration

	mu                                  sync.Mutex
	puts, creates, gets, stats, deletes map[string]int
	lists, listed                       int
	inFlight, maxGets                   int
	read                                int64
}

// NewCounting wraps s.
func NewCounting(s cloud.Storage) *Counting {
	return &Counting{Storage: s, puts: map[string]int{}, creates: map[string]int{}, gets: map[string]int{}, stats: map[string]int{}, deletes: map[string]int{}}
}

var _ cloud.Creator = (*Counting)(nil)

func (c *Counting) count(m map[string]int, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m[key]++
}

func (c *Counting) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.count(c.puts, key)
	return c.Storage.Put(ctx, key, r, size)
}

// Create is the wrapped backend's conditional create (an error for one
// without).
func (c *Counting) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	c.count(c.creates, key)
	return cloud.Create(ctx, c.Storage, key, r, size)
}

func (c *Counting) Stat(ctx context.Context, key string) (cloud.ObjectInfo, error) {
	c.count(c.stats, key)
	return c.Storage.Stat(ctx, key)
}

func (c *Counting) Delete(ctx context.Context, key string) error {
	c.count(c.deletes, key)
	return c.Storage.Delete(ctx, key)
}

func (c *Counting) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.mu.Lock()
	c.gets[key]++
	c.inFlight++
	c.maxGets = max(c.maxGets, c.inFlight)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
	}()
	time.Sleep(c.GetDelay)
	rc, err := c.Storage.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: rc, c: c}, nil
}

// countingReader counts the bytes read from an object.
type countingReader struct {
	io.ReadCloser
	c *Counting
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.c.mu.Lock()
	r.c.read += int64(n)
	r.c.mu.Unlock()
	return n, err
}

// BytesRead is the number of bytes read from every object got.
func (c *Counting) BytesRead() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

func (c *Counting) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	c.mu.Lock()
	c.lists++
	c.mu.Unlock()
	return c.Storage.List(ctx, prefix, func(o cloud.ObjectInfo) error {
		c.mu.Lock()
		c.listed++
		c.mu.Unlock()
		return fn(o)
	})
}

// Writes is the number of Puts and Creates of key.
func (c *Counting) Writes(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.puts[key] + c.creates[key]
}

// Gets, Stats and Deletes are the number of those calls for key.
func (c *Counting) Gets(key string) int    { return c.of(c.gets, key) }
func (c *Counting) Stats(key string) int   { return c.of(c.stats, key) }
func (c *Counting) Deletes(key string) int { return c.of(c.deletes, key) }

func (c *Counting) of(m map[string]int, key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[key]
}

// TotalGets is the number of Gets of any key.
func (c *Counting) TotalGets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.gets {
		n += v
	}
	return n
}

// Lists is the number of List calls, and Listed the objects they gave.
func (c *Counting) Lists() int  { return c.locked(&c.lists) }
func (c *Counting) Listed() int { return c.locked(&c.listed) }

// MaxGetsInFlight is the most Gets that were under way at once.
func (c *Counting) MaxGetsInFlight() int { return c.locked(&c.maxGets) }

func (c *Counting) locked(v *int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return *v
}
