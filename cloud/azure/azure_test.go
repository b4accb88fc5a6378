package azure_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/azure"
	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/cloud/storagetest/testservers"
)

var opts = storagetest.Options{PartSize: azure.DefaultBlockSize, Concurrency: azure.DefaultConcurrency}

// config returns a shared-key Config for a fresh container on srv.
func config(t testing.TB, srv testservers.Azurite) azure.Config {
	return azure.Config{
		Container: srv.NewContainer(t),
		Endpoint:  srv.Endpoint,
		Account:   srv.Account,
		Key:       srv.Key,
	}
}

func open(t testing.TB, cfg azure.Config) *azure.Storage {
	t.Helper()
	s, err := azure.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	srv := testservers.Azure(t)
	storagetest.Run(t, func(t *testing.T) cloud.Storage { return open(t, config(t, srv)) }, opts)
}

func TestMemoryBound(t *testing.T) {
	srv := testservers.Azure(t)
	storagetest.RunMemoryBound(t, open(t, config(t, srv)), opts)
}

func BenchmarkStorage(b *testing.B) {
	srv := testservers.Azure(b)
	storagetest.Bench(b, open(b, config(b, srv)))
}

// proxied returns a Config for a fresh container on srv whose endpoint
// goes through a FaultProxy.
func proxied(t *testing.T, srv testservers.Azurite) (azure.Config, *storagetest.FaultProxy) {
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := storagetest.NewFaultProxy(t, u.Scheme+"://"+u.Host)
	cfg := config(t, srv)
	cfg.Endpoint = p.URL + u.Path
	return cfg, p
}

func TestFaults(t *testing.T) {
	srv := testservers.Azure(t)
	cfg, p := proxied(t, srv)
	storagetest.RunFaults(t, open(t, cfg), p)
}

// TestListPages lists 250 keys 100 at a time and proves that it took three
// List requests.
func TestListPages(t *testing.T) {
	srv := testservers.Azure(t)
	cfg, p := proxied(t, srv)
	cfg.ListPageSize = 100
	s := open(t, cfg)
	const n = 250
	if reqs := storagetest.CountListRequests(t, s, p, n); reqs != 3 {
		t.Errorf("listing %d keys 100 at a time took %d requests, want 3", n, reqs)
	}
}

// TestPrefix proves that a repository prefix is prepended to blob names and
// taken off listed keys, and that neighbours outside it stay invisible.
func TestPrefix(t *testing.T) {
	srv := testservers.Azure(t)
	cfg := config(t, srv)
	ctx := context.Background()
	admin := srv.Admin(t)
	for _, name := range []string{"repo/subx/outside", "repo/sub-not/x"} {
		if _, err := admin.UploadBuffer(ctx, cfg.Container, name, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Prefix = "/repo/sub/"
	s := open(t, cfg)
	if err := s.Put(ctx, "a/b", strings.NewReader("hello"), 5); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ServiceClient().NewContainerClient(cfg.Container).NewBlobClient("repo/sub/a/b").GetProperties(ctx, nil); err != nil {
		t.Fatalf("the blob is not stored as repo/sub/a/b: %v", err)
	}
	var keys []string
	if err := s.List(ctx, "", func(o cloud.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "a/b" {
		t.Fatalf("List of the repository root = %q, want [a/b]", keys)
	}
}

// TestOddKeys round-trips keys with characters that need escaping in a URL.
func TestOddKeys(t *testing.T) {
	srv := testservers.Azure(t)
	s := open(t, config(t, srv))
	ctx := context.Background()
	for _, key := range []string{"odd/a b", "odd/plus+sign", "odd/per%25cent", "odd/q?x=1", "odd/hash#frag", "odd/ünïcødé", "odd/semi;colon"} {
		if err := s.Put(ctx, key, strings.NewReader(key), int64(len(key))); err != nil {
			t.Fatalf("Put %q: %v", key, err)
		}
		rc, err := s.Get(ctx, key)
		if err != nil {
			t.Fatalf("Get %q: %v", key, err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || string(b) != key {
			t.Fatalf("Get %q = %q, %v", key, b, err)
		}
		var listed []string
		if err := s.List(ctx, key, func(o cloud.ObjectInfo) error { listed = append(listed, o.Key); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(listed) != 1 || listed[0] != key {
			t.Fatalf("List %q = %q", key, listed)
		}
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, cloud.ErrNotExist) {
			t.Fatalf("Stat %q after Delete = %v", key, err)
		}
	}
}

// TestWrongLength proves that a stream shorter or longer than announced
// fails the upload and commits nothing, for one block and for several.
func TestWrongLength(t *testing.T) {
	srv := testservers.Azure(t)
	cfg := config(t, srv)
	cfg.BlockSize = 1 << 20
	s := open(t, cfg)
	ctx := context.Background()
	for _, tc := range []struct{ have, announced int64 }{{50, 100}, {100, 50}, {3 << 20, 3<<20 + 1}, {3<<20 + 1, 3 << 20}} {
		key := fmt.Sprintf("wrong/%d-%d", tc.have, tc.announced)
		err := s.Put(ctx, key, storagetest.Data(1, tc.have), tc.announced)
		if err == nil {
			t.Fatalf("Put of %d bytes announced as %d succeeded", tc.have, tc.announced)
		}
		if !strings.Contains(err.Error(), "announced") {
			t.Errorf("Put of %d bytes announced as %d: %v, want it to name the length mismatch", tc.have, tc.announced, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, cloud.ErrNotExist) {
			t.Fatalf("after a failed Put, Stat = %v, want ErrNotExist", err)
		}
	}
}

// TestCreateRaceMultiBlock races conditional creates that each commit a
// block list: exactly one wins, the others get ErrExist, and the blob is
// the winner's.
func TestCreateRaceMultiBlock(t *testing.T) {
	srv := testservers.Azure(t)
	cfg := config(t, srv)
	cfg.BlockSize = 1 << 20
	s := open(t, cfg)
	const size = 3<<20 + 5
	winner := storagetest.RaceCreates(t, s, "race/big", 4, size)
	ctx := context.Background()
	rc, err := s.Get(ctx, "race/big")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, storagetest.Bytes(uint64(winner), size)) {
		t.Fatal("the blob is not the winner's data")
	}
}

// TestServerEnforcesIfNoneMatch checks, with the SDK alone, that the server
// refuses If-None-Match: * on both paths Create uses: a single-shot Put
// Blob (objects smaller than one block, including empty ones) and Put Block
// List.
func TestServerEnforcesIfNoneMatch(t *testing.T) {
	srv := testservers.Azure(t)
	name := srv.NewContainer(t)
	ctx := context.Background()
	cc := srv.Admin(t).ServiceClient().NewContainerClient(name)
	ifNoneMatch := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)}}

	bb := cc.NewBlockBlobClient("single")
	for i, body := range [][]byte{nil, []byte("second")} {
		_, err := bb.Upload(ctx, streaming.NopCloser(bytes.NewReader(body)), &blockblob.UploadOptions{AccessConditions: ifNoneMatch})
		if i == 0 && err != nil {
			t.Fatalf("first conditional Put Blob of 0 bytes: %v", err)
		}
		if i == 1 {
			var re *azcore.ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("Put Blob If-None-Match:* over an existing blob = %v, want 409 or 412", err)
			}
			t.Logf("Put Blob If-None-Match:* over an existing blob: HTTP %d %s", re.StatusCode, re.ErrorCode)
		}
	}

	bb = cc.NewBlockBlobClient("blocks")
	for i := range 2 {
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "block-%d", i))
		if _, err := bb.StageBlock(ctx, id, streaming.NopCloser(bytes.NewReader([]byte("data"))), nil); err != nil {
			t.Fatal(err)
		}
		_, err := bb.CommitBlockList(ctx, []string{id}, &blockblob.CommitBlockListOptions{AccessConditions: ifNoneMatch})
		if i == 0 && err != nil {
			t.Fatalf("first conditional Put Block List: %v", err)
		}
		if i == 1 {
			var re *azcore.ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("Put Block List If-None-Match:* over an existing blob = %v, want 409 or 412", err)
			}
			t.Logf("Put Block List If-None-Match:* over an existing blob: HTTP %d %s", re.StatusCode, re.ErrorCode)
		}
	}
}

// TestCreateLostAnswer makes the proxy forward a conditional create to the
// server and then answer the client 503, as when a response is lost: the
// SDK retries, the server says the blob exists, and Create must recognise
// its own blob and succeed, while a later Create still gets ErrExist.
func TestCreateLostAnswer(t *testing.T) {
	srv := testservers.Azure(t)
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var conditional, lost atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodPut || resp.Request.Header.Get("If-None-Match") != "*" {
			return nil
		}
		conditional.Add(1)
		if resp.StatusCode/100 == 2 && lost.Add(1) == 1 {
			resp.StatusCode = http.StatusServiceUnavailable
			resp.Body = io.NopCloser(strings.NewReader(""))
			resp.ContentLength = 0
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	proxy := httptest.NewServer(rp)
	t.Cleanup(proxy.Close)
	cfg := config(t, srv)
	cfg.Endpoint = proxy.URL + u.Path
	cfg.BlockSize = 1 << 20
	s := open(t, cfg)
	ctx := context.Background()
	for _, size := range []int64{1000, 3<<20 + 1} {
		lost.Store(0)
		conditional.Store(0)
		key := fmt.Sprintf("lost/%d", size)
		if err := s.Create(ctx, key, storagetest.Data(uint64(size), size), cloud.SizeUnknown); err != nil {
			t.Fatalf("Create of %d bytes whose first answer was lost: %v", size, err)
		}
		if n := conditional.Load(); n < 2 {
			t.Fatalf("the commit was not retried (%d conditional PUTs seen)", n)
		}
		if err := s.Create(ctx, key, storagetest.Data(1, 10), cloud.SizeUnknown); !errors.Is(err, cloud.ErrExist) {
			t.Fatalf("second Create = %v, want ErrExist", err)
		}
		info, err := s.Stat(ctx, key)
		if err != nil || info.Size != size {
			t.Fatalf("Stat = %+v, %v; want %d bytes", info, err, size)
		}
	}
}

// TestWrongKey proves that a refused shared key gives ErrPermission with a
// hint, without the key in the message, and without retrying.
func TestWrongKey(t *testing.T) {
	srv := testservers.Azure(t)
	cfg := config(t, srv)
	cfg.Key = base64.StdEncoding.EncodeToString([]byte("this is not the key of the account, at all"))
	s := open(t, cfg)
	ctx := context.Background()
	start := time.Now()
	errs := map[string]error{}
	_, errs["stat"] = s.Stat(ctx, "k")
	errs["put"] = s.Put(ctx, "k", strings.NewReader("x"), 1)
	errs["list"] = s.List(ctx, "", func(cloud.ObjectInfo) error { return nil })
	_, errs["get"] = s.Get(ctx, "k")
	for op, err := range errs {
		if !errors.Is(err, cloud.ErrPermission) {
			t.Errorf("%s with a wrong key = %v, want ErrPermission", op, err)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, cfg.Key) || strings.Contains(msg, srv.Key) {
			t.Errorf("%s: the error shows the key: %s", op, msg)
		}
		if !strings.Contains(msg, "azure_account") || !strings.Contains(msg, "shared key") {
			t.Errorf("%s: the error does not say which setting to check: %s", op, msg)
		}
	}
	t.Logf("wrong key: %v", errs["put"])
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("four refused requests took %v: were they retried?", d)
	}
}

// TestMissingContainer proves that every operation on a missing container
// gives ErrNoBucket with a hint at the repository URL.
func TestMissingContainer(t *testing.T) {
	srv := testservers.Azure(t)
	s := open(t, azure.Config{
		Container: storagetest.UniqueName("missing-"),
		Endpoint:  srv.Endpoint,
		Account:   srv.Account,
		Key:       srv.Key,
	})
	ctx := context.Background()
	errs := map[string]error{}
	_, errs["stat"] = s.Stat(ctx, "k")
	_, errs["get"] = s.Get(ctx, "k")
	errs["put"] = s.Put(ctx, "k", strings.NewReader("x"), 1)
	errs["put-blocks"] = s.Put(ctx, "k", storagetest.Data(1, 20<<20), cloud.SizeUnknown)
	errs["create"] = s.Create(ctx, "k", strings.NewReader("x"), 1)
	errs["list"] = s.List(ctx, "", func(cloud.ObjectInfo) error { return nil })
	errs["delete"] = s.Delete(ctx, "k")
	for op, err := range errs {
		if !errors.Is(err, cloud.ErrNoBucket) {
			t.Errorf("%s on a missing container = %v, want ErrNoBucket", op, err)
		} else if !strings.Contains(err.Error(), "check the repository URL") {
			t.Errorf("%s: no hint in %q", op, err)
		}
	}
	t.Logf("missing container: %v", errs["stat"])
}

// TestUnreachable proves that an endpoint nothing listens on fails within
// the caller's deadline, retries included.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	s := open(t, azure.Config{
		Container: "unreachable",
		Endpoint:  "http://127.0.0.1:1/devstoreaccount1",
		Account:   "devstoreaccount1",
		Key:       base64.StdEncoding.EncodeToString([]byte("key")),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Stat(ctx, "k")
	d := time.Since(start)
	if err == nil {
		t.Fatal("Stat against an unreachable endpoint succeeded")
	}
	if d > 25*time.Second {
		t.Fatalf("Stat against an unreachable endpoint took %v under a 20 s context", d)
	}
	t.Logf("unreachable endpoint after %v: %v", d.Round(time.Millisecond), err)
}

// TestConnectionString proves the connection-string credential with a
// small round trip, and that a wrong key in it gives ErrPermission naming
// AZURE_STORAGE_CONNECTION_STRING and not the key.
func TestConnectionString(t *testing.T) {
	srv := testservers.Azure(t)
	name := srv.NewContainer(t)
	conn := func(key string) string {
		return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;", srv.Account, key, srv.Endpoint)
	}
	s := open(t, azure.Config{Container: name, ConnectionString: conn(srv.Key), Prefix: "cs"})
	roundTrip(t, s)

	bad := base64.StdEncoding.EncodeToString([]byte("a wrong account key for the connection string"))
	s = open(t, azure.Config{Container: name, ConnectionString: conn(bad)})
	_, err := s.Stat(context.Background(), "k")
	if !errors.Is(err, cloud.ErrPermission) {
		t.Fatalf("Stat with a wrong key in the connection string = %v, want ErrPermission", err)
	}
	if msg := err.Error(); strings.Contains(msg, bad) || !strings.Contains(msg, "AZURE_STORAGE_CONNECTION_STRING") {
		t.Fatalf("error shows the key or names no setting: %s", msg)
	}
}

// serviceSAS returns a service SAS for the container with the given
// permissions, signed with the shared key of srv's account.
// TestSAS proves the SAS-token credential with a small round trip, that a
// SAS without write permission gives ErrPermission with a hint, and that
// the token's signature never appears in an error, even in a transport
// error that quotes the request URL.
func TestSAS(t *testing.T) {
	srv := testservers.Azure(t)
	name := srv.NewContainer(t)
	all := srv.ContainerSAS(t, name, sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true})
	s := open(t, azure.Config{Container: name, Endpoint: srv.Endpoint, SASToken: "?" + all, Prefix: "sas"})
	roundTrip(t, s)

	sig := func(token string) string {
		q, err := url.ParseQuery(token)
		if err != nil || q.Get("sig") == "" {
			t.Fatalf("no signature in SAS %v", err)
		}
		return q.Get("sig")
	}
	leaks := func(msg, token string) bool {
		s := sig(token)
		return strings.Contains(msg, s) || strings.Contains(msg, url.QueryEscape(s))
	}

	readOnly := srv.ContainerSAS(t, name, sas.ContainerPermissions{Read: true, List: true})
	s = open(t, azure.Config{Container: name, Endpoint: srv.Endpoint, SASToken: readOnly})
	err := s.Put(context.Background(), "k", strings.NewReader("x"), 1)
	if !errors.Is(err, cloud.ErrPermission) {
		t.Fatalf("Put with a read-only SAS = %v, want ErrPermission", err)
	}
	if msg := err.Error(); leaks(msg, readOnly) || !strings.Contains(msg, "SAS token") {
		t.Fatalf("error shows the signature or names no setting: %s", msg)
	}

	s = open(t, azure.Config{Container: name, Endpoint: "http://127.0.0.1:1/devstoreaccount1", SASToken: all, MaxRetries: -1})
	_, err = s.Stat(context.Background(), "k")
	if err == nil {
		t.Fatal("Stat against an unreachable endpoint succeeded")
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if leaks(e.Error(), all) {
			t.Fatalf("a transport error shows the SAS signature: %s", e)
		}
	}
	t.Logf("unreachable with a SAS: %v", err)
}

// roundTrip puts, stats, lists, gets, creates over and deletes one small
// object.
func roundTrip(t *testing.T, s cloud.Storage) {
	t.Helper()
	ctx := context.Background()
	if err := s.Put(ctx, "rt/obj", strings.NewReader("round trip"), 10); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if info, err := s.Stat(ctx, "rt/obj"); err != nil || info.Size != 10 {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	var keys []string
	if err := s.List(ctx, "rt/", func(o cloud.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil || len(keys) != 1 || keys[0] != "rt/obj" {
		t.Fatalf("List = %q, %v", keys, err)
	}
	rc, err := s.Get(ctx, "rt/obj")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	b, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil || string(b) != "round trip" {
		t.Fatalf("Get = %q, %v", b, err)
	}
	if err := cloud.Create(ctx, s, "rt/obj", strings.NewReader("again"), 5); !errors.Is(err, cloud.ErrExist) {
		t.Fatalf("Create over an existing object = %v, want ErrExist", err)
	}
	if err := s.Delete(ctx, "rt/obj"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, "rt/obj"); !errors.Is(err, cloud.ErrNotExist) {
		t.Fatalf("Stat after Delete = %v, want ErrNotExist", err)
	}
}

// TestMemoryBoundRSS complements TestMemoryBound: the SDK stages blocks in
// memory-mapped buffers outside the Go heap, which the heap figure does not
// see, so this bounds the growth of the process's resident set the same
// way.
func TestMemoryBoundRSS(t *testing.T) {
	srv := testservers.Azure(t)
	storagetest.RunMemoryBoundRSS(t, open(t, config(t, srv)), opts)
}
