package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const sample = `
[cellar]
repository = s3://backups/pg          ; an inline comment
compression = zstd
parallel = 4                          # another comment

[main]
description = "Main PostgreSQL server"
pgdata = /var/lib/postgresql/15/main
conninfo = host=/var/run/postgresql user=postgres password=s3cr3t-pw dbname=postgres
retention_policy = RECOVERY WINDOW OF 7 DAYS
minimum_redundancy = 1
upload_part_size = 64MiB
azure_key = very-secret-key

[standby]
repository = file:///var/lib/cellar
parallel = 8
active = off
s3_force_path_style = yes
`

func TestLoadLayersAndTypes(t *testing.T) {
	path := write(t, t.TempDir(), "cellar.conf", sample)
	c, err := Load(path, []string{"CELLAR_COMPRESSION=s2", "CELLAR_UNRELATED_THING=x", "HOME=/root"})
	if err != nil {
		t.Fatal(err)
	}
	if names := []string{c.Servers()[0].Name, c.Servers()[1].Name}; names[0] != "main" || names[1] != "standby" || len(c.Servers()) != 2 {
		t.Fatalf("servers = %v", names)
	}
	m, err := c.Server("main")
	if err != nil {
		t.Fatal(err)
	}
	if m.Repository != "s3://backups/pg" || m.Description != "Main PostgreSQL server" || m.Parallel != 4 ||
		m.MinimumRedundancy != 1 || m.UploadPartSize != 64<<20 || !m.Active {
		t.Fatalf("main = %+v", m)
	}
	if m.Compression != "s2" {
		t.Fatalf("CELLAR_COMPRESSION did not win over the file: %q", m.Compression)
	}
	if !strings.HasPrefix(m.sources["compression"], "environment CELLAR_COMPRESSION") {
		t.Fatalf("source of compression = %q", m.sources["compression"])
	}
	s, _ := c.Server("standby")
	if s.Repository != "file:///var/lib/cellar" || s.Parallel != 8 || s.Active || !s.S3ForcePathStyle || s.UploadPartSize != 16<<20 {
		t.Fatalf("standby = %+v", s)
	}
	if _, err := c.Server("nope"); err == nil || !strings.Contains(err.Error(), "known servers: main, standby") {
		t.Fatalf("unknown server error = %v", err)
	}
}

func TestRedaction(t *testing.T) {
	path := write(t, t.TempDir(), "cellar.conf", sample)
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := c.Server("main")
	var all strings.Builder
	for _, s := range m.Settings() {
		all.WriteString(s.Name + "=" + s.Value + "\n")
	}
	for _, secret := range []string{"s3cr3t-pw", "very-secret-key"} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("settings show the secret %q:\n%s", secret, all.String())
		}
	}
	if m.Show("azure_key") != "***" || !strings.Contains(m.Show("conninfo"), "password=***") {
		t.Errorf("azure_key shown as %q, conninfo as %q", m.Show("azure_key"), m.Show("conninfo"))
	}
	secrets := strings.Join(m.Secrets(), " ")
	if !strings.Contains(secrets, "s3cr3t-pw") || !strings.Contains(secrets, "very-secret-key") {
		t.Errorf("Secrets() = %q, want both secrets for scrubbing", secrets)
	}
	for in, want := range map[string]string{
		"host=x password='a b' user=y":     "host=x password=*** user=y",
		"postgresql://u:pw@host:5432/db":   "postgresql://u:***@host:5432/db",
		"host=x PASSWORD = pw2 dbname=db":  "host=x PASSWORD = *** dbname=db",
		"host=x user=postgres dbname=post": "host=x user=postgres dbname=post",
	} {
		if got := RedactConninfo(in); got != want {
			t.Errorf("RedactConninfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorsNameFileSectionSetting(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, text string
		env        []string
		want       []string
	}{
		{"unknown setting", "[cellar]\nrepository = file:///r\n[main]\nparalel = 4\n", nil, []string{"[main]", "paralel", "unknown setting", "did you mean parallel"}},
		{"bad number", "[cellar]\nrepository = file:///r\n[main]\nparallel = four\n", nil, []string{"[main]", "parallel", `"four" is not a whole number`}},
		{"out of range", "[cellar]\nrepository = file:///r\n[main]\nparallel = 0\n", nil, []string{"[main]", "parallel", "below the minimum"}},
		{"bad bool", "[cellar]\nrepository = file:///r\n[main]\nactive = maybe\n", nil, []string{"[main]", "active", "maybe"}},
		{"bad size", "[cellar]\nrepository = file:///r\n[main]\nupload_part_size = lots\n", nil, []string{"[main]", "upload_part_size"}},
		{"small size", "[cellar]\nrepository = file:///r\n[main]\nupload_part_size = 1MiB\n", nil, []string{"[main]", "upload_part_size", "below the minimum of 5MiB"}},
		{"bad enum", "[cellar]\nrepository = file:///r\n[main]\ncompression = lzma\n", nil, []string{"[main]", "compression", "zstd, s2, gzip, none"}},
		{"unknown scheme", "[main]\nrepository = ftp://host/x\n", nil, []string{"[main]", "repository", `unknown scheme "ftp"`}},
		{"relative file URL", "[main]\nrepository = file:relative\n", nil, []string{"[main]", "repository", "absolute path"}},
		{"no bucket", "[main]\nrepository = s3:///prefix\n", nil, []string{"[main]", "repository", "no bucket"}},
		{"no scheme", "[main]\nrepository = /var/lib/cellar\n", nil, []string{"[main]", "repository", "no scheme"}},
		{"bad endpoint", "[main]\nrepository = s3://b\ns3_endpoint = 127.0.0.1:9000\n", nil, []string{"[main]", "s3_endpoint", "http://"}},
		{"bad policy", "[main]\nrepository = s3://b\nretention_policy = KEEP 3\n", nil, []string{"[main]", "retention_policy", "REDUNDANCY n"}},
		{"bad orphan age", "[main]\nrepository = s3://b\norphan_age = soon\n", nil, []string{"[main]", "orphan_age", "1 DAYS"}},
		{"bad drill schedule", "[main]\nrepository = s3://b\ndrill_schedule = weekly\n", nil, []string{"[main]", "drill_schedule", "1 DAYS"}},
		{"bad drill maximum age", "[main]\nrepository = s3://b\ndrill_maximum_age = 0 DAYS\n", nil, []string{"[main]", "drill_maximum_age", "at least 1"}},
		{"empty drill query", "[main]\nrepository = s3://b\ndrill_query =\n", nil, []string{"[main]", "drill_query", "empty"}},
		{"relative drill directory", "[main]\nrepository = s3://b\ndrill_directory = drills\n", nil, []string{"[main]", "drill_directory", "absolute"}},
		{"bad drill timeout", "[main]\nrepository = s3://b\ndrill_timeout = forever\n", nil, []string{"[main]", "drill_timeout", "duration"}},
		{"bad WAL retention", "[main]\nrepository = s3://b\nwal_retention_policy = base\n", nil, []string{"[main]", "wal_retention_policy", "main"}},
		{"no repository", "[main]\ndescription = x\n", nil, []string{"[main]", "no repository"}},
		{"outside section", "parallel = 3\n[main]\nrepository = s3://b\n", nil, []string{"outside any section"}},
		{"bad env", "[main]\nrepository = s3://b\n", []string{"CELLAR_PARALLEL=many"}, []string{"environment CELLAR_PARALLEL", "parallel", `"many"`}},
		{"bad global", "[cellar]\nminimum_redundancy = -1\n", nil, []string{"[cellar]", "minimum_redundancy"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := write(t, dir, strings.ReplaceAll(c.name, " ", "_")+".conf", c.text)
			_, err := Load(path, c.env)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load = %v, want a configuration error", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if c.env == nil && !strings.Contains(msg, path) && c.name != "no repository" {
				t.Errorf("error %q does not name the file %s", msg, path)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestMissingExplicitFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.conf"), nil)
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "nope.conf") {
		t.Fatalf("Load of a missing --config file = %v", err)
	}
}

func TestEnvironmentOnly(t *testing.T) {
	dir := t.TempDir()
	c, err := load("", filepath.Join(dir, "none.conf"), filepath.Join(dir, "none.d"), []string{"CELLAR_REPOSITORY=gs://bucket/pg", "CELLAR_PARALLEL=2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Servers()) != 0 || len(c.Files) != 0 {
		t.Fatalf("servers %v, files %v", c.Servers(), c.Files)
	}
	s, err := c.Server("main")
	if err != nil {
		t.Fatal(err)
	}
	if s.Repository != "gs://bucket/pg" || s.Parallel != 2 || s.Name != "main" {
		t.Fatalf("server from the environment = %+v", s)
	}
	c, err = load("", filepath.Join(dir, "none.conf"), filepath.Join(dir, "none.d"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Server("main"); err == nil || !strings.Contains(err.Error(), "CELLAR_REPOSITORY") {
		t.Fatalf("server without any repository = %v", err)
	}
}

func TestDefaultFileAndDirectory(t *testing.T) {
	dir := t.TempDir()
	main := write(t, dir, "cellar.conf", "[cellar]\nrepository = file:///srv/cellar\n[main]\ndescription = one\n")
	write(t, dir, "cellar.d/b.conf", "[other]\nparallel = 3\n")
	write(t, dir, "cellar.d/a.conf", "[third]\ndescription = three\n")
	c, err := load("", main, filepath.Join(dir, "cellar.d"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Files) != 3 || !strings.HasSuffix(c.Files[1], "a.conf") {
		t.Fatalf("files = %v", c.Files)
	}
	o, err := c.Server("other")
	if err != nil || o.Parallel != 3 || o.Repository != "file:///srv/cellar" {
		t.Fatalf("other = %+v, %v", o, err)
	}
	write(t, dir, "cellar.d/c.conf", "[main]\ndescription = again\n")
	if _, err := load("", main, filepath.Join(dir, "cellar.d"), nil); err == nil || !strings.Contains(err.Error(), "already defined") {
		t.Fatalf("a server defined in two files = %v", err)
	}
}

func TestSizesAndPolicies(t *testing.T) {
	for in, want := range map[string]int64{"16MiB": 16 << 20, "64MB": 64 << 20, "1gib": 1 << 30, "512k": 512 << 10, "123": 123, "2 GiB": 2 << 30} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5GiB", "99999999999T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if FormatSize(16<<20) != "16MiB" || FormatSize(1000) != "1000" {
		t.Errorf("FormatSize: %s %s", FormatSize(16<<20), FormatSize(1000))
	}
	p, err := ParseRetentionPolicy("recovery window of 2 weeks")
	if err != nil || p.Window.Hours() != 14*24 {
		t.Errorf("window = %+v, %v", p, err)
	}
	p, err = ParseRetentionPolicy("REDUNDANCY 3")
	if err != nil || p.Redundancy != 3 {
		t.Errorf("redundancy = %+v, %v", p, err)
	}
	for _, in := range []string{"REDUNDANCY 0", "RECOVERY WINDOW OF 7 YEARS", "7 days"} {
		if _, err := ParseRetentionPolicy(in); err == nil {
			t.Errorf("ParseRetentionPolicy(%q) accepted", in)
		}
	}
}
