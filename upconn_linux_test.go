package main

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadSocketHangup: the upstream's last bytes and its hang-up (FIN or
// RST) are both in the socket before the raw stream starts reading, so
// they make one readiness. readSocket must pass the bytes and end, not wait
// for a readiness that never comes (the watcher's hang-up watch ends the
// wait; without a watcher, reading the socket until it is empty finds the
// end).
func TestReadSocketHangup(t *testing.T) {
	for _, reset := range []bool{false, true} {
		for _, watched := range []bool{true, false} {
			name := "FIN"
			if reset {
				name = "RST"
			}
			t.Run(fmt.Sprintf("%s/watcher=%v", name, watched), func(t *testing.T) {
				testReadSocketHangup(t, reset, watched)
			})
		}
	}
}

func testReadSocketHangup(t *testing.T, reset, watched bool) {
	const last = "9\r\ndata: 2\n\n\r\n"
	upstream, upPeer := tcpPair(t)
	io.WriteString(upPeer, last)
	if reset {
		upPeer.(*net.TCPConn).SetLinger(0)
	}
	upPeer.Close()
	raw, err := upstream.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitPeerClosed(t, raw)
	// The netpoller takes the readiness now, before the stream
	// starts: RawConn.Read forgets a readiness taken before it.
	netpollOnce(t)

	p := &proxy{}
	if watched {
		w, err := newClientWatcher()
		if err != nil {
			t.Fatal(err)
		}
		defer w.close()
		p.watcher = w
	}
	rc, got := readSocketOnce(t, p, &upConn{Conn: upstream, raw: raw})
	if rc.err == nil || rc.cp.done() {
		t.Errorf("err %v, body done %v; want an error before the body's end", rc.err, rc.cp.done())
	}
	// After a reset the kernel may drop the bytes before the read.
	if !reset && got != last {
		t.Errorf("client got %q, want the last bytes %q", got, last)
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// waitPeerClosed waits until the connection of raw has seen its peer's FIN
// or RST (TCP state CLOSE_WAIT or CLOSE, tcpInfo).
func waitPeerClosed(t *testing.T, raw syscall.RawConn) {
	t.Helper()
	const tcpCloseWait, tcpClose = 8, 7
	deadline := time.Now().Add(testTimeout)
	for {
		var state uint8
		if info, err := tcpInfo(raw); err == nil {
			state = info.State
		}
		if state == tcpCloseWait || state == tcpClose {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer's close did not arrive (TCP state %d)", state)
		}
		runtime.Gosched()
	}
}

// netpollOnce returns once the runtime's network poller has collected the
// readiness of every socket that is ready now: it waits for a read on
// another connection, which only the poller can wake.
func netpollOnce(t *testing.T) {
	t.Helper()
	a, b := tcpPair(t)
	got := make(chan struct{})
	go func() {
		var one [1]byte
		a.Read(one[:])
		close(got)
	}()
	b.Write([]byte{1})
	<-got
}

// TestUpConnHangupWatch: an upstream connection is registered with the
// watcher once, by its first raw stream, and stays registered while it
// is open, so that later streams on it cost no epoll_ctl; a hang-up seen
// while no stream reads the connection still ends the next stream's wait
// (its bytes and the hang-up came before it, as one readiness); and
// closing the connection forgets the registration.
func TestUpConnHangupWatch(t *testing.T) {
	w, err := newClientWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	upstream, upPeer := tcpPair(t)
	raw, err := upstream.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	up := &upConn{Conn: upstream, raw: raw}
	p := &proxy{watcher: w}
	registrations := func() (live int, made int32) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.regs), w.next
	}

	const body = "7\r\ndata: 1\r\n0\r\n\r\n"
	var first *upHang
	for i := range 2 {
		io.WriteString(upPeer, body)
		rc, got := readSocketOnce(t, p, up)
		if rc.err != nil || !rc.cp.done() {
			t.Fatalf("stream %d: err %v, body done %v; want the whole body", i, rc.err, rc.cp.done())
		}
		if got != body {
			t.Errorf("stream %d: client got %q, want %q", i, got, body)
		}
		if i == 0 {
			first = up.hang
		}
		if up.hang == nil || up.hang != first {
			t.Fatalf("stream %d: connection's watch %p, want the first stream's %p", i, up.hang, first)
		}
		if live, made := registrations(); live != 1 || made != 1 {
			t.Errorf("after stream %d: %d registrations live, %d made; want 1 and 1", i, live, made)
		}
	}

	// The upstream sends its last bytes and hangs up between streams.
	const last = "9\r\ndata: 2\n\n\r\n"
	io.WriteString(upPeer, last)
	upPeer.Close()
	waitPeerClosed(t, raw)
	deadline := time.Now().Add(testTimeout)
	for {
		w.mu.Lock()
		seen := first.seen
		w.mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never saw the idle connection's hang-up")
		}
		runtime.Gosched()
	}
	netpollOnce(t) // the readiness is taken before the stream starts
	rc, got := readSocketOnce(t, p, up)
	if rc.err == nil || rc.cp.done() {
		t.Errorf("after the hang-up: err %v, body done %v; want an error before the body's end", rc.err, rc.cp.done())
	}
	if got != last {
		t.Errorf("after the hang-up: client got %q, want the last bytes %q", got, last)
	}

	up.Close()
	if live, _ := registrations(); live != 0 {
		t.Errorf("%d registrations live after the connection closed, want 0", live)
	}
}

// readSocketOnce runs one raw stream of up's body through p to a new
// client connection and returns its state and what the client got. It
// fails the test if the stream still waits after testTimeout.
func readSocketOnce(t *testing.T, p *proxy, up *upConn) (*rawCopy, string) {
	t.Helper()
	client, clientPeer := tcpPair(t)
	pr := &proxyRequest{p: p}
	pr.body.pr = pr
	pr.st.conn = client
	pr.st.rc = rawCopy{pr: pr, more: true}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pr.st.rc.readSocket(up, make([]byte, streamBufferSize))
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		up.Conn.Close() // ends the wait, so the test can end
		<-done
		t.Fatal("readSocket still waited")
	}
	client.Close()
	got, _ := io.ReadAll(clientPeer)
	return &pr.st.rc, string(got)
}

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
