package cloud

import (
	"context"
	"errors"
	"io"
	"time"
)

// Checked wraps a backend so that what every backend would otherwise do
// itself is done once, here: each key is validated (ValidKey) before the
// backend sees it, and every error names the operation and the key (an
// error the backend already wrapped with OpError stays as it is). The
// wrapper has the backend's optional extras (Creator, BatchDeleter,
// TempCleaner) exactly when the backend has them. cmd applies it to every
// repository it opens, and the conformance suite to every backend.
func Checked(s Storage) Storage {
	if s == nil {
		return nil
	}
	if _, ok := s.(interface{ isChecked() }); ok {
		return s
	}
	c := &checked{s: s}
	bd, batch := s.(BatchDeleter)
	tc, temp := s.(TempCleaner)
	switch {
	case batch && temp:
		return &struct {
			*checked
			batchDeleter
			tempCleaner
		}{c, batchDeleter{c, bd}, tempCleaner{tc}}
	case batch:
		return &struct {
			*checked
			batchDeleter
		}{c, batchDeleter{c, bd}}
	case temp:
		return &struct {
			*checked
			tempCleaner
		}{c, tempCleaner{tc}}
	}
	return c
}

type checked struct{ s Storage }

func (*checked) isChecked() {}

var _ Creator = (*checked)(nil)

// wrap names op and key in err, unless the backend did.
func wrap(op, key string, err error) error {
	var oe *opError
	if err == nil || errors.As(err, &oe) {
		return err
	}
	return OpError(op, key, err)
}

func (c *checked) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := ValidKey(key); err != nil {
		return OpError("put", key, err)
	}
	return wrap("put", key, c.s.Put(ctx, key, r, size))
}

// Create is the backend's conditional create (an error for one without).
func (c *checked) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := ValidKey(key); err != nil {
		return OpError("create", key, err)
	}
	return wrap("create", key, Create(ctx, c.s, key, r, size))
}

func (c *checked) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidKey(key); err != nil {
		return nil, OpError("get", key, err)
	}
	rc, err := c.s.Get(ctx, key)
	return rc, wrap("get", key, err)
}

func (c *checked) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidKey(key); err != nil {
		return ObjectInfo{}, OpError("stat", key, err)
	}
	oi, err := c.s.Stat(ctx, key)
	return oi, wrap("stat", key, err)
}

func (c *checked) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return wrap("list", prefix, c.s.List(ctx, prefix, fn))
}

func (c *checked) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return OpError("delete", key, err)
	}
	return wrap("delete", key, c.s.Delete(ctx, key))
}

func (c *checked) Close() error { return c.s.Close() }

// String names the backend, for messages.
func (c *checked) String() string {
	if s, ok := c.s.(interface{ String() string }); ok {
		return s.String()
	}
	return "repository"
}

type batchDeleter struct {
	c *checked
	b BatchDeleter
}

func (d batchDeleter) DeleteBatch(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := ValidKey(k); err != nil {
			return OpError("delete", k, err)
		}
	}
	return wrap("delete", "", d.b.DeleteBatch(ctx, keys))
}

type tempCleaner struct{ t TempCleaner }

func (t tempCleaner) CleanTemp(ctx context.Context, prefix string, before time.Time) (int, error) {
	return t.t.CleanTemp(ctx, prefix, before)
}
