package storagetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud"
)

// AllowSkipEnv names the variable a developer sets to let backend tests
// skip when their server is not running. CI never sets it.
const AllowSkipEnv = "CELLARTEST_ALLOW_SKIP"

// Env returns the value of the test environment variable name, which
// `make test` sets to the address of a server it started. When the
// variable is unset the test fails, unless CELLARTEST_ALLOW_SKIP=1.
func Env(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	if os.Getenv(AllowSkipEnv) == "1" {
		t.Skipf("%s is not set and %s=1: skipping", name, AllowSkipEnv)
	}
	t.Fatalf("%s is not set: run the tests with `make test`, which starts the servers, or set %s=1 to skip them", name, AllowSkipEnv)
	return ""
}

// UniqueName returns a short random lower-case name with the given prefix,
// usable as a bucket, container or key prefix.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%08x", prefix, rand.Uint32())
}

// FaultProxy is a reverse proxy in front of a real server that fails
// requests on demand, to prove retry and error translation.
type FaultProxy struct {
	URL string

	srv      *httptest.Server
	mu       sync.Mutex
	failures []int // status codes to answer the next requests with
	down     bool  // answer every request with 503
	requests int
}

// NewFaultProxy starts a proxy to the server at upstream (a base URL).
func NewFaultProxy(t testing.TB, upstream string) *FaultProxy {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = nil
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests++
		var code int
		if p.down {
			code = http.StatusServiceUnavailable
		} else if len(p.failures) > 0 {
			code, p.failures = p.failures[0], p.failures[1:]
		}
		p.mu.Unlock()
		if code != 0 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(code)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	p.URL = p.srv.URL
	return p
}

// FailNext makes the next len(codes) requests fail with these statuses.
func (p *FaultProxy) FailNext(codes ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failures = append(p.failures, codes...)
}

// Down makes the proxy answer every request with 503 Service Unavailable
// (an outage of the store) until Down(false).
func (p *FaultProxy) Down(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = on
}

// Requests returns the number of requests seen so far and resets it.
func (p *FaultProxy) Requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.requests
	p.requests = 0
	return n
}

func (p *FaultProxy) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failures = nil
}

// RunFaults proves, through a FaultProxy in front of the backend's server,
// that transient failures (503, 429, 500) are retried until the operation
// succeeds, and that a permanent 403 is reported as cloud.ErrPermission
// without being retried.
func RunFaults(t *testing.T, s cloud.Storage, p *FaultProxy) {
	ctx := context.Background()
	payload := []byte("retried payload")
	mustPut(t, s, "faults/obj", payload)

	t.Run("TransientRetried", func(t *testing.T) {
		for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusInternalServerError} {
			p.Requests()
			p.FailNext(code, code)
			if got := mustGet(t, s, "faults/obj"); string(got) != string(payload) {
				t.Fatalf("Get after %d x2 = %q", code, got)
			}
			if n := p.Requests(); n < 3 {
				t.Fatalf("after two %d answers the backend made %d requests, want at least 3", code, n)
			}
			p.FailNext(code)
			mustPut(t, s, "faults/put", payload)
			p.FailNext(code)
			if _, err := s.Stat(ctx, "faults/put"); err != nil {
				t.Fatalf("Stat after one %d: %v", code, err)
			}
		}
	})

	t.Run("PermissionNotRetried", func(t *testing.T) {
		p.Requests()
		p.FailNext(http.StatusForbidden, http.StatusForbidden, http.StatusForbidden, http.StatusForbidden)
		_, err := s.Stat(ctx, "faults/obj")
		if !errors.Is(err, cloud.ErrPermission) {
			t.Fatalf("Stat answered 403 = %v, want ErrPermission", err)
		}
		if n := p.Requests(); n != 1 {
			t.Fatalf("a 403 was tried %d times, want once", n)
		}
	})

	t.Run("RetriesStopWithContext", func(t *testing.T) {
		codes := make([]int, 1000)
		for i := range codes {
			codes[i] = http.StatusServiceUnavailable
		}
		p.FailNext(codes...)
		defer p.clear()
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		_, err := s.Stat(cctx, "faults/obj")
		if err == nil {
			t.Fatal("Stat against a server that always answers 503 succeeded")
		}
		// A liveness bound, not a performance figure: retrying must not
		// outlive the caller's context by much.
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("Stat with a 1 s context returned after %v", d)
		}
		p.Requests()
		time.Sleep(300 * time.Millisecond)
		if n := p.Requests(); n != 0 {
			t.Fatalf("%d requests were made after the call returned", n)
		}
	})
	_ = s.Delete(ctx, "faults/obj")
	_ = s.Delete(ctx, "faults/put")
}

// CountListRequests puts n small objects "paged/0000", "paged/0001"...
// (each holding its own key) through s, then lists "paged/" and checks
// that all n arrive, in order, with their sizes. It returns the number of
// requests that List made through p, for the caller to hold against the
// page size it configured.
func CountListRequests(t *testing.T, s cloud.Storage, p *FaultProxy, n int) int {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		key := fmt.Sprintf("paged/%04d", i)
		if err := s.Put(ctx, key, strings.NewReader(key), int64(len(key))); err != nil {
			t.Fatal(err)
		}
	}
	p.Requests()
	var got []cloud.ObjectInfo
	if err := s.List(ctx, "paged/", func(o cloud.ObjectInfo) error {
		got = append(got, o)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	requests := p.Requests()
	if len(got) != n {
		t.Fatalf("List gave %d objects, want %d", len(got), n)
	}
	for i, o := range got {
		if want := fmt.Sprintf("paged/%04d", i); o.Key != want || o.Size != int64(len(want)) {
			t.Fatalf("List[%d] is %q (%d bytes), want %q (%d bytes)", i, o.Key, o.Size, want, len(want))
		}
	}
	return requests
}
