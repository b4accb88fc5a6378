package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// cellarBin is the binary built once for these tests, run as a user runs it.
var cellarBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cellar-cli-test")
	if err != nil {
		panic(err)
	}
	// PostgreSQL, running as an ordinary user, runs this binary from
	// archive_command: the directory must be open to it.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	cellarBin = filepath.Join(dir, "cellar")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=1.2.3-test -X main.commit=abc123", "-o", cellarBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cellar:", err)
		os.Exit(1)
	}
	before := tmpLeftovers()
	code := m.Run()
	os.RemoveAll(dir)
	// The tests use private lock directories: nothing of Cellar's may be
	// left in /tmp, where it would stand in the way of another user.
	for _, p := range tmpLeftovers() {
		if !slices.Contains(before, p) {
			fmt.Fprintln(os.Stderr, "the tests left", p, "behind: give the test a private lock_directory")
			code = 1
		}
	}
	os.Exit(code)
}

// tmpLeftovers lists what Cellar's default lock_directory holds.
func tmpLeftovers() []string {
	m, _ := filepath.Glob("/tmp/cellar-*.lock")
	l, _ := filepath.Glob("/tmp/cellar-*.log")
	return append(m, l...)
}

// openTempDir makes a temporary directory outside the test's own (which
// only root may enter), open to PostgreSQL's user, who may run a server or
// archive_command on what is in it, and removed when the test ends.
func openTempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sharedTemp makes dir a directory every user may create files in, as
// /tmp (mode 1777), and returns it.
func sharedTemp(t *testing.T, dir string) string {
	t.Helper()
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// cellar runs the binary with a clean environment plus env.
func cellar(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(cellarBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running cellar: %v", err)
	}
	return r
}

// killWhen runs cellar with args and kills it (SIGKILL) as soon as a file
// matching glob exists; the test fails with never when none does within
// limit.
func killWhen(t *testing.T, env []string, glob string, limit time.Duration, never string, args ...string) {
	t.Helper()
	cmd := exec.Command(cellarBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	deadline := time.Now().Add(limit)
	for {
		if found, _ := filepath.Glob(glob); len(found) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(never)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	if strings.HasPrefix(text, "[cellar]\n") && !strings.Contains(text, "lock_directory") {
		text = "[cellar]\nlock_directory = " + t.TempDir() + "\n" + strings.TrimPrefix(text, "[cellar]\n")
	}
	p := filepath.Join(t.TempDir(), "cellar.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	r := cellar(t, nil, "--version")
	if r.code != 0 || !strings.Contains(r.stdout, "1.2.3-test") || !strings.Contains(r.stdout, "abc123") {
		t.Fatalf("--version = %+v", r)
	}
}

func TestListAndShowServers(t *testing.T) {
	cfg := writeConfig(t, `
[cellar]
repository = file:///srv/cellar
[main]
description = "Main PostgreSQL server"
conninfo = host=/tmp user=postgres password=hunter2-secret
[old]
description = Retired
active = off
azure_key = azure-key-secret
`)
	r := cellar(t, nil, "--config", cfg, "list-servers")
	if r.code != 0 || r.stdout != "main - Main PostgreSQL server\nold - Retired (inactive)\n" {
		t.Fatalf("list-servers = %+v", r)
	}
	r = cellar(t, nil, "--config", cfg, "--format", "json", "list-servers")
	var servers []struct {
		Name   string `json:"name"`
		Active bool   `json:"active"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &servers); err != nil || len(servers) != 2 || servers[1].Active {
		t.Fatalf("list-servers json = %s (%v)", r.stdout, err)
	}
	// CELLAR_CONFIG works like --config.
	r = cellar(t, []string{"CELLAR_CONFIG=" + cfg}, "show-server", "main")
	if r.code != 0 || !strings.Contains(r.stdout, "repository: file:///srv/cellar") || !strings.Contains(r.stdout, "password=***") {
		t.Fatalf("show-server = %+v", r)
	}
	r = cellar(t, nil, "show-server", "old", "--config", cfg, "--format", "json")
	var shown map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil || shown["azure_key"] != "***" || shown["active"] != "off" {
		t.Fatalf("show-server json = %s (%v)", r.stdout, err)
	}
	for _, secret := range []string{"hunter2-secret", "azure-key-secret"} {
		for _, srv := range []string{"main", "old"} {
			for _, f := range []string{"text", "json"} {
				r := cellar(t, nil, "--config", cfg, "--format", f, "show-server", srv)
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Fatalf("show-server %s --format %s printed a secret", srv, f)
				}
			}
		}
	}
	r = cellar(t, nil, "--config", cfg, "show-server", "nope")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown server "nope"`) {
		t.Fatalf("show-server of an unknown server = %+v", r)
	}
}

func TestCheckFileRepository(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	cfg := writeConfig(t, "[main]\nrepository = file://"+repo+"\n")
	r := cellar(t, nil, "--config", cfg, "check", "main")
	want := "configuration: OK\nrepository reachable: OK\nrepository writable: OK\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("check = %+v", r)
	}
	// The probe object is gone afterwards.
	_ = filepath.WalkDir(repo, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("check left %s behind", p)
		}
		return nil
	})
	r = cellar(t, nil, "--config", cfg, "check", "main", "--nagios")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "CELLAR OK") {
		t.Fatalf("check --nagios = %+v", r)
	}
	r = cellar(t, nil, "--config", cfg, "--format", "json", "check", "main")
	var js struct {
		Status string `json:"status"`
		Checks []struct{ Name, Status string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || js.Status != "OK" || len(js.Checks) != 3 {
		t.Fatalf("check json = %s (%v)", r.stdout, err)
	}

	// A repository path that is a regular file cannot be used.
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = writeConfig(t, "[main]\nrepository = file://"+file+"\n")
	r = cellar(t, nil, "--config", cfg, "check", "main")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "configuration: OK\nrepository reachable: FAILED (") || strings.Count(r.stdout, "FAILED") != 1 {
		t.Fatalf("check of an unusable repository = %+v", r)
	}
	r = cellar(t, nil, "--config", cfg, "check", "main", "--nagios")
	if r.code != 2 || !strings.HasPrefix(r.stdout, "CELLAR CRITICAL") {
		t.Fatalf("check --nagios of an unusable repository = %+v", r)
	}
}

func TestEnvironmentOnlyServer(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	// No configuration file: CELLAR_CONFIG points nowhere is an error, but
	// with no file at all the environment is enough. The default path
	// /etc/cellar.conf must not exist on the test machine for this part.
	if _, err := os.Stat("/etc/cellar.conf"); err == nil {
		t.Fatal("/etc/cellar.conf exists on this machine; remove it to run the tests")
	}
	r := cellar(t, []string{"CELLAR_REPOSITORY=file://" + repo}, "check", "pg1")
	if r.code != 0 {
		t.Fatalf("check from the environment = %+v", r)
	}
	r = cellar(t, []string{"CELLAR_CONFIG=/nonexistent/cellar.conf"}, "check", "pg1")
	if r.code != 2 || !strings.Contains(r.stdout, "configuration: FAILED (configuration file /nonexistent/cellar.conf") {
		t.Fatalf("check with a missing CELLAR_CONFIG = %+v", r)
	}
}

func TestConfigurationErrorsExit2(t *testing.T) {
	for _, c := range []struct {
		name, text string
		env        []string
		want       string
	}{
		{"unknown setting", "[main]\nrepository = file:///r\nparalell = 3\n", nil, "[main] paralell: unknown setting"},
		{"unknown scheme", "[main]\nrepository = ftp://x/y\n", nil, `unknown scheme "ftp"`},
		{"malformed URL", "[main]\nrepository = s3://bu cket/x\n", nil, "repository"},
		{"bad number", "[main]\nrepository = file:///r\nparallel = lots\n", nil, `parallel: "lots" is not a whole number`},
		{"bad env number", "[main]\nrepository = file:///r\n", []string{"CELLAR_PARALLEL=-3"}, "environment CELLAR_PARALLEL: parallel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, c.text)
			for _, args := range [][]string{{"list-servers"}, {"show-server", "main"}} {
				r := cellar(t, c.env, append([]string{"--config", cfg}, args...)...)
				lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
				if r.code != 2 || len(lines) != 1 || !strings.Contains(r.stderr, c.want) {
					t.Fatalf("%v: exit %d, stderr %q; want exit 2 and one line containing %q", args, r.code, r.stderr, c.want)
				}
				if c.env == nil && !strings.Contains(r.stderr, cfg) {
					t.Fatalf("%v: error %q does not name the file", args, r.stderr)
				}
			}
			r := cellar(t, c.env, "--config", cfg, "check", "main")
			if r.code != 2 || !strings.Contains(r.stdout, "configuration: FAILED (") {
				t.Fatalf("check: %+v", r)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"no-such-command"},
		{"check"},
		{"show-server"},
		{"check", "a", "b"},
		{"--format", "yaml", "list-servers"},
		{"check", "main", "--no-such-flag"},
	} {
		r := cellar(t, []string{"CELLAR_REPOSITORY=file:///tmp/x"}, args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, "cellar: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and a cellar: line", args, r.code, r.stderr)
		}
	}
}
