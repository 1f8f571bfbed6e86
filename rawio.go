package main

// Raw socket I/O (RAW_IO, Config.RawIO). Go's net.Conn reads and writes a
// socket through syscall.Read and Write, which tell the scheduler that a
// system call begins and ends (runtime.entersyscall): the first such call
// after the process was idle wakes the runtime's monitor thread (sysmon),
// which then polls every 20 µs while calls keep coming, and takes the
// processor away from a call that lasts over one of its ticks, waking
// another thread to run the rest. On a virtual machine a loopback write
// that wakes its reader often lasts that long, and a thread's wake-up is
// dear: at a moderate rate of small requests that monitor and those
// hand-offs are much of the CPU a request costs. A socket is
// non-blocking, so its reads and writes never block: rawSock makes them
// with rawIO (rawio_syscall_linux.go), which does not tell the scheduler, inside
// a syscall.RawConn's Read or Write, which waits for readiness through the
// runtime's poller and keeps the connection's deadlines, as net.Conn does.
//
// What it buys is CPU per request and per stream start, and with it
// latency (docs/performance.md, "Raw socket I/O"). Where it applies: the
// connections the server accepts (Server.listener wraps its listener) and
// those the Transport dials (newTransport), TLS upstreams' included, under
// their TLS. Not used outside Linux (canRawIO), nor with RAW_IO=off, which
// leaves both to net.Conn. A body that moves by splice or sendfile
// (net.TCPConn's ReadFrom and WriteTo, which a raw connection keeps) does
// not go through it either way.

import "net"

// rawListener accepts connections that do their I/O with raw system calls
// (rawTCP).
type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return rawTCP(c), nil
}

// listener returns the listener the Server's http.Server is to serve ln
// through: ln itself unless s does raw socket I/O.
func (s *Server) listener(ln net.Listener) net.Listener {
	if !s.rawIO {
		return ln
	}
	return rawListener{ln}
}
