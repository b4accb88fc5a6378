package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
)

// A server lock is a file cellar-SERVER.WHAT.lock in lock_directory (see
// package lockfile for who may create, take and look at it).

type serverLock struct{ l *lockfile.Lock }

func lockName(srv *config.Server, what string) string {
	return fmt.Sprintf("cellar-%s.%s.lock", srv.Name, what)
}

func lockPath(srv *config.Server, what string) string {
	return filepath.Join(srv.LockDirectory, lockName(srv, what))
}

// errBusy marks the error of a lock that another process holds.
var errBusy = errors.New("busy")

type busyError struct{ msg string }

func (e *busyError) Error() string   { return e.msg }
func (e *busyError) Is(t error) bool { return t == errBusy }

// lockServer takes the server's lock for what (e.g. "backup"), or says
// who holds it (an error that is errBusy) or what is wrong with
// lock_directory.
func lockServer(srv *config.Server, what string) (*serverLock, error) {
	l, err := lockfile.Take(srv.LockDirectory, lockName(srv, what), lockfile.Holder{Command: what})
	var held *lockfile.HeldError
	switch {
	case errors.As(err, &held):
		msg := fmt.Sprintf("another %s of server %s is running", what, srv.Name)
		if held.Holder != nil {
			msg += " (" + held.Error() + ")"
		}
		return nil, &busyError{msg + ": wait for it to finish, or stop it"}
	case err != nil:
		return nil, lockDirError(err)
	}
	return &serverLock{l}, nil
}

// lockDirError names the setting in an error about the lock directory.
func lockDirError(err error) error {
	var d *lockfile.DirError
	if errors.As(err, &d) {
		return fmt.Errorf("lock_directory %w", d)
	}
	return fmt.Errorf("%w (check lock_directory)", err)
}

// setBackup records the id of the backup the holder runs.
func (l *serverLock) setBackup(id string) { l.l.SetBackup(id) }

func (l *serverLock) release() { l.l.Release() }

// runningBackup returns the id of the backup of srv that a live process on
// this host runs, or "" when none does.
func runningBackup(srv *config.Server) string {
	if h, ok := lockHolderOf(srv, "backup"); ok && h != nil {
		return h.Backup
	}
	return ""
}

// lockHolderOf says whether a live process on this host holds the
// server's lock for what, and who (nil when the file does not say). It
// never creates the lock file.
func lockHolderOf(srv *config.Server, what string) (*lockfile.Holder, bool) {
	return lockfile.Look(srv.LockDirectory, lockName(srv, what))
}
