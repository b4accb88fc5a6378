// Package repo is the explicit registry of repository schemes: it turns a
// repository URL and the storage settings into an open cloud.Storage. Only
// cmd imports it.
package repo

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/azure"
	"github.com/cellar-backup/cellar/cloud/fs"
	"github.com/cellar-backup/cellar/cloud/gcs"
	"github.com/cellar-backup/cellar/cloud/s3"
)

// Schemes are the repository URL schemes Cellar knows.
var Schemes = []string{"file", "s3", "gs", "azure"}

// Options are the storage settings of one server.
type Options struct {
	URL string
	// FileOwner owns what a file:// repository creates (see fs.Config).
	FileOwner *fs.Owner

	PartSize    int64
	Concurrency int

	S3Endpoint       string
	S3Region         string
	S3ForcePathStyle bool

	GCSEndpoint string
	// GCSEmulatorHost is STORAGE_EMULATOR_HOST.
	GCSEmulatorHost string

	AzureAccount          string
	AzureEndpoint         string
	AzureKey              string
	AzureSASToken         string
	AzureConnectionString string

	// Keys open sealed objects; with Seal, what is written is sealed to
	// their recipients (encryption = age).
	Keys *catalog.Keyring
	Seal bool
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
		_, err = fs.ParseURL(u)
	case "s3":
		_, _, err = s3.ParseURL(u)
	case "gs":
		_, _, err = gcs.ParseURL(u)
	case "azure":
		_, _, err = azure.ParseURL(u)
	case "":
		return nil, fmt.Errorf("%q has no scheme: use file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix", raw)
	default:
		return nil, fmt.Errorf("unknown scheme %q in %q: use one of %s", u.Scheme, u.Redacted(), strings.Join(Schemes, ", "))
	}
	if err != nil {
		return nil, err
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
		return o.storage(fs.New(ctx, fs.Config{Root: root, Owner: o.FileOwner}))
	case "s3":
		bucket, prefix, _ := s3.ParseURL(u)
		return o.storage(s3.New(ctx, s3.Config{
			Bucket: bucket, Prefix: prefix,
			Endpoint: o.S3Endpoint, Region: o.S3Region, ForcePathStyle: o.S3ForcePathStyle,
			PartSize: o.PartSize, Concurrency: o.Concurrency,
		}))
	case "gs":
		bucket, prefix, _ := gcs.ParseURL(u)
		return o.storage(gcs.New(ctx, gcs.Config{
			Bucket: bucket, Prefix: prefix,
			Endpoint:     o.GCSEndpoint,
			EmulatorHost: o.GCSEmulatorHost,
			ChunkSize:    int(o.PartSize),
		}))
	case "azure":
		container, prefix, _ := azure.ParseURL(u)
		return o.storage(azure.New(ctx, azure.Config{
			Container: container, Prefix: prefix,
			Account: o.AzureAccount, Endpoint: o.AzureEndpoint,
			ConnectionString: o.AzureConnectionString, Key: o.AzureKey, SASToken: o.AzureSASToken,
			BlockSize: o.PartSize, Concurrency: o.Concurrency,
		}))
	}
	return nil, fmt.Errorf("unknown repository scheme %q", u.Scheme)
}

// storage converts a backend's constructor result, so that a failed
// constructor gives a nil interface rather than a typed nil, and wraps it:
// checked keys and errors, and sealing (a repository in the clear is read
// through it too, so that a sealed object met there is named as such).
func (o Options) storage(s cloud.Storage, err error) (cloud.Storage, error) {
	if err != nil {
		return nil, err
	}
	return catalog.NewSealedStore(cloud.Checked(s), o.Keys, o.Seal), nil
}

// Endpoint names where the repository's requests go and the setting that
// says so, for messages such as "no answer from ...".
func Endpoint(o Options) string {
	u, err := Parse(o.URL)
	if err != nil {
		return o.URL
	}
	switch u.Scheme {
	case "s3":
		if o.S3Endpoint != "" {
			return o.S3Endpoint + " (s3_endpoint)"
		}
		return "AWS S3 (s3_region " + o.S3Region + ")"
	case "gs":
		if o.GCSEndpoint != "" {
			return o.GCSEndpoint + " (gcs_endpoint)"
		}
		if o.GCSEmulatorHost != "" {
			return o.GCSEmulatorHost + " (STORAGE_EMULATOR_HOST)"
		}
		return "Google Cloud Storage"
	case "azure":
		if o.AzureConnectionString != "" {
			return "the endpoint in AZURE_STORAGE_CONNECTION_STRING"
		}
		if o.AzureEndpoint != "" {
			return o.AzureEndpoint + " (azure_endpoint)"
		}
		return "Azure storage account " + o.AzureAccount + " (azure_account)"
	}
	return u.Redacted()
}
