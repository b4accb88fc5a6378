package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellar-backup/cellar/cloud"
	s3 "github.com/cellar-backup/cellar/cloud/s3"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/cloud/storagetest/testservers"
)

// config is a Config for bucket on the MinIO server m, reached through
// endpoint (the server's, or a proxy's).
func config(m testservers.MinIO, bucket, endpoint string) s3.Config {
	return s3.Config{
		Bucket:          bucket,
		Endpoint:        endpoint,
		Region:          "us-east-1",
		ForcePathStyle:  true,
		AccessKeyID:     m.AccessKey,
		SecretAccessKey: m.SecretKey,
	}
}

func open(t testing.TB, cfg s3.Config) *s3.Storage {
	t.Helper()
	s, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	m := testservers.S3(t)
	t.Run("Defaults", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) cloud.Storage {
			cfg := config(m, m.NewBucket(t), m.Endpoint)
			cfg.Prefix = "/" + storagetest.UniqueName("repo/r") + "/"
			return open(t, cfg)
		}, storagetest.Options{PartSize: s3.DefaultPartSize, Concurrency: s3.DefaultConcurrency})
	})
	t.Run("SmallPartsBucketRoot", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) cloud.Storage {
			cfg := config(m, m.NewBucket(t), m.Endpoint)
			cfg.PartSize = s3.MinPartSize
			cfg.Concurrency = 2
			return open(t, cfg)
		}, storagetest.Options{PartSize: s3.MinPartSize, Concurrency: 2})
	})
}

func TestMemoryBound(t *testing.T) {
	m := testservers.S3(t)
	s := open(t, config(m, m.NewBucket(t), m.Endpoint))
	storagetest.RunMemoryBound(t, s, storagetest.Options{PartSize: s3.DefaultPartSize, Concurrency: s3.DefaultConcurrency})
}

func TestFaults(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	p := storagetest.NewFaultProxy(t, m.Endpoint)
	s := open(t, config(m, bucket, p.URL))
	storagetest.RunFaults(t, s, p)
}

// TestListPageSize proves that List pages: with 100 keys a page, 250 keys
// take at least three requests, and all arrive, in order.
func TestListPageSize(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	p := storagetest.NewFaultProxy(t, m.Endpoint)
	cfg := config(m, bucket, p.URL)
	cfg.Prefix = "pfx"
	cfg.ListPageSize = 100
	s := open(t, cfg)
	const n = 250
	if reqs := storagetest.CountListRequests(t, s, p, n); reqs < 3 {
		t.Fatalf("List of %d keys with page size 100 made %d requests, want at least 3", n, reqs)
	}
}

// TestPrefix checks that the repository prefix maps keys both ways and
// that List ignores what lies outside it, and console "folder" markers.
func TestPrefix(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	cfg := config(m, bucket, m.Endpoint)
	cfg.Prefix = "a/b"
	s := open(t, cfg)
	ctx := context.Background()
	if err := s.Put(ctx, "k/obj", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	admin := m.Admin()
	for _, name := range []string{"a/bc/obj", "a/b/k/folder/", "other"} {
		if _, err := admin.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(name), Body: strings.NewReader("")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("a/b/k/obj")}); err != nil {
		t.Fatalf("the object is not stored under the prefix: %v", err)
	}
	var got []string
	if err := s.List(ctx, "", func(o cloud.ObjectInfo) error { got = append(got, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "k/obj" {
		t.Fatalf("List = %q, want [k/obj]", got)
	}
	if info, err := s.Stat(ctx, "k/obj"); err != nil || info.Key != "k/obj" || info.Size != 1 || info.ModTime.IsZero() {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
}

// TestMissingBucket: every operation on a bucket that does not exist
// reports cloud.ErrNoBucket and names the bucket.
func TestMissingBucket(t *testing.T) {
	m := testservers.S3(t)
	bucket := storagetest.UniqueName("cellar-missing-")
	s := open(t, config(m, bucket, m.Endpoint))
	ctx := context.Background()
	big := int64(2*s3.DefaultPartSize + 1)
	ops := map[string]func() error{
		"Put":      func() error { return s.Put(ctx, "k", strings.NewReader("x"), 1) },
		"PutLarge": func() error { return s.Put(ctx, "k", storagetest.Data(1, big), cloud.SizeUnknown) },
		"Create":   func() error { return s.Create(ctx, "k", strings.NewReader("x"), cloud.SizeUnknown) },
		"Get": func() error {
			rc, err := s.Get(ctx, "k")
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Stat":   func() error { _, err := s.Stat(ctx, "k"); return err },
		"List":   func() error { return s.List(ctx, "", func(cloud.ObjectInfo) error { return nil }) },
		"Delete": func() error { return s.Delete(ctx, "k") },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			err := op()
			if !errors.Is(err, cloud.ErrNoBucket) {
				t.Fatalf("%s on a missing bucket = %v, want ErrNoBucket", name, err)
			}
			if !strings.Contains(err.Error(), bucket) || !strings.Contains(err.Error(), "check the repository URL") {
				t.Fatalf("message does not name the bucket and the setting: %v", err)
			}
			t.Log(err)
		})
	}
}

// TestWrongCredentials: refused credentials give cloud.ErrPermission
// with a hint, without retrying and without the secret in the message.
func TestWrongCredentials(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	ctx := context.Background()
	for _, tc := range []struct{ name, id, secret string }{
		{"UnknownKey", "no-such-key-id", "some-secret-value"},
		{"WrongSecret", m.AccessKey, "wrong-secret-value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(m, bucket, m.Endpoint)
			cfg.AccessKeyID, cfg.SecretAccessKey = tc.id, tc.secret
			s := open(t, cfg)
			start := time.Now()
			errs := map[string]error{}
			_, errs["Stat"] = s.Stat(ctx, "k")
			errs["Put"] = s.Put(ctx, "k", strings.NewReader("x"), 1)
			errs["List"] = s.List(ctx, "", func(cloud.ObjectInfo) error { return nil })
			rc, err := s.Get(ctx, "k")
			if err == nil {
				rc.Close()
			}
			errs["Get"] = err
			for op, err := range errs {
				if !errors.Is(err, cloud.ErrPermission) {
					t.Fatalf("%s with wrong credentials = %v, want ErrPermission", op, err)
				}
				msg := err.Error()
				if !strings.Contains(msg, "access denied to bucket") || !strings.Contains(msg, "secret access key") {
					t.Fatalf("%s: message has no hint: %v", op, msg)
				}
				if strings.Contains(msg, tc.secret) {
					t.Fatalf("%s: message shows the secret: %v", op, msg)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("four refused requests took %v: were they retried?", d)
			}
			t.Log(errs["Stat"])
		})
	}
}

// TestNoCredentials: with no static keys and nothing in the AWS chain, the
// error says where credentials come from.
func TestNoCredentials(t *testing.T) {
	m := testservers.S3(t)
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      "",
		"AWS_SECRET_ACCESS_KEY":                  "",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_PROFILE":                            "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_CONFIG_FILE":                        dir + "/config",
		"AWS_SHARED_CREDENTIALS_FILE":            dir + "/credentials",
		"AWS_EC2_METADATA_DISABLED":              "true",
	} {
		t.Setenv(k, v)
	}
	cfg := config(m, "any-bucket", m.Endpoint)
	cfg.AccessKeyID, cfg.SecretAccessKey = "", ""
	s := open(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := s.Stat(ctx, "k")
	if !errors.Is(err, cloud.ErrPermission) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("Stat without credentials = %v, want ErrPermission naming AWS_ACCESS_KEY_ID", err)
	}
	t.Log(err)
}

// TestUnreachable: an endpoint where nothing listens fails within the
// caller's deadline, and (once retries are spent) says what to check.
func TestUnreachable(t *testing.T) {
	m := testservers.S3(t)
	cfg := config(m, "any-bucket", "http://127.0.0.1:1")
	s := open(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Stat(ctx, "k")
	if err == nil {
		t.Fatal("Stat against a closed port succeeded")
	}
	if d := time.Since(start); d > 25*time.Second {
		t.Fatalf("Stat with a 20 s context returned after %v", d)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)

	cfg.MaxAttempts = 2
	cfg.MaxBackoff = 100 * time.Millisecond
	s = open(t, cfg)
	err = s.Put(context.Background(), "k", strings.NewReader("x"), 1)
	if err == nil || !strings.Contains(err.Error(), "check s3_endpoint") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Put to a closed port = %v, want a hint naming the endpoint and s3_endpoint", err)
	}
	t.Log(err)
}

// TestAbortedUploads: a multipart upload that fails or is cancelled is
// aborted, so no parts are left stored in the bucket.
func TestAbortedUploads(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	cfg := config(m, bucket, m.Endpoint)
	cfg.PartSize = s3.MinPartSize
	s := open(t, cfg)
	for _, create := range []bool{false, true} {
		for _, cancelled := range []bool{false, true} {
			t.Run(fmt.Sprintf("create=%v/cancelled=%v", create, cancelled), func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var cut func()
				readErr := errors.New("disk read error")
				if cancelled {
					cut, readErr = cancel, context.Canceled
				}
				r := storagetest.FailingReader(storagetest.Data(3, 1<<30), 3*s3.MinPartSize+100, cut, readErr)
				var err error
				if create {
					err = s.Create(ctx, "aborted/obj", r, cloud.SizeUnknown)
				} else {
					err = s.Put(ctx, "aborted/obj", r, cloud.SizeUnknown)
				}
				if err == nil {
					t.Fatal("upload from a failing reader succeeded")
				}
				ups, lerr := m.Admin().ListMultipartUploads(context.Background(), &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
				if lerr != nil {
					t.Fatal(lerr)
				}
				if len(ups.Uploads) != 0 {
					t.Fatalf("%d multipart uploads left after a failed upload (%v)", len(ups.Uploads), err)
				}
			})
		}
	}
}

// TestSizeChecked: a stream shorter or longer than its given size fails
// and stores nothing.
func TestSizeChecked(t *testing.T) {
	m := testservers.S3(t)
	s := open(t, config(m, m.NewBucket(t), m.Endpoint))
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		r    io.Reader
		size int64
	}{
		{"ShortStream", storagetest.Data(1, 1000), 2000},
		{"LongStream", storagetest.Data(1, 3000), 2000},
		{"ShortLargeStream", storagetest.Data(1, 6<<20), 12 << 20},
		{"WrongSeekable", bytes.NewReader(make([]byte, 100)), 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Put(ctx, "sized/obj", tc.r, tc.size); err == nil {
				t.Fatal("Put succeeded")
			} else {
				t.Log(err)
			}
			if _, err := s.Stat(ctx, "sized/obj"); !errors.Is(err, cloud.ErrNotExist) {
				t.Fatalf("Stat after the failed Put = %v, want ErrNotExist", err)
			}
		})
	}
	// A seekable reader not at its start is uploaded from where it is.
	r := bytes.NewReader([]byte("skip-this:payload"))
	if _, err := r.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "sized/seeked", r, 7); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Get(ctx, "sized/seeked")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, err := io.ReadAll(rc); err != nil || string(b) != "payload" {
		t.Fatalf("Get = %q, %v; want %q", b, err, "payload")
	}
}

func TestNew(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  s3.Config
	}{
		{"NoBucket", s3.Config{}},
		{"SmallParts", s3.Config{Bucket: "b", PartSize: 1 << 20}},
		{"BadEndpoint", s3.Config{Bucket: "b", Endpoint: "ftp://host"}},
		{"SecretWithoutID", s3.Config{Bucket: "b", SecretAccessKey: "s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s3.New(ctx, tc.cfg); err == nil {
				t.Fatalf("New(%+v) accepted a bad config", tc.cfg)
			} else if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
	// New does no network I/O: an unreachable endpoint opens at once.
	start := time.Now()
	s, err := s3.New(ctx, s3.Config{Bucket: "b", Endpoint: "10.255.255.1:9", AccessKeyID: "a", SecretAccessKey: "b"})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("New took %v", d)
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, bucket, prefix string
		ok                  bool
	}{
		{"s3://backups/pg", "backups", "pg", true},
		{"s3://backups/pg/main/", "backups", "pg/main", true},
		{"s3://backups", "backups", "", true},
		{"s3://backups/", "backups", "", true},
		{"s3:///pg", "", "", false},
		{"s3:backups/pg", "", "", false},
		{"gs://backups/pg", "", "", false},
		{"s3://user:secret@backups/pg", "", "", false},
		{"s3://backups:9000/pg", "", "", false},
		{"s3://backups/a/../b", "", "", false},
		{"s3://backups/pg?x=1", "", "", false},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		bucket, prefix, err := s3.ParseURL(u)
		if tc.ok != (err == nil) || bucket != tc.bucket || prefix != tc.prefix {
			t.Errorf("ParseURL(%q) = %q, %q, %v", tc.url, bucket, prefix, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%q) error shows the password: %v", tc.url, err)
		}
	}
}

func BenchmarkStorage(b *testing.B) {
	m := testservers.S3(b)
	s := open(b, config(m, m.NewBucket(b), m.Endpoint))
	storagetest.Bench(b, s)
}

// conflictProxy passes requests to the server, except that it answers a
// conditional write (If-None-Match) with 409 ConditionalRequestConflict, as
// S3 does when another conditional write of the same key is in progress.
func conflictProxy(t *testing.T, upstream string) string {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") != "" {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional operation is currently in progress against this resource.</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestCreateConflict: a 409 on a conditional create means a concurrent
// conditional write; if that one lands the Create reports ErrExist,
// otherwise an error that is not ErrExist (to be retried).
func TestCreateConflict(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	s := open(t, config(m, bucket, conflictProxy(t, m.Endpoint)))
	ctx := context.Background()

	t.Run("OtherWriterLands", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			time.Sleep(700 * time.Millisecond)
			_, err := m.Admin().PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("conflict/landed"), Body: strings.NewReader("theirs")})
			done <- err
		}()
		err := s.Create(ctx, "conflict/landed", strings.NewReader("mine"), cloud.SizeUnknown)
		if perr := <-done; perr != nil {
			t.Fatal(perr)
		}
		if !errors.Is(err, cloud.ErrExist) {
			t.Fatalf("Create after a 409 and a concurrent write = %v, want ErrExist", err)
		}
		t.Log(err)
	})
	t.Run("OtherWriterFails", func(t *testing.T) {
		err := s.Create(ctx, "conflict/never", strings.NewReader("mine"), cloud.SizeUnknown)
		if err == nil || errors.Is(err, cloud.ErrExist) {
			t.Fatalf("Create after a 409 with no concurrent object = %v, want a conflict error", err)
		}
		t.Log(err)
	})
}

// TestCreateExistingLargeBody creates over an existing key with a body
// larger than MinIO reads before it refuses: MinIO then resets the
// connection and its 412 is lost. Create must still say ErrExist, here
// with a single attempt allowed, so that no retry can paper over it.
func TestCreateExistingLargeBody(t *testing.T) {
	m := testservers.S3(t)
	bucket := m.NewBucket(t)
	cfg := config(m, bucket, m.Endpoint)
	cfg.MaxAttempts = 1
	s := open(t, cfg)
	ctx := context.Background()
	const n = 4 << 20
	if err := s.Create(ctx, "big", storagetest.Data(1, n), n); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		err := s.Create(ctx, "big", storagetest.Data(2, n), n)
		if !errors.Is(err, cloud.ErrExist) {
			t.Fatalf("Create %d over an existing key = %v, want ErrExist", i, err)
		}
	}
	rc, err := s.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	if got, want := [32]byte(h.Sum(nil)), storagetest.Digest(1, n); got != want {
		t.Fatalf("the first object was replaced: sha256 %x, want %x", got, want)
	}
}
