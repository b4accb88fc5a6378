package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Binaries are the programs of one PostgreSQL installation.
type Binaries struct {
	Dir     string
	Major   int
	Version string // as postgres --version gives it, e.g. "15.10"
}

// Path is the path of the program name in the installation.
func (b Binaries) Path(name string) string { return filepath.Join(b.Dir, name) }

// Has says whether the installation has the program name (pg_amcheck is
// packaged apart on some systems).
func (b Binaries) Has(name string) bool {
	fi, err := os.Stat(b.Path(name))
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// BinariesError says that no installation of the major version wanted was
// found: Dir is the directory that was named (empty when the usual places
// were searched), Found what the places searched hold.
type BinariesError struct {
	Major int
	Dir   string
	Found []string
}

func (e *BinariesError) Error() string {
	where := "in pg_config's directory or the usual places"
	if e.Dir != "" {
		where = "in " + e.Dir
	}
	msg := fmt.Sprintf("no PostgreSQL %d binaries %s", e.Major, where)
	if len(e.Found) > 0 {
		msg += " (found " + strings.Join(e.Found, ", ") + ")"
	}
	return msg
}

var versionRe = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

// binariesIn reads the version of the postgres program in dir.
func binariesIn(ctx context.Context, dir string) (Binaries, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return Binaries{}, err
	}
	m := versionRe.FindStringSubmatch(string(out))
	if m == nil {
		return Binaries{}, fmt.Errorf("%s/postgres --version says %q", dir, strings.TrimSpace(string(out)))
	}
	major, _ := strconv.Atoi(m[1])
	v := m[1]
	if m[2] != "" {
		v += "." + m[2]
	}
	return Binaries{Dir: dir, Major: major, Version: v}, nil
}

// FindBinaries finds the programs of PostgreSQL's major version: in dir
// when it is set, otherwise in the directory pg_config names, then in the
// places distributions install them (Debian's /usr/lib/postgresql/N/bin,
// the PGDG RPMs' /usr/pgsql-N/bin, a source build's /usr/local/pgsql/bin,
// Homebrew's), then beside a postgres on PATH. The error is a
// *BinariesError.
func FindBinaries(ctx context.Context, dir string, major int) (Binaries, error) {
	var dirs []string
	if dir != "" {
		dirs = []string{dir}
	} else {
		if cfg, err := exec.LookPath("pg_config"); err == nil {
			if out, err := exec.CommandContext(ctx, cfg, "--bindir").Output(); err == nil {
				dirs = append(dirs, strings.TrimSpace(string(out)))
			}
		}
		dirs = append(dirs,
			fmt.Sprintf("/usr/lib/postgresql/%d/bin", major),
			fmt.Sprintf("/usr/pgsql-%d/bin", major),
			"/usr/local/pgsql/bin",
			fmt.Sprintf("/opt/homebrew/opt/postgresql@%d/bin", major),
			fmt.Sprintf("/usr/local/opt/postgresql@%d/bin", major))
		if p, err := exec.LookPath("postgres"); err == nil {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	e := &BinariesError{Major: major, Dir: dir}
	seen := map[string]bool{}
	for _, d := range dirs {
		if d == "" || seen[d] {
			continue
		}
		seen[d] = true
		b, err := binariesIn(ctx, d)
		switch {
		case err == nil && b.Major == major:
			return b, nil
		case err == nil:
			e.Found = append(e.Found, fmt.Sprintf("PostgreSQL %s in %s", b.Version, d))
		case dir != "":
			e.Found = append(e.Found, fmt.Sprintf("%s: %v", d, oneLineErr(err)))
		}
	}
	return Binaries{}, e
}

func oneLineErr(err error) string {
	var ee *exec.Error
	if errors.As(err, &ee) {
		err = ee.Err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// ServerOptions start a postmaster.
type ServerOptions struct {
	Bin     Binaries
	DataDir string
	// Settings are given on the command line (-c name=value): they win
	// over postgresql.conf and postgresql.auto.conf.
	Settings [][2]string
	// Env is the environment (restore_command runs in it).
	Env []string
	// LogFile receives the server's output (logging_collector off).
	LogFile string
	// Owner is the user to run as; nil runs as this process.
	Owner *Owner
}

// Owner is a user and group to run a program as.
type Owner struct{ UID, GID int }

// Server is a postmaster started by StartServer.
type Server struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// StartServer starts postgres on a data directory and returns at once;
// the server is ready when it accepts connections. On Linux it receives
// SIGQUIT (an immediate shutdown) when this process dies.
func StartServer(o ServerOptions) (*Server, error) {
	args := []string{"-D", o.DataDir}
	for _, kv := range o.Settings {
		args = append(args, "-c", kv[0]+"="+kv[1])
	}
	log, err := os.OpenFile(o.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(o.Bin.Path("postgres"), args...)
	cmd.Env = o.Env
	cmd.Dir = o.DataDir
	cmd.Stdout, cmd.Stderr = log, log
	if cmd.SysProcAttr, err = serverProcAttr(o.Owner); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{cmd: cmd, exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	return s, nil
}

// Exited is closed when the postmaster has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// ExitError is how the postmaster exited, once Exited is closed.
func (s *Server) ExitError() error { return s.err }

// Stop shuts the server down: fast (SIGINT: a shutdown checkpoint or
// restartpoint, the data directory left clean), and immediate (SIGQUIT)
// when that takes longer than timeout.
func (s *Server) Stop(timeout time.Duration) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
		return nil
	case <-time.After(timeout):
	}
	s.Kill()
	return fmt.Errorf("PostgreSQL did not shut down within %s and was stopped immediately", timeout)
}

// Kill stops the server immediately (SIGQUIT) and waits for it.
func (s *Server) Kill() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// StopStale stops immediately a postmaster left running on dataDir (by a
// process that was killed), as its postmaster.pid names it, and waits a
// while for it to exit. It does nothing when none runs.
func StopStale(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		return
	}
	// Only a postgres whose working directory is dataDir.
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || filepath.Clean(cwd) != filepath.Clean(dataDir) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
