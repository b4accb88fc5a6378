package cloud

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// CleanPrefix returns a repository prefix (a URL path or a prefix setting)
// without its leading and trailing slashes, and an error if what remains
// is neither empty (the root) nor a well-formed key path.
func CleanPrefix(prefix string) (string, error) {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return "", nil
	}
	if err := ValidKey(prefix); err != nil {
		return "", err
	}
	return prefix, nil
}

// CheckSize returns an error if a stream announced as size bytes long (or
// SizeUnknown, which accepts any length) delivered n bytes.
func CheckSize(n, size int64) error {
	if size != SizeUnknown && n != size {
		return fmt.Errorf("stream had %d bytes, %d announced", n, size)
	}
	return nil
}

// ContextReader returns a reader whose reads fail with ctx's error once ctx
// is done. It has only a Read method, so that io.Copy cannot bypass the
// check through r's WriteTo.
func ContextReader(ctx context.Context, r io.Reader) io.Reader {
	return &contextReader{ctx: ctx, r: r}
}

// ContextReadCloser is ContextReader for an open object: it has only Read
// and Close, and Close closes rc.
func ContextReadCloser(ctx context.Context, rc io.ReadCloser) io.ReadCloser {
	return &contextReadCloser{contextReader: contextReader{ctx: ctx, r: rc}, c: rc}
}

type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type contextReadCloser struct {
	contextReader
	c io.Closer
}

func (c *contextReadCloser) Close() error { return c.c.Close() }

// WrapReadErrors returns rc with every error of its Read other than io.EOF
// passed through wrap, which translates it and names the object. It has
// only Read and Close, and Close closes rc.
func WrapReadErrors(rc io.ReadCloser, wrap func(error) error) io.ReadCloser {
	return &wrappedReader{rc: rc, wrap: wrap}
}

type wrappedReader struct {
	rc   io.ReadCloser
	wrap func(error) error
}

func (r *wrappedReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF {
		err = r.wrap(err)
	}
	return n, err
}

func (r *wrappedReader) Close() error { return r.rc.Close() }
