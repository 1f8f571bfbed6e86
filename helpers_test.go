package main

// Shared test helpers. Every helper takes a testing.TB, calls Helper() and
// registers its own cleanup, so a test never closes what a helper opened.
// Admin, Redis and stats tests reuse them:
//
//	up := newUpstream(t, nil)                                   // counting backend
//	s, front := newTestServer(t, map[string]string{"/p": up.URL}) // frontend
//	res, err := front.Client().Get(front.URL + "/p/x")
//	up.Hits()                                                   // requests it saw

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testTimeout bounds every wait in the tests: a step that should take
// microseconds fails the test after it instead of hanging the run.
const testTimeout = 10 * time.Second

// testLogger discards everything; tests assert on behaviour, not logs.
func testLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// testConfig returns the Config of an empty environment, changed by env
// (getenv keys, e.g. "CORS_ALLOW_ORIGINS"), with a fresh DataDir and
// ListenAddr 127.0.0.1:0. STREAM_HANDOFF, STREAM_HANDOFF_AFTER and RAW_IO,
// unless env sets them, are the test process's own: `STREAM_HANDOFF=off go
// test` runs the tests on the plain ReverseProxy path, `RAW_IO=off go test`
// with net.Conn's socket I/O. RUNTIME_TUNING stays off: GOMAXPROCS and GOGC are the
// test process's, and run (startRun) must not tune them under other tests.
func testConfig(t testing.TB, env map[string]string) Config {
	t.Helper()
	getenv := func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		if k == "STREAM_HANDOFF" || k == "STREAM_HANDOFF_AFTER" || k == "RAW_IO" {
			return os.Getenv(k)
		}
		return ""
	}
	cfg, err := loadConfig(getenv, nil, io.Discard)
	if err != nil {
		t.Fatalf("loadConfig(%v): %v", env, err)
	}
	cfg.DataDir = t.TempDir()
	cfg.ListenAddr = "127.0.0.1:0"
	return cfg
}

// newTestServer is newTestServerConfig with testConfig(t, nil).
func newTestServer(t testing.TB, mappings map[string]string) (*Server, *httptest.Server) {
	t.Helper()
	return newTestServerConfig(t, testConfig(t, nil), mappings)
}

// newTestServerConfig builds a Server on a fresh embedded store under
// cfg.DataDir whose mappings are exactly mappings (the seeded defaults are
// removed), and serves it with newFront. Background loops are not started;
// call s.Start() to test reloads on Changes. Cleanup closes the frontend
// (cutting in-flight requests, so a failed test never hangs), the upstream
// connections, and the Server with its store.
func newTestServerConfig(t testing.TB, cfg Config, mappings map[string]string) (*Server, *httptest.Server) {
	t.Helper()
	s := newTestServerOnly(t, cfg, mappings)
	return s, newFront(t, s)
}

// newTestServerOnly is newTestServerConfig without the frontend, for a test
// that serves s its own way.
func newTestServerOnly(t testing.TB, cfg Config, mappings map[string]string) *Server {
	t.Helper()
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatalf("openBoltStore: %v", err)
	}
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		store.Close()
		t.Fatalf("newServer: %v", err)
	}
	t.Cleanup(func() {
		if c, ok := s.proxy.transport.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
		s.Close()
	})
	setMappings(t, s, mappings)
	return s
}

// newFront serves s with httptest on the http.Server run builds
// (s.httpServer), through s.listener and on s's recycler as run does.
// Cleanup closes it.
func newFront(t testing.TB, s *Server) *httptest.Server {
	t.Helper()
	front := httptest.NewUnstartedServer(s)
	front.Config = s.httpServer()
	front.Listener = s.listener(front.Listener)
	front.Start()
	serveRecycled(front, s)
	t.Cleanup(func() { closeFront(t, front) })
	return front
}

// serveRecycled serves front's http.Server on s's recycler too, as run
// does, so that the connections of s's handed-off streams come back to it
// (stream.go); closeFront stops it. Nothing to do when s has no recycler
// (STREAM_HANDOFF off).
func serveRecycled(front *httptest.Server, s *Server) {
	if s.recycler == nil {
		return
	}
	r := recycled{rec: s.recycler, served: make(chan struct{})}
	recyclers.Store(front, r)
	go func() {
		defer close(r.served)
		front.Config.Serve(r.rec)
	}()
}

// recycled is a frontend's connRecycler and the end of its Serve loop.
type recycled struct {
	rec    *connRecycler
	served chan struct{}
}

var recyclers sync.Map // *httptest.Server → recycled

// closeFront cuts the frontend's connections and waits for its handlers.
// When a broken proxy keeps a handler waiting on an upstream that waits in
// turn, the wait gives up after testTimeout so that the upstreams' own
// cleanup (which runs next) can end both.
func closeFront(t testing.TB, front *httptest.Server) {
	t.Helper()
	if r, ok := recyclers.LoadAndDelete(front); ok {
		// Its Serve loop must have returned before front.Close: each
		// connection it accepts is counted (httptest's WaitGroup.Add)
		// as new, which must not race with Close's Wait.
		r.(recycled).rec.Close()
		<-r.(recycled).served
	}
	front.CloseClientConnections()
	closed := make(chan struct{})
	go func() {
		front.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Errorf("frontend handlers still running %v after the test", testTimeout)
	}
}

// withoutWatcher stops s's stream watcher, before any request: its
// handed-off streams then watch their clients, and raw streams their
// upstream, as where epoll is not available.
func withoutWatcher(s *Server) {
	s.proxy.watcher.close()
	s.proxy.watcher = nil
}

// handoffOn reports whether s hands streams off: false when the tests run
// with STREAM_HANDOFF=off, where the checks of its counters do not apply.
func handoffOn(s *Server) bool { return s.proxy.streamHandoff }

// handedOffAtOnce reports whether s hands event streams off as their head
// comes (STREAM_HANDOFF_AFTER=0); otherwise a test's short streams are
// written through net/http to their end (stream_here.go).
func handedOffAtOnce(s *Server) bool { return s.proxy.streamHandoff && s.proxy.handoffAfter == 0 }

// setMappings replaces every mapping in s's store with m and publishes the
// new route table at once.
func setMappings(t testing.TB, s *Server, m map[string]string) {
	t.Helper()
	ctx := context.Background()
	old, err := s.store.Mappings(ctx)
	if err != nil {
		t.Fatalf("list mappings: %v", err)
	}
	for _, o := range old {
		if err := s.store.DeleteMapping(ctx, o.Prefix); err != nil {
			t.Fatalf("delete mapping %s: %v", o.Prefix, err)
		}
	}
	for prefix, target := range m {
		if err := s.store.CreateMapping(ctx, newMapping(prefix, target)); err != nil {
			t.Fatalf("create mapping %s -> %s: %v", prefix, target, err)
		}
	}
	if err := s.reloadRoutes(ctx); err != nil {
		t.Fatalf("reloadRoutes: %v", err)
	}
	if got := len(s.routes.Load().byPrefix); got != len(m) {
		t.Fatalf("route table holds %d routes, want %d (a mapping failed validation?)", got, len(m))
	}
}

// upstream is an httptest backend that counts the requests it receives and
// remembers them in order.
type upstream struct {
	*httptest.Server
	hits atomic.Int64
	seen chan seenRequest // buffered; requests beyond its capacity are not kept
}

// seenRequest is what an upstream received, recorded before its handler
// runs (the body is left to the handler).
type seenRequest struct {
	Method, Host, RequestURI string
	Header                   http.Header
	ContentLength            int64
	TransferEncoding         []string
}

// heldStream answers an event stream whose first event, "data: 1", is
// flushed with the head; it then waits for release, and writes rest to end
// the stream, or returns at once when the request ends.
func heldStream(release <-chan struct{}, rest string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, rest)
	}
}

// newUpstream starts a backend running h (nil: answer 200 "ok"). Cleanup
// cuts its connections and closes it; handlers that block must also watch
// r.Context().Done().
func newUpstream(t testing.TB, h http.HandlerFunc) *upstream {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }
	}
	u := &upstream{seen: make(chan seenRequest, 64)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		select {
		case u.seen <- seenRequest{
			Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, Header: r.Header.Clone(),
			ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding,
		}:
		default:
		}
		h(w, r)
	}))
	t.Cleanup(func() {
		u.CloseClientConnections()
		u.Close()
	})
	return u
}

// newIdleStreamUpstream starts a backend that answers with an event stream
// of one event, then idles until its request is cancelled, which it
// reports on the returned channel.
func newIdleStreamUpstream(t testing.TB) (*upstream, <-chan struct{}) {
	t.Helper()
	cancelled := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	return up, cancelled
}

// newRawUpstream starts a backend that hands each request's hijacked
// connection to fn after the request head was read, so fn can answer with
// arbitrary bytes (or none). The connection is closed when fn returns.
func newRawUpstream(t testing.TB, fn func(conn net.Conn, rw *bufio.ReadWriter)) *upstream {
	t.Helper()
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		fn(conn, rw)
	})
}

// Hits is the number of requests the upstream received.
func (u *upstream) Hits() int64 { return u.hits.Load() }

// Addr is the upstream's host:port.
func (u *upstream) Addr() string { return u.Listener.Addr().String() }

// next returns the next request the upstream saw, failing the test if none
// arrives within testTimeout.
func (u *upstream) next(t testing.TB) seenRequest {
	t.Helper()
	select {
	case r := <-u.seen:
		return r
	case <-time.After(testTimeout):
		t.Fatalf("upstream saw no request within %v", testTimeout)
		return seenRequest{}
	}
}

// rawRoundTrip sends the raw request bytes on a fresh TCP connection to
// addr and reads one response with its whole body. The request is sent as
// written: use it for request targets and headers that http.Client would
// normalise.
func rawRoundTrip(t testing.TB, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("write request: %v", err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLine(raw), err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("read response body to %q: %v", firstLine(raw), err)
	}
	return res, body
}

// rawGet is rawRoundTrip of a GET of target (sent verbatim) with a Host
// header and no other.
func rawGet(t testing.TB, addr, target string) (*http.Response, []byte) {
	t.Helper()
	return rawRoundTrip(t, addr, "GET "+target+" HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// wantProxyError checks that a response is the proxy's own JSON error:
// the status, and exactly {"error":{"message","type":"proxy_error","code"}}
// with a non-empty message.
// wantFieldErrors checks the "errors" of an error envelope (raw): a
// non-empty list of {"field", "message"}, each message naming its field
// (first, but for `give either "target" … or "targets"`),
// the first equal to the envelope's message (rawMessage).
func wantFieldErrors(t testing.TB, raw, rawMessage json.RawMessage) {
	t.Helper()
	var list []map[string]string
	if err := json.Unmarshal(raw, &list); err != nil || len(list) == 0 {
		t.Errorf("error.errors = %s, want a non-empty list of {field, message} (%v)", raw, err)
		return
	}
	for i, e := range list {
		if len(e) != 2 || e["field"] == "" || !strings.Contains(e["message"], e["field"]) {
			t.Errorf("error.errors[%d] = %v, want exactly field and a message that names it", i, e)
		}
	}
	var message string
	json.Unmarshal(rawMessage, &message)
	if list[0]["message"] != message {
		t.Errorf("error.errors[0].message = %q, want the envelope's message %q", list[0]["message"], message)
	}
}

func wantProxyError(t testing.TB, res *http.Response, body []byte, status int, code string) {
	t.Helper()
	if res.StatusCode != status {
		t.Errorf("status = %d, want %d (body %q)", res.StatusCode, status, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var env struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("error body %q is not the JSON envelope: %v", body, err)
	}
	fields := map[string]string{}
	for k, v := range env.Error {
		if k == "errors" {
			wantFieldErrors(t, v, env.Error["message"])
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			t.Errorf("error.%s = %s, want a string", k, v)
		}
		fields[k] = s
	}
	if len(fields) != 3 || fields["message"] == "" {
		t.Errorf("error fields = %v, want exactly message (non-empty), type, code (and errors)", fields)
	}
	if fields["type"] != "proxy_error" {
		t.Errorf("error.type = %q, want %q", fields["type"], "proxy_error")
	}
	if fields["code"] != code {
		t.Errorf("error.code = %q, want %q", fields["code"], code)
	}
}

// readAll reads res's body, failing the test on an error.
func readAll(t testing.TB, res *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

// waitClosed waits until ch is closed or receives, failing the test with
// what after testTimeout.
func waitClosed[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out after %v waiting for %s", testTimeout, what)
	}
}

// eventually polls cond until it holds, failing the test with what after
// testTimeout. For state changed by another goroutine with no signal to
// wait on (e.g. a listener being closed).
func eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", testTimeout, what)
		}
		<-tick.C
	}
}
