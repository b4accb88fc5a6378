//go:build unix

package main

import (
	"errors"
	"os"
	"os/exec"
	"syscall"

	"github.com/urfave/cli/v2"
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
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	return cmd, cmd.Start()
}
