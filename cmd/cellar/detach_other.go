//go:build !unix

package main

import (
	"errors"
	"os/exec"

	"github.com/urfave/cli/v2"
)

func (st *state) detachPrefetch(*cli.Context, string, string) func([]string) (int, error) { return nil }

func (st *state) detach(*cli.Context, []string, string) (*exec.Cmd, error) {
	return nil, errors.New("starting a detached process is supported on Unix only")
}
