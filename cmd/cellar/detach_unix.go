//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
)

// detachPrefetch returns wal-fetch's FetchOptions.Detach: it starts
// `cellar wal-prefetch` in a session of its own, with no terminal and no
// output, and does not wait for it, so that the restore_command returns
// while the next segments download. It is nil (prefetch in the call) when
// this process is not the cellar binary run from main, as in tests that
// call run directly.
func (st *state) detachPrefetch(c *cli.Context, server, dest string) func([]string) (int, error) {
	if selfExe == "" {
		return nil
	}
	return func(names []string) (int, error) {
		args := append([]string{"wal-prefetch", server, dest}, names...)
		cmd, err := st.detach(c, args, "")
		if err != nil {
			return 0, err
		}
		pid := cmd.Process.Pid
		return pid, cmd.Process.Release()
	}
}

// detach starts this binary with the same configuration and args in a
// session of its own (it outlives this process), its output appended to
// logPath or discarded. The caller waits for it or releases it.
func (st *state) detach(c *cli.Context, args []string, logPath string) (*exec.Cmd, error) {
	if selfExe == "" {
		return nil, errors.New("not running as the cellar binary")
	}
	if p := c.String("config"); p != "" {
		args = append([]string{"--config", p}, args...)
	}
	cmd := exec.Command(selfExe, args...)
	cmd.Env = st.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if logPath != "" {
		// The log is shared by every user whose cron starts
		// receive-wal: it is made as lock files are.
		f, writable, err := lockfile.OpenShared(logPath, os.O_WRONLY|os.O_APPEND)
		if err != nil {
			return nil, lockDirError(err)
		}
		if !writable {
			f.Close()
			return nil, fmt.Errorf("the log %s belongs to another user and this user (uid %d) may not write it: remove it, or run cron as one user", logPath, os.Geteuid())
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	return cmd, cmd.Start()
}
