package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellar-backup/cellar/cloud/storagetest"
	"github.com/cellar-backup/cellar/cloud/storagetest/testservers"
	"github.com/cellar-backup/cellar/internal/pgtest"
)

// repoKinds are the four repository kinds every end-to-end test runs on.
var repoKinds = []string{"file", "s3", "gcs", "azure"}

// repository sets up an empty repository of the given kind and returns the
// configuration lines for it and the environment that reaches it.
func repository(t *testing.T, kind string, dir func(string) string) (conf string, env []string) {
	t.Helper()
	switch kind {
	case "file":
		return "repository = file://" + dir("repo") + "\n", nil
	case "s3":
		m := testservers.S3(t)
		return "repository = s3://" + m.NewBucket(t) + "/pg\ns3_endpoint = " + m.Endpoint + "\ns3_region = us-east-1\ns3_force_path_style = on\n",
			s3Env(m.AccessKey, m.SecretKey)
	case "gcs":
		g := testservers.GCS(t)
		return "repository = gs://" + g.NewBucket(t) + "/pg\n", []string{"STORAGE_EMULATOR_HOST=" + g.Host}
	case "azure":
		a := testservers.Azure(t)
		return "repository = azure://" + a.NewContainer(t) + "/pg\nazure_account = " + a.Account + "\nazure_endpoint = " + a.Endpoint + "\n",
			[]string{"AZURE_STORAGE_KEY=" + a.Key}
	}
	t.Fatalf("unknown repository kind %s", kind)
	return "", nil
}

// archivingCluster starts PostgreSQL with archive_command calling cellar
// for server "main" on a repository of the given kind. It returns the
// cluster, the configuration file and the environment cellar needs.
func archivingCluster(t *testing.T, kind string, extraConf string) (*pgtest.Cluster, string, []string) {
	t.Helper()
	base := openTempDir(t, "cellar-wal-test")
	dirs := map[string]string{}
	mkdir := func(name string) string {
		if d, ok := dirs[name]; ok {
			return d
		}
		d := filepath.Join(base, name)
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(d, 0o777)
		dirs[name] = d
		return d
	}
	repoConf, env := repository(t, kind, mkdir)
	if !strings.Contains(extraConf, "lock_directory") {
		// A private lock directory, open to every user as /tmp is.
		extraConf += "lock_directory = " + sharedTemp(t, mkdir("locks")) + "\n"
	}
	conf := filepath.Join(base, "cellar.conf")
	text := "[cellar]\n" + repoConf + extraConf + "\n[main]\ndescription = \"archiving test\"\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	c := pgtest.New(t, pgtest.Options{
		Conf: map[string]string{
			"archive_mode":    "on",
			"archive_command": fmt.Sprintf("%s --config %s wal-push main %%p", cellarBin, conf),
			"wal_keep_size":   "4GB",
			"max_wal_size":    "4GB",
		},
		Env: env,
	})
	return c, conf, env
}

// makeSegments produces at least n completed WAL segments with real data
// in them and returns the name of the last one completed.
func makeSegments(t *testing.T, c *pgtest.Cluster, n int) (first, last string) {
	t.Helper()
	first = c.SwitchWAL(t)
	c.Pgbench(t, "-i", "-s", "4", "-q")
	last = c.SwitchWAL(t)
	c.Exec(t, "CREATE TABLE marker (id int primary key, note text)")
	for i := 0; i < n; i++ {
		c.Exec(t, fmt.Sprintf("INSERT INTO marker VALUES (%d, repeat('x', 1000))", i))
		last = c.SwitchWAL(t)
	}
	return first, last
}

func TestWALArchivingEveryRepositoryKind(t *testing.T) {
	for _, kind := range repoKinds {
		t.Run(kind, func(t *testing.T) {
			c, conf, env := archivingCluster(t, kind, "")
			first, last := makeSegments(t, c, 30)
			c.WaitArchived(t, last, 3*time.Minute)
			archived, failed, _, _ := c.ArchiverStats(t)
			if failed != 0 {
				t.Fatalf("pg_stat_archiver failed_count = %d", failed)
			}
			// Every segment from the first switch to the last is archived
			// and comes back byte-identical.
			segs := c.WALFiles(t)
			fetched := 0
			dest := t.TempDir()
			for _, seg := range segs {
				if seg <= first || seg > last {
					continue
				}
				out := filepath.Join(dest, seg)
				r := cellar(t, env, "--config", conf, "wal-fetch", "main", seg, out)
				if r.code != 0 {
					t.Fatalf("wal-fetch %s: exit %d: %s", seg, r.code, r.stderr)
				}
				want, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", seg))
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(out)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("wal-fetch %s: %d bytes, identical %v (%v)", seg, len(got), bytes.Equal(got, want), err)
				}
				fetched++
			}
			if fetched < 30 {
				t.Fatalf("only %d segments between %s and %s were checked (archived_count %d), want at least 30", fetched, first, last, archived)
			}
			// A file the repository does not have: exit 1, nothing printed.
			for _, missing := range []string{"00000001000000FF000000FF", "00000009.history"} {
				r := cellar(t, env, "--config", conf, "wal-fetch", "main", missing, filepath.Join(dest, missing))
				if r.code != 1 || r.stderr != "" || r.stdout != "" {
					t.Fatalf("wal-fetch of a missing %s: exit %d, output %q%q", missing, r.code, r.stdout, r.stderr)
				}
				if _, err := os.Stat(filepath.Join(dest, missing)); !os.IsNotExist(err) {
					t.Fatalf("wal-fetch of a missing file created %s", missing)
				}
			}
			t.Logf("%s: %d segments archived and fetched back identical", kind, fetched)
		})
	}
}

// TestWALPushRules covers what wal-push must refuse and what it must
// accept, on a local repository with real segments.
func TestWALPushRules(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "")
	_, last := makeSegments(t, c, 2)
	c.WaitArchived(t, last, time.Minute)
	seg := filepath.Join(c.DataDir(), "pg_wal", last)
	original, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()

	t.Run("IdenticalRepush", func(t *testing.T) {
		r := cellar(t, env, "--config", conf, "wal-push", "main", seg)
		if r.code != 0 {
			t.Fatalf("re-push of identical content: exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("DifferentContent", func(t *testing.T) {
		changed := bytes.Clone(original)
		changed[len(changed)/2] ^= 0xFF
		p := filepath.Join(work, last)
		if err := os.WriteFile(p, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		r := cellar(t, env, "--config", conf, "wal-push", "main", p)
		if r.code == 0 || !strings.Contains(r.stderr, "different content") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("push of different content: exit %d: %q", r.code, r.stderr)
		}
		out := filepath.Join(work, "fetched")
		if r := cellar(t, env, "--config", conf, "wal-fetch", "main", last, out); r.code != 0 {
			t.Fatalf("wal-fetch: %s", r.stderr)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, original) {
			t.Fatal("the archived segment changed after a conflicting push")
		}
	})
	t.Run("WrongCluster", func(t *testing.T) {
		other := pgtest.New(t, pgtest.Options{})
		otherSeg := other.SwitchWAL(t)
		// Push the other cluster's segment (any name) to this server.
		r := cellar(t, env, "--config", conf, "wal-push", "main", filepath.Join(other.DataDir(), "pg_wal", otherSeg))
		mine, theirs := c.SystemIdentifier(t), other.SystemIdentifier(t)
		if r.code == 0 || !strings.Contains(r.stderr, fmt.Sprint(mine)) || !strings.Contains(r.stderr, fmt.Sprint(theirs)) {
			t.Fatalf("push from another cluster: exit %d: %q (want both %d and %d named)", r.code, r.stderr, mine, theirs)
		}
	})
	t.Run("GarbageNames", func(t *testing.T) {
		for _, name := range []string{"postgresql.conf", "00000001000000000000000", "000000010000000000000001.gz", "xlogtemp.123"} {
			p := filepath.Join(work, name)
			if err := os.WriteFile(p, original, 0o600); err != nil {
				t.Fatal(err)
			}
			r := cellar(t, env, "--config", conf, "wal-push", "main", p)
			if r.code != 2 || !strings.Contains(r.stderr, "not a WAL file name") {
				t.Errorf("push of %s: exit %d: %q", name, r.code, r.stderr)
			}
		}
		r := cellar(t, env, "--config", conf, "wal-fetch", "main", "../etc/passwd", filepath.Join(work, "x"))
		if r.code != 2 {
			t.Errorf("wal-fetch of a garbage name: exit %d", r.code)
		}
	})
	t.Run("NotASegment", func(t *testing.T) {
		// A file with a segment's name but not a segment's content.
		p := filepath.Join(work, "000000010000000000000099")
		if err := os.WriteFile(p, bytes.Repeat([]byte{1}, len(original)), 0o600); err != nil {
			t.Fatal(err)
		}
		r := cellar(t, env, "--config", conf, "wal-push", "main", p)
		if r.code == 0 || r.code == 2 {
			t.Fatalf("push of a non-segment: exit %d: %q", r.code, r.stderr)
		}
	})
}

// TestWALRepositoryOutage: while the repository answers 503 to everything,
// wal-push fails within wal_push_timeout and leaves nothing behind; once
// it is back, archiving resumes with no gap.
func TestWALRepositoryOutage(t *testing.T) {
	m := testservers.S3(t)
	proxy := storagetest.NewFaultProxy(t, m.Endpoint)
	bucket := m.NewBucket(t)
	base, err := os.MkdirTemp("", "cellar-outage")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	conf := filepath.Join(base, "cellar.conf")
	text := "[main]\nrepository = s3://" + bucket + "/pg\ns3_endpoint = " + proxy.URL + "\ns3_region = us-east-1\ns3_force_path_style = on\nwal_push_timeout = 4s\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	env := s3Env(m.AccessKey, m.SecretKey)
	c := pgtest.New(t, pgtest.Options{
		Conf: map[string]string{
			"archive_mode":    "on",
			"archive_command": fmt.Sprintf("%s --config %s wal-push main %%p", cellarBin, conf),
			"wal_keep_size":   "1GB",
		},
		Env: env,
	})
	first := c.SwitchWAL(t)
	c.WaitArchived(t, first, time.Minute)

	proxy.Down(true)
	c.Exec(t, "CREATE TABLE outage (i int)")
	var during []string
	for i := 0; i < 3; i++ {
		c.Exec(t, fmt.Sprintf("INSERT INTO outage VALUES (%d)", i))
		during = append(during, c.SwitchWAL(t))
	}
	// By hand, as PostgreSQL calls it: fails within the bound, exit 1.
	seg := filepath.Join(c.DataDir(), "pg_wal", during[0])
	r := cellar(t, env, "--config", conf, "wal-push", "main", seg)
	if r.code != 1 || !strings.Contains(r.stderr, "wal_push_timeout") {
		t.Fatalf("wal-push during an outage: exit %d: %s", r.code, r.stderr)
	}
	// A liveness bound the setting promises, not a performance figure.
	if r.elapsed > 20*time.Second {
		t.Fatalf("wal-push with wal_push_timeout = 4s took %v", r.elapsed)
	}
	if _, failed, _, _ := c.ArchiverStats(t); failed == 0 {
		time.Sleep(5 * time.Second)
	}
	proxy.Down(false)
	// Nothing half-written is visible: the segments are simply absent.
	objs, err := m.Admin().ListObjectsV2(t.Context(), &awss3.ListObjectsV2Input{Bucket: &bucket})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs.Contents {
		for _, d := range during {
			if strings.HasSuffix(*o.Key, d) {
				t.Logf("%s was archived before the outage took hold", d)
			}
		}
	}
	// Once the repository is back, archiving resumes and leaves no gap.
	c.Exec(t, "INSERT INTO outage VALUES (99)")
	last := c.SwitchWAL(t)
	c.WaitArchived(t, last, 3*time.Minute)
	r = cellar(t, env, "--config", conf, "--format", "json", "list-wal", "main")
	var tls []struct {
		First, Last string
		Gaps        []any
	}
	if err := json.Unmarshal([]byte(r.stdout), &tls); err != nil || len(tls) != 1 || tls[0].Last != last || len(tls[0].Gaps) != 0 || tls[0].First > first {
		t.Fatalf("after the outage list-wal = %s (%v)", r.stdout, err)
	}
	_, failed, _, _ := c.ArchiverStats(t)
	t.Logf("archiver failed %d times during the outage and then caught up to %s with no gap", failed, last)
	if failed == 0 {
		t.Fatal("the archiver never failed during the outage: the test did not test it")
	}
}

// TestWALParallelPushAndPrefetch archives 30 segments that are all ready
// at once with wal_push_parallel = 4, and checks that most of PostgreSQL's
// calls were answered from the push spool, that every segment arrived and
// that the spool is empty at the end; then it fetches consecutive segments
// by hand and checks that the second comes from the prefetch spool,
// byte-identical.
func TestWALParallelPushAndPrefetch(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "wal_push_parallel = 4\nparallel = 3\n")
	command := fmt.Sprintf("%s --debug --config %s wal-push main %%p", cellarBin, conf)
	c.WaitArchived(t, c.SwitchWAL(t), time.Minute)

	// With an empty archive_command PostgreSQL keeps the segments ready
	// without failing; they are all there when archiving resumes.
	c.SetConf(t, "archive_command", "")
	c.Exec(t, "CREATE TABLE marker (id int primary key, note text)")
	var segs []string
	for i := 0; i < 30; i++ {
		c.Exec(t, fmt.Sprintf("INSERT INTO marker VALUES (%d, repeat('x', 1000))", i))
		segs = append(segs, c.SwitchWAL(t))
	}
	c.SetConf(t, "archive_command", command)
	last := segs[len(segs)-1]
	c.WaitArchived(t, last, 3*time.Minute)
	if _, failed, _, _ := c.ArchiverStats(t); failed != 0 {
		t.Fatalf("pg_stat_archiver failed_count = %d", failed)
	}

	// Every segment is in the repository.
	text, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`repository = file://(\S+)`).FindSubmatch(text)
	if m == nil {
		t.Fatalf("no file repository in %s", text)
	}
	for _, seg := range segs {
		if _, err := os.Stat(filepath.Join(string(m[1]), "main", "wal", seg[:16], seg)); err != nil {
			t.Errorf("%s is not in the repository: %v", seg, err)
		}
	}

	// Most calls were answered from the spool: far fewer uploaded.
	logText, err := os.ReadFile(c.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	uploaded, fromSpool := 0, 0
	for _, line := range strings.Split(string(logText), "\n") {
		if !strings.Contains(line, "msg=archived") || !slices.ContainsFunc(segs, func(s string) bool { return strings.Contains(line, "wal="+s) }) {
			continue
		}
		if strings.Contains(line, "from_spool=true") {
			fromSpool++
		} else {
			uploaded++
		}
	}
	if uploaded+fromSpool < len(segs) || fromSpool == 0 || uploaded >= len(segs)/2 {
		t.Fatalf("of %d segments, %d calls uploaded and %d were answered from the spool; want most answered from the spool", len(segs), uploaded, fromSpool)
	}
	t.Logf("%d segments: %d archive_command calls uploaded, %d were answered from the push spool", len(segs), uploaded, fromSpool)

	// Nothing is left in the push spool once PostgreSQL has asked for all.
	deadline := time.Now().Add(time.Minute)
	for {
		ready, _ := filepath.Glob(filepath.Join(c.DataDir(), "pg_wal", "archive_status", "*.ready"))
		if len(ready) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still ready: %v", ready)
		}
		time.Sleep(50 * time.Millisecond)
	}
	spool := filepath.Join(c.DataDir(), "pg_wal", "cellar", "pushed")
	if ents, err := os.ReadDir(spool); err != nil || len(ents) != 0 {
		t.Fatalf("push spool %s at the end: %v, %v", spool, ents, err)
	}

	// wal-fetch by hand, as restore_command would: the first call
	// prefetches the next three, the next call is served from the spool.
	for _, spoolEnv := range []string{"", "CELLAR_WAL_SPOOL_DIR=" + t.TempDir()} {
		pgwal := filepath.Join(t.TempDir(), "pg_wal")
		if err := os.Mkdir(pgwal, 0o700); err != nil {
			t.Fatal(err)
		}
		prefetch := filepath.Join(pgwal, "cellar", "prefetch")
		fenv := env
		if spoolEnv != "" {
			fenv = append(slices.Clone(env), spoolEnv)
			prefetch = filepath.Join(strings.TrimPrefix(spoolEnv, "CELLAR_WAL_SPOOL_DIR="), "main", "prefetch")
		}
		dest := filepath.Join(pgwal, "RECOVERYXLOG")
		// The first call downloads and prefetches the next 3 itself. Then,
		// with 3 ahead, a call refills the spool when fewer than 2 of the
		// next 3 are there: what each call hands to a detached prefetch,
		// and what the spool holds before it.
		handed := [][]string{nil, nil, segs[14:16], nil}
		before := [][]string{nil, segs[11:14], segs[12:14], segs[13:16]}
		for i, seg := range segs[10:14] {
			// The prefetch runs apart from the call that started it.
			waitSpooled(t, prefetch, before[i])
			spooled, _ := filepath.Glob(filepath.Join(prefetch, seg+".*"))
			r := cellar(t, fenv, "--debug", "--config", conf, "wal-fetch", "main", seg, dest)
			if r.code != 0 {
				t.Fatalf("wal-fetch %s: exit %d: %s", seg, r.code, r.stderr)
			}
			want, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", seg))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("wal-fetch %s: not byte-identical (%v)", seg, err)
			}
			if i == 0 {
				if len(spooled) != 0 || !strings.Contains(r.stderr, "from_spool=false") ||
					!strings.Contains(r.stderr, "prefetched="+strings.Join(segs[11:14], ",")) {
					t.Fatalf("first wal-fetch %s: spooled before %v; log:\n%s", seg, spooled, r.stderr)
				}
				continue
			}
			wantHanded := "prefetching=" + strings.Join(handed[i], ",") + " "
			if len(handed[i]) == 0 {
				wantHanded = `prefetching="" `
			}
			if len(spooled) != 1 || !strings.Contains(r.stderr, "from_spool=true") || !strings.Contains(r.stderr, wantHanded) {
				t.Fatalf("wal-fetch %s: spooled before %v; want it served from the spool and %s; log:\n%s", seg, spooled, wantHanded, r.stderr)
			}
			if _, err := os.Stat(spooled[0]); !os.IsNotExist(err) {
				t.Fatalf("the spooled %s is still there after it was served", spooled[0])
			}
		}
		// The spool was refilled as it ran low; nothing else is left, no
		// temporary file, no mark of a prefetch in flight.
		waitSpooled(t, prefetch, segs[14:16])
		ents, _ := os.ReadDir(prefetch)
		var left []string
		for _, e := range ents {
			left = append(left, e.Name()[:min(24, len(e.Name()))])
		}
		if !slices.Equal(left, segs[14:16]) {
			t.Fatalf("prefetch spool %s at the end: %v, want %v", prefetch, ents, segs[14:16])
		}
	}
}

// waitSpooled waits until the prefetch spool holds the named segments and
// no prefetch is in flight (a minute at most: the detached prefetch is
// another process).
func waitSpooled(t *testing.T, dir string, names []string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ents, _ := os.ReadDir(dir)
		have := map[string]bool{}
		busy := false
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				busy = true
			} else {
				have[e.Name()[:min(24, len(e.Name()))]] = true
			}
		}
		all := !busy
		for _, n := range names {
			all = all && have[n]
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch spool %s: %v after a minute, want %v", dir, ents, names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWALFetchAcrossTimelines restores through a timeline switch with
// restore_command = cellar wal-fetch and its prefetch on: the archive has
// timeline 1 running on past the point where timeline 2 forked off, so
// the prefetch of timeline 1 fetches segments that recovery must not use.
// Recovery to the latest timeline must end with the rows of timeline 2,
// and none of those only timeline 1 has after the fork.
func TestWALFetchAcrossTimelines(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "parallel = 3\n")
	c.Exec(t, "CREATE TABLE mark (id int primary key, tl text)")
	backup := c.BaseBackup(t)
	// Timeline 1: rows before the fork, the fork point, rows after it and
	// enough WAL after it for several segments the prefetch will see.
	c.Pgbench(t, "-i", "-s", "2", "-q")
	c.Exec(t, "INSERT INTO mark SELECT g, 'before' FROM generate_series(1, 10) g")
	c.Exec(t, "SELECT pg_create_restore_point('fork')")
	c.SwitchWAL(t)
	c.Exec(t, "INSERT INTO mark SELECT g, 'tl1 after' FROM generate_series(11, 20) g")
	var last string
	for range 4 {
		c.Pgbench(t, "-t", "200", "-n")
		last = c.SwitchWAL(t)
	}
	c.WaitArchived(t, last, 3*time.Minute)
	c.Stop(t)

	restoreCmd := fmt.Sprintf("%s --config %s wal-fetch main %%f %%p", cellarBin, conf)
	pushCmd := fmt.Sprintf("%s --config %s wal-push main %%p", cellarBin, conf)
	// Timeline 2: recover to the fork point, promote, write, archive.
	fork := pgtest.Restore(t, backup, "recovery", pgtest.Options{Env: env, Conf: map[string]string{
		"restore_command":        restoreCmd,
		"recovery_target_name":   "fork",
		"recovery_target_action": "promote",
		"archive_mode":           "on",
		"archive_command":        pushCmd,
	}})
	fork.WaitPromoted(t, 3*time.Minute)
	fork.Exec(t, "INSERT INTO mark SELECT g, 'tl2' FROM generate_series(21, 30) g")
	for range 2 {
		fork.Pgbench(t, "-t", "200", "-n")
		last = fork.SwitchWAL(t)
	}
	fork.WaitArchived(t, last, 3*time.Minute)
	if !strings.HasPrefix(last, "00000002") {
		t.Fatalf("the promoted server writes %s, want timeline 2", last)
	}
	fork.Stop(t)

	// The restore under test: from the same backup to the latest timeline.
	r := pgtest.Restore(t, backup, "recovery", pgtest.Options{Env: env, Conf: map[string]string{
		// --debug: cellar's lines go to the server log, to be read below.
		"restore_command":          strings.Replace(restoreCmd, " wal-fetch", " --debug wal-fetch", 1),
		"recovery_target_timeline": "latest",
	}})
	r.WaitPromoted(t, 3*time.Minute)
	got := r.Query(t, "SELECT tl, count(*), min(id), max(id) FROM mark GROUP BY tl ORDER BY tl")
	want := "[[before 10 1 10] [tl2 10 21 30]]"
	if fmt.Sprint(got) != want {
		t.Fatalf("rows after recovery across the timeline switch: %v, want %s", got, want)
	}
	// Recovery read timeline 1 up to the fork and timeline 2 after it,
	// and the prefetch went for segments of timeline 1 past the fork,
	// which recovery then did not take.
	log := r.LogTail(100000)
	firstTL2 := regexp.MustCompile(`restored log file "00000002([0-9A-F]{16})"`).FindStringSubmatch(log)
	if !strings.Contains(log, `restored log file "00000002.history"`) || !strings.Contains(log, `restored log file "00000001`) || firstTL2 == nil {
		t.Fatalf("recovery did not go from timeline 1 to 2; server log:\n%s", log)
	}
	pastFork := false
	for _, m := range regexp.MustCompile(`prefetch(?:ed|ing)=([0-9A-F,]+)`).FindAllStringSubmatch(log, -1) {
		for _, seg := range strings.Split(m[1], ",") {
			pastFork = pastFork || strings.HasPrefix(seg, "00000001") && seg[8:] >= firstTL2[1]
		}
	}
	if !pastFork {
		t.Fatalf("no prefetch of timeline 1 past the fork at %s; server log:\n%s", firstTL2[1], log)
	}
}
