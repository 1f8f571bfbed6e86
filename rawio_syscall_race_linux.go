//go:build linux && race

package main

import "syscall"

// rawIO, built with the race detector, makes the same system call through
// syscall.Read or Write, which tell the detector that what a goroutine did
// before a write happened before what another does after a read (their
// ioSync): the tests' goroutines order their work by the bytes they send
// each other through the proxy, and a raw call would hide that order from
// the detector, which would then report races that cannot happen.
func rawIO(trap uintptr, fd uintptr, p []byte) (int, syscall.Errno) {
	var n int
	var err error
	if trap == syscall.SYS_READ {
		n, err = syscall.Read(int(fd), p)
	} else {
		n, err = syscall.Write(int(fd), p)
	}
	errno, _ := err.(syscall.Errno)
	return n, errno
}
