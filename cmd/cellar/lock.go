package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
)

// A server lock is a file in lock_directory held with flock(2): the
// kernel releases it when the holder exits, however it exits, so a killed
// run never blocks the next one. The file records the holder, for the
// message that refuses a second run.

// lockHolder is what a lock file records about its holder.
type lockHolder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
	Backup  string    `json:"backup,omitempty"`
}

type serverLock struct {
	fl     *flock.Flock
	holder lockHolder
}

func lockPath(srv *config.Server, what string) string {
	return filepath.Join(srv.LockDirectory, fmt.Sprintf("cellar-%s.%s.lock", srv.Name, what))
}

// lockServer takes the server's lock for what (e.g. "backup") or says who
// holds it.
func lockServer(srv *config.Server, what string) (*serverLock, error) {
	path := lockPath(srv, what)
	if err := os.MkdirAll(srv.LockDirectory, 0o755); err != nil {
		return nil, fmt.Errorf("lock_directory %s: %w", srv.LockDirectory, err)
	}
	fl := flock.New(path)
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("taking the lock %s: %w (check lock_directory)", path, err)
	}
	if !ok {
		msg := fmt.Sprintf("another %s of server %s is running", what, srv.Name)
		if h, err := readHolder(path); err == nil {
			msg += fmt.Sprintf(" (pid %d on %s, since %s", h.PID, h.Host, h.Since.Format(time.RFC3339))
			if h.Backup != "" {
				msg += ", backup " + h.Backup
			}
			msg += ")"
		}
		return nil, errors.New(msg + ": wait for it to finish, or stop it")
	}
	host, _ := os.Hostname()
	l := &serverLock{fl: fl, holder: lockHolder{PID: os.Getpid(), Host: host, Command: what, Since: time.Now().UTC()}}
	l.write()
	return l, nil
}

func (l *serverLock) write() {
	js, _ := json.Marshal(l.holder)
	f, err := os.OpenFile(l.fl.Path(), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return
	}
	_, _ = f.Write(append(js, '\n'))
	_ = f.Close()
}

// setBackup records the id of the backup the holder runs.
func (l *serverLock) setBackup(id string) {
	l.holder.Backup = id
	l.write()
}

func (l *serverLock) release() { _ = l.fl.Unlock() }

func readHolder(path string) (lockHolder, error) {
	var h lockHolder
	js, err := os.ReadFile(path)
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(js, &h)
}

// runningBackup returns the id of the backup of srv that a live process on
// this host runs, or "" when none does.
func runningBackup(srv *config.Server) string {
	h, ok := lockHolderOf(srv, "backup")
	if !ok {
		return ""
	}
	return h.Backup
}

// lockHolderOf says whether a live process on this host holds the
// server's lock for what, and who.
func lockHolderOf(srv *config.Server, what string) (lockHolder, bool) {
	path := lockPath(srv, what)
	fl := flock.New(path)
	ok, err := fl.TryRLock()
	if err != nil {
		return lockHolder{}, false
	}
	if ok {
		_ = fl.Unlock()
		return lockHolder{}, false
	}
	h, err := readHolder(path)
	return h, err == nil
}
