package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestStreamHandOffLater: with STREAM_HANDOFF_AFTER, an event stream is
// written through net/http first and handed off, where it stands, once it
// has run that long: the client gets every event in order and a clean
// end, its connection serves its next request, and the request counts
// once. A raw stream (plain-HTTP upstream) is handed off while it idles,
// woken by its read deadline, after events written to the client's socket
// (100ms) or at its first read (1ns); one read through the Transport
// (HTTPS upstream) after its first read past the time. A stream that ends
// first is never handed off, and the same holds.
func TestStreamHandOffLater(t *testing.T) {
	if !testConfig(t, nil).StreamHandoff {
		t.Skip("STREAM_HANDOFF=off")
	}
	for _, tc := range []struct {
		name, upKind, after string
		handed              int64
		waitHanded          bool // the hand-off comes while the stream idles
	}{
		{"raw, handed off while idle", "http", "100ms", 1, true},
		{"raw, handed off at once", "http", "1ns", 1, true},
		{"through the Transport, handed off", "https", "1ns", 1, false},
		{"raw, ends first", "http", "1h", 0, false},
		{"through the Transport, ends first", "https", "1h", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
			h := func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/plain" {
					io.WriteString(w, "plain")
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				for i, step := range steps {
					fmt.Fprintf(w, "data: %d\n\n", i+1)
					w.(http.Flusher).Flush()
					select {
					case <-step:
					case <-r.Context().Done():
						return
					}
				}
				io.WriteString(w, "data: 3\n\n")
				w.(http.Flusher).Flush()
				io.WriteString(w, "data: [DONE]\n\n")
			}
			var upURL string
			var tlsUp *httptest.Server
			if tc.upKind == "https" {
				tlsUp = newTLSUpstream(t, false, h)
				upURL = tlsUp.URL
			} else {
				upURL = newUpstream(t, h).URL
			}
			s, front := newTestServerConfig(t, testConfig(t, map[string]string{"STREAM_HANDOFF_AFTER": tc.after}), map[string]string{"/p": upURL})
			if tlsUp != nil {
				trustUpstream(t, s, tlsUp)
			}
			conn, br, res := rawExchange(t, front.Listener.Addr().String(), "/p/stream")
			if res.Header.Get("X-Content-Type-Options") != "nosniff" || len(res.TransferEncoding) != 1 {
				t.Errorf("head %v, Transfer-Encoding %v; want the proxy's headers, chunked", res.Header, res.TransferEncoding)
			}
			body := bufio.NewReader(res.Body)
			for i := range steps {
				if ev, want := readEvent(t, body), fmt.Sprintf("data: %d\n\n", i+1); ev != want {
					t.Fatalf("event %q, want %q", ev, want)
				}
				if i == 1 && tc.waitHanded {
					eventually(t, func() bool { return s.proxy.handedOff.Load() == tc.handed }, "the stream to be handed off")
				}
				steps[i] <- struct{}{}
			}
			rest, err := io.ReadAll(body)
			if err != nil || string(rest) != "data: 3\n\ndata: [DONE]\n\n" {
				t.Fatalf("rest of the stream %q, %v; want the last events and a clean end", rest, err)
			}
			res.Body.Close()
			if n := s.proxy.handedOff.Load(); n != tc.handed {
				t.Errorf("%d streams handed off, want %d", n, tc.handed)
			}
			// The same connection serves the next request.
			fmt.Fprintf(conn, "GET /p/plain HTTP/1.1\r\nHost: x\r\n\r\n")
			next, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("next request on the connection: %v", err)
			}
			if b, err := io.ReadAll(next.Body); err != nil || string(b) != "plain" {
				t.Errorf("next response %q, %v; want plain", b, err)
			}
			waitCounts(t, &http.Client{}, front.URL, "/p", endpointCounts{Count: 2, Status: map[string]int64{"2xx": 2}})
		})
	}
}

// TestStreamHereSplitChunk: the first bytes of a raw stream's body end
// inside a chunk, the rest of which comes later. Written through net/http,
// the head goes alone and the upstream's chunks pass as they came after
// it, so that the client reads every event whole and a clean end, and the
// chunk framing on the wire is the upstream's. (With the hand-off at once
// or through ReverseProxy, the same events and end.)
func TestStreamHereSplitChunk(t *testing.T) {
	const head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
	const wire = "9\r\ndata: 1\n\n\r\n9;x=1\r\ndata: 2\n\n\r\n"
	sent := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, head+wire[:6]) // "9\r\ndat"
		select {
		case <-sent:
		case <-r.Context().Done():
			return
		}
		io.WriteString(conn, wire[6:]+"0\r\n\r\n")
	})
	s, front := newTestServer(t, map[string]string{"/p": up.URL})
	_, br, res := rawExchange(t, front.Listener.Addr().String(), "/p/stream")
	close(sent) // the head came alone: the rest may follow
	if !handoffOn(s) || handedOffAtOnce(s) {
		b, err := io.ReadAll(res.Body)
		if err != nil || string(b) != "data: 1\n\ndata: 2\n\n" {
			t.Fatalf("body %q, %v; want both events and a clean end", b, err)
		}
		return
	}
	// Read the chunked body off the wire as it came.
	raw, err := io.ReadAll(io.LimitReader(br, int64(len(wire)+len("0\r\n\r\n"))))
	if err != nil || string(raw) != wire+"0\r\n\r\n" {
		t.Errorf("on the wire %q, %v; want the upstream's chunks as sent, then the end", raw, err)
	}
}

// TestStreamLastEventBeforeRecord: the read that reaches a stream's end
// passes its events to the client at once, before the request is recorded
// (and, for a limit, its ticket released, which may wait on Redis), not
// with net/http's write of the body's end, which comes after both. The
// upstream sends the last events and the end in one write, so the proxy
// reads them together; the record waits until the client has read the
// events.
func TestStreamLastEventBeforeRecord(t *testing.T) {
	const rest = "data: 2\n\ndata: [DONE]\n\n"
	step := make(chan struct{})
	// After step, the backend writes rest unflushed and returns: net/http
	// sends it with the body's end, in one write.
	up := newUpstream(t, heldStream(step, rest))
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/p", up.URL))
	limited := targetsOf("/limited", up.URL)
	limited.Limits.Concurrency = 5
	setMapping(t, s, limited)
	// read[prefix] is closed once the client read the last events.
	read := map[string]chan struct{}{"/p": make(chan struct{}), "/limited": make(chan struct{})}
	observe := s.proxy.observe
	s.proxy.observe = func(rec *requestRecord) {
		if ch := read[rec.Prefix]; ch != nil {
			select {
			case <-ch:
			case <-time.After(testTimeout):
				t.Errorf("%s: the request was recorded with its last events not at the client", rec.Prefix)
			}
		}
		if observe != nil {
			observe(rec)
		}
	}
	for _, prefix := range []string{"/p", "/limited"} {
		t.Run(prefix, func(t *testing.T) {
			_, br, res := rawExchange(t, front.Listener.Addr().String(), prefix+"/stream")
			body := bufio.NewReader(res.Body)
			if ev := readEvent(t, body); ev != "data: 1\n\n" {
				t.Fatalf("first event %q", ev)
			}
			step <- struct{}{}
			got := readEvent(t, body) + readEvent(t, body)
			close(read[prefix])
			if got != rest {
				t.Fatalf("last events %q, want %q", got, rest)
			}
			if b, err := io.ReadAll(body); err != nil || len(b) != 0 {
				t.Errorf("after the last events %q (%v), want the body's end", b, err)
			}
			if br.Buffered() != 0 {
				t.Errorf("%d bytes after the body's end", br.Buffered())
			}
		})
	}
}
