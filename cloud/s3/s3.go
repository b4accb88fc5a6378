// Package s3 is the cloud.Storage backend for Amazon S3 and S3-compatible
// stores (MinIO, Ceph RGW, ...), for repositories named s3://bucket/prefix.
//
// It uses aws-sdk-go-v2 with the AWS default credential chain (environment,
// shared config and credentials files, SSO, web identity, container and
// instance roles) unless static keys are given in Config. Uploads stream
// through the SDK's multipart upload manager; conditional creates use the
// native If-None-Match: * precondition on PutObject and, for multipart
// uploads, on CompleteMultipartUpload.
package s3

// The project uses feature/s3/manager on purpose: it is the mature uploader
// (bounded part pool, abort on failure, IfNoneMatch carried to
// CompleteMultipartUpload); its successor transfermanager is newer.
//lint:file-ignore SA1019 feature/s3/manager is deprecated in favour of transfermanager, and chosen deliberately.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"

	"github.com/cellar-backup/cellar/cloud"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultPartSize     = 16 << 20
	DefaultConcurrency  = 4
	DefaultListPageSize = 1000
	DefaultMaxAttempts  = 10
	DefaultMaxBackoff   = 20 * time.Second
	DefaultDialTimeout  = 10 * time.Second
	DefaultRegion       = "us-east-1"

	// MinPartSize is the smallest part S3 accepts in a multipart upload.
	MinPartSize = manager.MinUploadPartSize
	// maxParts is the most parts one multipart upload may have.
	maxParts = int64(manager.MaxUploadParts)
)

// Config holds the settings of an S3 repository. Zero values select the
// defaults documented on each field.
type Config struct {
	// Bucket is the bucket name, the host part of s3://bucket/prefix.
	// Required.
	Bucket string
	// Prefix is the key prefix inside the bucket under which the
	// repository lives (the path of the URL). Leading and trailing
	// slashes are ignored; empty means the bucket root.
	Prefix string

	// Endpoint is the s3_endpoint setting: the base URL of an
	// S3-compatible server, such as "http://127.0.0.1:9000". Empty means
	// AWS (or whatever the SDK's own AWS_ENDPOINT_URL convention says).
	// An endpoint without a scheme is taken to be https.
	Endpoint string
	// Region is the s3_region setting. Empty means the region from the
	// AWS configuration chain (AWS_REGION, the shared config file), and
	// us-east-1 if that has none.
	Region string
	// ForcePathStyle is the s3_force_path_style setting: address buckets
	// as endpoint/bucket/key instead of bucket.endpoint/key. Most
	// S3-compatible servers (MinIO) need it.
	ForcePathStyle bool

	// AccessKeyID, SecretAccessKey and SessionToken are static
	// credentials. When AccessKeyID is empty the AWS default credential
	// chain is used instead.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	// PartSize is the size of each part of a multipart upload, and the
	// size of each upload buffer; default 16 MiB, at least 5 MiB. Objects
	// no larger than one part are stored with a single PutObject. An
	// object of unknown length can be at most 10,000 parts long (156 GiB
	// at the default); for a known length the part size is raised as
	// needed.
	PartSize int64
	// Concurrency is the number of parts of one upload in flight at once;
	// default 4. An upload of unknown length holds at most about
	// (Concurrency+2) x PartSize bytes of buffers.
	Concurrency int
	// ListPageSize is the number of keys asked for per List request;
	// default and maximum 1000.
	ListPageSize int

	// MaxAttempts is how many times one request is tried before a
	// transient failure is returned; default 10.
	MaxAttempts int
	// MaxBackoff caps the exponential, jittered wait between attempts;
	// default 20 s.
	MaxBackoff time.Duration
	// DialTimeout bounds opening one TCP connection; default 10 s.
	DialTimeout time.Duration
}

// Storage is an S3 bucket (and prefix) as a cloud.Storage. It implements
// cloud.Creator. It is safe for concurrent use.
type Storage struct {
	client   *s3.Client
	uploader *manager.Uploader
	bucket   string
	prefix   string
	endpoint string // for messages; "" means AWS
	static   bool   // static credentials from Config
	pageSize int32
	partSize int64

	// bucketSeen records that the bucket was once found to exist, so that
	// a HEAD 404 (which has no body to tell a missing key from a missing
	// bucket) needs no extra HeadBucket afterwards.
	bucketSeen atomic.Bool
}

var (
	_ cloud.Storage = (*Storage)(nil)
	_ cloud.Creator = (*Storage)(nil)
)

// ParseURL splits a repository URL of the form s3://bucket/prefix into its
// bucket and prefix (without surrounding slashes).
func ParseURL(u *url.URL) (bucket, prefix string, err error) {
	if u == nil {
		return "", "", errors.New("s3: no repository URL")
	}
	if u.Scheme != "s3" {
		return "", "", fmt.Errorf("s3: repository URL %q: scheme must be s3", u.Redacted())
	}
	if u.Opaque != "" {
		return "", "", fmt.Errorf("s3: repository URL %q: want s3://bucket/prefix", u.Redacted())
	}
	if u.User != nil {
		return "", "", fmt.Errorf("s3: repository URL %q: credentials do not belong in the URL (use the AWS credential chain)", u.Redacted())
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("s3: repository URL %q has no bucket: want s3://bucket/prefix", u.Redacted())
	}
	if u.Port() != "" {
		return "", "", fmt.Errorf("s3: repository URL %q: the bucket name cannot have a port (set s3_endpoint for a custom server)", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("s3: repository URL %q: unexpected query or fragment", u.Redacted())
	}
	prefix, err = cloud.CleanPrefix(u.Path)
	if err != nil {
		return "", "", fmt.Errorf("s3: repository URL %q: bad prefix: %v", u.Redacted(), err)
	}
	return u.Host, prefix, nil
}

// New returns a Storage for cfg. It does no network I/O: a missing bucket
// or refused credentials show up on the first operation.
func New(ctx context.Context, cfg Config) (*Storage, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket given (the repository URL must be s3://bucket/prefix)")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize {
		return nil, fmt.Errorf("s3: part size %d is below the S3 minimum of %d bytes", cfg.PartSize, MinPartSize)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.ListPageSize <= 0 || cfg.ListPageSize > DefaultListPageSize {
		cfg.ListPageSize = DefaultListPageSize
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	endpoint, err := normalizeEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if cfg.AccessKeyID == "" && (cfg.SecretAccessKey != "" || cfg.SessionToken != "") {
		return nil, errors.New("s3: a secret key or session token was given without an access key ID")
	}
	if cfg.AccessKeyID != "" && cfg.SecretAccessKey == "" {
		return nil, errors.New("s3: an access key ID was given without a secret access key")
	}

	// The SDK's buildable client, not a plain *http.Client, so that the
	// SDK can still apply AWS_CA_BUNDLE and its own transport settings.
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = cfg.DialTimeout }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConnsPerHost = 64
		})

	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithLogger(logging.Nop{}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: loading the AWS configuration (check AWS_PROFILE, AWS_CONFIG_FILE and ~/.aws/config): %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = DefaultRegion
	}
	if awsCfg.Credentials != nil {
		awsCfg.Credentials = &credProvider{p: awsCfg.Credentials}
	}

	retryer := newRetryer(cfg.MaxAttempts, cfg.MaxBackoff)
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		o.Retryer = retryer
		o.Logger = logging.Nop{}
		// A GetObject of a multipart object has a checksum of checksums
		// that cannot be validated; the SDK would log that on every read.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	uploader := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = cfg.PartSize
		u.Concurrency = cfg.Concurrency
		// Abort a multipart upload that fails, so no parts linger.
		u.LeavePartsOnError = false
	})
	return &Storage{
		client:   client,
		uploader: uploader,
		bucket:   cfg.Bucket,
		prefix:   strings.Trim(cfg.Prefix, "/"),
		endpoint: endpoint,
		static:   cfg.AccessKeyID != "",
		pageSize: int32(cfg.ListPageSize),
		partSize: cfg.PartSize,
	}, nil
}

// normalizeEndpoint checks the s3_endpoint setting and gives it a scheme.
func normalizeEndpoint(e string) (string, error) {
	if e == "" {
		return "", nil
	}
	if !strings.Contains(e, "://") {
		e = "https://" + e
	}
	u, err := url.Parse(e)
	if err != nil {
		return "", fmt.Errorf("s3: bad s3_endpoint %q: %v", e, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("s3: bad s3_endpoint %q: want http(s)://host[:port]", u.Redacted())
	}
	if u.User != nil {
		return "", fmt.Errorf("s3: bad s3_endpoint %q: credentials do not belong in the endpoint", u.Redacted())
	}
	return strings.TrimSuffix(e, "/"), nil
}

// newRetryer is the SDK's standard retryer (exponential backoff with full
// jitter), made more patient: more attempts, no client-side retry quota
// (which would turn a long throttling episode into hard failures), and
// 429 Too Many Requests retried even when it comes without an error code.
func newRetryer(maxAttempts int, maxBackoff time.Duration) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
		o.RateLimiter = ratelimit.None
		o.Retryables = append(o.Retryables,
			retry.RetryableHTTPStatusCode{Codes: map[int]struct{}{http.StatusTooManyRequests: {}}},
			// A bare 429 gets its error code from the status text.
			retry.RetryableErrorCode{Codes: map[string]struct{}{"TooManyRequests": {}}},
		)
		o.Throttles = append(o.Throttles, retry.IsErrorThrottleFunc(isThrottle))
	})
}

// createRetryer is the retryer of a conditional create. A request that
// got no answer at all is retried only if the key still does not exist:
// MinIO resets the connection when it refuses a conditional write of a
// large body, and the reset discards its 412, so the retries would only
// meet the same refusal, after a backoff each.
type createRetryer struct {
	aws.Retryer
	exists func() bool
}

func (r *createRetryer) IsErrorRetryable(err error) bool {
	if !r.Retryer.IsErrorRetryable(err) {
		return false
	}
	return statusOf(err) != 0 || !r.exists()
}

// isThrottle makes a bare 429 count as throttling.
func isThrottle(err error) aws.Ternary {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusTooManyRequests {
		return aws.TrueTernary
	}
	return aws.UnknownTernary
}

// name is the object name in the bucket for a repository key.
func (s *Storage) name(key string) string { return cloud.JoinPrefix(s.prefix, key) }

// Put stores r under key, replacing any object there. Objects up to one
// part are sent with one PutObject, larger ones as a parallel multipart
// upload that is aborted if anything fails, so a failed Put leaves nothing
// visible.
func (s *Storage) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "put", key, r, size, false)
}

// Create stores r under key only if no object exists there, with
// If-None-Match: * on the request that makes the object visible (PutObject
// or CompleteMultipartUpload). An existing object gives cloud.ErrExist.
func (s *Storage) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.upload(ctx, "create", key, r, size, true)
}

func (s *Storage) upload(ctx context.Context, op, key string, r io.Reader, size int64, create bool) error {
	if size < 0 && size != cloud.SizeUnknown {
		return cloud.OpError(op, key, fmt.Errorf("invalid size %d", size))
	}
	body, err := uploadBody(r, size)
	if err != nil {
		return cloud.OpError(op, key, err)
	}
	name := s.name(key)
	in := &s3.PutObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(name),
		Body:   body,
	}
	if create {
		// The manager copies the PutObjectInput fields that
		// CompleteMultipartUploadInput shares (awsutil.Copy), so the
		// precondition reaches CompleteMultipartUpload too.
		in.IfNoneMatch = aws.String("*")
	}
	var perCall []func(*manager.Uploader)
	if ps := partSizeFor(size, s.partSize); ps != s.partSize {
		perCall = append(perCall, func(u *manager.Uploader) { u.PartSize = ps })
	}
	// seen is set once a conditional create, having got no answer, found
	// the key there (createRetryer), so that it is not asked again below.
	var seen atomic.Bool
	exists := func() bool {
		if seen.Load() {
			return true
		}
		_, err := s.Stat(ctx, key)
		seen.Store(err == nil)
		return err == nil
	}
	if create {
		perCall = append(perCall, func(u *manager.Uploader) {
			u.ClientOptions = append(u.ClientOptions, func(o *s3.Options) {
				o.Retryer = &createRetryer{Retryer: o.Retryer, exists: exists}
			})
		})
	}
	_, err = s.uploader.Upload(ctx, in, perCall...)
	if err == nil {
		s.bucketSeen.Store(true)
		return nil
	}
	s.abortLeftover(ctx, name, err)
	if create && isConflict(err) {
		return s.resolveConflict(ctx, key, err)
	}
	if create && statusOf(err) == 0 && ctx.Err() == nil {
		// No answer at all: MinIO resets the connection when it refuses
		// a conditional write of a large body, and the reset discards its
		// 412. If the key exists now, report that: whether another
		// writer's object or this one's (landed, its answer lost), the
		// caller must compare contents anyway.
		if exists() {
			return cloud.OpError(op, key, &kindError{
				kind: cloud.ErrExist,
				msg:  fmt.Sprintf("s3: object %q exists (the conditional write got no answer)", name),
				err:  err,
			})
		}
	}
	return s.translate(ctx, op, key, err)
}

// partSizeFor raises the part size for a large object of known size so
// that it fits in the 10,000 parts S3 allows.
func partSizeFor(size, partSize int64) int64 {
	if size <= partSize*maxParts {
		return partSize
	}
	ps := (size + maxParts - 1) / maxParts
	const mib = 1 << 20
	return (ps + mib - 1) / mib * mib
}

// abortLeftover aborts a failed multipart upload whose context was
// cancelled: the manager tries to abort it with the caller's context,
// which is already done, so the parts would stay stored (invisible, but
// billed) until a lifecycle rule removes them.
func (s *Storage) abortLeftover(ctx context.Context, name string, err error) {
	var mf manager.MultiUploadFailure
	if ctx.Err() == nil || !errors.As(err, &mf) || mf.UploadID() == "" {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, _ = s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(name),
		UploadId: aws.String(mf.UploadID()),
	})
}

// resolveConflict handles 409 ConditionalRequestConflict on a conditional
// create: another conditional write of the same key was in progress. If
// that write lands, the key exists and this Create lost (ErrExist); if it
// does not land within a short wait, the conflict is reported as is, for
// the caller to retry (the stream is consumed, so this cannot).
func (s *Storage) resolveConflict(ctx context.Context, key string, err error) error {
	wait := 100 * time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, serr := s.Stat(ctx, key)
		if serr == nil {
			return cloud.OpError("create", key, &kindError{
				kind: cloud.ErrExist,
				msg:  fmt.Sprintf("s3: object %q was created by a concurrent writer", s.name(key)),
				err:  err,
			})
		}
		if !errors.Is(serr, cloud.ErrNotExist) || time.Now().After(deadline) {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return s.translate(ctx, "create", key, err)
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
	return cloud.OpError("create", key,
		fmt.Errorf("s3: a concurrent conditional write to %q conflicted with this one; try again: %w", s.name(key), err))
}

// Get opens the object for reading. The body streams from the server; a
// cancelled context makes further reads fail.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.name(key)),
	})
	if err != nil {
		return nil, s.translate(ctx, "get", key, err)
	}
	return cloud.WrapReadErrors(out.Body, func(err error) error { return cloud.OpError("read", key, err) }), nil
}

// Stat describes the object with a HEAD request.
func (s *Storage) Stat(ctx context.Context, key string) (cloud.ObjectInfo, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.name(key)),
	})
	if err != nil {
		if statusOf(err) == http.StatusNotFound && ctx.Err() == nil {
			// A HEAD answer has no body, so a missing key and a missing
			// bucket look alike; ask about the bucket.
			if berr := s.checkBucket(ctx); berr != nil {
				return cloud.ObjectInfo{}, s.translate(ctx, "stat", key, berr)
			}
		}
		return cloud.ObjectInfo{}, s.translate(ctx, "stat", key, err)
	}
	return cloud.ObjectInfo{
		Key:     key,
		Size:    aws.ToInt64(out.ContentLength),
		ModTime: aws.ToTime(out.LastModified),
	}, nil
}

// checkBucket returns an error if the bucket is known to be missing, and
// nil if it exists or its existence cannot be told (HeadBucket forbidden).
func (s *Storage) checkBucket(ctx context.Context) error {
	if s.bucketSeen.Load() {
		return nil
	}
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	switch {
	case err == nil:
		s.bucketSeen.Store(true)
		return nil
	case statusOf(err) == http.StatusNotFound:
		return &kindError{kind: cloud.ErrNoBucket, msg: s.noBucketMsg(), err: err}
	default:
		return nil
	}
}

// List calls fn for each object under prefix in key order, one page of
// ListPageSize keys at a time.
func (s *Storage) List(ctx context.Context, prefix string, fn func(cloud.ObjectInfo) error) error {
	full := s.prefix + "/"
	if s.prefix == "" {
		full = ""
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket:  aws.String(s.bucket),
		Prefix:  aws.String(full + prefix),
		MaxKeys: aws.Int32(s.pageSize),
	}, func(o *s3.ListObjectsV2PaginatorOptions) {
		o.StopOnDuplicateToken = true
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.translate(ctx, "list", prefix, err)
		}
		for _, obj := range page.Contents {
			name := aws.ToString(obj.Key)
			if !strings.HasPrefix(name, full) || strings.HasSuffix(name, "/") {
				// Not under the repository, or a "folder" marker
				// made by a console; neither is a repository object.
				continue
			}
			if err := fn(cloud.ObjectInfo{
				Key:     name[len(full):],
				Size:    aws.ToInt64(obj.Size),
				ModTime: aws.ToTime(obj.LastModified),
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object; a missing object is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.name(key)),
	})
	if err != nil {
		if code := codeOf(err); code == "NoSuchKey" {
			return nil // some S3-compatible servers answer 404
		}
		return s.translate(ctx, "delete", key, err)
	}
	return nil
}

// DeleteBatch removes up to 1,000 objects with one DeleteObjects request.
func (s *Storage) DeleteBatch(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > cloud.MaxBatchDelete {
		return fmt.Errorf("s3: %d keys in one batch, at most %d", len(keys), cloud.MaxBatchDelete)
	}
	ids := make([]types.ObjectIdentifier, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, types.ObjectIdentifier{Key: aws.String(s.name(k))})
	}
	out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: aws.String(s.bucket),
		Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
	})
	if err != nil {
		return s.translate(ctx, "delete", keys[0], err)
	}
	for _, e := range out.Errors {
		if aws.ToString(e.Code) == "NoSuchKey" {
			continue
		}
		return cloud.OpError("delete", cloud.TrimPrefix(s.prefix, aws.ToString(e.Key)), fmt.Errorf("%s: %s", aws.ToString(e.Code), aws.ToString(e.Message)))
	}
	return nil
}

// Close releases the Storage. Idle connections close on their own after
// the transport's idle timeout; nothing else is held.
func (s *Storage) Close() error { return nil }

// uploadBody prepares r for the upload manager. A reader the manager can
// read by offset (io.ReaderAt and io.Seeker, such as *os.File or
// *bytes.Reader) is uploaded without copying, but only when it is
// positioned at its start (the manager reads from offset 0) and really
// seekable (a pipe is not). Any other reader is streamed through the
// manager's part buffers; with a known size its length is checked, so a
// short stream fails instead of storing a truncated object.
func uploadBody(r io.Reader, size int64) (io.Reader, error) {
	if ra, ok := r.(interface {
		io.ReaderAt
		io.ReadSeeker
	}); ok {
		if cur, err := ra.Seek(0, io.SeekCurrent); err == nil && cur == 0 {
			end, err := ra.Seek(0, io.SeekEnd)
			if err == nil {
				if _, err := ra.Seek(0, io.SeekStart); err != nil {
					return nil, err
				}
				if size >= 0 && end != size {
					return nil, fmt.Errorf("stream is %d bytes long, but its size was given as %d", end, size)
				}
				return r, nil
			}
		}
	}
	if size >= 0 {
		return &exactReader{r: r, left: size, size: size}, nil
	}
	return readerOnly{r}, nil
}

// readerOnly hides every method but Read, so the manager streams it.
type readerOnly struct{ r io.Reader }

func (o readerOnly) Read(p []byte) (int, error) { return o.r.Read(p) }

// exactReader fails unless r delivers exactly size bytes.
type exactReader struct {
	r          io.Reader
	left, size int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left == 0 {
		var one [1]byte
		n, err := io.ReadFull(e.r, one[:])
		if n > 0 {
			return 0, fmt.Errorf("stream is longer than its given size %d", e.size)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, io.EOF
		}
		return 0, err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("stream ended after %d of its given %d bytes: %w", e.size-e.left, e.size, io.ErrUnexpectedEOF)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}
