// Command cellar is a backup and recovery manager for PostgreSQL that keeps
// WAL and base backups in S3, Google Cloud Storage, Azure Blob Storage or a
// local directory.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

// Exit codes. Only main decides them.
const (
	exitOK      = 0
	exitFailure = 1 // the operation failed, or a check did not pass
	exitUsage   = 2 // bad command line or configuration
)

// selfExe is the path of this binary when it runs from main, for the
// processes it starts of itself (wal-fetch's detached prefetch).
var selfExe string

func main() {
	selfExe, _ = os.Executable()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := startProfile(os.Getenv("CELLAR_CPUPROFILE"))
	code := run(ctx, os.Args, os.Environ(), os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(code)
}

// startProfile writes a CPU profile of the whole call to path, for
// measuring one short process call (CELLAR_CPUPROFILE, a developer aid).
func startProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cellar: CELLAR_CPUPROFILE: "+err.Error())
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) int {
	st := &state{env: env, stdout: stdout, stderr: stderr}
	app := newApp(st)
	err := app.RunContext(ctx, interspersed(app, args))
	if err == nil {
		return exitOK
	}
	var ec exitCoder
	if errors.As(err, &ec) && ec.Silent() {
		return ec.ExitCode()
	}
	fmt.Fprintln(stderr, "cellar: "+st.scrub(oneLine(err.Error())))
	switch {
	case errors.As(err, &ec):
		return ec.ExitCode()
	case isUsage(err):
		return exitUsage
	}
	return exitFailure
}

// exitCoder is an error that carries its exit code; a silent one has
// already said what it had to say.
type exitCoder interface {
	error
	ExitCode() int
	Silent() bool
}

type exitError struct {
	code   int
	silent bool
	err    error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }
func (e *exitError) Silent() bool  { return e.silent }

// usageError marks a bad command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

func isUsage(err error) bool {
	var ue *usageError
	var ce *config.Error
	return errors.As(err, &ue) || errors.As(err, &ce)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// versionString is what --version prints.
func versionString() string {
	v, c := version, commit
	if c == "" {
		if info, ok := debug.ReadBuildInfo(); ok {
			dirty := ""
			for _, s := range info.Settings {
				switch s.Key {
				case "vcs.revision":
					c = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						dirty = "-dirty"
					}
				}
			}
			if len(c) > 12 {
				c = c[:12]
			}
			if c != "" {
				c += dirty
			}
		}
	}
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("%s (commit %s)", v, c)
}
