package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRawIOSwitch: with RAW_IO on (on Linux) the connections the server
// accepts and those the Transport dials do their I/O with raw system calls
// (rawTCPConn, inside the upConn with the stream hand-off on); off, they
// are net.Conn's. Either way a request and an event stream go through.
func TestRawIOSwitch(t *testing.T) {
	for _, on := range []bool{true, false} {
		word := map[bool]string{true: "on", false: "off"}[on]
		t.Run("RAW_IO="+word, func(t *testing.T) {
			want := on && canRawIO
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := range 3 {
					io.WriteString(w, "data: "+string(rune('a'+i))+"\n\n")
					w.(http.Flusher).Flush()
				}
			})
			for _, handoff := range []string{"on", "off"} {
				cfg := testConfig(t, map[string]string{"RAW_IO": word, "STREAM_HANDOFF": handoff})
				conn, err := newTransport(cfg).DialContext(context.Background(), "tcp", up.Addr())
				if err != nil {
					t.Fatal(err)
				}
				inner := conn
				if uc, ok := conn.(*upConn); ok {
					inner = uc.Conn
				}
				if _, raw := inner.(*net.TCPConn); raw == want {
					t.Errorf("STREAM_HANDOFF=%s: dialed %T around %T; want raw I/O %v", handoff, conn, inner, want)
				}
				conn.Close()
			}

			cfg := testConfig(t, map[string]string{"RAW_IO": word})
			s := newTestServerOnly(t, cfg, map[string]string{"/p": up.URL})
			accepted := make(chan net.Conn, 8)
			srv := s.httpServer()
			srv.ConnState = func(c net.Conn, state http.ConnState) {
				if state == http.StateNew {
					accepted <- c
				}
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(s.listener(ln))
			t.Cleanup(func() { srv.Close() })
			client := &http.Client{}
			t.Cleanup(client.CloseIdleConnections)
			res, err := client.Get("http://" + ln.Addr().String() + "/p/v1/stream")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || string(body) != "data: a\n\ndata: b\n\ndata: c\n\n" {
				t.Fatalf("stream body %q, %v", body, err)
			}
			c := <-accepted
			if _, plain := c.(*net.TCPConn); plain == want {
				t.Errorf("the server accepted a %T; want raw I/O %v", c, want)
			}
		})
	}
}

// rawPair returns the two ends of a loopback TCP connection, each doing
// its I/O with raw system calls.
func rawPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	if !canRawIO {
		t.Skip("no raw socket I/O on this platform")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	a, b = rawTCP(d), rawTCP(c)
	if _, ok := a.(*net.TCPConn); ok {
		t.Fatal("rawTCP returned the plain connection")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestRawSockReadWrite: bytes written on one end arrive whole and in order
// on the other, also when a write must wait for the reader (more than the
// socket buffers hold) while reads and writes run at once both ways; the
// writer's close reads as io.EOF; an empty read returns at once.
func TestRawSockReadWrite(t *testing.T) {
	a, b := rawPair(t)
	if n, err := b.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, dir := range []struct{ w, r net.Conn }{{a, b}, {b, a}} {
		wg.Go(func() {
			n, err := dir.w.Write(big)
			if err == nil && n != len(big) {
				err = io.ErrShortWrite
			}
			errs <- err
		})
		wg.Go(func() {
			got := make([]byte, 0, len(big))
			buf := make([]byte, 64<<10)
			for len(got) < len(big) {
				n, err := dir.r.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					errs <- err
					return
				}
			}
			if !bytes.Equal(got, big) {
				errs <- errors.New("bytes read differ from those written")
				return
			}
			errs <- nil
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v; want 0, io.EOF", n, err)
	}
}

// TestRawSockErrors: a raw connection fails as net.TCPConn does: a read
// past its deadline with a timeout (os.ErrDeadlineExceeded in a
// *net.OpError "read"), a read on a closed connection with net.ErrClosed,
// a write to a peer that reset the connection with the system call's
// error in a *net.OpError "write".
func TestRawSockErrors(t *testing.T) {
	a, b := rawPair(t)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := a.Read(make([]byte, 8))
	var oe *net.OpError
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read past the deadline: %v (%T); want a timeout *net.OpError read", err, err)
	}
	a.SetReadDeadline(time.Time{})

	// The peer resets: SO_LINGER 0, then close.
	if err := b.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := b.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v; want net.ErrClosed", err)
	}
	// The reset reaches a at once on loopback; a write or two may still
	// be taken before it is seen.
	for i := 0; ; i++ {
		_, err = a.Write([]byte("after the reset"))
		if err != nil || i == 100 {
			break
		}
	}
	if !errors.As(err, &oe) || oe.Op != "write" || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		t.Fatalf("write after the peer's reset: %v; want a *net.OpError write with ECONNRESET or EPIPE", err)
	}
}
