// Package lockfile is Cellar's host-level locks: one file per server and
// job in a lock directory, held with flock(2). The kernel releases a lock
// when its holder exits, however it exits, so a killed run never blocks
// the next one, and lock files are never removed.
//
// Several users run Cellar on one host (PostgreSQL's user runs backups,
// root or a monitoring user runs check), so the files obey these rules:
//
//   - Looking at a lock (Look) never creates it, and holds a shared lock
//     for a moment only; taking one (Take) retries for a little while, so
//     that a look never makes a job fail.
//   - A lock file is created with O_EXCL and then given, whatever the
//     umask, read and write to every class of user (owner, group, others)
//     that may write the directory, and read to every class that may only
//     read it: in the sticky /tmp every user can lock it, in a directory
//     of mode 2770 the group can, and nobody else.
//   - An existing file is opened without O_CREAT (so that fs.protected_regular
//     does not refuse another user's file in a sticky directory), for reading
//     and writing if it may be, else for reading: flock needs no more. Only
//     the holder's record is then not written.
//
// Shared files that are not locks, such as the log of a detached
// receive-wal in the same directory, are created by the same rule
// (OpenShared).
package lockfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Holder is what a lock file records about the process that holds it.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
	UID     int       `json:"uid"`
	Backup  string    `json:"backup,omitempty"`
}

// HeldError is Take's error when another process holds the lock. Holder
// is nil when the file does not say who (it is being written, or was left
// by a version that recorded nothing).
type HeldError struct {
	Path   string
	Holder *Holder
}

func (e *HeldError) Error() string {
	if e.Holder == nil {
		return "the lock " + e.Path + " is held by another process"
	}
	h := e.Holder
	s := fmt.Sprintf("pid %d on %s, since %s", h.PID, h.Host, h.Since.Format(time.RFC3339))
	if h.Backup != "" {
		s += ", backup " + h.Backup
	}
	return s
}

// DirError says that the lock directory cannot hold locks: it does not
// exist, is not a directory, cannot be written, or is on a filesystem
// without flock support. Fix says what to do.
type DirError struct {
	Dir string
	Err error
	Fix string
}

func (e *DirError) Error() string { return e.Dir + " " + e.Err.Error() + ": " + e.Fix }
func (e *DirError) Unwrap() error { return e.Err }

var (
	errNoDir  = errors.New("does not exist")
	errNotDir = errors.New("is not a directory")
	// ErrNotWritable is the DirError of a directory this user may not
	// create files in (others may).
	ErrNotWritable = errors.New("is not writable by this user")
	errNoFlock     = errors.New("is on a filesystem without flock(2) locks")
)

// CheckDir says whether dir can hold the lock files of a user that must
// create them: it exists, is a directory, and this user may create files
// in it. A nil error does not prove flock support, which only Take finds.
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &DirError{dir, errNoDir, "create it (mode 1777 as /tmp, or 2770 owned by a group of every user who runs cellar) or set it to a directory that exists"}
	case err != nil:
		return &DirError{dir, err, "make it reachable by every user who runs cellar"}
	case !fi.IsDir():
		return &DirError{dir, errNotDir, "set it to a directory"}
	}
	if unix.Access(dir, unix.W_OK|unix.X_OK) != nil {
		return &DirError{dir, ErrNotWritable, fmt.Sprintf("give it mode 1777, or 2770 with a group this user (uid %d) is in", os.Geteuid())}
	}
	return nil
}

// retryFor is how long Take retries a lock that is held: long enough for a
// Look (which holds a shared lock for a moment) to let go.
const retryFor = 2 * time.Second

// Lock is a held lock.
type Lock struct {
	f        *os.File
	writable bool
	holder   Holder
}

// Take takes the lock file name in dir for the process described by h
// (PID, host, time and UID are filled in), or returns a *HeldError naming
// the holder, or a *DirError when dir cannot hold locks.
func Take(dir, name string, h Holder) (*Lock, error) {
	path := filepath.Join(dir, name)
	f, writable, err := OpenShared(path, os.O_RDWR)
	if err != nil {
		if d := dirProblem(dir); d != nil {
			return nil, d
		}
		if errors.Is(err, fs.ErrPermission) {
			owner := "another user"
			if fi, serr := os.Stat(path); serr == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					owner = fmt.Sprintf("uid %d", st.Uid)
				}
			}
			return nil, fmt.Errorf("the lock file %s belongs to %s and this user (uid %d) may not open it (an earlier version of Cellar made it private): remove it once, while no cellar runs", path, owner, os.Geteuid())
		}
		return nil, err
	}
	if writable {
		heal(f, dir)
	}
	deadline := time.Now().Add(retryFor)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			if noFlock(err) {
				return nil, &DirError{dir, errNoFlock, "set it to a directory on a local filesystem"}
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			held := &HeldError{Path: path}
			if hh, rerr := readHolder(f); rerr == nil {
				held.Holder = &hh
			}
			f.Close()
			return nil, held
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h.PID == 0 {
		h.PID = os.Getpid()
	}
	if h.Host == "" {
		h.Host, _ = os.Hostname()
	}
	if h.Since.IsZero() {
		h.Since = time.Now().UTC()
	}
	h.UID = os.Geteuid()
	l := &Lock{f: f, writable: writable, holder: h}
	l.record()
	return l, nil
}

// SetBackup records the id of the backup the holder runs.
func (l *Lock) SetBackup(id string) {
	l.holder.Backup = id
	l.record()
}

// Release lets the lock go. The file stays for the next run.
func (l *Lock) Release() {
	if l.writable {
		_ = l.f.Truncate(0)
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	_ = l.f.Close()
}

// record writes the holder into the file, when this user may. The record
// is only for messages: a failure to write it is no failure of the lock.
func (l *Lock) record() {
	if !l.writable {
		return
	}
	js, _ := json.Marshal(l.holder)
	_ = l.f.Truncate(0)
	_, _ = l.f.WriteAt(append(js, '\n'), 0)
}

// Look says whether a live process holds the lock file name in dir, and
// who, when the file says. It never creates the file: a lock nobody took
// is not held.
func Look(dir, name string) (*Holder, bool) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return nil, false
	} else if !errors.Is(err, unix.EWOULDBLOCK) {
		return nil, false
	}
	if h, err := readHolder(f); err == nil {
		return &h, true
	}
	return nil, true
}

func readHolder(f *os.File) (Holder, error) {
	var h Holder
	js, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<16))
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(js, &h)
}

// OpenShared opens path for flag (os.O_RDWR, os.O_WRONLY|os.O_APPEND, ...),
// creating it by the rule of the package: without O_CREAT when it exists,
// else with O_EXCL and the mode its directory allows. It falls back to
// read-only when the file exists but may not be written.
func OpenShared(path string, flag int) (*os.File, bool, error) {
	flag |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	for range 3 {
		f, err := os.OpenFile(path, flag, 0)
		if err == nil {
			return f, true, nil
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, fs.ErrExist) {
				continue // another process made it a moment ago
			}
			if err != nil {
				return nil, false, err
			}
			if err := f.Chmod(sharedMode(filepath.Dir(path))); err != nil {
				f.Close()
				return nil, false, err
			}
			return f, true, nil
		case errors.Is(err, fs.ErrPermission):
			ro, rerr := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if rerr != nil {
				return nil, false, err
			}
			return ro, false, nil
		default:
			return nil, false, err
		}
	}
	return nil, false, fmt.Errorf("opening %s: it keeps appearing and vanishing", path)
}

// sharedMode is the mode of a file created in dir: read and write for each
// class of user that may write dir, read for each that may only read it.
func sharedMode(dir string) fs.FileMode {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0o600
	}
	d := fi.Mode().Perm()
	m := fs.FileMode(0o600)
	for _, shift := range []uint{3, 0} { // group, others
		switch {
		case d&(0o2<<shift) != 0 && d&(0o1<<shift) != 0:
			m |= 0o6 << shift
		case d&(0o4<<shift) != 0 && d&(0o1<<shift) != 0:
			m |= 0o4 << shift
		}
	}
	return m
}

// heal widens the mode of a lock file that an earlier version made
// private (0600) to what its directory allows, when this user may: after
// one run by the file's owner or root, the other users can use it too.
func heal(f *os.File, dir string) {
	fi, err := f.Stat()
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (int(st.Uid) != os.Geteuid() && os.Geteuid() != 0) {
		return
	}
	if want := sharedMode(dir); fi.Mode().Perm()|want != fi.Mode().Perm() {
		_ = f.Chmod(fi.Mode().Perm() | want)
	}
}

// dirProblem returns the *DirError of dir, if it has one.
func dirProblem(dir string) error {
	var d *DirError
	if err := CheckDir(dir); errors.As(err, &d) {
		return d
	}
	return nil
}

func noFlock(err error) bool {
	return errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)
}
