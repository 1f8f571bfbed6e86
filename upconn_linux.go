package main

import (
	"errors"
	"io"
	"os"
	"syscall"
	"time"
)

// canReadRaw: raw streams read the socket with raw system calls, and the
// proxy's watcher (watch_linux.go) sees the upstream hang up.
const canReadRaw = true

// readSocket reads the upstream socket and passes each read to the client
// until the body ends, the upstream or the client fails, or the upstream
// request is cancelled.
//
// After a read that emptied the socket it waits for the socket to become
// readable rather than read it empty: the next bytes make it so. A hang-up
// does not always: the last bytes and the upstream's FIN (or RST) can come
// as one readiness, and the read returns the bytes and leaves the end for
// a next read, which the wait would never start. So the proxy's watcher
// watches the socket for a hang-up, and when it comes the wait ends (a
// read deadline in the past) and the socket is read to its end. Without a
// watcher every read is followed by another until the socket is empty,
// which finds the end too, at the cost of one more system call per event.
// The watch is the connection's (upConn.watchHangup): the stream only
// attaches to it, with no system call.
func (rc *rawCopy) readSocket(up *upConn, b []byte) {
	st := &rc.pr.st
	h := up.watchHangup(rc.pr.p.watcher, rc)
	watched := h != nil
	read := func(fd uintptr) bool {
		for rc.more && !st.clientGone.Load() {
			select {
			case <-st.upDone:
				rc.err = errUpstreamCancelled
				return true
			default:
			}
			n, errno := rawIO(syscall.SYS_READ, fd, b)
			switch {
			case errno == syscall.EINTR:
				continue
			case errno == syscall.EAGAIN:
				return false // wait until the socket is readable
			case errno != 0:
				rc.err = os.NewSyscallError("read", errno)
				return true
			case n == 0:
				rc.err = errUpstreamClosed
				return true
			}
			if !rc.pass(nil, b[:n]) {
				return true
			}
			if n < len(b) && watched && !rc.hangup.Load() {
				return false // the read emptied the socket
			}
		}
		return true
	}
	rearmed := false
	for {
		err := up.raw.Read(read)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && rc.hangup.Load() && !rearmed {
			// The upstream hung up: read what it sent before, and the end.
			rearmed = true
			up.Conn.SetReadDeadline(time.Time{})
			continue
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && rc.rw != nil && !rc.hangup.Load() {
			// The hand-off deadline of a stream written through net/http
			// (stream_here.go).
			if rc.pr.mayHandOffNow() {
				rc.handOffNow = true
				break
			}
			// Not yet (its request body is still coming, say): try again
			// one hand-off time later, or minHandOffRetry if that is longer.
			rc.setReadDeadline(up, time.Now().Add(max(rc.pr.p.handoffAfter, minHandOffRetry)))
			continue
		}
		if err != nil && rc.err == nil {
			rc.err = err // the Transport closed it: the request was cancelled
		}
		break
	}
	if watched {
		h.detach()
	}
}

// watchHangup attaches rc to the connection's hang-up watch, which it
// registers with w if no stream on the connection did yet: until detach,
// the upstream closing or resetting the connection, seen now or before,
// ends rc's wait for the socket (hungUp). It returns nil when the
// connection cannot be watched: no watcher, a stopped one, or a closed
// connection.
func (c *upConn) watchHangup(w *clientWatcher, rc *rawCopy) *upHang {
	h := c.hangWatch(w)
	if h == nil {
		return nil
	}
	h.w.mu.Lock()
	h.rc = rc
	seen := h.seen
	h.w.mu.Unlock()
	if seen {
		rc.hungUp(c)
	}
	return h
}

// hangWatch returns the connection's hang-up watch, registering it with
// w first if need be; nil if it cannot.
func (c *upConn) hangWatch(w *clientWatcher) *upHang {
	c.hangMu.Lock()
	defer c.hangMu.Unlock()
	if c.closed {
		return nil
	}
	if c.hang != nil || w == nil {
		return c.hang
	}
	h := &upHang{w: w}
	// The callback may run before watchConn returns: it needs only h.
	reg, ok := w.watchConn(c.raw, func(bool) {
		h.seen = true
		if h.rc != nil {
			h.rc.hungUp(c)
		}
	})
	if !ok {
		return nil
	}
	h.reg, c.hang = reg, h
	return h
}

// detach ends the attachment of watchHangup: once it returns, the
// callback no longer touches the stream.
func (h *upHang) detach() {
	h.w.mu.Lock()
	h.rc = nil
	h.w.mu.Unlock()
}

// hungUp ends the raw stream's wait for the upstream socket, whose peer
// closed or reset it: the read deadline in the past wakes the wait, and
// readSocket then reads the socket to its end.
func (rc *rawCopy) hungUp(up *upConn) {
	rc.hangup.Store(true)
	up.Conn.SetReadDeadline(longAgo)
}

// write writes p to the client. Through the connection's raw descriptor
// where it has one, with rawIO; net.Conn's Write otherwise.
func (rc *rawCopy) write(p []byte) error {
	if rc.client == nil {
		_, err := rc.pr.st.conn.Write(p)
		return err
	}
	var werr error
	err := rc.client.Write(func(fd uintptr) bool {
		for len(p) > 0 {
			n, errno := rawIO(syscall.SYS_WRITE, fd, p)
			switch errno {
			case 0:
				if n == 0 {
					werr = io.ErrShortWrite
					return true
				}
				p = p[n:]
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // wait until the client reads
			default:
				werr = os.NewSyscallError("write", errno)
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return err
}
