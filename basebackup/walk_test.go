package basebackup

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
)

func TestScanLeavesOutWhatPostgreSQLSays(t *testing.T) {
	root := t.TempDir()
	pgdata := filepath.Join(root, "data")
	spc := filepath.Join(root, "spc")
	files := []string{
		"PG_VERSION", "postmaster.pid", "postmaster.opts", "backup_label.old", "recovery.signal",
		"postgresql.auto.conf", "postgresql.auto.conf.tmp", "global/pg_control", "global/pg_internal.init",
		"pg_wal/000000010000000000000001", "pg_wal/archive_status/000000010000000000000001.ready",
		"pg_stat_tmp/global.stat", "pg_replslot/slot/state", "pg_subtrans/0000", "pg_notify/0000",
		"base/5/1259", "base/5/1259_fsm", "base/5/16400", "base/5/16400.1", "base/5/16400_fsm", "base/5/16400_init",
		"base/5/pgsql_tmp/pgsql_tmp123.0", "base/pgsql_tmp/x", "pg_xact/0000",
	}
	for _, f := range files {
		p := filepath.Join(pgdata, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"pg_snapshots", "pg_tblspc", "pg_logical/snapshots"} {
		os.MkdirAll(filepath.Join(pgdata, d), 0o700)
	}
	os.MkdirAll(filepath.Join(spc, "PG_15_202209061", "5"), 0o700)
	os.WriteFile(filepath.Join(spc, "PG_15_202209061", "5", "16500"), []byte("tablespace data"), 0o600)
	if err := os.Symlink(spc, filepath.Join(pgdata, "pg_tblspc", "16385")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/etc/hosts", filepath.Join(pgdata, "some_link"))

	var ents []entry
	if err := walk(pgdata, []catalog.Tablespace{{OID: 16385, Name: "extra", Location: spc}}, func(e entry) error { ents = append(ents, e); return nil }); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range ents {
		got[e.Path] = e.Type
	}
	if !slices.IsSortedFunc(ents, func(a, b entry) int { return catalog.ComparePaths(a.Path, b.Path) }) {
		t.Errorf("the walk is not in path order")
	}
	want := map[string]string{
		"PG_VERSION": "file", "postgresql.auto.conf": "file", "global": "dir", "global/pg_control": "file",
		"pg_wal": "dir", "pg_wal/archive_status": "dir", "pg_stat_tmp": "dir", "pg_replslot": "dir",
		"pg_subtrans": "dir", "pg_notify": "dir", "pg_snapshots": "dir", "pg_tblspc": "dir",
		"pg_logical": "dir", "pg_logical/snapshots": "dir", "pg_xact": "dir", "pg_xact/0000": "file",
		"base": "dir", "base/5": "dir", "base/5/1259": "file", "base/5/1259_fsm": "file", "base/5/16400_init": "file",
		"pg_tblspc/16385": "dir", "pg_tblspc/16385/PG_15_202209061": "dir", "pg_tblspc/16385/PG_15_202209061/5": "dir",
		"pg_tblspc/16385/PG_15_202209061/5/16500": "file", "some_link": "symlink",
	}
	var diff []string
	for p, typ := range want {
		if got[p] != typ {
			diff = append(diff, "missing "+p+" ("+typ+")")
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diff = append(diff, "unexpected "+p)
		}
	}
	slices.Sort(diff)
	if len(diff) > 0 {
		t.Fatalf("scan:\n%s", strings.Join(diff, "\n"))
	}
}

func TestLabelInfo(t *testing.T) {
	label := "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\nCHECKPOINT LOCATION: 0/9000060\nBACKUP METHOD: streamed\nBACKUP FROM: standby\nSTART TIME: 2026-12-01 21:00:00 UTC\nLABEL: x\nSTART TIMELINE: 2\n"
	wal, tl, err := labelInfo(label)
	if err != nil || wal != "000000020000000000000009" || tl != 2 {
		t.Fatalf("labelInfo: %s %d %v", wal, tl, err)
	}
	if _, _, err := labelInfo("LABEL: x\n"); err == nil {
		t.Fatal("a label without a start WAL was accepted")
	}
}
