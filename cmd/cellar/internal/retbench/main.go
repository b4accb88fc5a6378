// Command retbench times `cellar retention` on a large synthetic
// repository in MinIO and counts the storage requests it makes. `make
// bench` runs it under testdata/servers.sh, which starts MinIO and sets
// CELLARTEST_S3_ENDPOINT, CELLARTEST_S3_ACCESS_KEY and
// CELLARTEST_S3_SECRET_KEY.
//
//	retbench [-backups 200] [-wal 50000] [-redundancy 20] path/to/cellar
//
// It fills a fresh bucket with server "main": an identity, -wal tiny WAL
// segments of timeline 1 numbered from 0, and -backups finished backups
// one day apart, backup i beginning at segment 250*i, each with a manifest
// and two small parts. It then runs `cellar retention main` with
// retention_policy = REDUNDANCY n through a counting reverse proxy in
// front of MinIO, prints the wall time and the requests by kind, and
// checks what is left: the newest n backups, and the WAL from the oldest
// of them on. It exits 1 when the result is wrong.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/s3"
	"github.com/cellar-backup/cellar/pg"
)

const (
	server  = "main"
	segSize = 16 << 20
	// spacing is the number of WAL segments between two backups' begins.
	spacing = 250
	target  = 30 * time.Second
)

func main() {
	backups := flag.Int("backups", 200, "finished backups, one a day")
	walCount := flag.Int("wal", 50000, "WAL segments")
	redundancy := flag.Int("redundancy", 20, "retention_policy = REDUNDANCY n")
	workers := flag.Int("concurrency", 64, "concurrent uploads while generating")
	flag.Parse()
	if flag.NArg() != 1 {
		fail(2, "usage: retbench [flags] path/to/cellar")
	}
	cellar, err := filepath.Abs(flag.Arg(0))
	if err != nil {
		fail(2, err.Error())
	}
	if *backups < 1 || *redundancy < 1 || *redundancy > *backups || spacing*(*backups-1)+2 > *walCount {
		fail(2, fmt.Sprintf("need 1 <= redundancy <= backups and wal >= %d*(backups-1)+2", spacing))
	}
	endpoint, key, secret := os.Getenv("CELLARTEST_S3_ENDPOINT"), os.Getenv("CELLARTEST_S3_ACCESS_KEY"), os.Getenv("CELLARTEST_S3_SECRET_KEY")
	if endpoint == "" || key == "" || secret == "" {
		fail(2, "CELLARTEST_S3_ENDPOINT, CELLARTEST_S3_ACCESS_KEY and CELLARTEST_S3_SECRET_KEY are not set: run under testdata/servers.sh")
	}
	ctx := context.Background()

	bucket := fmt.Sprintf("cellar-retbench-%d", time.Now().UnixNano())
	admin := awss3.New(awss3.Options{
		BaseEndpoint: aws.String(endpoint),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(key, secret, ""),
	})
	if _, err := admin.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		fail(1, fmt.Sprintf("creating bucket %s: %v", bucket, err))
	}
	store, err := s3.New(ctx, s3.Config{
		Bucket: bucket, Endpoint: endpoint, Region: "us-east-1", ForcePathStyle: true,
		AccessKeyID: key, SecretAccessKey: secret,
	})
	if err != nil {
		fail(1, err.Error())
	}

	// Generate.
	t0 := time.Now()
	days := make([]time.Time, *backups)
	ids := make([]string, *backups)
	base := time.Date(2024, 1, 1, 1, 0, 0, 0, time.UTC)
	for i := range days {
		days[i] = base.AddDate(0, 0, i)
		ids[i] = catalog.NewBackupID(days[i])
	}
	if _, err := catalog.EnsureIdentity(ctx, store, server, catalog.Identity{
		SystemIdentifier: 7340000000000000001, WALSegmentSize: segSize, CreatedAt: base, CreatedBy: "retbench",
	}); err != nil {
		fail(1, "identity: "+err.Error())
	}
	jobs := make(chan func() error, 1024)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	for range *workers {
		wg.Go(func() {
			for job := range jobs {
				if err := job(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	put := func(k string, body []byte) func() error {
		return func() error { return store.Put(ctx, k, bytes.NewReader(body), int64(len(body))) }
	}
	for n := range *walCount {
		w, err := pg.ParseWALName(pg.SegmentNameOf(1, uint64(n), segSize))
		if err != nil {
			fail(1, err.Error())
		}
		jobs <- put(catalog.WALKey(server, w), []byte("wal "+w.Name))
	}
	for i, id := range ids {
		jobs <- func() error {
			m, parts := manifest(i, id, days[i])
			for _, p := range parts {
				if err := put(p.Key, []byte("part "+p.Key))(); err != nil {
					return err
				}
			}
			return catalog.WriteManifest(ctx, store, m)
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		fail(1, "generating: "+firstErr.Error())
	}
	before, err := count(ctx, store)
	if err != nil {
		fail(1, "listing: "+err.Error())
	}
	fmt.Printf("generated %d objects (%d backups, %d WAL segments) in bucket %s in %.1f s\n",
		before.total, len(before.manifests), before.wal, bucket, time.Since(t0).Seconds())

	// Run cellar retention through the counting proxy.
	up, _ := url.Parse(endpoint)
	proxy := &counter{byKind: map[string]int{}, listBy: map[string]int{}, timeBy: map[string]time.Duration{}}
	rp := httputil.NewSingleHostReverseProxy(up)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(1, err.Error())
	}
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			walBatch := false
			if r.Method == http.MethodPost && r.URL.Query().Has("delete") {
				// A DeleteObjects body names its keys: tell WAL batches
				// from a backup's.
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				r.Body = io.NopCloser(bytes.NewReader(b))
				walBatch = bytes.Contains(b, []byte("/wal/"))
			}
			t := time.Now()
			rp.ServeHTTP(w, r)
			proxy.note(r, walBatch, time.Since(t))
		}))
	}()
	dir, err := os.MkdirTemp("", "retbench-")
	if err != nil {
		fail(1, err.Error())
	}
	if err := os.Mkdir(filepath.Join(dir, "locks"), 0o700); err != nil {
		fail(1, err.Error())
	}
	conf := filepath.Join(dir, "cellar.conf")
	policy := fmt.Sprintf("REDUNDANCY %d", *redundancy)
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`[cellar]
repository = s3://%s/
s3_endpoint = http://%s
s3_region = us-east-1
s3_force_path_style = on
lock_directory = %s

[main]
retention_policy = %s
`, bucket, ln.Addr(), filepath.Join(dir, "locks"), policy)), 0o600); err != nil {
		fail(1, err.Error())
	}
	cmd := exec.Command(cellar, "--config", conf, "retention", server)
	cmd.Env = append(childEnv(),
		"AWS_ACCESS_KEY_ID="+key, "AWS_SECRET_ACCESS_KEY="+secret,
		"CELLAR_NOW="+days[len(days)-1].Add(24*time.Hour).Format(time.RFC3339))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(start)
	if err != nil {
		fmt.Printf("%s --config %s retention %s: %v\n%s", cellar, conf, server, err, out)
		os.RemoveAll(dir)
		cleanup(ctx, store, admin, bucket)
		os.Exit(1)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	removedLines := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "Removed backup ") {
			removedLines++
		}
	}
	after, err := count(ctx, store)
	if err != nil {
		fail(1, "listing: "+err.Error())
	}

	// Report.
	c := proxy.snapshot()
	walPages := (*walCount + 999) / 1000
	fmt.Printf("\ncellar retention %s (%s), %d backups, %d WAL segments in MinIO:\n", server, policy, *backups, *walCount)
	fmt.Printf("  output: %d \"Removed backup\" lines; %s\n", removedLines, lines[len(lines)-1])
	fmt.Printf("  wall time         %.2f s\n", wall.Seconds())
	fmt.Printf("  requests          %d (below, the time each kind took, summed over its requests)\n", c.total)
	secs := func(kinds ...string) float64 {
		var d time.Duration
		for _, k := range kinds {
			d += c.timeBy[k]
		}
		return d.Seconds()
	}
	fmt.Printf("  list calls        %d (WAL prefix %d, for %d WAL pages of 1000; catalog prefix %d; parts prefixes %d; other %d); %.2f s in all\n",
		c.byKind["list"], c.listBy["wal"], walPages, c.listBy["backups"], c.listBy["base"], c.listBy["other"], secs("list"))
	fmt.Printf("  GET/HEAD calls    %d (GET %d, HEAD %d); %.2f s\n", c.byKind["get"]+c.byKind["head"], c.byKind["get"], c.byKind["head"], secs("get", "head"))
	fmt.Printf("  DeleteObjects     %d (%d of WAL, %.2f s; %d of backups, %.2f s)\n", c.byKind["deleteobjects"],
		c.byKind["walbatch"], secs("walbatch"), c.byKind["deleteobjects"]-c.byKind["walbatch"], secs("deleteobjects")-secs("walbatch"))
	fmt.Printf("  DELETE (single)   %d; %.2f s\n", c.byKind["delete"], secs("delete"))
	if n := c.byKind["put"] + c.byKind["other"]; n > 0 {
		fmt.Printf("  PUT/other         %d; %.2f s\n", n, secs("put", "other"))
	}
	fmt.Printf("  objects before    %d (%d WAL, %d manifests, %d parts)\n", before.total, before.wal, len(before.manifests), before.parts)
	fmt.Printf("  objects after     %d (%d WAL, %d manifests, %d parts)\n", after.total, after.wal, len(after.manifests), after.parts)

	// Check.
	cut := *backups - *redundancy
	cutoff := spacing * cut
	var problems []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	check(removedLines == cut, "cellar printed %d removed backups, want %d", removedLines, cut)
	check(len(after.manifests) == *redundancy, "%d manifests left, want %d", len(after.manifests), *redundancy)
	for _, id := range ids[:cut] {
		check(!after.manifests[id], "manifest of obsolete backup %s is still there", id)
		check(after.partsOf[id] == 0, "%d parts of obsolete backup %s are still there", after.partsOf[id], id)
	}
	for _, id := range ids[cut:] {
		check(after.manifests[id], "manifest of retained backup %s is gone", id)
		check(after.partsOf[id] == 2, "retained backup %s has %d parts, want 2", id, after.partsOf[id])
	}
	check(before.wal-after.wal == cutoff, "%d WAL objects deleted, want %d", before.wal-after.wal, cutoff)
	check(after.wal == *walCount-cutoff, "%d WAL objects left, want %d", after.wal, *walCount-cutoff)
	check(after.wal == 0 || after.minSeg == uint64(cutoff), "oldest WAL segment left is %d, want %d", after.minSeg, cutoff)
	check(after.identity, "the identity is gone")
	fmt.Printf("  removed           %d backups, %d WAL objects (WAL before segment %d, backup #%d's begin); %d WAL left\n",
		len(before.manifests)-len(after.manifests), before.wal-after.wal, after.minSeg, cut, after.wal)
	verdict := "met"
	if wall >= target {
		verdict = "MISSED"
	}
	fmt.Printf("  target < %s: %s\n", target, verdict)

	cleanup(ctx, store, admin, bucket)
	os.RemoveAll(dir)
	if len(problems) > 0 {
		fmt.Println("\nWRONG RESULT:")
		for _, p := range problems {
			fmt.Println("  " + p)
		}
		fmt.Printf("cellar's output:\n%s", out)
		os.Exit(1)
	}
	fmt.Println("  result            correct")
}

// manifest is backup i's manifest: a day's backup of segments 250*i to
// 250*i+1, with two parts (which retention only lists and deletes).
func manifest(i int, id string, day time.Time) (*catalog.Manifest, []catalog.Part) {
	m := &catalog.Manifest{
		Version: catalog.ManifestVersion, ID: id, Server: server, Status: catalog.StatusDone,
		SystemIdentifier: 7340000000000000001, PGVersion: 150000, PGVersionString: "15.0",
		PGData: "/var/lib/postgresql/15/main", Timeline: 1, WALSegmentSize: segSize,
		BeginWAL:  pg.SegmentNameOf(1, uint64(spacing*i), segSize),
		EndWAL:    pg.SegmentNameOf(1, uint64(spacing*i+1), segSize),
		BeginTime: day, EndTime: day.Add(10 * time.Minute),
		Label: "retbench", Compression: string(codec.Zstd), CellarVersion: "retbench", Host: "retbench",
	}
	var parts []catalog.Part
	for n := 1; n <= 2; n++ {
		k := catalog.PartKey(server, id, n, codec.Zstd)
		size := int64(len("part " + k))
		parts = append(parts, catalog.Part{Number: n, Key: k, Size: size, DataSize: 10240, Files: 1})
		m.StoredSize += size
		m.DataSize += 10240
	}
	m.PartCount = len(parts)
	return m, parts
}

// inventory is what a direct listing of the bucket finds.
type inventory struct {
	total, wal, parts int
	minSeg            uint64
	identity          bool
	manifests         map[string]bool
	partsOf           map[string]int
}

func count(ctx context.Context, store cloud.Storage) (inventory, error) {
	inv := inventory{manifests: map[string]bool{}, partsOf: map[string]int{}, minSeg: ^uint64(0)}
	err := store.List(ctx, "", func(o cloud.ObjectInfo) error {
		inv.total++
		switch {
		case o.Key == catalog.IdentityKey(server):
			inv.identity = true
		case strings.HasPrefix(o.Key, catalog.WALPrefix(server)):
			w, err := pg.ParseWALName(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
			if err == nil && w.Kind == pg.Segment {
				inv.wal++
				inv.minSeg = min(inv.minSeg, w.SegNo(segSize))
			}
		case strings.HasPrefix(o.Key, catalog.BackupsPrefix(server)) && strings.HasSuffix(o.Key, ".manifest"):
			inv.manifests[strings.TrimSuffix(strings.TrimPrefix(o.Key, catalog.BackupsPrefix(server)), ".manifest")] = true
		case strings.HasPrefix(o.Key, server+"/base/"):
			id, _, _ := strings.Cut(strings.TrimPrefix(o.Key, server+"/base/"), "/")
			inv.parts++
			inv.partsOf[id]++
		}
		return nil
	})
	return inv, err
}

// counter counts the requests that pass the proxy, by kind, and the list
// calls by the prefix they list.
type counter struct {
	mu     sync.Mutex
	total  int
	byKind map[string]int
	listBy map[string]int
	// timeBy sums the requests' durations by kind.
	timeBy map[string]time.Duration
}

func (c *counter) note(r *http.Request, walBatch bool, took time.Duration) {
	q := r.URL.Query()
	kind := "other"
	switch {
	case r.Method == http.MethodGet && q.Get("list-type") == "2":
		kind = "list"
	case r.Method == http.MethodPost && q.Has("delete"):
		kind = "deleteobjects"
	case r.Method == http.MethodGet:
		kind = "get"
	case r.Method == http.MethodHead:
		kind = "head"
	case r.Method == http.MethodPut:
		kind = "put"
	case r.Method == http.MethodDelete:
		kind = "delete"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	c.byKind[kind]++
	c.timeBy[kind] += took
	if walBatch {
		c.byKind["walbatch"]++
		c.timeBy["walbatch"] += took
	}
	if kind == "list" {
		p := q.Get("prefix")
		switch {
		case strings.HasPrefix(p, catalog.WALPrefix(server)):
			c.listBy["wal"]++
		case strings.HasPrefix(p, catalog.BackupsPrefix(server)):
			c.listBy["backups"]++
		case strings.HasPrefix(p, server+"/base/"):
			c.listBy["base"]++
		default:
			c.listBy["other"]++
		}
	}
}

func (c *counter) snapshot() counter {
	c.mu.Lock()
	defer c.mu.Unlock()
	return counter{total: c.total, byKind: c.byKind, listBy: c.listBy, timeBy: c.timeBy}
}

// childEnv is this process's environment without Cellar settings and AWS
// credentials or endpoints that would override the benchmark's.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CELLAR_") || strings.HasPrefix(k, "AWS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// cleanup empties and removes the bucket.
func cleanup(ctx context.Context, store cloud.Storage, admin *awss3.Client, bucket string) {
	var keys []string
	_ = store.List(ctx, "", func(o cloud.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	sort.Strings(keys)
	if err := cloud.DeleteAll(ctx, store, keys); err != nil {
		fmt.Fprintln(os.Stderr, "retbench: emptying the bucket:", err)
		return
	}
	if _, err := admin.DeleteBucket(ctx, &awss3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
		fmt.Fprintln(os.Stderr, "retbench: removing the bucket:", err)
	}
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, "retbench:", msg)
	os.Exit(code)
}
