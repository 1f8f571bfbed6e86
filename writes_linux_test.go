package main

import (
	"bufio"
	"io"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tcpInfo returns the TCP_INFO of raw's socket.
func tcpInfo(raw syscall.RawConn) (*unix.TCPInfo, error) {
	var info *unix.TCPInfo
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); cerr != nil {
		return nil, cerr
	}
	return info, err
}

// dataSegsIn returns how many segments with data c's socket has received
// (TCP_INFO). On loopback every write of a few KiB leaves in one segment
// at once, so it counts the writes the peer made to c.
func dataSegsIn(c net.Conn) (uint32, error) {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, err
	}
	info, err := tcpInfo(raw)
	if err != nil {
		return 0, err
	}
	return info.Data_segs_in, nil
}

// TestStreamEndOneWrite: a raw stream written through net/http (before its
// hand-off) whose last event comes with the body's end gives the client
// both in one write, not the event and then the end; the events and the
// end are as sent. Not where a limit's release follows the body's end (it
// may wait on Redis): the last event goes at once, the end after, unless
// the stream was handed off, which passes them as they came.
func TestStreamEndOneWrite(t *testing.T) {
	cfg := testConfig(t, nil)
	if !cfg.StreamHandoff {
		t.Skip("STREAM_HANDOFF=off: no raw stream")
	}
	// Handed off at once (STREAM_HANDOFF_AFTER=0), a raw stream passes
	// what it reads as it came: the last event and the end too.
	limitedWrites, limitedThen := uint32(3), "the last event, then the end"
	if cfg.StreamHandoffAfter == 0 {
		limitedWrites, limitedThen = 2, "the last event with the end, as the upstream sent them"
	}
	// After step, the backend writes the rest unflushed and returns:
	// net/http sends it with the body's end, in one write.
	step := make(chan struct{})
	up := newUpstream(t, heldStream(step, "data: 2\n\ndata: [DONE]\n\n"))
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/p", up.URL))
	limited := targetsOf("/limited", up.URL)
	limited.Limits.Concurrency = 5
	setMapping(t, s, limited)
	for _, tc := range []struct {
		prefix string
		writes uint32
		then   string
	}{
		{"/p", 2, "the last event with the end"},
		{"/limited", limitedWrites, limitedThen},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			conn, br, res := rawExchange(t, front.Listener.Addr().String(), tc.prefix+"/stream")
			body := bufio.NewReader(res.Body)
			if ev := readEvent(t, body); ev != "data: 1\n\n" {
				t.Fatalf("first event %q", ev)
			}
			step <- struct{}{}
			rest, err := io.ReadAll(body)
			if err != nil || string(rest) != "data: 2\n\ndata: [DONE]\n\n" {
				t.Fatalf("rest of the body %q (%v)", rest, err)
			}
			if br.Buffered() != 0 {
				t.Errorf("%d bytes after the body's end", br.Buffered())
			}
			got, err := dataSegsIn(conn)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.writes {
				t.Errorf("the client read the response in %d writes, want %d (head and first event, then %s)", got, tc.writes, tc.then)
			}
		})
	}
}
