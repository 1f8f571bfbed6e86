package main

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// canReadRaw: raw streams need streamWatcher to see the upstream hang up.
const canReadRaw = true

// readSocket reads the upstream socket and passes each read to the client
// until the body ends, the upstream or the client fails, or the upstream
// request is cancelled.
//
// After a read that emptied the socket it waits for the socket to become
// readable rather than read it empty: the next bytes make it so. A hang-up
// does not always: the last bytes and the upstream's FIN (or RST) can come
// as one readiness, and the read returns the bytes and leaves the end for
// a next read, which the wait would never start. So streamWatcher watches
// the socket for a hang-up, and when it comes the wait ends (a read
// deadline in the past) and the socket is read to its end.
func (rc *rawCopy) readSocket(up *upConn, b []byte) {
	st := &rc.pr.st
	reg, watched := streamWatcher.watchHangup(up.Conn, func(bool) {
		rc.hangup.Store(true)
		up.Conn.SetReadDeadline(longAgo)
	})
	read := func(fd uintptr) bool {
		for rc.more && !st.clientGone.Load() {
			select {
			case <-rc.done:
				rc.err = errors.New("apiproxy: upstream request cancelled")
				return true
			default:
			}
			n, err := syscall.Read(int(fd), b)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // wait until the socket is readable
			case err != nil:
				rc.err = err
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
		if err != nil && rc.err == nil {
			rc.err = err // the Transport closed it: the request was cancelled
		}
		break
	}
	if watched {
		streamWatcher.unwatch(reg)
	}
}
