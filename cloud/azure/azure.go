// Package azure is the Azure Blob Storage repository backend
// (azure://container/prefix).
//
// Objects are block blobs. Put streams the data as blocks of Config.BlockSize
// bytes, Config.Concurrency of them in flight, and commits the block list
// only once the whole stream has been read and every block staged: a Put
// that fails or is cancelled never commits, so no object (or no new version)
// becomes visible. An object smaller than one block is sent in a single
// request instead, which is equally all-or-nothing. Create does the same with
// the precondition If-None-Match: * on the commit (or the single request), so
// the service refuses it if the blob exists.
//
// Transient failures (408, 429, 500, 502, 503, 504, connection errors,
// timeouts) are retried by the SDK's retry policy with exponential backoff
// and jitter; retries end when the context does.
package azure

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/cellar-backup/cellar/cloud"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultBlockSize     = 16 << 20
	DefaultConcurrency   = 4
	DefaultListPageSize  = 1000
	DefaultMaxRetries    = 9
	DefaultRetryDelay    = 500 * time.Millisecond
	DefaultMaxRetryDelay = 20 * time.Second
)

const (
	// minBlockSize is the smallest block the SDK's streaming upload uses;
	// maxBlockSize is the service's limit for one block.
	minBlockSize = 1 << 20
	maxBlockSize = 4000 << 20
	// maxBlocks is the most blocks one blob can commit.
	maxBlocks = 50000
	// maxPageSize is the most names one List request can return.
	maxPageSize = 5000
	// tryTimeout bounds one HTTP attempt: long enough for a 16 MiB block
	// at about 30 KB/s. A download that outlives it is resumed where it
	// stopped by the retry reader.
	tryTimeout  = 10 * time.Minute
	dialTimeout = 10 * time.Second
	// readRetries is how many times a broken download is resumed, per Read.
	readRetries = 5
	// createTokenMeta names the metadata entry in which Create records a
	// random token, so that a retried commit that finds "its own" blob
	// (the first attempt succeeded but its answer was lost) reports
	// success rather than ErrExist.
	createTokenMeta = "cellarcreate"
)

// Config configures an Azure Blob Storage repository. Credentials are
// chosen in this order: ConnectionString; Account with Key (shared key);
// SASToken; otherwise Azure's default credential chain
// (azidentity.DefaultAzureCredential: environment, workload identity,
// managed identity, Azure CLI...).
type Config struct {
	// Container is the blob container: the host part of
	// azure://container/prefix. It must exist.
	Container string
	// Prefix is the path inside the container under which the repository
	// lives (the path part of the URL); empty for the container's root.
	Prefix string
	// Account is the storage account name (the azure_account setting). It
	// is required unless ConnectionString or Endpoint names the service.
	Account string
	// Endpoint is the blob service URL (the azure_endpoint setting), for
	// example Azurite's http://127.0.0.1:10000/devstoreaccount1. The
	// default is https://ACCOUNT.blob.core.windows.net/. It is ignored
	// when ConnectionString is set, which names its own endpoint.
	Endpoint string
	// ConnectionString is an Azure Storage connection string, as found in
	// AZURE_STORAGE_CONNECTION_STRING (which the caller reads and passes
	// here). It takes precedence over every other credential.
	ConnectionString string
	// Key is the storage account's shared key (base64), used with Account.
	Key string
	// SASToken is a shared access signature (the query string, with or
	// without the leading "?") appended to the service URL.
	SASToken string
	// BlockSize is the size of each uploaded block (default 16 MiB, at
	// least 1 MiB, at most 4000 MiB). An upload holds at most
	// BlockSize x Concurrency bytes in memory. A blob has at most 50,000
	// blocks, so an object of unknown size can be at most 50,000 x
	// BlockSize (781 GiB at 16 MiB); an object of known size picks a
	// larger block by itself when it needs one.
	BlockSize int64
	// Concurrency is the number of blocks uploaded in parallel (default 4).
	Concurrency int
	// ListPageSize is the number of names asked for per List request
	// (default 1000, at most 5000).
	ListPageSize int
	// MaxRetries is how many times a failed request is retried (default
	// 9, that is 10 attempts); negative disables retries.
	MaxRetries int
	// RetryDelay is the base of the exponential backoff between attempts
	// (default 500 ms); MaxRetryDelay caps one wait (default 20 s). Each
	// wait is jittered by -20%..+30%.
	RetryDelay    time.Duration
	MaxRetryDelay time.Duration
}

// Storage is a repository in an Azure Blob Storage container. Its methods
// are safe for concurrent use.
type Storage struct {
	container   *container.Client
	name        string // container name
	endpoint    string // service URL without a query, for messages
	prefix      string
	blockSize   int64
	concurrency int
	pageSize    int32
	transport   *http.Transport
	// hint tells the user which credential to check on a 403.
	hint string
	// secrets are scrubbed from every error message.
	secrets []string
}

var (
	_ cloud.Storage = (*Storage)(nil)
	_ cloud.Creator = (*Storage)(nil)
)

// ParseURL returns the container and prefix named by an
// azure://container/prefix repository URL.
func ParseURL(u *url.URL) (containerName, prefix string, err error) {
	if u.Scheme != "azure" {
		return "", "", fmt.Errorf("repository URL %q is not an azure:// URL", u.Redacted())
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", "", fmt.Errorf("azure repository URL %q has parts other than a container and a path: use azure://container/prefix", u.Redacted())
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("azure repository URL %q names no container: use azure://container/prefix", u.Redacted())
	}
	if err := validContainer(u.Host); err != nil {
		return "", "", fmt.Errorf("azure repository URL %q: %w", u.Redacted(), err)
	}
	prefix, err = cloud.CleanPrefix(u.Path)
	if err != nil {
		return "", "", fmt.Errorf("azure repository URL %q has a malformed path: %w", u.Redacted(), err)
	}
	return u.Host, prefix, nil
}

// validContainer checks Azure's container naming rules: 3 to 63 lower-case
// letters, digits and single hyphens, starting and ending with a letter or
// digit ("$root" is the one exception).
func validContainer(name string) error {
	if name == "" {
		return errors.New("no container name")
	}
	if name == "$root" {
		return nil
	}
	ok := len(name) >= 3 && len(name) <= 63 && !strings.Contains(name, "--") &&
		name[0] != '-' && name[len(name)-1] != '-'
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("container name %q is not valid: use 3 to 63 lower-case letters, digits and single hyphens", name)
	}
	return nil
}

// New returns a Storage for cfg. It does no network I/O: credentials and
// the container are first used, and checked, by the first operation.
func New(_ context.Context, cfg Config) (*Storage, error) {
	if err := validContainer(cfg.Container); err != nil {
		return nil, fmt.Errorf("azure: %w", err)
	}
	prefix, err := cloud.CleanPrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("azure: prefix: %w", err)
	}
	s := &Storage{
		name:        cfg.Container,
		prefix:      prefix,
		blockSize:   cfg.BlockSize,
		concurrency: cfg.Concurrency,
	}
	switch {
	case s.blockSize == 0:
		s.blockSize = DefaultBlockSize
	case s.blockSize < minBlockSize || s.blockSize > maxBlockSize:
		return nil, fmt.Errorf("azure: block size %d is outside 1 MiB..4000 MiB", s.blockSize)
	}
	if s.concurrency <= 0 {
		s.concurrency = DefaultConcurrency
	}
	switch {
	case cfg.ListPageSize <= 0:
		s.pageSize = DefaultListPageSize
	case cfg.ListPageSize > maxPageSize:
		return nil, fmt.Errorf("azure: list page size %d is above the service's limit of %d", cfg.ListPageSize, maxPageSize)
	default:
		s.pageSize = int32(cfg.ListPageSize)
	}
	s.secrets = secretsOf(cfg)

	s.transport = newTransport(s.concurrency)
	httpClient := &http.Client{Transport: s.transport}
	retry := policy.RetryOptions{
		MaxRetries:    int32(cfg.MaxRetries),
		TryTimeout:    tryTimeout,
		RetryDelay:    cfg.RetryDelay,
		MaxRetryDelay: cfg.MaxRetryDelay,
		StatusCodes: []int{
			http.StatusRequestTimeout,
			http.StatusTooManyRequests,
			http.StatusInternalServerError,
			http.StatusBadGateway,
			http.StatusServiceUnavailable,
			http.StatusGatewayTimeout,
		},
	}
	if retry.MaxRetries == 0 {
		retry.MaxRetries = DefaultMaxRetries
	} else if retry.MaxRetries < 0 {
		retry.MaxRetries = -1 // the SDK's spelling of "no retries"
	}
	if retry.RetryDelay <= 0 {
		retry.RetryDelay = DefaultRetryDelay
	}
	if retry.MaxRetryDelay <= 0 {
		retry.MaxRetryDelay = DefaultMaxRetryDelay
	}
	opts := &azblob.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry:     retry,
		Transport: httpClient,
		Telemetry: policy.TelemetryOptions{ApplicationID: "cellar"},
	}}

	client, err := s.newClient(cfg, opts, httpClient)
	if err != nil {
		s.transport.CloseIdleConnections()
		return nil, s.redact(err)
	}
	s.container = client.ServiceClient().NewContainerClient(cfg.Container)
	if u, err := url.Parse(client.URL()); err == nil {
		u.RawQuery = ""
		s.endpoint = u.String()
	}
	return s, nil
}

// newClient picks the credential and builds the service client.
func (s *Storage) newClient(cfg Config, opts *azblob.ClientOptions, httpClient *http.Client) (*azblob.Client, error) {
	if cfg.ConnectionString != "" {
		s.hint = "check AZURE_STORAGE_CONNECTION_STRING: its AccountName, AccountKey or SharedAccessSignature"
		c, err := azblob.NewClientFromConnectionString(cfg.ConnectionString, opts)
		if err != nil {
			return nil, fmt.Errorf("azure: AZURE_STORAGE_CONNECTION_STRING: %w", err)
		}
		return c, nil
	}
	serviceURL, err := serviceURL(cfg)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Key != "":
		if cfg.Account == "" {
			return nil, errors.New("azure: a shared key needs the storage account name: set azure_account")
		}
		s.hint = fmt.Sprintf("check azure_account %q and its shared key", cfg.Account)
		cred, err := azblob.NewSharedKeyCredential(cfg.Account, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("azure: the shared key for account %q is malformed: %w", cfg.Account, err)
		}
		return azblob.NewClientWithSharedKeyCredential(serviceURL, cred, opts)
	case cfg.SASToken != "":
		s.hint = "check the SAS token: its expiry, its container and its permissions (read, add, create, write, delete, list)"
		u, err := url.Parse(serviceURL)
		if err != nil {
			return nil, fmt.Errorf("azure: azure_endpoint: %w", err)
		}
		u.RawQuery = strings.TrimPrefix(cfg.SASToken, "?")
		return azblob.NewClientWithNoCredential(u.String(), opts)
	default:
		s.hint = "check Azure's default credential (AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, workload or managed identity, `az login`) and its role on the container, or set AZURE_STORAGE_CONNECTION_STRING, or azure_account with a shared key or a SAS token"
		cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: azcore.ClientOptions{Transport: httpClient},
		})
		if err != nil {
			return nil, fmt.Errorf("azure: no credential: set AZURE_STORAGE_CONNECTION_STRING, or azure_account with a shared key or a SAS token, or configure Azure's default credential: %w", err)
		}
		return azblob.NewClient(serviceURL, cred, opts)
	}
}

// serviceURL returns the blob service URL from Endpoint or Account.
func serviceURL(cfg Config) (string, error) {
	if cfg.Endpoint == "" {
		if cfg.Account == "" {
			return "", errors.New("azure: no storage account: set azure_account, azure_endpoint or AZURE_STORAGE_CONNECTION_STRING")
		}
		return "https://" + cfg.Account + ".blob.core.windows.net/", nil
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The endpoint is not echoed: it might carry a secret.
		return "", errors.New("azure: azure_endpoint is not an http:// or https:// URL")
	}
	if u.RawQuery != "" || u.User != nil {
		return "", errors.New("azure: azure_endpoint must not carry a query string or user info: pass a SAS token on its own")
	}
	return u.String(), nil
}

// newTransport returns an HTTP transport that fails a dial within 10 s and
// keeps enough idle connections for the upload concurrency.
func newTransport(concurrency int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = dialTimeout
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = max(4*concurrency, 32)
	return t
}

// blobName returns the blob name for key.
func (s *Storage) blobName(key string) string { return cloud.JoinPrefix(s.prefix, key) }

func (s *Storage) blockBlob(key string) *blockblob.Client {
	return s.container.NewBlockBlobClient(s.blobName(key))
}

// Put stores the stream under key, replacing any blob there. Nothing is
// committed unless the whole stream was read and every block stored.
func (s *Storage) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "put", key, r, size, false)
}

// Create stores the stream under key only if no blob exists there, with
// the precondition If-None-Match: * on the commit.
func (s *Storage) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "create", key, r, size, true)
}

func (s *Storage) upload(ctx context.Context, op, key string, r io.Reader, size int64, create bool) error {
	blockSize := s.blockSize
	if size > maxBlocks*blockSize {
		// A known size picks a block large enough to fit the block
		// limit: the size over 50,000, rounded up to whole MiB.
		need := (size + maxBlocks - 1) / maxBlocks
		blockSize = min((need+minBlockSize-1)/minBlockSize*minBlockSize, maxBlockSize)
	}
	opts := &blockblob.UploadStreamOptions{BlockSize: blockSize, Concurrency: s.concurrency}
	var token string
	if create {
		token = rand.Text()
		opts.AccessConditions = &blob.AccessConditions{
			ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)},
		}
		opts.Metadata = map[string]*string{createTokenMeta: &token}
	}
	body := &checkedReader{r: r, size: size, limit: maxBlocks * blockSize}
	_, err := s.blockBlob(key).UploadStream(ctx, body, opts)
	if err == nil {
		return nil
	}
	if body.err != nil && !errors.Is(err, body.err) {
		// The stream failed (or was the wrong length) and the SDK reports
		// the cancellation it caused; the stream's error is the cause.
		err = body.err
	}
	if create && ctx.Err() == nil && maybeExists(err) {
		exists, ours, herr := s.createdBy(ctx, key, token)
		switch {
		case herr != nil:
			return s.fail(op, key, herr)
		case ours:
			return nil
		case exists:
			return cloud.OpError(op, key, fmt.Errorf("azure: %w: %w", cloud.ErrExist, summarize(s.redact(err))))
		}
	}
	return s.fail(op, key, err)
}

// createdBy reports whether a blob exists under key and whether it is the
// one a Create with this token committed.
func (s *Storage) createdBy(ctx context.Context, key, token string) (exists, ours bool, err error) {
	props, err := s.blockBlob(key).GetProperties(ctx, nil)
	if err != nil {
		if isNotFound(err) {
			return false, false, nil
		}
		return false, false, err
	}
	for k, v := range props.Metadata {
		if strings.EqualFold(k, createTokenMeta) && v != nil && *v == token {
			return true, true, nil
		}
	}
	return true, false, nil
}

// checkedReader passes the stream through, failing it when it is longer or
// shorter than announced, or longer than a blob of this block size can be,
// so that the upload is abandoned before anything is committed.
type checkedReader struct {
	r     io.Reader
	size  int64 // announced size, or cloud.SizeUnknown
	limit int64 // most bytes the blob can hold
	n     int64
	err   error // the error the stream ended with, other than io.EOF
}

func (c *checkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	switch {
	case c.size >= 0 && c.n > c.size:
		err = fmt.Errorf("the stream is longer than the announced %d bytes", c.size)
	case c.n > c.limit:
		err = fmt.Errorf("the stream is longer than %d bytes, the most a blob of 50,000 blocks of %d MiB holds: raise the block size", c.limit, c.limit/maxBlocks>>20)
	case err == io.EOF && c.size >= 0 && c.n != c.size:
		err = fmt.Errorf("the stream ended after %d bytes, %d were announced", c.n, c.size)
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// Get opens the blob for reading. A connection that breaks while reading is
// resumed where it stopped, on the same version of the blob (If-Match on its
// ETag).
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	resp, err := s.blockBlob(key).DownloadStream(ctx, nil)
	if err != nil {
		return nil, s.fail("get", key, err)
	}
	rr := resp.NewRetryReader(ctx, &blob.RetryReaderOptions{MaxRetries: readRetries})
	return cloud.WrapReadErrors(rr, func(err error) error { return s.fail("get", key, err) }), nil
}

// Stat describes the blob.
func (s *Storage) Stat(ctx context.Context, key string) (cloud.ObjectInfo, error) {
	props, err := s.blockBlob(key).GetProperties(ctx, nil)
	if err != nil {
		return cloud.ObjectInfo{}, s.fail("stat", key, err)
	}
	info := cloud.ObjectInfo{Key: key}
	if props.ContentLength != nil {
		info.Size = *props.ContentLength
	}
	if props.LastModified != nil {
		info.ModTime = *props.LastModified
	}
	return info, nil
}

// List calls fn for every blob whose key starts with prefix, in lexical
// order, ListPageSize names per request.
func (s *Storage) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	opts := &container.ListBlobsFlatOptions{MaxResults: &s.pageSize}
	if full := cloud.JoinPrefix(s.prefix, prefix); full != "" {
		opts.Prefix = &full
	}
	pager := s.container.NewListBlobsFlatPager(opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return s.fail("list", prefix, err)
		}
		if page.Segment == nil {
			continue
		}
		for _, item := range page.Segment.BlobItems {
			if item == nil || item.Name == nil {
				continue
			}
			info := cloud.ObjectInfo{Key: cloud.TrimPrefix(s.prefix, *item.Name)}
			if p := item.Properties; p != nil {
				if p.ContentLength != nil {
					info.Size = *p.ContentLength
				}
				if p.LastModified != nil {
					info.ModTime = *p.LastModified
				}
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the blob and its snapshots. A missing blob is not an
// error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	_, err := s.blockBlob(key).Delete(ctx, &blob.DeleteOptions{
		DeleteSnapshots: to.Ptr(blob.DeleteSnapshotsOptionTypeInclude),
	})
	if err != nil && !isBlobNotFound(err) {
		return s.fail("delete", key, err)
	}
	return nil
}

// Close releases idle connections.
func (s *Storage) Close() error {
	s.transport.CloseIdleConnections()
	return nil
}
