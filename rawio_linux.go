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

// tcpConnOf returns the TCP connection c is or wraps.
func tcpConnOf(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case *rawTCPConn:
		return c.TCPConn, true
	}
	return nil, false
}

// rawSock reads and writes a non-blocking socket with rawIO, waiting for
// readiness, and failing at a deadline or a close, through its RawConn.
// One read and one write may run at once, as on a net.Conn: each
// direction's arguments and results live here, under its own mutex, so
// that the callbacks RawConn takes are made once per connection, not per
// call.
type rawSock struct {
	raw syscall.RawConn

	rmu    sync.Mutex
	rp     []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wp      []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

func newRawSock(raw syscall.RawConn) *rawSock {
	s := &rawSock{raw: raw}
	s.readFn, s.writeFn = s.readOnce, s.writeAll
	return s
}

// readOnce reads once into rp; false (wait) if the socket is empty.
func (s *rawSock) readOnce(fd uintptr) bool {
	for {
		n, errno := rawIO(syscall.SYS_READ, fd, s.rp)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			s.rn = n
		default:
			s.rerr = errno
		}
		return true
	}
}

// writeAll writes wp from wn on; false (wait) when the socket is full.
func (s *rawSock) writeAll(fd uintptr) bool {
	for s.wn < len(s.wp) {
		n, errno := rawIO(syscall.SYS_WRITE, fd, s.wp[s.wn:])
		switch errno {
		case 0:
			s.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werr = errno
			return true
		}
	}
	return true
}

// read is net.Conn's Read on c, whose socket s is.
func (s *rawSock) read(c *net.TCPConn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	s.rp, s.rn, s.rerr = p, 0, 0
	err := s.raw.Read(s.readFn)
	n, errno := s.rn, s.rerr
	s.rp = nil
	s.rmu.Unlock()
	switch {
	case err != nil:
		return 0, opError("read", c, err)
	case errno != 0:
		return 0, opError("read", c, os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// write is net.Conn's Write on c, whose socket s is: all of p, or an
// error.
func (s *rawSock) write(c *net.TCPConn, p []byte) (int, error) {
	s.wmu.Lock()
	s.wp, s.wn, s.werr = p, 0, 0
	err := s.raw.Write(s.writeFn)
	n, errno := s.wn, s.werr
	s.wp = nil
	s.wmu.Unlock()
	switch {
	case err != nil:
		return n, opError("write", c, err)
	case errno != 0:
		return n, opError("write", c, os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError returns err as net.TCPConn's Read or Write (op) would: a
// *net.OpError around the cause (a RawConn's own errors are OpErrors of
// "raw-read" and "raw-write").
func opError(op string, c *net.TCPConn, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
