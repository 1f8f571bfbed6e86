package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestStreamHandOffLater: with STREAM_HANDOFF_AFTER, an event stream is
// written through net/http first and handed off, where it stands, once it
// has run that long: the client gets every event in order and a clean
// end, its connection serves its next request, and the request counts
// once. A raw stream (plain-HTTP upstream) is handed off while it idles,
// at its read deadline; one read through the Transport (HTTPS upstream)
// after its next read. A stream that ends first is never handed off, and
// the same holds.
func TestStreamHandOffLater(t *testing.T) {
	if !testConfig(t, nil).StreamHandoff {
		t.Skip("STREAM_HANDOFF=off")
	}
	for _, tc := range []struct {
		name, upKind, after string
		handed              int64
	}{
		{"raw, handed off", "http", "1ns", 1},
		{"through the Transport, handed off", "https", "1ns", 1},
		{"raw, ends first", "http", "1h", 0},
		{"through the Transport, ends first", "https", "1h", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			step := make(chan struct{})
			h := func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/plain" {
					io.WriteString(w, "plain")
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "data: 1\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-step:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: 2\n\n")
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
			if ev := readEvent(t, body); ev != "data: 1\n\n" {
				t.Fatalf("first event %q", ev)
			}
			if tc.handed > 0 {
				eventually(t, func() bool { return s.proxy.handedOff.Load() == tc.handed }, "the stream to be handed off")
			}
			step <- struct{}{}
			rest, err := io.ReadAll(body)
			if err != nil || string(rest) != "data: 2\n\ndata: [DONE]\n\n" {
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
