//go:build linux && !race

package main

import (
	"syscall"
	"unsafe"
)

// rawIO reads or writes (trap) the non-blocking socket fd, without telling
// the scheduler: the call never blocks, and syscall.Read and Write, which
// tell it, also wake its monitor thread whenever the process was idle
// (runtime.entersyscall), which under a stream of events costs more than
// the call itself. Built with the race detector, rawIO is syscall.Read's
// or Write's (rawio_syscall_race_linux.go).
func rawIO(trap uintptr, fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}
