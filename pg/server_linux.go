package pg

import "syscall"

// serverProcAttr runs the postmaster as owner, and has it stopped
// immediately should this process die.
func serverProcAttr(owner *Owner) (*syscall.SysProcAttr, error) {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT}
	if owner != nil {
		a.Credential = &syscall.Credential{Uid: uint32(owner.UID), Gid: uint32(owner.GID)}
	}
	return a, nil
}
