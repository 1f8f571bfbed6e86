package main

// Hostile-input tests (issue 6, SPEC §3.2, §6, §8): requests built to
// confuse framing, routing or the admin API, from clients that are slow
// on purpose or come from another site's page. Each gets a clear 4xx (or
// the closed connection SPEC allows) and nothing reaches the upstream or
// the store that should not.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serveWithHTTPServer serves s with the http.Server run uses
// (newHTTPServer), changed by adjust, on a loopback port, and returns its
// address. Cleanup closes it.
func serveWithHTTPServer(t testing.TB, s *Server, adjust func(*http.Server)) string {
	t.Helper()
	srv := newHTTPServer(s, testLogger())
	if adjust != nil {
		adjust(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// recordingUpstream is an upstream that reports every request it gets,
// with its whole body or the error that cut it.
type recordedRequest struct {
	URI     string
	Header  http.Header
	Body    string
	BodyErr error
}

func newRecordingUpstream(t testing.TB) (*upstream, chan recordedRequest) {
	t.Helper()
	got := make(chan recordedRequest, 16)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		got <- recordedRequest{URI: r.RequestURI, Header: r.Header.Clone(), Body: string(b), BodyErr: err}
		io.WriteString(w, "ok")
	})
	return up, got
}

// noMoreRequests fails if the upstream got a request it should not have.
func noMoreRequests(t testing.TB, got chan recordedRequest) {
	t.Helper()
	select {
	case r := <-got:
		t.Errorf("the upstream got %s (body %q), want no request", r.URI, r.Body)
	default:
	}
}

// TestHostileFraming sends requests whose framing is ambiguous or broken.
// net/http refuses most of them before any handler runs; the rest are
// answered and their connection closed, or refused by the proxy. What the
// upstream gets is checked each time.
func TestHostileFraming(t *testing.T) {
	up, got := newRecordingUpstream(t)
	s, _ := newTestServer(t, map[string]string{"/p": up.URL})
	addr := serveWithHTTPServer(t, s, nil)
	const head = "POST /p/x HTTP/1.1\r\nHost: h\r\n"
	tests := []struct {
		name      string
		raw       string
		status    int
		code      string // proxy error code; "" for a plain answer
		wantClose bool
		forwarded *recordedRequest // what the upstream must get; nil: nothing
	}{
		{"content-length and chunked", head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			200, "", true, &recordedRequest{URI: "/x", Body: "hello"}},
		{"chunked and content-length", head + "Transfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			200, "", true, &recordedRequest{URI: "/x", Body: "hello"}},
		{"identical content-lengths", head + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
			200, "", false, &recordedRequest{URI: "/x", Body: "hello"}},
		{"different content-lengths", head + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "", true, nil},
		{"content-length list", head + "Content-Length: 5, 5\r\n\r\nhello", 400, "", true, nil},
		{"signed content-length", head + "Content-Length: +5\r\n\r\nhello", 400, "", true, nil},
		{"negative content-length", head + "Content-Length: -1\r\n\r\nhello", 400, "", true, nil},
		// RFC 9112 §6.1: a transfer coding the server does not know is 501.
		{"unknown transfer coding", head + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "", true, nil},
		{"chunked twice", head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "", true, nil},
		{"space before colon", head + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, "", true, nil},
		{"header name with space", head + "X A: b\r\nContent-Length: 0\r\n\r\n", 400, "", true, nil},
		{"NUL in header value", head + "X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", 400, "", true, nil},
		{"two Host headers", head + "Host: other\r\nContent-Length: 0\r\n\r\n", 400, "", true, nil},
		{"no Host header", "POST /p/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400, "", true, nil},
		{"HTTP/2 version on HTTP/1", "GET /p/x HTTP/2.0\r\nHost: h\r\n\r\n", 505, "", true, nil},
		// RFC 9112 §5.2: obs-fold is replaced by a space before forwarding.
		{"obs-fold", head + "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
			200, "", false, &recordedRequest{URI: "/x", Header: http.Header{"X-Folded": {"a b"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := rawRoundTrip(t, addr, tt.raw)
			if tt.code != "" {
				wantProxyError(t, res, body, tt.status, tt.code)
			} else if res.StatusCode != tt.status {
				t.Errorf("status = %d, want %d (body %q)", res.StatusCode, tt.status, body)
			}
			if res.Close != tt.wantClose {
				t.Errorf("connection closed after the answer: %v, want %v", res.Close, tt.wantClose)
			}
			if tt.forwarded == nil {
				noMoreRequests(t, got)
				return
			}
			r := <-got
			if r.URI != tt.forwarded.URI || r.Body != tt.forwarded.Body || r.BodyErr != nil {
				t.Errorf("upstream got %s %q (%v), want %s %q", r.URI, r.Body, r.BodyErr, tt.forwarded.URI, tt.forwarded.Body)
			}
			for k, v := range tt.forwarded.Header {
				if g := r.Header.Values(k); !slices.Equal(g, v) {
					t.Errorf("upstream header %s = %q, want %q", k, g, v)
				}
			}
			for k, v := range r.Header {
				for _, x := range v {
					if strings.ContainsAny(x, "\r\n\x00") {
						t.Errorf("upstream header %s = %q holds a control character", k, x)
					}
				}
			}
		})
	}
}

// TestHostileSmugglingVariants: whichever way Content-Length and
// Transfer-Encoding disagree, bytes after the chunked body are never run
// as a second request (SPEC §8).
func TestHostileSmugglingVariants(t *testing.T) {
	up, got := newRecordingUpstream(t)
	s, _ := newTestServer(t, map[string]string{"/p": up.URL})
	addr := serveWithHTTPServer(t, s, nil)
	smuggled := "GET /p/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
	tests := []struct{ name, headers, body string }{
		{"CL covers the smuggled request", "Content-Length: " + strconv.Itoa(5+len(smuggled)) + "\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + smuggled},
		{"TE first, CL short", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "0\r\n\r\n" + smuggled},
		{"CL zero", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + smuggled},
		{"chunked alone, pipelined", "Transfer-Encoding: chunked\r\n", "0\r\n\r\n" + smuggled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(testTimeout))
			io.WriteString(conn, "POST /p/first HTTP/1.1\r\nHost: h\r\n"+tt.headers+"\r\n"+tt.body)
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("read the first response: %v", err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if extra, err := io.ReadAll(br); err != nil || len(extra) != 0 {
				t.Errorf("after the first response read %q, %v; want the connection closed", extra, err)
			}
			if r := <-got; r.URI != "/first" {
				t.Errorf("upstream got %s, want /first", r.URI)
			}
			noMoreRequests(t, got)
		})
	}
}

// TestHostileBrokenChunkedBody: a chunked body that breaks its own framing
// is the client's fault: 400 bad_request_body, the connection closed, and
// the upstream sees its request body cut, never a clean short body.
func TestHostileBrokenChunkedBody(t *testing.T) {
	up, got := newRecordingUpstream(t)
	s, front := newTestServer(t, map[string]string{"/p": up.URL})
	addr := serveWithHTTPServer(t, s, nil)
	tests := []struct{ name, body string }{
		{"bare LF", "5\nhello\n0\n\n"},
		{"bad chunk size", "5\r\nhello\r\nzz\r\n"},
		{"chunk longer than sent, then garbage", "5\r\nhelloEXTRA\r\n0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := rawRoundTrip(t, addr, "POST /p/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"+tt.body)
			wantProxyError(t, res, body, http.StatusBadRequest, "bad_request_body")
			if !res.Close {
				t.Errorf("the connection stays open after a broken body")
			}
			select {
			case r := <-got:
				if r.BodyErr == nil {
					t.Errorf("the upstream read the broken body %q to a clean end", r.Body)
				}
			case <-time.After(testTimeout):
				// The Transport may fail before sending anything: fine.
			}
		})
	}
	c := statsOf(t, front.Client(), front.URL, "/p")
	if c.Status["4xx"] != int64(len(tests)) || c.Status["5xx"] != 0 {
		t.Errorf("stats of /p = %v, want %d 4xx and no 5xx", c, len(tests))
	}
}

// TestHostileHeaderLimits: a request head over MaxHeaderBytes gets 431
// and a request target over 16 KiB gets 414; neither is forwarded.
func TestHostileHeaderLimits(t *testing.T) {
	up, got := newRecordingUpstream(t)
	s, _ := newTestServer(t, map[string]string{"/p": up.URL})
	addr := serveWithHTTPServer(t, s, nil)

	// net/http reads up to MaxHeaderBytes plus 4 KiB of slack.
	big := strings.Repeat("a", 1<<20+8<<10)
	res, body := rawRoundTrip(t, addr, "GET /p/x HTTP/1.1\r\nHost: h\r\nX-Big: "+big+"\r\n\r\n")
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a header over 1 MiB: status %d, want 431 (body %.100q)", res.StatusCode, body)
	}
	res, body = rawRoundTrip(t, addr, "GET /p/"+big+" HTTP/1.1\r\nHost: h\r\n\r\n")
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a path over 1 MiB: status %d, want 431 (body %.100q)", res.StatusCode, body)
	}
	res, body = rawGet(t, addr, "/p/"+strings.Repeat("a", maxRequestTarget))
	wantProxyError(t, res, body, http.StatusRequestURITooLong, "uri_too_long")
	res, body = rawGet(t, addr, "/p/x?q="+strings.Repeat("a", maxRequestTarget))
	wantProxyError(t, res, body, http.StatusRequestURITooLong, "uri_too_long")
	noMoreRequests(t, got)

	// What SDKs send stays well within: 64 KiB of headers pass.
	res, body = rawRoundTrip(t, addr, "GET /p/x HTTP/1.1\r\nHost: h\r\nX-Big: "+big[:64<<10]+"\r\n\r\n")
	if res.StatusCode != http.StatusOK {
		t.Errorf("a 64 KiB header: status %d, want 200 (body %q)", res.StatusCode, body)
	}
	if r := <-got; len(r.Header.Get("X-Big")) != 64<<10 {
		t.Errorf("upstream got X-Big of %d bytes, want %d", len(r.Header.Get("X-Big")), 64<<10)
	}
}

// TestHostileSlowClients: the server run builds closes a connection whose
// request head is still incomplete after ReadHeaderTimeout (10 s; the test
// shortens it), but never cuts a slow request body, nor a long response:
// there is no ReadTimeout or WriteTimeout.
func TestHostileSlowClients(t *testing.T) {
	srv := newHTTPServer(nil, testLogger())
	if srv.ReadHeaderTimeout != 10*time.Second || srv.ReadTimeout != 0 || srv.WriteTimeout != 0 || srv.MaxHeaderBytes != 1<<20 {
		t.Errorf("http.Server: ReadHeaderTimeout %v, ReadTimeout %v, WriteTimeout %v, MaxHeaderBytes %d; want 10s, 0, 0, 1 MiB",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.MaxHeaderBytes)
	}

	up, got := newRecordingUpstream(t)
	s, _ := newTestServer(t, map[string]string{"/p": up.URL})
	const headerTimeout = 300 * time.Millisecond
	addr := serveWithHTTPServer(t, s, func(srv *http.Server) { srv.ReadHeaderTimeout = headerTimeout })

	t.Run("slow head is cut", func(t *testing.T) {
		// The server's header deadline starts once it accepted the
		// connection, which may be before Dial returns here: start the
		// clock before dialling, so that elapsed is never shorter than the
		// server's own wait.
		start := time.Now()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		head := "GET /p/x HTTP/1.1\r\nHost: h\r\nX-Slow: " + strings.Repeat("s", 100)
		closed := make(chan error, 1)
		go func() {
			_, err := conn.Read(make([]byte, 1))
			closed <- err
		}()
		// One byte every 20 ms: the head would take 2.5 s.
		for i := 0; i < len(head); i++ {
			if _, err := conn.Write([]byte{head[i]}); err != nil {
				break
			}
			select {
			case <-closed:
				elapsed := time.Since(start)
				if elapsed < headerTimeout {
					t.Errorf("closed after %v, before ReadHeaderTimeout %v", elapsed, headerTimeout)
				}
				noMoreRequests(t, got)
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		t.Fatalf("the connection was still open after sending the whole head slowly (%v)", time.Since(start))
	})

	t.Run("slow body is not cut", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(testTimeout))
		io.WriteString(conn, "POST /p/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
		// Three parts, the whole body taking longer than ReadHeaderTimeout.
		for _, part := range []string{"slow", "body", "okay"} {
			io.WriteString(conn, part)
			<-time.After(headerTimeout / 2)
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("status = %d, want 200", res.StatusCode)
		}
		if r := <-got; r.Body != "slowbodyokay" || r.BodyErr != nil {
			t.Errorf("upstream got body %q (%v), want %q", r.Body, r.BodyErr, "slowbodyokay")
		}
	})
}

// TestHostilePaths: request targets built to escape the mapping, confuse
// the routing or smuggle bytes. Each is refused with a 4xx, or forwarded
// exactly as received to the mapping's own host. Raw control bytes and
// spaces never reach a handler (net/http answers a plain 400); the proxy
// refuses dot segments in every spelling and a raw "#" with 400 bad_path.
func TestHostilePaths(t *testing.T) {
	good := newUpstream(t, nil)
	evil := newUpstream(t, nil)
	s, _ := newTestServer(t, map[string]string{"/p": good.URL + "/base"})
	addr := serveWithHTTPServer(t, s, nil)
	e := evil.Addr()
	tests := []struct {
		name    string
		target  string
		status  int
		code    string // proxy error code; "" for net/http's own plain answer
		wantURI string // for 200: the RequestURI the upstream must get
	}{
		{"raw NUL", "/p/a\x00b", 400, "", ""},
		{"raw control", "/p/a\x01b", 400, "", ""},
		{"raw DEL", "/p/a\x7fb", 400, "", ""},
		{"raw tab", "/p/a\tb", 400, "", ""},
		{"raw CR", "/p/a\rX-Injected: 1", 400, "", ""},
		{"NUL in query", "/p/a?q=\x00", 400, "", ""},
		{"bad escape", "/p/%zz", 400, "", ""},
		{"cut escape", "/p/a%2", 400, "", ""},
		{"relative target", "p/a", 400, "", ""},
		{"dot dot", "/p/../" + e, 400, "bad_path", ""},
		{"encoded dot dot", "/p/%2e%2e/%2e%2e/x", 400, "bad_path", ""},
		{"mixed encoded dots", "/p/.%2E/x", 400, "bad_path", ""},
		{"dots with encoded slash", "/p/x%2f..%2fy", 400, "bad_path", ""},
		{"dots with backslash", "/p/x\\..\\y", 400, "bad_path", ""},
		{"dots with encoded backslash", "/p/x%5c..%5cy", 400, "bad_path", ""},
		{"dot dot with parameter", "/p/..;/x", 400, "bad_path", ""},
		{"dot with parameter", "/p/.;jsessionid=1/x", 400, "bad_path", ""},
		{"encoded dots with parameter", "/p/%2e%2e;x/y", 400, "bad_path", ""},
		{"raw fragment", "/p/a#/../../x", 400, "bad_path", ""},
		{"raw fragment alone", "/p/a#frag", 400, "bad_path", ""},
		{"path too long", "/p/" + strings.Repeat("a", maxRequestTarget), 414, "uri_too_long", ""},
		{"authority after prefix", "/p//" + e + "/x", 200, "", "/base//" + e + "/x"},
		{"authority first", "//" + e + "/p/x", 404, "no_mapping", ""},
		{"backslash authority", "/p/\\\\" + e + "/x", 200, "", "/base/\\\\" + e + "/x"},
		{"scheme in path", "/p/http://" + e, 200, "", "/base/http://" + e},
		{"parameter that is no dot segment", "/p/a;..;b", 200, "", "/base/a;..;b"},
		{"double-encoded dots pass encoded", "/p/%252e%252e/x", 200, "", "/base/%252e%252e/x"},
		{"encoded NUL passes encoded", "/p/a%00b", 200, "", "/base/a%00b"},
		{"encoded CRLF passes encoded", "/p/a%0d%0aX:%20y", 200, "", "/base/a%0d%0aX:%20y"},
		{"raw UTF-8 passes", "/p/caf\xc3\xa9", 200, "", "/base/caf\xc3\xa9"},
		{"encoded fragment passes", "/p/a%23b", 200, "", "/base/a%23b"},
		{"prefix case differs", "/P/x", 404, "no_mapping", ""},
		{"prefix glued", "/px/y", 404, "no_mapping", ""},
		{"encoded prefix slash", "/p%2Fx", 404, "no_mapping", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits := good.Hits()
			res, body := rawGet(t, addr, tt.target)
			switch {
			case tt.status == http.StatusOK:
				if res.StatusCode != http.StatusOK {
					t.Fatalf("status = %d, want 200 (body %q)", res.StatusCode, body)
				}
				r := good.next(t)
				if r.RequestURI != tt.wantURI || r.Host != good.Addr() {
					t.Errorf("upstream got %q for host %q, want %q for %q", r.RequestURI, r.Host, tt.wantURI, good.Addr())
				}
			case tt.code != "":
				wantProxyError(t, res, body, tt.status, tt.code)
			default:
				if res.StatusCode != tt.status {
					t.Errorf("status = %d, want %d (body %q)", res.StatusCode, tt.status, body)
				}
			}
			if tt.status != http.StatusOK && good.Hits() != hits {
				t.Errorf("the upstream was hit by a refused request")
			}
			if n := evil.Hits(); n != 0 {
				t.Errorf("the other host was hit %d times", n)
			}
		})
	}
}

// TestTargetRefusalsRecorded: a request refused for its path, or for a
// target too long to proxy, matched a mapping, so it is proxied in SPEC
// §12's sense: it leaves a record (stats, metrics and the request log all
// take theirs from it) with its code, and a long path cut short.
func TestTargetRefusalsRecorded(t *testing.T) {
	up := newUpstream(t, nil)
	s, front := newTestServer(t, map[string]string{"/p": up.URL})
	recs := recordRequests(s)
	addr := front.Listener.Addr().String()
	long := "/" + strings.Repeat("a", maxRequestTarget)
	for i, tt := range []struct {
		target, code, path string
		status             int
	}{
		{"/p/a/../b", "bad_path", "/a/../b", http.StatusBadRequest},
		{"/p" + long, "uri_too_long", long[:200] + "…", http.StatusRequestURITooLong},
	} {
		res, body := rawGet(t, addr, tt.target)
		wantProxyError(t, res, body, tt.status, tt.code)
		rec := recs.wait(t, i+1)
		if rec.Prefix != "/p" || rec.Status != tt.status || rec.ProxyErr != tt.code || rec.Path != tt.path || len(rec.Tries) != 0 {
			t.Errorf("record: prefix %q, status %d, code %q, path %.40q, %d tries; want /p, %d, %s, %.40q, none",
				rec.Prefix, rec.Status, rec.ProxyErr, rec.Path, len(rec.Tries), tt.status, tt.code, tt.path)
		}
	}
	if up.Hits() != 0 {
		t.Errorf("the upstream was hit %d times", up.Hits())
	}
}

// TestHostileDoubleSlashEscapes: a rest of the path that starts with "//"
// (a base URL with a trailing slash) cannot go out verbatim; bytes net/url
// will not send raw are percent-encoded, and every escape that came in,
// "%2F" above all, is kept, so the upstream sees the same segments.
func TestHostileDoubleSlashEscapes(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	addr := front.Listener.Addr().String()
	for _, tt := range []struct{ target, want string }{
		{"/p//v1/chat/completions", "//v1/chat/completions"},
		{"/p//x%2Fy\"{}", "//x%2Fy%22%7B%7D"},
		{"/p//caf\xc3\xa9/%2f", "//caf%C3%A9/%2f"},
		{"/p//a:b@c;d=e", "//a:b@c;d=e"},
	} {
		res, body := rawGet(t, addr, tt.target)
		if res.StatusCode != http.StatusOK {
			t.Errorf("%q: status %d (%s), want 200", tt.target, res.StatusCode, body)
			continue
		}
		if got := up.next(t); got.RequestURI != tt.want || got.Host != up.Addr() {
			t.Errorf("%q: upstream got %q for %q, want %q for %q", tt.target, got.RequestURI, got.Host, tt.want, up.Addr())
		}
	}
}

// TestHostileUpgrade: only WebSocket upgrades are tunnelled. Any other
// Upgrade (h2c above all, which would open an HTTP/2 connection on which
// the client could send the upstream any request) is forwarded as a plain
// request without its Upgrade, and an upstream that switches anyway is a
// bad response.
func TestHostileUpgrade(t *testing.T) {
	switched := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			switched <- struct{}{}
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", r.Header.Get("Upgrade"))
			w.WriteHeader(http.StatusSwitchingProtocols)
			return
		}
		io.WriteString(w, "plain")
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	addr := front.Listener.Addr().String()
	for _, proto := range []string{"h2c", "HTTP/2.0", "TLS/1.2", "websocket, h2c"} {
		t.Run(proto, func(t *testing.T) {
			res, body := rawRoundTrip(t, addr, "GET /p/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "+proto+"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
			if res.StatusCode != http.StatusOK || string(body) != "plain" {
				t.Errorf("got %d %q, want the plain answer 200 %q", res.StatusCode, body, "plain")
			}
			got := up.next(t)
			for _, h := range []string{"Upgrade", "Connection", "Http2-Settings"} {
				if v := got.Header.Get(h); v != "" {
					t.Errorf("upstream got %s: %q, want none", h, v)
				}
			}
			select {
			case <-switched:
				t.Errorf("the upstream was asked to switch protocols")
			default:
			}
		})
	}
}

// TestHostileAdminInput: admin API bodies built to slip something invalid
// into the store. Each is a 4xx naming the problem, and the store and the
// routes are unchanged at the end.
func TestHostileAdminInput(t *testing.T) {
	s, front := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	before := storedMappings(t, s)
	routesBefore := len(s.routes.Load().byPrefix)
	mapping := func(prefix, target string) string {
		b, _ := json.Marshal(map[string]string{"prefix": prefix, "target": target})
		return string(b)
	}
	deep := strings.Repeat("[", 30000) + strings.Repeat("]", 30000)
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"prefix a number", "POST", "/api/mappings", `{"prefix":1,"target":"https://x.example"}`, 400, "invalid_json"},
		{"prefix an array", "POST", "/api/mappings", `{"prefix":["/x"],"target":"https://x.example"}`, 400, "invalid_json"},
		{"target null", "POST", "/api/mappings", `{"prefix":"/x","target":null}`, 400, "invalid_target"},
		{"deep nesting", "POST", "/api/mappings", `{"prefix":` + deep + `}`, 400, "invalid_json"},
		{"unknown field", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example","admin":true}`, 400, "invalid_json"},
		{"invalid UTF-8 in a string", "POST", "/api/mappings", "{\"prefix\":\"/x\xff\",\"target\":\"https://x.example\"}", 400, "invalid_prefix"},
		{"huge target", "POST", "/api/mappings", mapping("/x", "https://x.example/"+strings.Repeat("a", 60<<10)), 400, "invalid_target"},
		{"huge prefix", "POST", "/api/mappings", mapping("/"+strings.Repeat("a", 60<<10), "https://x.example"), 400, "invalid_prefix"},
		{"body over 64 KiB", "POST", "/api/mappings", mapping("/x", "https://x.example/"+strings.Repeat("a", 70<<10)), 413, "body_too_large"},
		{"non-ASCII prefix", "POST", "/api/mappings", mapping("/ünïcode", "https://x.example"), 400, "invalid_prefix"},
		{"Cyrillic look-alike prefix", "POST", "/api/mappings", mapping("/оpenai", "https://x.example"), 400, "invalid_prefix"},
		{"fullwidth slash prefix", "POST", "/api/mappings", mapping("／x", "https://x.example"), 400, "invalid_prefix"},
		{"right-to-left override", "POST", "/api/mappings", mapping("/x\u202e", "https://x.example"), 400, "invalid_prefix"},
		{"zero-width space", "POST", "/api/mappings", mapping("/open\u200bai", "https://x.example"), 400, "invalid_prefix"},
		{"escaped NUL in prefix", "POST", "/api/mappings", `{"prefix":"/x\u0000","target":"https://x.example"}`, 400, "invalid_prefix"},
		{"encoded slash in prefix", "POST", "/api/mappings", mapping("/a%2Fb", "https://x.example"), 400, "invalid_prefix"},
		{"reserved prefix in other case", "POST", "/api/mappings", mapping("/API/x", "https://x.example"), 400, "invalid_prefix"},
		{"user info", "POST", "/api/mappings", mapping("/x", "https://user:pw@x.example"), 400, "invalid_target"},
		{"user name only", "POST", "/api/mappings", mapping("/x", "https://user@x.example"), 400, "invalid_target"},
		{"host that is user info", "POST", "/api/mappings", mapping("/x", "https://good.example@evil.example"), 400, "invalid_target"},
		{"backslash before @", "POST", "/api/mappings", mapping("/x", "https://good.example\\@evil.example"), 400, "invalid_target"},
		{"javascript scheme", "POST", "/api/mappings", mapping("/x", "javascript:alert(document.cookie)"), 400, "invalid_target"},
		{"file scheme", "POST", "/api/mappings", mapping("/x", "file:///etc/passwd"), 400, "invalid_target"},
		{"data scheme", "POST", "/api/mappings", mapping("/x", "data:text/html,<script>alert(1)</script>"), 400, "invalid_target"},
		{"gopher scheme", "POST", "/api/mappings", mapping("/x", "gopher://x.example:70/_x"), 400, "invalid_target"},
		{"scheme-relative", "POST", "/api/mappings", mapping("/x", "//x.example"), 400, "invalid_target"},
		{"leading space", "POST", "/api/mappings", mapping("/x", " https://x.example"), 400, "invalid_target"},
		{"control character", "POST", "/api/mappings", mapping("/x", "https://x.example/\u0000"), 400, "invalid_target"},
		{"CRLF", "POST", "/api/mappings", mapping("/x", "https://x.example/\r\nHost: evil"), 400, "invalid_target"},
		{"quote in host", "POST", "/api/mappings", mapping("/x", `https://"x.example/v1`), 400, "invalid_target"},
		{"empty label in host", "POST", "/api/mappings", mapping("/x", "https://api..example"), 400, "invalid_target"},
		{"sub-delim in host", "POST", "/api/mappings", mapping("/x", "https://x!.example"), 400, "invalid_target"},
		{"bracketed IPv4", "POST", "/api/mappings", mapping("/x", "http://[127.0.0.1]:80"), 400, "invalid_target"},
		{"port zero", "POST", "/api/mappings", mapping("/x", "http://x.example:0"), 400, "invalid_target"},
		{"port out of range", "POST", "/api/mappings", mapping("/x", "http://x.example:65536"), 400, "invalid_target"},
		{"fragment with @", "POST", "/api/mappings", mapping("/x", "https://evil.example#@good.example"), 400, "invalid_target"},
		{"PUT javascript", "PUT", "/api/mappings/a", `{"target":"javascript:alert(1)"}`, 400, "invalid_target"},
		{"PUT user info", "PUT", "/api/mappings/a", `{"target":"https://u:p@a.example"}`, 400, "invalid_target"},
		{"PUT target a number", "PUT", "/api/mappings/a", `{"target":1}`, 400, "invalid_json"},
		{"PUT renaming through the body", "PUT", "/api/mappings/a", `{"prefix":"/api","target":"https://a.example"}`, 400, "invalid_prefix"},
		{"PUT dot segment prefix", "PUT", "/api/mappings/a%2F..%2Fadmin", `{"target":"https://a.example"}`, 400, "invalid_prefix"},
		{"DELETE unknown", "DELETE", "/api/mappings/" + strings.Repeat("z", 200), "", 404, "not_found"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := adminCall(t, s, tt.method, tt.path, tt.body, bearer, fmt.Sprintf("192.0.2.%d:1", i+1))
			wantProxyError(t, res, body, tt.status, tt.code)
			if len(body) > 2048 {
				t.Errorf("the error answer is %d bytes: it echoes the input", len(body))
			}
		})
	}
	if got := storedMappings(t, s); !maps.Equal(got, before) {
		t.Errorf("the store holds %v, want %v", got, before)
	}
	if n := len(s.routes.Load().byPrefix); n != routesBefore {
		t.Errorf("the route table holds %d routes, want %d", n, routesBefore)
	}
	// Accepted spellings store exactly what was sent.
	for _, m := range []mappingJSON{
		{"/ollama", "http://127.0.0.1:11434"},
		{"/v6", "http://[::1]:8080/v1"},
		{"/A.b_c~d-e/f", "HTTPS://Upper.Example/Base"},
	} {
		res, body := adminRequest(t, front, "POST", "/api/mappings", mapping(m.Prefix, m.Target))
		if res.StatusCode != http.StatusCreated {
			t.Errorf("create %s -> %s: %d %s", m.Prefix, m.Target, res.StatusCode, body)
			continue
		}
		if got := storedMappings(t, s)[m.Prefix]; got != m.Target {
			t.Errorf("stored %s -> %q, want %q", m.Prefix, got, m.Target)
		}
	}
}

// TestAdminCrossOrigin: the admin API refuses calls a browser makes for
// another origin's page, with any method and even with the right token,
// and never answers with CORS headers; same-origin pages and clients
// without a browser pass.
func TestAdminCrossOrigin(t *testing.T) {
	s, front := newTestServerConfig(t, testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "CORS_ALLOW_ORIGINS": "*"}), nil)
	host := front.Listener.Addr().String()
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		want                     int
	}{
		{"cross-site read", "GET", "/api/mappings", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403},
		{"cross-site write", "POST", "/api/mappings", `{"prefix":"/evil","target":"https://evil.example"}`, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403},
		{"same-site write", "DELETE", "/api/mappings/x", "", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "https://sub.example"}, 403},
		{"cross-site preflight", "OPTIONS", "/api/mappings", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, 403},
		{"old browser, other origin", "POST", "/api/mappings", `{"prefix":"/evil","target":"https://evil.example"}`, map[string]string{"Origin": "https://evil.example"}, 403},
		{"old browser, null origin", "GET", "/api/mappings", "", map[string]string{"Origin": "null"}, 403},
		{"old browser, same host other port", "GET", "/api/mappings", "", map[string]string{"Origin": "http://127.0.0.1:1"}, 403},
		{"same-origin page", "GET", "/api/mappings", "", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://" + host}, 200},
		{"typed in the address bar", "GET", "/api/mappings", "", map[string]string{"Sec-Fetch-Site": "none"}, 200},
		{"old browser, same origin", "GET", "/api/mappings", "", map[string]string{"Origin": "http://" + host}, 200},
		{"TLS terminator in front", "GET", "/api/mappings", "", map[string]string{"Origin": "https://" + host}, 200},
		{"no browser", "GET", "/api/mappings", "", nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, front.URL+tt.path, strings.NewReader(tt.body))
			req.Header.Set("Authorization", bearer)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, res)
			res.Body.Close()
			if tt.want == http.StatusForbidden {
				wantProxyError(t, res, body, http.StatusForbidden, "cross_origin_refused")
			} else if res.StatusCode != tt.want {
				t.Errorf("status = %d, want %d (body %s)", res.StatusCode, tt.want, body)
			}
			for k := range res.Header {
				if strings.HasPrefix(k, "Access-Control-") {
					t.Errorf("the admin API answered with %s: %q", k, res.Header.Get(k))
				}
			}
		})
	}
	if m := storedMappings(t, s); len(m) != 0 {
		t.Errorf("cross-origin calls stored %v", m)
	}
	// Refused calls are not authentication failures: they cannot lock the
	// operator out.
	for range authMaxFailures + 1 {
		adminCall(t, s, "GET", "/api/mappings", "", "Bearer wrong-token-0123456789", "198.51.100.77:1")
		s.authFailures.succeed(context.Background(), "198.51.100.77") // keep only the cross-origin calls below counting
	}
	for range authMaxFailures + 1 {
		req, _ := http.NewRequest("GET", front.URL+"/api/mappings", nil)
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		req.Header.Set("Authorization", "Bearer wrong-token-0123456789")
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	if res, body := adminRequest(t, front, "GET", "/api/mappings", ""); res.StatusCode != http.StatusOK {
		t.Errorf("after refused cross-origin calls the operator gets %d %s, want 200", res.StatusCode, body)
	}
}

// TestSecretsNeverLogged drives every path that logs (upstream errors,
// timeouts, broken streams, client disconnects, admin failures and
// throttling) at debug level with secrets in the headers, query and body:
// no log line and no response holds one.
func TestSecretsNeverLogged(t *testing.T) {
	secrets := []string{"sk-live-SECRET0123456789", "anthropic-SECRET-key-0123", "goog-SECRET-key-0123", "query-SECRET-0123", "body-SECRET-0123", testAdminToken}
	var logs syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	cfg.ResponseHeaderTimeout = 50 * time.Millisecond
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(cfg, logger, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	addr := serveWithHTTPServer(t, s, nil)
	base := "http://" + addr

	ok := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); io.WriteString(w, "ok") })
	stall := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); <-r.Context().Done() })
	broken := newRawUpstream(t, func(conn net.Conn, _ *bufio.ReadWriter) {
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
	})
	garbage := newRawUpstream(t, func(conn net.Conn, _ *bufio.ReadWriter) { io.WriteString(conn, "HTTP/1.1 2OO\r\n\r\n") })
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "http://" + ln.Addr().String()
	ln.Close()
	setMappings(t, s, map[string]string{"/ok": ok.URL, "/stall": stall.URL, "/broken": broken.URL, "/garbage": garbage.URL, "/refused": refused})

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	var responses bytes.Buffer
	send := func(method, path, body string, h map[string]string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		res, err := client.Do(req)
		if err != nil {
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		res.Header.Write(&responses)
		responses.Write(b)
	}
	keys := map[string]string{"Authorization": "Bearer " + secrets[0], "X-Api-Key": secrets[1], "X-Goog-Api-Key": secrets[2]}
	for _, p := range []string{"/ok", "/stall", "/broken", "/garbage", "/refused"} {
		send("POST", p+"/v1/chat/completions?key="+secrets[3], `{"prompt":"`+secrets[4]+`"}`, keys)
	}
	// A client that leaves mid-request.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/stall/x?key="+secrets[3], strings.NewReader(secrets[4]))
	req.Header.Set("Authorization", "Bearer "+secrets[0])
	go func() { <-time.After(10 * time.Millisecond); cancel() }()
	if res, err := client.Do(req); err == nil {
		res.Body.Close()
	}
	// Admin calls: right, wrong (until throttled), malformed.
	admin := map[string]string{"Authorization": "Bearer " + testAdminToken}
	send("POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example","note":"`+secrets[4]+`"}`, admin)
	send("POST", "/api/mappings", `{"prefix":"/y","target":"https://y.example"}`, admin)
	send("GET", "/api/mappings", "", admin)
	for range authMaxFailures + 2 {
		send("GET", "/api/mappings", "", map[string]string{"Authorization": "Bearer " + testAdminToken[:20] + "wrong"})
	}
	send("GET", "/api/mappings", "", admin)
	send("GET", "/stats", "", nil)
	send("GET", "/metrics", "", nil)

	eventually(t, func() bool { return strings.Contains(logs.String(), "upstream error") }, "the upstream errors to be logged")
	for _, secret := range secrets {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %q:\n%s", secret, logs.String())
		}
		if secret == testAdminToken && strings.Contains(responses.String(), secret) {
			t.Errorf("a response holds the admin token")
		}
	}
	if strings.Contains(logs.String(), testAdminToken[:12]) {
		t.Errorf("the log holds a part of the admin token")
	}
}
