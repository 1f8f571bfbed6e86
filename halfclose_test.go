package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClientHalfCloseNoStatus499: a client that sends its request and
// half-closes its side while the upstream is slow to answer left as far as
// net/http can tell. 499 is what the stats count for it, never a status
// line on the wire: the connection is closed with nothing written, and the
// stats count one client_closed.
func TestClientHalfCloseNoStatus499(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // answers nothing until the proxy gives up
		cancelled <- struct{}{}
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "GET /p/slow HTTP/1.1\r\nHost: x\r\n\r\n")
	up.next(t) // the request reached the upstream before the client's side closed
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil && !isConnReset(err) {
		t.Fatalf("reading until the proxy closed the connection: %v (got %q)", err, got)
	}
	if strings.Contains(string(got), "499") || len(got) > 0 {
		t.Errorf("client received %q after half-closing; want the connection closed with nothing written", got)
	}
	waitClosed(t, cancelled, "the upstream request to be cancelled")
	waitCounts(t, &http.Client{}, front.URL, "/p", endpointCounts{Count: 1, ClientClosed: 1, Status: map[string]int64{}})
}

// isConnReset reports whether err is a reset connection, which a peer that
// closes with unread bytes may cause.
func isConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}
