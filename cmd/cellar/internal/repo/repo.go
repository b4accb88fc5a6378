// Package repo is the explicit registry of repository schemes: it turns a
// repository URL and the storage settings into an open cloud.Storage. Only
// cmd imports it.
package repo

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/fs"
)

// Schemes are the repository URL schemes Cellar knows.
var Schemes = []string{"file", "s3", "gs", "azure"}

// Options are the storage settings of one server.
type Options struct {
	URL string

	PartSize    int64
	Concurrency int

	S3Endpoint       string
	S3Region         string
	S3ForcePathStyle bool

	GCSEndpoint string

	AzureAccount          string
	AzureEndpoint         string
	AzureKey              string
	AzureSASToken         string
	AzureConnectionString string
}

// Parse checks the shape of a repository URL: a known scheme, an absolute
// path for file://, a bucket or container name for the others.
func Parse(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: use file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix", raw)
	}
	switch u.Scheme {
	case "file":
		if _, err := fs.ParseURL(u); err != nil {
			return nil, err
		}
	case "s3", "gs", "azure":
		if u.Host == "" {
			return nil, fmt.Errorf("%q names no bucket or container: use %s://NAME/prefix", u.Redacted(), u.Scheme)
		}
		if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("%q: a %s:// repository URL is %s://NAME/prefix; put endpoints and credentials in their own settings", u.Redacted(), u.Scheme, u.Scheme)
		}
	case "":
		return nil, fmt.Errorf("%q has no scheme: use file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix", raw)
	default:
		return nil, fmt.Errorf("unknown scheme %q in %q: use one of %s", u.Scheme, u.Redacted(), strings.Join(Schemes, ", "))
	}
	return u, nil
}

// CheckEndpoint checks an endpoint setting: an http or https URL.
func CheckEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL", raw)
	}
	return nil
}

// Open opens the repository named by o.URL.
func Open(ctx context.Context, o Options) (cloud.Storage, error) {
	u, err := Parse(o.URL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "file":
		root, _ := fs.ParseURL(u)
		return fs.New(ctx, fs.Config{Root: root})
	}
	return nil, fmt.Errorf("repository scheme %s:// is not available in this build", u.Scheme)
}
