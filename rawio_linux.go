package main

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// canRawIO: RAW_IO applies (rawio.go).
const canRawIO = true

// rawTCPConn is a TCP connection whose Read and Write make raw system
// calls (rawSock); everything else is net.TCPConn's.
type rawTCPConn struct {
	*net.TCPConn
	s *rawSock
}

func (c *rawTCPConn) Read(p []byte) (int, error)  { return c.s.read(c.TCPConn, p) }
func (c *rawTCPConn) Write(p []byte) (int, error) { return c.s.write(c.TCPConn, p) }

// rawTCP returns c as a rawTCPConn if it is a TCP connection, else c.
func rawTCP(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawTCPConn{TCPConn: tc, s: newRawSock(raw)}
}

// SyscallConn returns the RawConn c's own reads and writes go through, so
// that those who take one (a raw stream, its watcher, dialUp's upConn)
// share it rather than each make another.
func (c *rawTCPConn) SyscallConn() (syscall.RawConn, error) { return c.s.raw, nil }

// rawSock reads and writes a non-blocking socket with rawIO, waiting for
// readiness, and failing at a deadline or a close, through its RawConn.
// One read and one write may run at once, as on a net.Conn.
type rawSock struct {
	raw  syscall.RawConn
	r, w rawDir
}

// rawDir is one direction of a rawSock: its call's arguments and results
// live here, under mu, so that the callback RawConn takes (fn) is made
// once per connection, not per call.
type rawDir struct {
	mu    sync.Mutex
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newRawSock(raw syscall.RawConn) *rawSock {
	s := &rawSock{raw: raw}
	s.r.fn, s.w.fn = s.r.readOnce, s.w.writeAll
	return s
}

// readOnce reads once into p; false (wait) if the socket is empty.
func (d *rawDir) readOnce(fd uintptr) bool {
	for {
		n, errno := rawIO(syscall.SYS_READ, fd, d.p)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			d.n = n
		default:
			d.errno = errno
		}
		return true
	}
}

// writeAll writes p from n on; false (wait) when the socket is full.
func (d *rawDir) writeAll(fd uintptr) bool {
	for d.n < len(d.p) {
		n, errno := rawIO(syscall.SYS_WRITE, fd, d.p[d.n:])
		switch errno {
		case 0:
			d.n += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			d.errno = errno
			return true
		}
	}
	return true
}

// do runs d.fn on p through call (the RawConn's Read or Write), and
// returns the bytes done, the RawConn's error and the system call's.
func (d *rawDir) do(call func(func(uintptr) bool) error, p []byte) (int, error, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.p, d.n, d.errno = p, 0, 0
	err := call(d.fn)
	d.p = nil
	return d.n, err, d.errno
}

// read is net.Conn's Read on c, whose socket s is.
func (s *rawSock) read(c *net.TCPConn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err, errno := s.r.do(s.raw.Read, p)
	if err == nil && errno == 0 && n == 0 {
		return 0, io.EOF
	}
	return result("read", c, n, err, errno)
}

// write is net.Conn's Write on c, whose socket s is: all of p, or an
// error.
func (s *rawSock) write(c *net.TCPConn, p []byte) (int, error) {
	n, err, errno := s.w.do(s.raw.Write, p)
	return result("write", c, n, err, errno)
}

// result returns what net.TCPConn's Read or Write (op) on c returns when n
// bytes were done and the RawConn's call failed with err, or the system
// call with errno: an error is a *net.OpError around its cause (a
// RawConn's own errors are OpErrors of "raw-read" and "raw-write").
func result(op string, c *net.TCPConn, n int, err error, errno syscall.Errno) (int, error) {
	switch {
	case err != nil:
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err
		}
	case errno != 0:
		err = os.NewSyscallError(op, errno)
	default:
		return n, nil
	}
	return n, &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
