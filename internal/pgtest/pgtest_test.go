package pgtest

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestArchiving(t *testing.T) {
	t.Parallel()
	c := New(t, Options{
		Conf: map[string]string{"archive_mode": "on"},
		Env:  []string{"PGTEST_MARKER=hello from the server env"},
	})
	if got := c.QueryString(t, "SHOW archive_mode"); got != "on" {
		t.Fatalf("archive_mode = %q, want on", got)
	}
	if got := c.QueryString(t, "SHOW fsync"); got != "on" {
		t.Fatalf("fsync = %q, want on", got)
	}

	// The directory only exists once the cluster does, so archive_command
	// comes through SetConf (a reload setting), which also tests that.
	arch := c.MakeDir("archive")
	c.SetConf(t, "archive_command",
		`test ! -f `+arch+`/%f && cp %p `+arch+`/%f && echo "$PGTEST_MARKER" > `+arch+`/marker`)
	if got := c.QueryString(t, "SELECT current_setting('archive_command')"); !strings.Contains(got, arch) {
		t.Fatalf("archive_command after SetConf = %q", got)
	}

	c.Exec(t, "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g")
	c.Exec(t, "INSERT INTO items VALUES ($1, $2)", 1001, "parameterised")
	c.Pgbench(t, "-i", "-q", "-s", "1")

	seg := c.SwitchWAL(t)
	if !isSegment(seg) {
		t.Fatalf("SwitchWAL returned %q", seg)
	}
	c.WaitArchived(t, seg, 20*time.Second)

	segSize := c.QueryInt64(t, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
	if show := c.QueryString(t, "SHOW wal_segment_size"); show != "16MB" || segSize != 16<<20 {
		t.Fatalf("wal_segment_size: SHOW %q, setting %d; want 16MB", show, segSize)
	}
	fi, err := os.Stat(filepath.Join(arch, seg))
	if err != nil {
		t.Fatalf("archived segment: %v", err)
	}
	if fi.Size() != segSize {
		t.Fatalf("archived %s is %d bytes, want %d", seg, fi.Size(), segSize)
	}
	if os.Geteuid() == 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != c.su.uid {
			t.Fatalf("archived file owned by uid %d, want %s (%d)", st.Uid, c.User(), c.su.uid)
		}
	}
	marker, err := os.ReadFile(filepath.Join(arch, "marker"))
	if err != nil || strings.TrimSpace(string(marker)) != "hello from the server env" {
		t.Fatalf("archive_command did not see Options.Env: %q, %v", marker, err)
	}

	archived, failed, last, lastFailed := c.ArchiverStats(t)
	if archived < 1 || failed != 0 || last < seg || lastFailed != "" {
		t.Fatalf("ArchiverStats = %d, %d, %q, %q; want >=1, 0, >= %s, \"\"", archived, failed, last, lastFailed, seg)
	}

	sysid := c.SystemIdentifier(t)
	if sysid == 0 {
		t.Fatal("SystemIdentifier is 0")
	}
	out, err := RunAsServerUser(t, Bin("pg_controldata"), c.DataDir())
	if err != nil {
		t.Fatalf("pg_controldata: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`Database system identifier:\s+(\d+)`).FindStringSubmatch(out); m == nil || m[1] != strconv.FormatUint(sysid, 10) {
		t.Fatalf("pg_controldata disagrees with SystemIdentifier %d:\n%s", sysid, out)
	}

	wal := c.WALFiles(t)
	// The completed segment stays until a checkpoint recycles it; the next
	// one may not exist yet (it is created on the first write after the switch).
	if !sort.StringsAreSorted(wal) || !slices.Contains(wal, seg) {
		t.Fatalf("WALFiles = %v (switched %s)", wal, seg)
	}
	for _, w := range wal {
		if !isSegment(w) {
			t.Fatalf("WALFiles has %q", w)
		}
	}

	// A second switch right away archives the next segment too.
	c.Exec(t, "INSERT INTO items VALUES (1002, 'after first switch')")
	seg2 := c.SwitchWAL(t)
	if seg2 <= seg {
		t.Fatalf("second switch completed %s, first %s", seg2, seg)
	}
	c.WaitArchived(t, seg2, 20*time.Second)

	port := c.Port()
	c.Restart(t)
	if c.Port() != port {
		t.Fatalf("port changed across Restart: %d -> %d", port, c.Port())
	}
	if n := c.QueryInt64(t, "SELECT count(*) FROM items"); n != 1002 {
		t.Fatalf("items after restart: %d rows, want 1002", n)
	}
	if n := c.QueryInt64(t, "SELECT count(*) FROM pgbench_accounts"); n != 100000 {
		t.Fatalf("pgbench_accounts after restart: %d rows, want 100000", n)
	}
	if row := c.QueryRow(t, "SELECT name FROM items WHERE id = $1", 1001); row[0] != "parameterised" {
		t.Fatalf("QueryRow = %v", row)
	}
	if got := c.SystemIdentifier(t); got != sysid {
		t.Fatalf("SystemIdentifier changed across restart: %d -> %d", sysid, got)
	}

	// Stop and Start on their own; the archive command still works.
	c.Stop(t)
	c.Start(t)
	c.Pgbench(t, "-c", "2", "-t", "200")
	seg3 := c.SwitchWAL(t)
	c.WaitArchived(t, seg3, 20*time.Second)
	if _, err := os.Stat(filepath.Join(arch, seg3)); err != nil {
		t.Fatal(err)
	}
}

func TestWalSegSize1MB(t *testing.T) {
	t.Parallel()
	c := New(t, Options{WalSegSizeMB: 1, Conf: map[string]string{"work_mem": "4MB"}})
	if got := c.QueryString(t, "SHOW wal_segment_size"); got != "1MB" {
		t.Fatalf("SHOW wal_segment_size = %q, want 1MB", got)
	}
	if got := c.QueryString(t, "SHOW work_mem"); got != "4MB" {
		t.Fatalf("Options.Conf work_mem: SHOW says %q", got)
	}
	c.SetConf(t, "work_mem", "8MB")
	if got := c.QueryString(t, "SHOW work_mem"); got != "8MB" {
		t.Fatalf("SetConf work_mem: SHOW says %q right after", got)
	}
	c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g")
	seg := c.SwitchWAL(t)
	wal := c.WALFiles(t)
	if len(wal) == 0 {
		t.Fatal("no WAL files")
	}
	for _, w := range wal {
		fi, err := os.Stat(filepath.Join(c.DataDir(), "pg_wal", w))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != 1<<20 {
			t.Fatalf("%s is %d bytes, want 1 MiB", w, fi.Size())
		}
	}
	if !slices.Contains(wal, seg) {
		t.Fatalf("WALFiles = %v after switching %s", wal, seg)
	}

	// MakeDir and Chown hand files to the server user.
	dir := c.MakeDir("restore/target")
	f := filepath.Join(c.Base(), "restore", "by-test")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Chown(f)
	if out, err := RunAsServerUser(t, "sh", "-c", "cat "+f+" > "+dir+"/copy"); err != nil {
		t.Fatalf("server user cannot use MakeDir/Chown paths: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "copy")); err != nil || string(b) != "x" {
		t.Fatalf("copy = %q, %v", b, err)
	}
	if !strings.HasPrefix(c.Host(), c.Base()) || !strings.HasPrefix(c.DataDir(), c.Base()) {
		t.Fatalf("Host %s / DataDir %s not under Base %s", c.Host(), c.DataDir(), c.Base())
	}
	if !strings.Contains(c.ConnString(), "port="+strconv.Itoa(c.Port())) {
		t.Fatalf("ConnString %q", c.ConnString())
	}
}

func TestArchivedBy(t *testing.T) {
	const s = "000000010000000000000005"
	for _, tc := range []struct {
		want, last string
		ok         bool
	}{
		{s, "", false},
		{s, s, true},
		{s, "000000010000000000000004", false},
		{s, "000000010000000000000006", true},
		{s, "000000020000000000000001", true},
		{s, s + ".partial", false},
		{s, s + ".00000028.backup", false},
		{s, "000000010000000000000006.00000028.backup", true},
		{s, "00000002.history", false},
		{"00000002.history", "00000002.history", true},
		{"00000002.history", "000000020000000000000009", false},
	} {
		if got := archivedBy(tc.want, tc.last); got != tc.ok {
			t.Errorf("archivedBy(%q, %q) = %v, want %v", tc.want, tc.last, got, tc.ok)
		}
	}
}

func TestValidWalSegSizeMB(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 1: true, 2: true, 3: false, 16: true, 1024: true, 2048: false, -1: false} {
		if validWalSegSizeMB(n) != ok {
			t.Errorf("validWalSegSizeMB(%d) = %v", n, !ok)
		}
	}
}

func TestQuoteLiteral(t *testing.T) {
	if got := quoteLiteral(`cp %p '/a b'/%f`); got != `'cp %p ''/a b''/%f'` {
		t.Fatalf("quoteLiteral = %s", got)
	}
}
