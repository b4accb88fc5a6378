package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/health"
	"github.com/cellar-backup/cellar/pg"
)

// statusLines reads status's text: "Server NAME:" and a tab-indented
// "Key: value" line for each item.
func statusLines(t *testing.T, r result) map[string]string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("status: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "Server main:") {
		t.Fatalf("status does not begin with the server: %q", r.stdout)
	}
	out := map[string]string{}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(l, "\t"), ": ")
		if !ok || !strings.HasPrefix(l, "\t") {
			t.Fatalf("status line %q is not \"\\tKey: value\"", l)
		}
		out[k] = v
	}
	return out
}

// statusJSON runs status --format json.
func statusJSON(t *testing.T, env []string, conf string) health.Status {
	t.Helper()
	r := cellar(t, env, "--config", conf, "--format", "json", "status", "main")
	if r.code != 0 {
		t.Fatalf("status --format json: exit %d: %s", r.code, r.stderr)
	}
	var s health.Status
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("status --format json: %v\n%s", err, r.stdout)
	}
	return s
}

// drillID is the id of a drill that began at t, as catalog.NewDrill makes
// it.
func drillID(t time.Time) string { return t.UTC().Format("20060102T150405.000Z") }

func wantPrefix(t *testing.T, lines map[string]string, key, prefix string) {
	t.Helper()
	if v, ok := lines[key]; !ok || !strings.HasPrefix(v, prefix) {
		t.Errorf("status %q = %q, want it to begin with %q", key, v, prefix)
	}
}

func TestStatus(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "")
	appendConf(t, conf, fmt.Sprintf("pgdata = %s\nconninfo = %s\n", c.DataDir(), c.ConnString()))
	c.Exec(t, "CREATE TABLE t (id int)")
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	c.Exec(t, "INSERT INTO t VALUES (1)")
	last := c.SwitchWAL(t)
	c.WaitArchived(t, last, 2*time.Minute)
	rows := listBackups(t, env, conf)
	if len(rows) != 1 {
		t.Fatalf("list-backups: %d backups", len(rows))
	}
	b := rows[0]

	r := cellar(t, env, "--config", conf, "status", "main")
	t.Logf("status main:\n%s", r.stdout)
	lines := statusLines(t, r)
	wantPrefix(t, lines, "Description", "archiving test")
	wantPrefix(t, lines, "Active", "yes")
	wantPrefix(t, lines, "PostgreSQL version", "15.")
	wantPrefix(t, lines, "Cluster state", "in production")
	wantPrefix(t, lines, "Data directory", c.DataDir())
	wantPrefix(t, lines, "archive_mode", "on")
	wantPrefix(t, lines, "archive_command", cellarBin)
	wantPrefix(t, lines, "Last archived WAL", last+", at ")
	wantPrefix(t, lines, "Failures of WAL archiver", "0")
	wantPrefix(t, lines, "WAL archiving rate", "")
	wantPrefix(t, lines, "Streaming", "off")
	wantPrefix(t, lines, "No. of available backups", "1")
	wantPrefix(t, lines, "First available backup", b.ID+" (full, ended ")
	wantPrefix(t, lines, "Last available backup", b.ID+" (full, ended ")
	wantPrefix(t, lines, "First recoverable point", "")
	wantPrefix(t, lines, "Last recoverable point", "")
	if !strings.Contains(lines["Last recoverable point"], "end of WAL file "+last) {
		t.Errorf("Last recoverable point = %q, want the end of %s", lines["Last recoverable point"], last)
	}
	wantPrefix(t, lines, "Last drill", "none yet (run cellar drill main)")
	wantPrefix(t, lines, "Repository", "file://")
	wantPrefix(t, lines, "Stored bytes", "")
	wantPrefix(t, lines, "Encryption", "none")

	s := statusJSON(t, env, conf)
	p := s.PostgreSQL
	if p == nil || p.State != health.StateProduction || p.VersionNum/10000 != 15 || p.Archiver == nil {
		t.Fatalf("status json postgresql = %+v", p)
	}
	if a := p.Archiver; a.LastArchivedWAL != last || a.ArchivedCount < 2 || a.FailedCount != 0 || a.LastArchivedTime.IsZero() || a.RatePerHour <= 0 {
		t.Errorf("status json archiver = %+v, want %s last archived", a, last)
	}
	if cur, err := pg.ParseWALName(p.CurrentWAL); err != nil || cur.Name <= last {
		t.Errorf("status json current WAL %q (LSN %s): want a segment after %s (%v)", p.CurrentWAL, p.CurrentLSN, last, err)
	}
	if s.Backups.Done != 1 || s.Backups.Failed != 0 || s.Backups.Last == nil || s.Backups.Last.ID != b.ID || s.Backups.StoredBytes != b.StoredSize {
		t.Errorf("status json backups = %+v, want the one backup %s of %d bytes", s.Backups, b.ID, b.StoredSize)
	}
	if s.WAL.LastSegment != last || s.WAL.Files < 2 || s.WAL.StoredBytes <= 0 {
		t.Errorf("status json wal = %+v", s.WAL)
	}
	if s.Repository.StoredBytes != s.Backups.StoredBytes+s.WAL.StoredBytes || s.Repository.StoredBytes <= b.StoredSize || !s.Repository.Readable {
		t.Errorf("status json repository = %+v", s.Repository)
	}
	first, lastPoint := s.Recoverable.First, s.Recoverable.Last
	if first == nil || lastPoint == nil {
		t.Fatalf("status json recoverable = %+v", s.Recoverable)
	}
	endLSN, _ := pg.ParseLSN(b.EndLSN)
	toLSN, err := pg.ParseLSN(lastPoint.LSN)
	if err != nil || toLSN <= endLSN || lastPoint.Time.Before(b.EndTime) || lastPoint.WAL != last {
		t.Errorf("last recoverable point %+v: want after the backup's end %s at %s, at the end of %s", lastPoint, b.EndLSN, b.EndTime, last)
	}
	if first.LSN != b.EndLSN || !first.Time.Equal(b.EndTime) || first.Backup != b.ID {
		t.Errorf("first recoverable point %+v: want the backup's end %s at %s", first, b.EndLSN, b.EndTime)
	}
	if s.Drills.Count != 0 || s.Drills.Last != nil {
		t.Errorf("status json drills = %+v, want none", s.Drills)
	}

	// Drills: a failed one, then a good one, then a failed one again.
	store := openRepository(t, conf, env)
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	for i, res := range []string{catalog.DrillFailed, catalog.DrillOK, catalog.DrillFailed} {
		begin := t0.Add(time.Duration(i) * 10 * time.Minute)
		d := catalog.Drill{ID: drillID(begin), Server: "main", Backup: b.ID, Target: "end of WAL", Result: res,
			BeginTime: begin, EndTime: begin.Add(42 * time.Second), RestoreSeconds: 30, ReplaySeconds: 12, TotalSeconds: 42, Answer: "the answer"}
		if res == catalog.DrillFailed {
			d.Error = fmt.Sprintf("drill %d: PostgreSQL did not start", i)
		} else {
			d.ReachedLSN = "0/3000000"
		}
		if err := catalog.WriteDrill(ctx, store, d); err != nil {
			t.Fatal(err)
		}
	}
	r = cellar(t, env, "--config", conf, "status", "main")
	t.Logf("status main, with drills:\n%s", r.stdout)
	lines = statusLines(t, r)
	wantPrefix(t, lines, "Last drill", drillID(t0.Add(20*time.Minute))+" FAILED (backup "+b.ID+", target end of WAL, total 42.0 s, ended ")
	if !strings.HasSuffix(lines["Last drill"], "drill 2: PostgreSQL did not start") {
		t.Errorf("Last drill = %q, want its error", lines["Last drill"])
	}
	wantPrefix(t, lines, "Last successful drill", drillID(t0.Add(10*time.Minute))+" OK (backup "+b.ID+", target end of WAL, reached 0/3000000, total 42.0 s")
	s = statusJSON(t, env, conf)
	if d := s.Drills; d.Count != 3 || d.Last == nil || d.Last.Result != catalog.DrillFailed || d.LastOK == nil || d.LastOK.TotalSeconds != 42 || d.LastOK.Answer != "" {
		t.Errorf("status json drills = %+v", d)
	}

	// PostgreSQL stopped: the repository's part is still there.
	c.Stop(t)
	r = cellar(t, env, "--config", conf, "status", "main")
	t.Logf("status main, PostgreSQL stopped:\n%s", r.stdout)
	lines = statusLines(t, r)
	wantPrefix(t, lines, "Cluster state", "unreachable (connecting to PostgreSQL of server main")
	wantPrefix(t, lines, "No. of available backups", "1")
	wantPrefix(t, lines, "Last available backup", b.ID)
	wantPrefix(t, lines, "Repository", "file://")
	if _, ok := lines["PostgreSQL version"]; ok {
		t.Errorf("status shows a version of a stopped server:\n%s", r.stdout)
	}
	s = statusJSON(t, env, conf)
	if s.PostgreSQL == nil || s.PostgreSQL.State != health.StateUnreachable || s.PostgreSQL.Error == "" || s.Backups.Done != 1 {
		t.Errorf("status json with PostgreSQL stopped = %+v", s)
	}

	// An unknown server is a configuration error, as for every command.
	if r := cellar(t, env, "--config", conf, "status", "nosuch"); r.code != 2 || !strings.Contains(r.stderr, `unknown server "nosuch"`) {
		t.Errorf("status nosuch: exit %d: %s", r.code, r.stderr)
	}
	if r := cellar(t, env, "--config", conf, "status"); r.code != 2 {
		t.Errorf("status without a server: exit %d: %s", r.code, r.stderr)
	}
}

// A repository that does not answer: status shows PostgreSQL's part and
// says what failed, exit 1.
func TestStatusRepositoryDown(t *testing.T) {
	conf := writeConfig(t, "[cellar]\nrepository = s3://bucket/pg\ns3_endpoint = "+blackHole(t)+"\ns3_region = us-east-1\n[main]\nconninfo = host=/nonexistent user=x\n")
	r := cellar(t, []string{"AWS_ACCESS_KEY_ID=id", "AWS_SECRET_ACCESS_KEY=status-secret-key"}, "--config", conf, "status", "main")
	if r.code != 1 || !strings.Contains(r.stdout, "\tCluster state: unreachable") || !strings.Contains(r.stdout, "\tRepository: s3://bucket/pg - unreadable: ") ||
		!strings.HasPrefix(r.stderr, "cellar: server main: reading the repository s3://bucket/pg: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("status with the repository down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, "status-secret-key") {
		t.Errorf("status shows the secret key:\n%s%s", r.stdout, r.stderr)
	}
}

func TestDiagnose(t *testing.T) {
	c, conf, env := archivingCluster(t, "file", "")
	keyDir := t.TempDir()
	keyFile, _ := keygen(t, keyDir, "identity.txt")
	privateKey := ""
	for _, l := range strings.Split(string(mustRead(t, keyFile)), "\n") {
		if strings.HasPrefix(l, "AGE-SECRET-KEY-") {
			privateKey = l
		}
	}
	if privateKey == "" {
		t.Fatalf("no private key in %s", keyFile)
	}
	secrets := map[string]string{
		"main conninfo password":          "main-pg-password-3141",
		"other conninfo password":         "other-pg-password-2718",
		"other streaming_conninfo":        "other-stream-password-1618",
		"azure_key":                       "azure-key-secret-c2VjcmV0",
		"azure_sas_token":                 "azure-sas-signature-0xdeadbeef",
		"AWS_SECRET_ACCESS_KEY":           "aws-secret-access-key-wJalrXUtnFEMI",
		"AWS_SESSION_TOKEN":               "aws-session-token-FwoGZXIvYXdz",
		"AZURE_STORAGE_CONNECTION_STRING": "azure-connection-string-key-Eby8vdM02",
		"PGPASSWORD":                      "pgpassword-env-secret-1234",
		"CELLAR_PRIMARY_CONNINFO":         "cellar-env-primary-password-5678",
		"encryption identity":             privateKey,
	}
	appendConf(t, conf, fmt.Sprintf("pgdata = %s\nconninfo = %s password=%s\n", c.DataDir(), c.ConnString(), secrets["main conninfo password"]))
	// The private key is in the configuration diagnose reads (PostgreSQL's
	// user, who archives with conf, cannot read it), with a second server.
	diagConf := withSetting(t, conf, "diagnose.conf", "encryption_identity_file = "+keyFile)
	appendConf(t, diagConf, fmt.Sprintf(`
[other]
description = "retired server"
active = off
conninfo = host=/nonexistent user=nobody password=%s
streaming_conninfo = postgresql://cellar:%s@127.0.0.1:1/postgres
azure_key = %s
azure_sas_token = sv=2024-01-01&sig=%s
`, secrets["other conninfo password"], secrets["other streaming_conninfo"], secrets["azure_key"], secrets["azure_sas_token"]))
	env = append(env,
		"AWS_ACCESS_KEY_ID=AKIAEXAMPLE",
		"AWS_SECRET_ACCESS_KEY="+secrets["AWS_SECRET_ACCESS_KEY"],
		"AWS_SESSION_TOKEN="+secrets["AWS_SESSION_TOKEN"],
		"AWS_REGION=eu-west-1",
		"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="+secrets["AZURE_STORAGE_CONNECTION_STRING"]+";",
		"PGPASSWORD="+secrets["PGPASSWORD"],
		"CELLAR_PRIMARY_CONNINFO=host=/nonexistent password="+secrets["CELLAR_PRIMARY_CONNINFO"],
	)
	c.Exec(t, "CREATE TABLE t (id int)")
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup: exit %d: %s", r.code, r.stderr)
	}
	// A failed backup and a failed drill, for the recent failures.
	store := openRepository(t, conf, env)
	ctx := context.Background()
	failedAt := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	if err := catalog.WriteStarted(ctx, store, catalog.Started{ID: catalog.NewBackupID(failedAt), Server: "main", Status: catalog.StatusFailed,
		BeginTime: failedAt, EndTime: failedAt.Add(time.Minute), Error: "the disk was full"}); err != nil {
		t.Fatal(err)
	}
	drillAt := failedAt.Add(time.Hour)
	if err := catalog.WriteDrill(ctx, store, catalog.Drill{ID: drillID(drillAt), Server: "main", Result: catalog.DrillFailed,
		BeginTime: drillAt, EndTime: drillAt.Add(time.Minute), Error: "the query failed"}); err != nil {
		t.Fatal(err)
	}

	r := cellar(t, env, "--config", diagConf, "--format", "text", "diagnose")
	if r.code != 0 {
		t.Fatalf("diagnose: exit %d: %s", r.code, r.stderr)
	}
	for what, s := range secrets {
		if strings.Contains(r.stdout, s) || strings.Contains(r.stderr, s) {
			t.Errorf("diagnose shows the %s", what)
		}
	}
	if strings.Contains(r.stdout, "AGE-SECRET-KEY") {
		t.Errorf("diagnose shows a private key")
	}
	var d struct {
		Cellar        struct{ Version, Commit, Go, OS, Arch string }
		Time          time.Time
		Host          string
		Configuration struct {
			Files   []string
			Servers map[string]map[string]string
		}
		Environment map[string]string
		Servers     map[string]struct {
			Active         bool
			Error          string
			Check          []health.Result
			Status         health.Status
			Catalog        *health.CatalogSummary
			RecentFailures []health.Failure `json:"recent_failures"`
		}
		PostgreSQL map[string]struct{ Path, Version string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("diagnose is not JSON: %v\n%s", err, r.stdout)
	}
	if d.Cellar.Version != "1.2.3-test" || d.Cellar.Commit != "abc123" || d.Cellar.Go == "" || d.Time.IsZero() || d.Host == "" {
		t.Errorf("diagnose cellar = %+v, time %v, host %q", d.Cellar, d.Time, d.Host)
	}
	if len(d.Configuration.Files) != 1 || d.Configuration.Files[0] != diagConf {
		t.Errorf("diagnose configuration files = %v", d.Configuration.Files)
	}
	if m := d.Configuration.Servers["main"]; m["encryption_identity_file"] != keyFile || !strings.Contains(m["conninfo"], "password=***") {
		t.Errorf("diagnose configuration of main = %v", m)
	}
	if o := d.Configuration.Servers["other"]; o["azure_key"] != "***" || o["azure_sas_token"] != "***" || o["active"] != "off" {
		t.Errorf("diagnose configuration of other = %v", o)
	}
	wantEnv := map[string]string{"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "***", "AWS_SESSION_TOKEN": "***", "AWS_ACCESS_KEY_ID": "***",
		"AZURE_STORAGE_CONNECTION_STRING": "***", "PGPASSWORD": "***",
		"CELLAR_PRIMARY_CONNINFO": "host=/nonexistent password=***"}
	for k, v := range wantEnv {
		if d.Environment[k] != v {
			t.Errorf("diagnose environment %s = %q, want %q", k, d.Environment[k], v)
		}
	}
	mainSrv, other := d.Servers["main"], d.Servers["other"]
	checks := map[string]string{}
	for _, res := range mainSrv.Check {
		checks[res.Name] = res.Status
	}
	for _, name := range []string{"repository reachable", "repository writable", "PostgreSQL", "archive_mode", "minimum redundancy requirements"} {
		if checks[name] != health.OK {
			t.Errorf("diagnose: main's check %q = %q (checks %v)", name, checks[name], mainSrv.Check)
		}
	}
	if checks["failed backups"] != health.Failed {
		t.Errorf("diagnose: main's failed backups check = %q", checks["failed backups"])
	}
	if !mainSrv.Active || mainSrv.Error != "" || mainSrv.Catalog == nil || mainSrv.Catalog.Done != 1 || mainSrv.Catalog.Failed != 1 || mainSrv.Catalog.Backups != 2 ||
		mainSrv.Catalog.Newest == nil || mainSrv.Catalog.StoredBytes <= 0 || mainSrv.Catalog.WALFiles < 2 || mainSrv.Catalog.WALBytes <= 0 || mainSrv.Catalog.Drills != 1 ||
		mainSrv.Catalog.LastDrill == nil || mainSrv.Catalog.LastDrill.Result != catalog.DrillFailed {
		t.Errorf("diagnose: main's catalog = %+v (error %q)", mainSrv.Catalog, mainSrv.Error)
	}
	if mainSrv.Status.PostgreSQL == nil || mainSrv.Status.PostgreSQL.VersionNum/10000 != 15 || mainSrv.Status.Backups.Done != 1 {
		t.Errorf("diagnose: main's status = %+v", mainSrv.Status)
	}
	kinds := map[string]string{}
	for _, f := range mainSrv.RecentFailures {
		kinds[f.Kind] = f.Error
	}
	if kinds["backup"] != "the disk was full" || kinds["drill"] != "the query failed" || len(mainSrv.RecentFailures) != 2 ||
		mainSrv.RecentFailures[0].Kind != "drill" {
		t.Errorf("diagnose: main's recent failures = %+v", mainSrv.RecentFailures)
	}
	if other.Active || len(other.Check) == 0 || other.Catalog == nil || other.Catalog.Backups != 0 ||
		other.Status.PostgreSQL == nil || other.Status.PostgreSQL.State != health.StateUnreachable {
		t.Errorf("diagnose: other = %+v", other)
	}
	if pc, ok := d.PostgreSQL["pg_config"]; ok && !strings.HasPrefix(pc.Version, "PostgreSQL ") {
		t.Errorf("diagnose postgresql = %+v", d.PostgreSQL)
	}

	// status of the other server, as text and JSON, shows no secret either.
	for _, format := range []string{"text", "json"} {
		r := cellar(t, env, "--config", diagConf, "--format", format, "status", "other")
		for what, s := range secrets {
			if strings.Contains(r.stdout+r.stderr, s) {
				t.Errorf("status --format %s shows the %s", format, what)
			}
		}
	}

	// A configuration that does not load is diagnosed too.
	bad := filepath.Join(t.TempDir(), "bad.conf")
	if err := os.WriteFile(bad, []byte("[main]\nconninfo = password="+secrets["main conninfo password"]+"\nnot_a_setting = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cellar(t, env, "--config", bad, "diagnose")
	var bd struct{ Configuration struct{ Error string } }
	if err := json.Unmarshal([]byte(r.stdout), &bd); r.code != 0 || err != nil || !strings.Contains(bd.Configuration.Error, "not_a_setting") {
		t.Errorf("diagnose with a bad configuration: exit %d (%v)\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, secrets["main conninfo password"]) {
		t.Errorf("diagnose with a bad configuration shows the password")
	}
	if r := cellar(t, env, "--config", diagConf, "diagnose", "main"); r.code != 2 {
		t.Errorf("diagnose main: exit %d, want 2", r.code)
	}
}
