//go:build !linux

package pg

import (
	"errors"
	"syscall"
)

// serverProcAttr runs the postmaster as this process: running it as
// another user is done on Linux only.
func serverProcAttr(owner *Owner) (*syscall.SysProcAttr, error) {
	if owner != nil {
		return nil, errors.New("starting PostgreSQL as another user is supported on Linux only: run cellar as PostgreSQL's user")
	}
	return nil, nil
}
