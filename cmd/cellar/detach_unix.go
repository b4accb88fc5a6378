//go:build unix

package main

import (
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
		var args []string
		if p := c.String("config"); p != "" {
			args = append(args, "--config", p)
		}
		args = append(args, "wal-prefetch", server, dest)
		args = append(args, names...)
		cmd := exec.Command(selfExe, args...)
		cmd.Env = st.env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		pid := cmd.Process.Pid
		return pid, cmd.Process.Release()
	}
}
