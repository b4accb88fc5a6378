package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/cellar-backup/cellar/cloud"
)

// kindError is a translated SDK error: a message that says what to fix,
// the named cloud error it stands for (if any), and the SDK's error.
type kindError struct {
	kind error // cloud.ErrNotExist, ...; nil for a merely explained error
	msg  string
	err  error
}

func (e *kindError) Error() string { return e.msg + ": " + e.err.Error() }

func (e *kindError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// credError marks a failure to obtain credentials from the AWS chain, so
// that it can be told apart from other errors by type.
type credError struct{ err error }

func (e *credError) Error() string { return "no usable AWS credentials: " + e.err.Error() }
func (e *credError) Unwrap() error { return e.err }

// RetryableError tells the SDK's retryer not to retry: a missing
// credential does not appear by trying again.
func (e *credError) RetryableError() bool { return false }

// credProvider wraps the credential chain to type its errors.
type credProvider struct{ p aws.CredentialsProvider }

func (c *credProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	creds, err := c.p.Retrieve(ctx)
	if err != nil && ctx.Err() == nil {
		return creds, &credError{err: err}
	}
	return creds, err
}

// statusOf returns the HTTP status of a failed request, or 0.
func statusOf(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// codeOf returns the S3 error code ("NoSuchKey", ...), or "". For a
// response without a body (HEAD) the SDK derives it from the status text.
func codeOf(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isConflict(err error) bool {
	return statusOf(err) == http.StatusConflict && codeOf(err) == "ConditionalRequestConflict"
}

// permissionCodes are the S3 error codes for refused credentials; some come
// with a 400 status rather than 403.
var permissionCodes = map[string]string{
	"AccessDenied":          "",
	"AllAccessDisabled":     "",
	"AccountProblem":        "",
	"InvalidAccessKeyId":    "the access key ID is not known to the server",
	"SignatureDoesNotMatch": "the secret access key does not match the access key ID",
	"InvalidToken":          "the session token is invalid",
	"ExpiredToken":          "the session token has expired",
	"TokenRefreshRequired":  "the session token must be refreshed",
	"InvalidSecurity":       "",
	"Forbidden":             "",
}

// regionCodes are answers to a request sent to the wrong region.
var regionCodes = map[string]bool{
	"PermanentRedirect":                  true,
	"AuthorizationHeaderMalformed":       true,
	"IllegalLocationConstraintException": true,
}

// translate turns an SDK error into one that wraps the matching named
// cloud error (by status code and S3 error code, never by message text),
// names the key, and says which setting to check.
func (s *Storage) translate(ctx context.Context, op, key string, err error) error {
	var ke *kindError
	if errors.As(err, &ke) {
		return cloud.OpError(op, key, err)
	}
	if ctx.Err() != nil {
		// Cancelled or timed out: the SDK error wraps the context's.
		return cloud.OpError(op, key, err)
	}
	status, code := statusOf(err), codeOf(err)
	name := s.name(key)
	explain := func(kind error, format string, args ...any) error {
		return cloud.OpError(op, key, &kindError{kind: kind, msg: fmt.Sprintf(format, args...), err: err})
	}
	var ce *credError
	switch {
	case code == "NoSuchBucket":
		return explain(cloud.ErrNoBucket, "%s", s.noBucketMsg())
	case code == "NoSuchKey" || (status == http.StatusNotFound && (op == "get" || op == "stat")):
		return explain(cloud.ErrNotExist, "s3: object %q does not exist in bucket %q", name, s.bucket)
	case op == "create" && (status == http.StatusPreconditionFailed || code == "PreconditionFailed"):
		return explain(cloud.ErrExist, "s3: object %q already exists in bucket %q", name, s.bucket)
	case errors.As(err, &ce):
		return explain(cloud.ErrPermission, "s3: no usable AWS credentials for bucket %q (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an instance or task role)", s.bucket)
	case status == http.StatusForbidden || isPermissionCode(code):
		return explain(cloud.ErrPermission, "%s", s.deniedMsg(op, code))
	case status == http.StatusMovedPermanently || regionCodes[code]:
		return explain(nil, "s3: bucket %q is not in the configured region (check s3_region, or s3_endpoint)", s.bucket)
	case code == "InvalidBucketName":
		return explain(nil, "s3: %q is not a valid bucket name (check the repository URL)", s.bucket)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return explain(nil, "s3: cannot resolve the address of %s (check s3_endpoint and s3_region)", s.endpointName())
	}
	var netErr *net.OpError
	if errors.As(err, &netErr) && netErr.Op == "dial" {
		return explain(nil, "s3: cannot connect to %s (check s3_endpoint and that the server is running)", s.endpointName())
	}
	return cloud.OpError(op, key, err)
}

func isPermissionCode(code string) bool {
	_, ok := permissionCodes[code]
	return ok
}

func (s *Storage) noBucketMsg() string {
	return fmt.Sprintf("s3: bucket %q does not exist at %s (check the repository URL)", s.bucket, s.endpointName())
}

func (s *Storage) deniedMsg(op, code string) string {
	hint := "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the AWS credential chain, and the bucket policy"
	if s.static {
		hint = "check the access key ID and secret access key configured for the repository, and the bucket policy"
	}
	if why := permissionCodes[code]; why != "" {
		hint = why + "; " + hint
	}
	if op == "stat" || op == "get" {
		// S3 answers 403, not 404, for a missing key when the
		// credentials may not list the bucket.
		hint += "; without s3:ListBucket permission a missing object also answers 403"
	}
	return fmt.Sprintf("s3: access denied to bucket %q (%s)", s.bucket, hint)
}

func (s *Storage) endpointName() string {
	if s.endpoint == "" {
		return "AWS S3"
	}
	return s.endpoint
}
