package gcs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/gcs"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/cloud/storagetest/testservers"
)

func mustNew(t testing.TB, cfg gcs.Config) *gcs.Storage {
	t.Helper()
	s, err := gcs.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var opts = storagetest.Options{PartSize: gcs.DefaultChunkSize, Concurrency: 1}

// TestConformance runs the suite against fake-gcs-server, found through
// its host as STORAGE_EMULATOR_HOST gives it, in a repository under a
// prefix.
func TestConformance(t *testing.T) {
	g := testservers.GCS(t)
	t.Setenv("STORAGE_EMULATOR_HOST", g.Host)
	storagetest.Run(t, func(t *testing.T) cloud.Storage {
		s, err := gcs.New(context.Background(), gcs.Config{
			Bucket:       g.NewBucket(t),
			Prefix:       "/" + storagetest.UniqueName("repo-") + "/pg/",
			EmulatorHost: g.Host,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, opts)
}

// TestConformanceEndpoint runs the quick part of the suite through an
// explicit Config.Endpoint at the bucket's root.
func TestConformanceEndpoint(t *testing.T) {
	g := testservers.GCS(t)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: "http://" + g.Host})
	ctx := context.Background()
	for _, n := range []int{0, 1000, 3<<20 + 1} {
		key := fmt.Sprintf("ep/%d", n)
		data := bytes.Repeat([]byte("e"), n)
		if err := s.Put(ctx, key, bytes.NewReader(data), int64(n)); err != nil {
			t.Fatalf("Put %d bytes: %v", n, err)
		}
		rc, err := s.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get %s: %d bytes, %v", key, len(got), err)
		}
		if err := cloud.Create(ctx, s, key, bytes.NewReader(data), int64(n)); !errors.Is(err, cloud.ErrExist) {
			t.Fatalf("Create over %s = %v, want ErrExist", key, err)
		}
	}
	var keys []string
	if err := s.List(ctx, "", func(o cloud.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"ep/0", "ep/1000", "ep/3145729"}; fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Fatalf("List at the root = %v, want %v", keys, want)
	}
}

// TestCreateUploadPaths proves that the emulator honours the
// ifGenerationMatch=0 precondition both for a single-request upload and for
// a resumable one, with sized and unsized streams.
func TestCreateUploadPaths(t *testing.T) {
	g := testservers.GCS(t)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: "http://" + g.Host, ChunkSize: 256 << 10})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		n    int64
	}{{"single-request", 1000}, {"resumable", 3*256<<10 + 17}} {
		for _, sized := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sized=%v", tc.name, sized), func(t *testing.T) {
				key := fmt.Sprintf("create/%s-%v", tc.name, sized)
				size := func(n int64) int64 {
					if sized {
						return n
					}
					return cloud.SizeUnknown
				}
				if err := cloud.Create(ctx, s, key, storagetest.Data(1, tc.n), size(tc.n)); err != nil {
					t.Fatalf("first Create: %v", err)
				}
				err := cloud.Create(ctx, s, key, storagetest.Data(2, tc.n+9), size(tc.n+9))
				if !errors.Is(err, cloud.ErrExist) {
					t.Fatalf("second Create = %v, want ErrExist", err)
				}
				info, err := s.Stat(ctx, key)
				if err != nil || info.Size != tc.n {
					t.Fatalf("Stat after refused Create = %+v, %v; want the first %d bytes", info, err, tc.n)
				}
			})
		}
	}
}

func TestMemoryBound(t *testing.T) {
	g := testservers.GCS(t)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: "http://" + g.Host})
	storagetest.RunMemoryBound(t, s, opts)
}

// TestFaults puts a FaultProxy between the client and the emulator. Its
// puts are small, so they are single requests: a resumable upload would
// send its chunks to the Location the emulator returns, past the proxy.
func TestFaults(t *testing.T) {
	g := testservers.GCS(t)
	p := storagetest.NewFaultProxy(t, "http://"+g.Host)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: p.URL + "/storage/v1/"})
	storagetest.RunFaults(t, s, p)
}

// TestResumableFaults fails requests in the middle of resumable uploads.
// fake-gcs-server builds the session URL from the request's Host header,
// which the proxy passes on, so every chunk goes through the proxy.
func TestResumableFaults(t *testing.T) {
	g := testservers.GCS(t)
	p := storagetest.NewFaultProxy(t, "http://"+g.Host)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: p.URL, ChunkSize: 256 << 10})
	ctx := context.Background()
	const n = 4*256<<10 + 5 // a session request, five chunks

	p.Requests()
	if err := s.Put(ctx, "resumable/clean", storagetest.Data(3, n), cloud.SizeUnknown); err != nil {
		t.Fatal(err)
	}
	clean := p.Requests()
	if clean < 6 {
		t.Fatalf("a %d-byte upload in 256 KiB chunks made %d requests through the proxy, want at least 6", n, clean)
	}

	// A zero lets a request through: fail the session request, two chunks
	// and the final one.
	p.FailNext(503, 0, 0, 429, 0, 500, 0, 503)
	if err := s.Put(ctx, "resumable/faulty", storagetest.Data(4, n), cloud.SizeUnknown); err != nil {
		t.Fatalf("Put with failed chunks: %v", err)
	}
	if got := p.Requests(); got != clean+4 {
		t.Errorf("upload with 4 failed requests made %d requests, want %d", got, clean+4)
	}
	rc, err := s.Get(ctx, "resumable/faulty")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil || !bytes.Equal(got, storagetest.Bytes(4, n)) {
		t.Fatalf("object uploaded through failures: %d bytes, %v; want the %d bytes sent", len(got), err, n)
	}

	// A conditional create whose chunks are retried still refuses to
	// replace the object.
	p.FailNext(0, 0, 503)
	err = cloud.Create(ctx, s, "resumable/faulty", storagetest.Data(5, n), cloud.SizeUnknown)
	if !errors.Is(err, cloud.ErrExist) {
		t.Fatalf("Create over an object, with a retried chunk = %v, want ErrExist", err)
	}

	// A refusal in the middle ends the upload at once, leaving nothing.
	p.Requests()
	p.FailNext(0, 0, 403)
	err = s.Put(ctx, "resumable/denied", storagetest.Data(6, n), cloud.SizeUnknown)
	if !errors.Is(err, cloud.ErrPermission) {
		t.Fatalf("Put refused in the middle = %v, want ErrPermission", err)
	}
	if got := p.Requests(); got != 3 {
		t.Fatalf("Put refused at its third request made %d requests, want 3", got)
	}
	if _, err := s.Stat(ctx, "resumable/denied"); !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("Stat after a refused upload = %v, want ErrNotExist", err)
	}
}

// TestListPaging lists 250 objects 100 at a time and counts the requests.
func TestListPaging(t *testing.T) {
	g := testservers.GCS(t)
	p := storagetest.NewFaultProxy(t, "http://"+g.Host)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: p.URL, ListPageSize: 100})
	// A neighbour that shares the textual prefix, outside it.
	if err := s.Put(context.Background(), "paged-not/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	const n = 250
	if requests := storagetest.CountListRequests(t, s, p, n); requests != 3 {
		t.Fatalf("listing %d objects 100 at a time took %d requests, want 3", n, requests)
	}
}

// TestPermissionDenied answers every kind of request with 401 or 403.
func TestPermissionDenied(t *testing.T) {
	g := testservers.GCS(t)
	p := storagetest.NewFaultProxy(t, "http://"+g.Host)
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: p.URL})
	ctx := context.Background()
	ops := map[string]func() error{
		"put":    func() error { return s.Put(ctx, "denied/obj", strings.NewReader("x"), 1) },
		"create": func() error { return cloud.Create(ctx, s, "denied/obj", strings.NewReader("x"), cloud.SizeUnknown) },
		"get": func() error {
			rc, err := s.Get(ctx, "denied/obj")
			if err == nil {
				rc.Close()
			}
			return err
		},
		"stat":   func() error { _, err := s.Stat(ctx, "denied/obj"); return err },
		"list":   func() error { return s.List(ctx, "denied/", func(cloud.ObjectInfo) error { return nil }) },
		"delete": func() error { return s.Delete(ctx, "denied/obj") },
	}
	for name, op := range ops {
		for _, code := range []int{http.StatusUnauthorized, http.StatusForbidden} {
			p.Requests()
			p.FailNext(code, code, code)
			err := op()
			requests := p.Requests()
			if !errors.Is(err, cloud.ErrPermission) {
				t.Errorf("%s answered %d = %v, want ErrPermission", name, code, err)
				continue
			}
			if requests != 1 {
				t.Errorf("%s answered %d was tried %d times, want once", name, code, requests)
			}
			if !strings.Contains(err.Error(), "denied/") || !strings.Contains(err.Error(), "unauthenticated") {
				t.Errorf("%s: error %q names neither the key nor what to fix", name, err)
			}
		}
	}
}

// TestBadCredentialsFile authenticates with a service-account key that the
// token endpoint (a local stand-in) refuses.
func TestBadCredentialsFile(t *testing.T) {
	g := testservers.GCS(t)
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`)
	}))
	defer tokens.Close()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	file := filepath.Join(t.TempDir(), "sa.json")
	b, _ := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "cellar-test",
		"private_key_id": "0123456789abcdef",
		"private_key":    pemKey,
		"client_email":   "cellar@cellar-test.iam.gserviceaccount.com",
		"client_id":      "1",
		"token_uri":      tokens.URL,
	})
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, gcs.Config{Bucket: g.NewBucket(t), Endpoint: "http://" + g.Host, CredentialsFile: file})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = s.Stat(ctx, "some/key")
	if !errors.Is(err, cloud.ErrPermission) {
		t.Fatalf("Stat with refused credentials = %v, want ErrPermission", err)
	}
	msg := err.Error()
	t.Logf("refused credentials: %v", err)
	if !strings.Contains(msg, file) || !strings.Contains(msg, "some/key") {
		t.Errorf("error %q names neither the credentials file nor the key", msg)
	}
	if strings.Contains(msg, "PRIVATE KEY") {
		t.Errorf("error %q contains the private key", msg)
	}
	err = s.Put(ctx, "some/key", strings.NewReader("x"), 1)
	if !errors.Is(err, cloud.ErrPermission) {
		t.Fatalf("Put with refused credentials = %v, want ErrPermission", err)
	}
}

// TestNoCredentials uses Application Default Credentials that point at a
// missing file: New fails, naming what to fix.
func TestNoCredentials(t *testing.T) {
	t.Setenv("STORAGE_EMULATOR_HOST", "")
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "missing.json"))
	_, err := gcs.New(context.Background(), gcs.Config{Bucket: "some-bucket"})
	t.Logf("no credentials: %v", err)
	if !errors.Is(err, cloud.ErrPermission) || !strings.Contains(err.Error(), "GOOGLE_APPLICATION_CREDENTIALS") {
		t.Fatalf("New without credentials = %v, want ErrPermission naming GOOGLE_APPLICATION_CREDENTIALS", err)
	}
}

func TestMissingBucket(t *testing.T) {
	g := testservers.GCS(t)
	for _, via := range []string{"endpoint", "emulator-host"} {
		t.Run(via, func(t *testing.T) {
			cfg := gcs.Config{Bucket: storagetest.UniqueName("missing-"), Prefix: "pg"}
			if via == "endpoint" {
				cfg.Endpoint = "http://" + g.Host
			} else {
				cfg.EmulatorHost = g.Host
			}
			s := mustNew(t, cfg)
			ctx := context.Background()
			ops := map[string]func() error{
				"put":       func() error { return s.Put(ctx, "k/obj", strings.NewReader("x"), 1) },
				"put-large": func() error { return s.Put(ctx, "k/obj", storagetest.Data(1, 17<<20), cloud.SizeUnknown) },
				"create":    func() error { return cloud.Create(ctx, s, "k/obj", strings.NewReader("x"), cloud.SizeUnknown) },
				"get": func() error {
					rc, err := s.Get(ctx, "k/obj")
					if err == nil {
						rc.Close()
					}
					return err
				},
				"stat":   func() error { _, err := s.Stat(ctx, "k/obj"); return err },
				"list":   func() error { return s.List(ctx, "k/", func(cloud.ObjectInfo) error { return nil }) },
				"delete": func() error { return s.Delete(ctx, "k/obj") },
			}
			for name, op := range ops {
				err := op()
				if !errors.Is(err, cloud.ErrNoBucket) {
					t.Errorf("%s on a missing bucket = %v, want ErrNoBucket", name, err)
					continue
				}
				if !strings.Contains(err.Error(), cfg.Bucket) || !strings.Contains(err.Error(), "repository URL") {
					t.Errorf("%s: error %q does not name the bucket and what to fix", name, err)
				}
			}
		})
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	s := mustNew(t, gcs.Config{Bucket: "some-bucket", Endpoint: "http://127.0.0.1:1/storage/v1/"})
	ops := map[string]func(context.Context) error{
		"stat": func(ctx context.Context) error { _, err := s.Stat(ctx, "k"); return err },
		"put":  func(ctx context.Context) error { return s.Put(ctx, "k", strings.NewReader("x"), 1) },
		"list": func(ctx context.Context) error { return s.List(ctx, "", func(cloud.ObjectInfo) error { return nil }) },
	}
	for name, op := range ops {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		err := op(ctx)
		cancel()
		if err == nil || errors.Is(err, cloud.ErrNotExist) {
			t.Errorf("%s on an unreachable endpoint = %v, want a connection error", name, err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s on an unreachable endpoint took %v", name, d)
		}
	}
}

func TestBadKeyAndConfig(t *testing.T) {
	for _, cfg := range []gcs.Config{
		{},
		{Bucket: "UPPER"},
		{Bucket: "b"},
		{Bucket: "ok-bucket", Prefix: "a/../b"},
		{Bucket: "ok-bucket", ChunkSize: -1},
		{Bucket: "ok-bucket", Endpoint: "127.0.0.1:4443"},
	} {
		if _, err := gcs.New(context.Background(), cfg); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, bucket, prefix string
		ok                  bool
	}{
		{"gs://backups/pg/main", "backups", "pg/main", true},
		{"gs://backups/pg/", "backups", "pg", true},
		{"gs://backups", "backups", "", true},
		{"gs://my.bucket_1/", "my.bucket_1", "", true},
		{"gs:///pg", "", "", false},
		{"gs://Backups/pg", "", "", false},
		{"s3://backups/pg", "", "", false},
		{"gs://backups/a//b", "", "", false},
		{"gs://backups/a/../b", "", "", false},
		{"gs://backups:443/pg", "", "", false},
		{"gs://backups/pg?x=1", "", "", false},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		b, p, err := gcs.ParseURL(u)
		if tc.ok != (err == nil) || b != tc.bucket || p != tc.prefix {
			t.Errorf("ParseURL(%s) = %q, %q, %v; want %q, %q, ok=%v", tc.url, b, p, err, tc.bucket, tc.prefix, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseURL(%s) error is not one line: %q", tc.url, err)
		}
	}
}

func BenchmarkStorage(b *testing.B) {
	g := testservers.GCS(b)
	s := mustNew(b, gcs.Config{Bucket: g.NewBucket(b), Endpoint: "http://" + g.Host})
	storagetest.Bench(b, s)
}
