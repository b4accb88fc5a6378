package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// segSize is the WAL segment size of syntheticRepository.
const segSize = 16 << 20

// syntheticRepository makes a repository of the kind (file or s3) for
// server main, with the settings given and a cluster identity, for tests
// that write manifests and WAL objects themselves. It returns the
// configuration file, the environment and the repository.
func syntheticRepository(t *testing.T, kind, settings string) (conf string, env []string, store cloud.Storage) {
	t.Helper()
	base := t.TempDir()
	repoConf, env := repository(t, kind, func(n string) string { d := filepath.Join(base, n); os.MkdirAll(d, 0o700); return d })
	conf = writeConfig(t, "[cellar]\n"+repoConf+"lock_directory = "+base+"\n"+settings+"\n[main]\n")
	store = openRepository(t, conf, env)
	if _, err := catalog.EnsureIdentity(context.Background(), store, "main", catalog.Identity{SystemIdentifier: 1, WALSegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	return conf, env, store
}

// TestChainCatalog: on a repository of synthetic manifests (a full, two
// incrementals on it, a diff on it, another full and a failed backup),
// list-backups and show-backup show each backup's type, parent and chain
// length; delete refuses a parent, naming what builds on it; cron removes
// the obsolete incrementals and the failed backup but keeps the parent a
// retained diff needs, with its WAL.
func TestChainCatalog(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			conf, env, store := syntheticRepository(t, kind, "retention_policy = REDUNDANCY 2\nminimum_redundancy = 1\n")
			ctx := context.Background()
			for n := range 60 {
				w, _ := pg.ParseWALName(pg.SegmentNameOf(1, uint64(n), segSize))
				if err := store.Put(ctx, catalog.WALKey("main", w), strings.NewReader("w"), 1); err != nil {
					t.Fatal(err)
				}
			}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			var ids []string
			// 0 full (a manifest of before incrementals: no type), 1 incr
			// on 0, 2 incr on 1, 3 diff on 0, 4 full.
			for i, b := range []struct {
				typ    string
				parent int
			}{{"", -1}, {catalog.TypeIncr, 0}, {catalog.TypeIncr, 1}, {catalog.TypeDiff, 0}, {catalog.TypeFull, -1}} {
				begin := t0.Add(time.Duration(i) * 24 * time.Hour)
				id := catalog.NewBackupID(begin)
				m := &catalog.Manifest{Version: catalog.ManifestVersionFull, ID: id, Server: "main", Status: catalog.StatusDone, Timeline: 1,
					WALSegmentSize: segSize, BeginWAL: pg.SegmentNameOf(1, uint64(10*i), segSize), EndWAL: pg.SegmentNameOf(1, uint64(10*i+1), segSize),
					BeginTime: begin, EndTime: begin.Add(time.Hour), DataSize: 100 << 20, StoredSize: 40 << 20, Type: b.typ, ChainLength: 1}
				if b.parent >= 0 {
					m.Version, m.Parent, m.StoredSize = catalog.ManifestVersionIncremental, ids[b.parent], 1<<20
					m.ChainLength = map[int]int{0: 2, 1: 3}[b.parent]
				}
				if err := store.Put(ctx, catalog.PartKey("main", id, 1, "zstd"), strings.NewReader("part"), 4); err != nil {
					t.Fatal(err)
				}
				if err := catalog.WriteManifest(ctx, store, m); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			failed := catalog.NewBackupID(t0.Add(84 * time.Hour))
			if err := catalog.WriteStarted(ctx, store, catalog.Started{ID: failed, Server: "main", Status: catalog.StatusFailed, Host: "elsewhere", BeginTime: t0.Add(84 * time.Hour), Error: "disk full"}); err != nil {
				t.Fatal(err)
			}
			now := append(slices.Clone(env), "CELLAR_NOW="+t0.Add(5*24*time.Hour).Format(time.RFC3339))

			// JSON: type always, parent for an incremental only.
			r := cellar(t, now, "--config", conf, "--format", "json", "list-backups", "main")
			var raw []map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &raw); r.code != 0 || err != nil || len(raw) != 6 {
				t.Fatalf("list-backups --format json: exit %d, %v: %s%s", r.code, err, r.stdout, r.stderr)
			}
			rows := map[string]map[string]any{}
			for _, row := range raw {
				rows[row["id"].(string)] = row
			}
			for i, want := range []struct {
				typ, parent, retention string
				chain                  float64
			}{{"full", "", "VALID:PARENT", 1}, {"incr", ids[0], "OBSOLETE", 2}, {"incr", ids[1], "OBSOLETE", 3}, {"diff", ids[0], "VALID", 2}, {"full", "", "VALID", 1}} {
				row := rows[ids[i]]
				parent, hasParent := row["parent"]
				if row["type"] != want.typ || (want.parent == "") == hasParent || hasParent && parent != want.parent ||
					row["chain_length"] != want.chain || row["retention_status"] != want.retention || row["data_size"] == nil || row["stored_size"] == nil {
					t.Errorf("list-backups --format json, backup %d: %v", i, row)
				}
			}
			if c, _ := rows[ids[0]]["children"].([]any); len(c) != 2 || c[0] != ids[1] || c[1] != ids[3] {
				t.Errorf("children of %s: %v", ids[0], rows[ids[0]]["children"])
			}

			// Text: the columns as before, the type (and parent, chain) after.
			r = cellar(t, now, "--config", conf, "list-backups", "main")
			lines := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				if f := strings.Fields(l); len(f) > 1 {
					lines[f[1]] = l
				}
			}
			if r.code != 0 || !strings.HasSuffix(lines[ids[0]], " - WAL Size: 10 B - Type: full") || !strings.Contains(lines[ids[0]], " - DONE - Size: 100.0 MiB - Stored: 40.0 MiB - ") ||
				!strings.HasSuffix(lines[ids[2]], " - Stored: 1.0 MiB - WAL Size: 10 B - Type: incr - Parent: "+ids[1]+" - Chain: 3") {
				t.Errorf("list-backups: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
			}
			r = cellar(t, now, "--config", conf, "show-backup", "main", ids[2])
			for _, want := range []string{"Backup type             : incr", "Parent backup           : " + ids[1], "Chain length            : 3",
				"Stored size             : 1.0 MiB (what changed since " + ids[1] + ")", "Size                    : 100.0 MiB", "Retention Policy        : OBSOLETE"} {
				if r.code != 0 || !strings.Contains(r.stdout, want) {
					t.Errorf("show-backup of an incremental: no %q: exit %d:\n%s%s", want, r.code, r.stdout, r.stderr)
				}
			}
			r = cellar(t, now, "--config", conf, "show-backup", "main", ids[0])
			for _, want := range []string{"Backup type             : full", "Chain length            : 1", "Children Backups        : " + ids[1] + ", " + ids[3], "Retention Policy        : VALID:PARENT"} {
				if r.code != 0 || !strings.Contains(r.stdout, want) || strings.Contains(r.stdout, "Parent backup") {
					t.Errorf("show-backup of a full backup: no %q, or a parent: exit %d:\n%s%s", want, r.code, r.stdout, r.stderr)
				}
			}
			r = cellar(t, now, "--config", conf, "--format", "json", "show-backup", "main", ids[0])
			var one map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one["type"] != "full" || one["chain_length"] != 1.0 || one["parent"] != nil {
				t.Errorf("show-backup --format json of a full backup: %v: %s", err, r.stdout)
			}

			// delete refuses a parent, naming every backup that builds on it.
			r = cellar(t, now, "--config", conf, "delete", "main", ids[0])
			want := "cellar: backup " + ids[0] + " of server main is the parent of " + ids[3] + ", " + ids[1] + " (and, through them, of " + ids[2] + "): delete those first, newest first\n"
			if r.code != 1 || r.stderr != want {
				t.Errorf("delete of a full with incrementals: exit %d: %q, want %q", r.code, r.stderr, want)
			}
			r = cellar(t, now, "--config", conf, "delete", "main", ids[1])
			if r.code != 1 || !strings.Contains(r.stderr, "backup "+ids[1]+" of server main is the parent of "+ids[2]+": delete those first") {
				t.Errorf("delete of an incremental's parent: exit %d: %s", r.code, r.stderr)
			}
			exists := func(key string) bool {
				_, err := store.Stat(ctx, key)
				return err == nil
			}
			for _, id := range ids {
				if !exists(catalog.ManifestKey("main", id)) {
					t.Fatalf("a refused delete removed %s", id)
				}
			}

			r = cellar(t, now, "--config", conf, "retention", "main", "--dry-run")
			if r.code != 0 || !strings.Contains(r.stdout, "Would remove backup "+ids[1]) || !strings.Contains(r.stdout, "Would remove backup "+ids[2]) ||
				!strings.Contains(r.stdout, "Retained: 3 backups (1 of them only because retained incremental backups build on them).") {
				t.Errorf("retention --dry-run: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			r = cellar(t, now, "--config", conf, "--format", "json", "retention", "main", "--dry-run")
			var plan struct {
				Retained []string
				Parents  []string `json:"retained_as_parents"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil || !slices.Equal(plan.Retained, []string{ids[0], ids[3], ids[4]}) || !slices.Equal(plan.Parents, ids[:1]) {
				t.Errorf("retention --dry-run --format json: %v: %s", err, r.stdout)
			}

			// cron: REDUNDANCY 2 retains the diff and the full, and the
			// diff's parent with the WAL from its begin; the incrementals
			// and the failed backup go.
			r = cellar(t, now, "--config", conf, "cron")
			if r.code != 0 {
				t.Fatalf("cron: exit %d: %s", r.code, r.stderr)
			}
			for i, kept := range []bool{true, false, false, true, true} {
				if exists(catalog.ManifestKey("main", ids[i])) != kept || exists(catalog.PartKey("main", ids[i], 1, "zstd")) != kept {
					t.Errorf("after cron, backup %d (%s) is there: %v, want %v", i, ids[i], !kept, kept)
				}
			}
			if exists(catalog.StartedKey("main", failed)) {
				t.Errorf("cron left the failed backup %s", failed)
			}
			w, _ := pg.ParseWALName(pg.SegmentNameOf(1, 0, segSize))
			if !exists(catalog.WALKey("main", w)) {
				t.Errorf("cron removed %s, the first segment of retained backup %s", w.Name, ids[0])
			}
			n := 0
			store.List(ctx, catalog.WALPrefix("main"), func(cloud.ObjectInfo) error { n++; return nil })
			if n < 60 {
				t.Errorf("cron removed %d WAL files, which the retained parent %s needs", 60-n, ids[0])
			}

			// With its dependent gone, the parent may go.
			if r := cellar(t, now, "--config", conf, "delete", "main", ids[3]); r.code != 0 {
				t.Fatalf("delete of a diff: exit %d: %s", r.code, r.stderr)
			}
			if r := cellar(t, now, "--config", conf, "delete", "main", ids[0]); r.code != 0 {
				t.Fatalf("delete of a full nothing builds on any longer: exit %d: %s", r.code, r.stderr)
			}
		})
	}
}
