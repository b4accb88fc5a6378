// Package testservers gives tests the real object stores that `make test`
// starts (MinIO, fake-gcs-server, Azurite): their addresses and
// credentials from the CELLARTEST_* variables, and fresh buckets or
// containers that are removed, with what is left in them, when the test
// ends. A test whose server is missing fails (see storagetest.Env).
package testservers

import (
	"context"
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/cellar-backup/cellar/cloud/storagetest"
)

// MinIO is the S3 server: path-style addressing, region us-east-1.
type MinIO struct {
	Endpoint, AccessKey, SecretKey string
}

// S3 returns the MinIO server of this test run.
func S3(t testing.TB) MinIO {
	t.Helper()
	return MinIO{
		Endpoint:  storagetest.Env(t, "CELLARTEST_S3_ENDPOINT"),
		AccessKey: storagetest.Env(t, "CELLARTEST_S3_ACCESS_KEY"),
		SecretKey: storagetest.Env(t, "CELLARTEST_S3_SECRET_KEY"),
	}
}

// Admin is a plain SDK client for setting up and inspecting buckets.
func (m MinIO) Admin() *awss3.Client {
	return awss3.New(awss3.Options{
		BaseEndpoint: aws.String(m.Endpoint),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(m.AccessKey, m.SecretKey, ""),
	})
}

// NewBucket creates a fresh bucket and removes it (and all in it) after
// the test.
func (m MinIO) NewBucket(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	name := storagetest.UniqueName("cellar-test-")
	c := m.Admin()
	if _, err := c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	t.Cleanup(func() { emptyAndRemoveS3(c, name) })
	return name
}

func emptyAndRemoveS3(c *awss3.Client, bucket string) {
	ctx := context.Background()
	p := awss3.NewListObjectsV2Paginator(c, &awss3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			break
		}
		var ids []types.ObjectIdentifier
		for _, o := range page.Contents {
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		if len(ids) > 0 {
			_, _ = c.DeleteObjects(ctx, &awss3.DeleteObjectsInput{Bucket: aws.String(bucket), Delete: &types.Delete{Objects: ids}})
		}
	}
	if ups, err := c.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)}); err == nil {
		for _, u := range ups.Uploads {
			_, _ = c.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: aws.String(bucket), Key: u.Key, UploadId: u.UploadId})
		}
	}
	_, _ = c.DeleteBucket(ctx, &awss3.DeleteBucketInput{Bucket: aws.String(bucket)})
}

// FakeGCS is the GCS emulator, reached at Host (host:port), the value for
// STORAGE_EMULATOR_HOST.
type FakeGCS struct {
	Host string
}

// GCS returns the fake-gcs-server of this test run.
func GCS(t testing.TB) FakeGCS {
	t.Helper()
	return FakeGCS{Host: storagetest.Env(t, "CELLARTEST_GCS_HOST")}
}

// NewBucket creates an empty bucket and removes it, with whatever is left
// in it, when the test ends.
func (g FakeGCS) NewBucket(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	c, err := storage.NewClient(ctx, option.WithEndpoint("http://"+g.Host+"/storage/v1/"),
		option.WithoutAuthentication(), storage.WithJSONReads())
	if err != nil {
		t.Fatal(err)
	}
	name := storagetest.UniqueName("cellar-")
	if err := c.Bucket(name).Create(ctx, "cellar-test", nil); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer c.Close()
		it := c.Bucket(name).Objects(ctx, nil)
		for {
			o, err := it.Next()
			if err != nil {
				if !errors.Is(err, iterator.Done) {
					t.Logf("cleanup of bucket %s: %v", name, err)
				}
				break
			}
			_ = c.Bucket(name).Object(o.Name).Delete(ctx)
		}
		_ = c.Bucket(name).Delete(ctx)
	})
	return name
}

// Azurite is the Azure Blob emulator with its shared key.
type Azurite struct {
	Endpoint, Account, Key string
}

// Azure returns the Azurite server of this test run.
func Azure(t testing.TB) Azurite {
	t.Helper()
	return Azurite{
		Endpoint: storagetest.Env(t, "CELLARTEST_AZURE_ENDPOINT"),
		Account:  storagetest.Env(t, "CELLARTEST_AZURE_ACCOUNT"),
		Key:      storagetest.Env(t, "CELLARTEST_AZURE_KEY"),
	}
}

// Credential returns the account's shared key credential, for signing
// SAS tokens.
func (a Azurite) Credential(t testing.TB) *azblob.SharedKeyCredential {
	t.Helper()
	cred, err := azblob.NewSharedKeyCredential(a.Account, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

// Admin returns a plain SDK client with the shared key, for setting up
// containers and looking behind a backend's back.
func (a Azurite) Admin(t testing.TB) *azblob.Client {
	t.Helper()
	c, err := azblob.NewClientWithSharedKeyCredential(a.Endpoint, a.Credential(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewContainer creates a fresh container that is deleted after the test.
func (a Azurite) NewContainer(t testing.TB) string {
	t.Helper()
	name := storagetest.UniqueName("cellar-")
	c := a.Admin(t)
	if _, err := c.CreateContainer(context.Background(), name, nil); err != nil {
		t.Fatalf("creating container %s: %v", name, err)
	}
	t.Cleanup(func() { _, _ = c.DeleteContainer(context.Background(), name, nil) })
	return name
}

// ContainerSAS returns a service SAS query string for the container with
// the given permissions, signed with the shared key, valid for an hour.
func (a Azurite) ContainerSAS(t testing.TB, container string, perm sas.ContainerPermissions) string {
	t.Helper()
	q, err := sas.BlobSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		ExpiryTime:    time.Now().Add(time.Hour).UTC(),
		Permissions:   perm.String(),
		ContainerName: container,
	}.SignWithSharedKey(a.Credential(t))
	if err != nil {
		t.Fatal(err)
	}
	return q.Encode()
}
