// Package gcs stores a Cellar repository in Google Cloud Storage, at a URL
// of the form gs://bucket/prefix.
//
// Credentials follow Google's own conventions: Application Default
// Credentials (GOOGLE_APPLICATION_CREDENTIALS, the gcloud user login, or the
// metadata server on Google Cloud), or an explicit service-account key file.
// When Config.EmulatorHost (the caller's STORAGE_EMULATOR_HOST) names an
// emulator such as fake-gcs-server, the client talks to it without
// authentication, as the Google SDK does.
//
// Uploads are resumable uploads of Config.ChunkSize bytes per request: one
// upload holds one chunk in memory whatever the object's length, and an
// upload that fails or is cancelled is never finalized, so it leaves no
// object behind. A conditional create sends ifGenerationMatch=0.
package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/auth/credentials"
	"cloud.google.com/go/auth/httptransport"
	"cloud.google.com/go/storage"
	gax "github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/cellar-backup/cellar/cloud"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultChunkSize    = 16 << 20
	DefaultListPageSize = 1000
	DefaultMaxAttempts  = 10
)

const (
	// chunkGranularity is the multiple of which every resumable chunk but
	// the last must be; the SDK rounds ChunkSize up to it.
	chunkGranularity = 256 << 10
	dialTimeout      = 10 * time.Second
	// chunkRetryDeadline bounds the retries of one chunk of a resumable
	// upload (the SDK's attempt limit does not apply to uploads).
	chunkRetryDeadline = 90 * time.Second
)

// Config describes one repository in a bucket.
type Config struct {
	// Bucket is the bucket name, the host part of gs://bucket/prefix.
	// Required.
	Bucket string
	// Prefix is the folder inside the bucket that holds the repository;
	// empty for the bucket's root. Leading and trailing slashes are
	// ignored.
	Prefix string
	// Endpoint overrides the JSON API endpoint, for example
	// "http://127.0.0.1:4443/storage/v1/" for fake-gcs-server; a URL with
	// no path gets "/storage/v1/". Requests to an explicit endpoint are
	// unauthenticated unless CredentialsFile is set, and objects are read
	// through the JSON API. Empty means Google Cloud Storage, or the
	// emulator named by EmulatorHost.
	Endpoint string
	// EmulatorHost is a storage emulator's host:port (or URL), as the
	// Google SDK's STORAGE_EMULATOR_HOST gives it; the caller reads that
	// variable. With no Endpoint, requests go there, unauthenticated,
	// through the JSON API.
	EmulatorHost string
	// CredentialsFile is a service-account key file (JSON) to authenticate
	// with. Empty means Application Default Credentials.
	CredentialsFile string
	// ChunkSize is the number of bytes sent per request of a resumable
	// upload, rounded up to a multiple of 256 KiB. Each upload in progress
	// buffers one chunk, so it bounds upload memory. Default 16 MiB.
	ChunkSize int
	// ListPageSize is the number of objects fetched per List request.
	// Default 1000, the API's maximum.
	ListPageSize int
	// MaxAttempts bounds the attempts of one request that fails with a
	// transient error (429, 5xx, connection reset). Default 10. Uploads
	// are bounded per chunk by a 90 s retry deadline instead; every
	// operation stops retrying when its context ends.
	MaxAttempts int
}

// Storage is a repository in a GCS bucket. It implements cloud.Storage and
// cloud.Creator.
type Storage struct {
	client    *storage.Client
	bucket    *storage.BucketHandle
	transport *http.Transport

	bucketName string
	prefix     string
	chunkSize  int
	pageSize   int
	// hint tells what to fix when a request is refused.
	hint string
}

var (
	_ cloud.Storage = (*Storage)(nil)
	_ cloud.Creator = (*Storage)(nil)
)

// ParseURL splits a gs://bucket/prefix repository URL into the bucket and
// the prefix (without leading or trailing slashes).
func ParseURL(u *url.URL) (bucket, prefix string, err error) {
	if u.Scheme != "gs" {
		return "", "", fmt.Errorf("gcs: repository URL %q: scheme must be gs (gs://bucket/prefix)", u.Redacted())
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("gcs: repository URL %q has no bucket (want gs://bucket/prefix)", u.Redacted())
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", "", fmt.Errorf("gcs: repository URL %q: only gs://bucket/prefix is allowed (no user, port, query or fragment)", u.Redacted())
	}
	if err := validBucket(u.Host); err != nil {
		return "", "", fmt.Errorf("gcs: repository URL %q: %w", u.Redacted(), err)
	}
	prefix, err = cloud.CleanPrefix(u.Path)
	if err != nil {
		return "", "", fmt.Errorf("gcs: repository URL %q: bad prefix: %w", u.Redacted(), err)
	}
	return u.Host, prefix, nil
}

// validBucket checks the characters and length GCS allows in a bucket
// name: [a-z0-9][a-z0-9._-]{1,220}[a-z0-9]. (Not a regular expression: its
// repetition count makes compiling one cost a millisecond of every process
// start.)
func validBucket(name string) error {
	ok := len(name) >= 3 && len(name) <= 222
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		inner := i > 0 && i < len(name)-1 && (c == '.' || c == '_' || c == '-')
		ok = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || inner
	}
	if !ok {
		return fmt.Errorf("%q is not a valid bucket name (3-222 lower-case letters, digits, '-', '_' and '.')", name)
	}
	return nil
}

// New returns a Storage for cfg. It does no network I/O of its own; finding
// Application Default Credentials may ask the metadata server, with the
// Google SDK's own short timeout.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if err := validBucket(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("gcs: %w", err)
	}
	prefix, err := cloud.CleanPrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("gcs: bad prefix: %w", err)
	}
	if cfg.ChunkSize < 0 || cfg.ListPageSize < 0 || cfg.MaxAttempts < 0 {
		return nil, errors.New("gcs: ChunkSize, ListPageSize and MaxAttempts must not be negative")
	}
	s := &Storage{
		bucketName: cfg.Bucket,
		prefix:     prefix,
		chunkSize:  roundUp(orDefault(cfg.ChunkSize, DefaultChunkSize), chunkGranularity),
		pageSize:   orDefault(cfg.ListPageSize, DefaultListPageSize),
		transport:  newTransport(),
	}
	maxAttempts := orDefault(cfg.MaxAttempts, DefaultMaxAttempts)

	// The HTTP client is built here rather than by the SDK so that it has a
	// bounded dial timeout; authentication is layered on top of it.
	opts := []option.ClientOption{}
	endpoint := cfg.Endpoint
	if endpoint == "" && cfg.EmulatorHost != "" {
		endpoint = cfg.EmulatorHost
		if !strings.Contains(endpoint, "://") {
			endpoint = "http://" + endpoint
		}
	}
	if endpoint != "" {
		if endpoint, err = apiEndpoint(endpoint); err != nil {
			return nil, err
		}
		// The XML API host is derived from the endpoint, which an emulator
		// or a proxy may not serve; the JSON API is always there.
		opts = append(opts, option.WithEndpoint(endpoint), storage.WithJSONReads())
	}
	authenticate := cfg.CredentialsFile != "" || endpoint == ""
	var hc *http.Client
	if authenticate {
		dopts := &credentials.DetectOptions{
			Scopes: []string{storage.ScopeFullControl},
			Client: &http.Client{Transport: s.transport},
		}
		var creds *auth.Credentials
		if cfg.CredentialsFile != "" {
			s.hint = fmt.Sprintf("check the service-account key file %q and the account's roles on the bucket", cfg.CredentialsFile)
			creds, err = credentials.NewCredentialsFromFile(credentials.ServiceAccount, cfg.CredentialsFile, dopts)
		} else {
			s.hint = "check GOOGLE_APPLICATION_CREDENTIALS or the Application Default Credentials, and the account's roles on the bucket"
			creds, err = credentials.DetectDefault(dopts)
		}
		if err != nil {
			return nil, fmt.Errorf("gcs: %w: no usable Google credentials (%s): %w", cloud.ErrPermission, s.hint, err)
		}
		if hc, err = httptransport.NewClient(&httptransport.Options{
			BaseRoundTripper: s.transport,
			Credentials:      creds,
			DisableTelemetry: true,
		}); err != nil {
			return nil, fmt.Errorf("gcs: %w", err)
		}
		opts = append(opts, option.WithAuthCredentials(creds))
	} else {
		s.hint = "requests to the emulator or endpoint are unauthenticated; set a credentials file to authenticate"
		hc = &http.Client{Transport: s.transport}
		opts = append(opts, option.WithoutAuthentication())
	}
	opts = append(opts, option.WithHTTPClient(hc))

	client, err := storage.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcs: %w", err)
	}
	// Every write is of a whole object, so repeating one is safe: retry
	// all operations, not only those the SDK deems idempotent.
	client.SetRetry(
		storage.WithPolicy(storage.RetryAlways),
		storage.WithBackoff(gax.Backoff{Initial: 200 * time.Millisecond, Max: 20 * time.Second, Multiplier: 2}),
		storage.WithMaxAttempts(maxAttempts),
		storage.WithErrorFunc(retryable),
	)
	s.client = client
	s.bucket = client.Bucket(cfg.Bucket)
	return s, nil
}

// retryable is the SDK's classification of transient errors (408, 429, 5xx,
// connection resets, unexpected EOF), except that a refused connection is
// final: it means a wrong or stopped endpoint, not a passing fault.
func retryable(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return false
	}
	return storage.ShouldRetry(err)
}

// apiEndpoint turns an endpoint setting into the JSON API base URL.
func apiEndpoint(endpoint string) (string, error) {
	const want = "an http(s) URL such as http://127.0.0.1:4443/storage/v1/"
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("gcs: endpoint is not %s", want)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("gcs: endpoint %q is not %s, without user or password", u.Redacted(), want)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/storage/v1/"
	} else if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String(), nil
}

func newTransport() *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = dialTimeout
	t.MaxIdleConns = 100
	t.MaxIdleConnsPerHost = 100
	t.IdleConnTimeout = 90 * time.Second
	// Probe an HTTP/2 connection that has gone quiet, so that a dead one
	// is noticed rather than waited on.
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second}
	return t
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func roundUp(n, m int) int { return (n + m - 1) / m * m }

// name is the object name of key in the bucket.
func (s *Storage) name(key string) string { return cloud.JoinPrefix(s.prefix, key) }

// Put stores the stream under key with a resumable upload.
func (s *Storage) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "put", key, r, size, false)
}

// Create stores the stream under key only if no object exists there, with
// the precondition ifGenerationMatch=0. An existing object gives an error
// wrapping cloud.ErrExist.
//
// If the request that created the object is retried after a lost response,
// the retry finds the object and reports ErrExist although this call wrote
// it; callers that care compare the content.
func (s *Storage) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "create", key, r, size, true)
}

func (s *Storage) upload(ctx context.Context, op, key string, r io.Reader, size int64, create bool) error {
	obj := s.bucket.Object(s.name(key))
	if create {
		obj = obj.If(storage.Conditions{DoesNotExist: true})
	}
	// Cancelling wctx is how an upload is abandoned: the SDK then never
	// sends the request that finalizes the object.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.NewWriter(wctx)
	w.ContentType = "application/octet-stream"
	w.ChunkSize = s.chunkSize
	w.ChunkRetryDeadline = chunkRetryDeadline
	src := r
	if size >= 0 {
		if size < int64(s.chunkSize) {
			// One request, from a buffer just large enough: the SDK
			// sends the data in a single request when it finds the end
			// of the stream inside the first chunk.
			w.ChunkSize = int(size) + 1
		}
		// One byte more than announced, to notice a longer stream.
		src = io.LimitReader(r, size+1)
	}
	n, err := io.Copy(w, src)
	switch {
	case err != nil || size < 0:
	case n < size:
		err = fmt.Errorf("gcs: stream ended after %d bytes, %d announced", n, size)
	case n > size:
		err = fmt.Errorf("gcs: stream is longer than the %d bytes announced", size)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		return s.translate(op, key, err)
	}
	if err := w.Close(); err != nil {
		return s.translate(op, key, err)
	}
	return nil
}

// Get opens the object for reading.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	r, err := s.bucket.Object(s.name(key)).NewReader(ctx)
	if err != nil {
		return nil, s.translateMissing(ctx, "get", key, err)
	}
	return cloud.WrapReadErrors(r, func(err error) error { return s.translate("get", key, err) }), nil
}

// Stat describes the object.
func (s *Storage) Stat(ctx context.Context, key string) (cloud.ObjectInfo, error) {
	attrs, err := s.bucket.Object(s.name(key)).Attrs(ctx)
	if err != nil {
		return cloud.ObjectInfo{}, s.translateMissing(ctx, "stat", key, err)
	}
	return cloud.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}, nil
}

// List calls fn for every object under prefix, in lexical order, one page
// of Config.ListPageSize objects at a time. Zero-length "folder" objects
// whose names end in a slash, as the Cloud Console creates, are skipped.
func (s *Storage) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	q := &storage.Query{Prefix: cloud.JoinPrefix(s.prefix, prefix), Projection: storage.ProjectionNoACL}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
		return cloud.OpError("list", prefix, err)
	}
	it := s.bucket.Objects(ctx, q)
	it.PageInfo().MaxSize = s.pageSize
	for {
		attrs, err := it.Next()
		if err == iterator.Done {
			return nil
		}
		if err != nil {
			return s.translate("list", prefix, err)
		}
		key := cloud.TrimPrefix(s.prefix, attrs.Name)
		if key == "" || strings.HasSuffix(key, "/") {
			continue
		}
		if err := fn(cloud.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}); err != nil {
			return err
		}
	}
}

// Delete removes the object; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	err := s.bucket.Object(s.name(key)).Delete(ctx)
	if err == nil {
		return nil
	}
	err = s.translateMissing(ctx, "delete", key, err)
	if errors.Is(err, cloud.ErrNotExist) {
		return nil
	}
	return err
}

// Close releases the client and its idle connections.
func (s *Storage) Close() error {
	err := s.client.Close()
	s.transport.CloseIdleConnections()
	return err
}
