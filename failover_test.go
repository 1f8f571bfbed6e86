package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// setMapping stores m in s's store (replacing a mapping of its prefix)
// and publishes the new route table at once.
func setMapping(t testing.TB, s *Server, m Mapping) {
	t.Helper()
	ctx := context.Background()
	if err := s.store.CreateMapping(ctx, m); err != nil {
		if err := s.store.UpdateMapping(ctx, m); err != nil {
			t.Fatalf("store mapping %s: %v", m.Prefix, err)
		}
	}
	if err := s.reloadRoutes(ctx); err != nil {
		t.Fatalf("reloadRoutes: %v", err)
	}
	if s.routes.Load().byPrefix[m.Prefix] == nil {
		t.Fatalf("mapping %s is not routed (invalid?)", m.Prefix)
	}
}

// targetsOf is a mapping of prefix to the given URLs, in order.
func targetsOf(prefix string, urls ...string) Mapping {
	m := Mapping{Prefix: prefix}
	for _, u := range urls {
		m.Targets = append(m.Targets, Target{URL: u})
	}
	return m
}

// refusedURL is the URL of a loopback port that refuses connections: one
// that was listened on and closed.
func refusedURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// statusUpstream answers every request with status and body, after
// reading the request body whole.
func statusUpstream(t testing.TB, status int, body string, header ...string) *upstream {
	t.Helper()
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
}

// recorder collects the records of the requests s finished.
type recorder struct {
	mu   sync.Mutex
	recs []requestRecord
	n    atomic.Int64
}

func recordRequests(s *Server) *recorder {
	r := &recorder{}
	s.proxy.observe = func(rec *requestRecord) {
		c := *rec
		c.Tries = append([]targetTry(nil), rec.Tries...)
		r.mu.Lock()
		r.recs = append(r.recs, c)
		r.mu.Unlock()
		r.n.Add(1)
	}
	return r
}

// wait returns the n-th record (from 1), waiting for it.
func (r *recorder) wait(t testing.TB, n int) requestRecord {
	t.Helper()
	eventually(t, func() bool { return r.n.Load() >= int64(n) }, "request "+strconv.Itoa(n)+" to be recorded")
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recs[n-1]
}

func triesString(tries []targetTry) string {
	var b strings.Builder
	for i, t := range tries {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(int(t.Index)) + ":" + tryOutcomes[t.Outcome])
	}
	return b.String()
}

// TestFailoverOrder: a refused connection and a retry_on status fail over
// to the next target in order; the first answer that is not a failure
// goes to the client, and each target is tried once.
func TestFailoverOrder(t *testing.T) {
	busy := statusUpstream(t, http.StatusServiceUnavailable, "busy")
	ok := statusUpstream(t, http.StatusOK, "from the third")
	after := statusUpstream(t, http.StatusOK, "never")
	s, front := newTestServer(t, nil)
	rec := recordRequests(s)
	setMapping(t, s, targetsOf("/ai", refusedURL(t), busy.URL, ok.URL, after.URL))

	res, err := front.Client().Get(front.URL + "/ai/v1/models?x=1")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "from the third" {
		t.Fatalf("got %d %q, want 200 from the third target", res.StatusCode, body)
	}
	if busy.Hits() != 1 || ok.Hits() != 1 || after.Hits() != 0 {
		t.Errorf("hits = %d, %d, %d; want 1, 1, 0", busy.Hits(), ok.Hits(), after.Hits())
	}
	if got := ok.next(t).RequestURI; got != "/v1/models?x=1" {
		t.Errorf("third target got %q, want /v1/models?x=1", got)
	}
	if got := triesString(rec.wait(t, 1).Tries); got != "0:retried 1:retried 2:ok" {
		t.Errorf("tries = %q, want 0:retried 1:retried 2:ok", got)
	}
}

// TestFailoverLastAnswerUnchanged: when every target fails, the last
// one's answer goes to the client as it is: status, headers, body.
func TestFailoverLastAnswerUnchanged(t *testing.T) {
	first := statusUpstream(t, http.StatusBadGateway, "first")
	last := statusUpstream(t, http.StatusTooManyRequests, `{"error":"slow down"}`, "Content-Type", "application/json", "X-Ratelimit-Remaining", "0")
	s, front := newTestServer(t, nil)
	rec := recordRequests(s)
	setMapping(t, s, targetsOf("/ai", first.URL, last.URL))

	res, err := front.Client().Post(front.URL+"/ai/chat", "application/json", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || string(body) != `{"error":"slow down"}` || res.Header.Get("X-Ratelimit-Remaining") != "0" {
		t.Errorf("got %d %q (X-Ratelimit-Remaining %q), want the last target's 429 unchanged", res.StatusCode, body, res.Header.Get("X-Ratelimit-Remaining"))
	}
	if got := triesString(rec.wait(t, 1).Tries); got != "0:retried 1:error" {
		t.Errorf("tries = %q, want 0:retried 1:error", got)
	}

	// A last target that gives no answer at all: 502, as with one target.
	setMapping(t, s, targetsOf("/gone", first.URL, refusedURL(t)))
	res, err = front.Client().Get(front.URL + "/gone/x")
	if err != nil {
		t.Fatal(err)
	}
	wantProxyError(t, res, readAll(t, res), http.StatusBadGateway, "upstream_unreachable")
	res.Body.Close()
}

// TestFailoverRetryOn: only the mapping's retry_on statuses fail over; an
// empty list fails over on connection errors alone.
func TestFailoverRetryOn(t *testing.T) {
	notFound := statusUpstream(t, http.StatusNotFound, "no")
	unavailable := statusUpstream(t, http.StatusServiceUnavailable, "busy")
	ok := statusUpstream(t, http.StatusOK, "ok")
	_, front := newTestServer(t, nil)
	s := front.Config.Handler.(*Server)
	custom := targetsOf("/custom", notFound.URL, ok.URL)
	custom.RetryOn = []int{404}
	none := targetsOf("/none", unavailable.URL, ok.URL)
	none.RetryOn = []int{}
	plain := targetsOf("/plain", notFound.URL, ok.URL)
	for _, m := range []Mapping{custom, none, plain} {
		setMapping(t, s, m)
	}
	for _, tt := range []struct {
		path   string
		status int
	}{{"/custom/x", 200}, {"/none/x", 503}, {"/plain/x", 404}} {
		res, err := front.Client().Get(front.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.status {
			t.Errorf("%s: status %d, want %d", tt.path, res.StatusCode, tt.status)
		}
	}
}

// TestFailoverReplaysBody: a JSON body and a chunked upload reach the
// next target byte for byte, and the first target gets the first bytes
// of a chunked body before the client sent the rest (the body is kept
// while it streams, never read whole first).
func TestFailoverReplaysBody(t *testing.T) {
	type got struct {
		body []byte
		te   []string
		cl   int64
	}
	seen := make(chan got, 4)
	firstPart := make(chan struct{}, 1)
	first := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		p := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, p); err == nil {
			buf.Write(p)
			firstPart <- struct{}{}
		}
		io.Copy(&buf, r.Body)
		seen <- got{buf.Bytes(), r.TransferEncoding, r.ContentLength}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	second := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- got{b, r.TransferEncoding, r.ContentLength}
		w.Write(b)
	})
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/ai", first.URL, second.URL))

	t.Run("json", func(t *testing.T) {
		body := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"h\u00e9llo \\" \u2028"}],"n":1}` + "\n")
		res, err := front.Client().Post(front.URL+"/ai/v1/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		echo := readAll(t, res)
		res.Body.Close()
		<-firstPart
		a, b := <-seen, <-seen
		if !bytes.Equal(a.body, body) || !bytes.Equal(b.body, body) || !bytes.Equal(echo, body) {
			t.Errorf("bodies: first %q, second %q, echo %q; want %q each", a.body, b.body, echo, body)
		}
		if a.cl != int64(len(body)) || b.cl != int64(len(body)) {
			t.Errorf("Content-Length: first %d, second %d; want %d", a.cl, b.cl, len(body))
		}
	})
	t.Run("chunked", func(t *testing.T) {
		body := make([]byte, 300<<10)
		rand.Read(body)
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", front.URL+"/ai/upload", pr)
		done := make(chan *http.Response, 1)
		go func() {
			res, err := front.Client().Do(req)
			if err != nil {
				t.Error(err)
				close(done)
				return
			}
			done <- res
		}()
		pw.Write(body[:5])
		// The first target reads these 5 bytes while the rest is unsent.
		waitClosed(t, firstPart, "the first bytes to reach the first target")
		pw.Write(body[5 : 100<<10])
		pw.Write(body[100<<10:])
		pw.Close()
		res := <-done
		if res == nil {
			return
		}
		echo := readAll(t, res)
		res.Body.Close()
		a, b := <-seen, <-seen
		if !bytes.Equal(a.body, body) || !bytes.Equal(b.body, body) || !bytes.Equal(echo, body) {
			t.Errorf("bodies differ: first %d bytes, second %d, echo %d; want %d identical", len(a.body), len(b.body), len(echo), len(body))
		}
		if len(b.te) != 1 || b.te[0] != "chunked" {
			t.Errorf("second target's Transfer-Encoding = %v, want chunked as sent", b.te)
		}
	})
}

// TestFailoverBodyOverLimit: a body larger than RETRY_BODY_LIMIT streams
// to the first target once and is not retried; its answer goes to the
// client.
func TestFailoverBodyOverLimit(t *testing.T) {
	var firstGot atomic.Int64
	first := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		firstGot.Store(n)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	second := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServerConfig(t, testConfig(t, map[string]string{"RETRY_BODY_LIMIT": "1KiB"}), nil)
	setMapping(t, s, targetsOf("/ai", first.URL, second.URL))
	for _, chunked := range []bool{false, true} {
		body := bytes.Repeat([]byte("x"), 4<<10)
		var rd io.Reader = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // unknown length: sent chunked
		}
		res, err := front.Client().Post(front.URL+"/ai/upload", "application/octet-stream", rd)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable || second.Hits() != 0 || firstGot.Load() != int64(len(body)) {
			t.Errorf("chunked=%v: status %d, second target hits %d, first got %d bytes; want 503, 0, %d",
				chunked, res.StatusCode, second.Hits(), firstGot.Load(), len(body))
		}
	}
}

// TestBodyKeeperBounded: a keeper holds at most its limit, drops what it
// kept once the body is longer, and a superseded reader reads no more.
func TestBodyKeeperBounded(t *testing.T) {
	src := io.NopCloser(bytes.NewReader(bytes.Repeat([]byte("y"), 10<<10)))
	k := newBodyKeeper(src, -1, 4<<10)
	r := k.reader()
	buf := make([]byte, 1000)
	for k.replayable() {
		if _, err := r.Read(buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		if cap(k.kept) > 4<<10 {
			t.Fatalf("kept %d bytes of capacity, over the 4 KiB limit", cap(k.kept))
		}
	}
	if k.kept != nil || k.n <= 4<<10 {
		t.Errorf("after %d bytes: kept %d bytes, want none (over the limit)", k.n, len(k.kept))
	}
	n, err := io.Copy(io.Discard, r)
	if err != nil || k.n != 10<<10 {
		t.Errorf("the current reader goes on: read %d (%v), total %d; want all 10 KiB", n, err, k.n)
	}

	k = newBodyKeeper(io.NopCloser(strings.NewReader("hello world")), 11, 1<<10)
	r1 := k.reader()
	io.ReadFull(r1, make([]byte, 5))
	r2 := k.reader()
	if _, err := r1.Read(buf); err != errRetried {
		t.Errorf("superseded reader: %v, want errRetried", err)
	}
	if b, err := io.ReadAll(r2); string(b) != "hello world" || err != nil {
		t.Errorf("replay = %q, %v; want the whole body", b, err)
	}
	if k.n != 11 || cap(k.kept) != 11 {
		t.Errorf("known length: read %d, kept capacity %d; want 11 and 11", k.n, cap(k.kept))
	}
}

// TestFailoverNotAfterInterim: once a 1xx other than 100 Continue reached
// the client, nothing is retried; the target's answer goes on.
func TestFailoverNotAfterInterim(t *testing.T) {
	hints := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	second := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/ai", hints.URL, second.URL))
	res, err := front.Client().Get(front.URL + "/ai/x")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || second.Hits() != 0 {
		t.Errorf("status %d, second target hits %d; want 503 and 0", res.StatusCode, second.Hits())
	}
}

// TestFailoverWebSocket: an upgrade that a target refuses (any status but
// 101) or cannot take goes to the next target, which tunnels it.
func TestFailoverWebSocket(t *testing.T) {
	refuses := statusUpstream(t, http.StatusOK, "not a websocket server")
	echo := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		typ, msg, err := c.Read(r.Context())
		if err == nil {
			c.Write(r.Context(), typ, msg)
		}
	})
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/rt", refusedURL(t), refuses.URL, echo.URL))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(front.URL, "http")+"/rt/v1/realtime", nil)
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	defer c.CloseNow()
	if res.StatusCode != http.StatusSwitchingProtocols || refuses.Hits() != 1 {
		t.Errorf("status %d, refusing target hits %d; want 101 and 1", res.StatusCode, refuses.Hits())
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "ping" {
		t.Errorf("echo = %q, %v; want ping", msg, err)
	}
}

// TestCooldownRetryAfter: a 429 with Retry-After (seconds or an HTTP date,
// at most 5 minutes) puts its target in cooldown: the next requests skip
// it while another target is available.
func TestCooldownRetryAfter(t *testing.T) {
	date := time.Now().Add(2 * time.Minute).UTC().Truncate(time.Second)
	for _, tt := range []struct {
		name, value string
		d           time.Duration // the cooldown from the 429; 0: until date
	}{
		{"seconds", "60", time.Minute},
		{"date", date.Format(http.TimeFormat), 0},
		{"capped", "86400", 5 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			limited := statusUpstream(t, http.StatusTooManyRequests, "later", "Retry-After", tt.value)
			ok := statusUpstream(t, http.StatusOK, "ok")
			s, front := newTestServer(t, nil)
			setMapping(t, s, targetsOf("/ai", limited.URL, ok.URL))
			before := time.Now()
			for i := range 3 {
				res, err := front.Client().Get(front.URL + "/ai/x")
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Fatalf("request %d: status %d, want 200 from the second target", i, res.StatusCode)
				}
			}
			after := time.Now()
			if limited.Hits() != 1 || ok.Hits() != 3 {
				t.Errorf("hits = %d, %d; want 1 (then cooling), 3", limited.Hits(), ok.Hits())
			}
			// The cooldown runs d from the 429, which came between before
			// and after (bounds that hold however long the requests
			// took), or ends at the date given.
			lo, hi := before.Add(tt.d), after.Add(tt.d)
			if tt.d == 0 {
				lo, hi = date, date
			}
			st := s.routes.Load().byPrefix["/ai"].targets[0].state
			if until := time.Unix(0, st.until.Load()); until.Before(lo) || until.After(hi) {
				t.Errorf("cooldown ends at %v, want %v to %v", until, lo, hi)
			}
		})
	}
}

// TestCooldownRetryAfterNotRetried: a 429 with Retry-After whose status
// is not in retry_on goes to the client, counts no failure, and still
// pauses its target (SPEC §9): the next requests go to the second.
func TestCooldownRetryAfterNotRetried(t *testing.T) {
	limited := statusUpstream(t, http.StatusTooManyRequests, "later", "Retry-After", "60")
	ok := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServer(t, nil)
	m := targetsOf("/ai", limited.URL, ok.URL)
	m.RetryOn = []int{http.StatusInternalServerError}
	setMapping(t, s, m)
	before := time.Now()
	for i, want := range []int{http.StatusTooManyRequests, http.StatusOK, http.StatusOK} {
		res, err := front.Client().Get(front.URL + "/ai/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d", i, res.StatusCode, want)
		}
	}
	st := s.routes.Load().byPrefix["/ai"].targets[0].state
	if limited.Hits() != 1 || ok.Hits() != 2 || st.fails.Load() != 0 {
		t.Errorf("hits = %d, %d, failures %d; want 1 (then cooling), 2, 0", limited.Hits(), ok.Hits(), st.fails.Load())
	}
	if until := time.Unix(0, st.until.Load()); until.Before(before.Add(time.Minute)) {
		t.Errorf("cooldown ends at %v, want a minute after the 429 (%v or later)", until, before.Add(time.Minute))
	}
}

// TestCooldownAfterFailures: 3 failures in a row put a target in cooldown
// for 30 s; then one request probes it; a failed probe cools it again, a
// success clears it.
func TestCooldownAfterFailures(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	flaky := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	ok := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/ai", flaky.URL, ok.URL))
	get := func() {
		t.Helper()
		res, err := front.Client().Get(front.URL + "/ai/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", res.StatusCode)
		}
	}
	before := time.Now()
	for range 5 {
		get()
	}
	after := time.Now()
	if flaky.Hits() != 3 {
		t.Fatalf("flaky target hits = %d, want 3 (then cooling)", flaky.Hits())
	}
	// 30 s from the third failure, which came between before and after.
	st := s.routes.Load().byPrefix["/ai"].targets[0].state
	if until := time.Unix(0, st.until.Load()); until.Before(before.Add(30*time.Second)) || until.After(after.Add(30*time.Second)) {
		t.Errorf("cooldown ends at %v, want 30 s after the third failure: %v to %v", until, before.Add(30*time.Second), after.Add(30*time.Second))
	}
	// The cooldown ends: one probe, which fails, and the target cools again
	// for 30 s from the probe.
	st.until.Store(time.Now().Add(-time.Millisecond).UnixNano())
	probed := time.Now()
	get()
	get()
	if flaky.Hits() != 4 || st.until.Load() < probed.Add(30*time.Second).UnixNano() {
		t.Errorf("after the cooldown: flaky hits %d (want 4: one probe), cooling again: %v", flaky.Hits(), st.until.Load() > time.Now().UnixNano())
	}
	// The next probe succeeds: the failures are cleared.
	fail.Store(false)
	st.until.Store(time.Now().Add(-time.Millisecond).UnixNano())
	get()
	get()
	if flaky.Hits() != 6 || st.fails.Load() != 0 {
		t.Errorf("after a good probe: flaky hits %d (want 6), failures %d (want 0)", flaky.Hits(), st.fails.Load())
	}
}

// TestCooldownAllCooling: when every target is cooling, the one whose
// cooldown ends first is tried, and the request is not refused.
func TestCooldownAllCooling(t *testing.T) {
	a := statusUpstream(t, http.StatusOK, "a")
	b := statusUpstream(t, http.StatusOK, "b")
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/ai", a.URL, b.URL))
	r := s.routes.Load().byPrefix["/ai"]
	r.targets[0].state.until.Store(time.Now().Add(time.Minute).UnixNano())
	r.targets[1].state.until.Store(time.Now().Add(10 * time.Second).UnixNano())
	res, err := front.Client().Get(front.URL + "/ai/x")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if string(body) != "b" || a.Hits() != 0 {
		t.Errorf("got %q (first target hits %d), want b, the one cooling the shortest", body, a.Hits())
	}
}

// TestFailoverWeighted: a weighted mapping picks its first try in
// proportion to the weights, and fails over to the others in order.
func TestFailoverWeighted(t *testing.T) {
	light := statusUpstream(t, http.StatusOK, "light")
	heavy := statusUpstream(t, http.StatusOK, "heavy")
	s, front := newTestServer(t, nil)
	m := targetsOf("/ai", light.URL, heavy.URL)
	m.Balance, m.Targets[1].Weight = balanceWeighted, 3
	setMapping(t, s, m)
	const n = 400
	for range n {
		res, err := front.Client().Get(front.URL + "/ai/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	// Expected 300 of 400 (sd 8.7): 240-360 is 7 sd either way.
	if h := heavy.Hits(); h < 240 || h > 360 || light.Hits()+h != n {
		t.Errorf("heavy target got %d of %d first tries (light %d), want about 3/4", h, n, light.Hits())
	}
	// A failed pick fails over to the other.
	refused := targetsOf("/down", refusedURL(t), heavy.URL)
	refused.Balance, refused.Targets[0].Weight = balanceWeighted, 1000
	setMapping(t, s, refused)
	res, err := front.Client().Get(front.URL + "/down/x")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200 from the second target", res.StatusCode)
	}
}

// TestStreamIdleTimeout: before the head, a silent target fails over (or
// is 504 upstream_timeout when last); after the head, the client's
// connection is broken and the request counts upstream_idle_timeout.
func TestStreamIdleTimeout(t *testing.T) {
	silent := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	stalls := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ok := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServer(t, nil)
	rec := recordRequests(s)
	// A second: the healthy targets' answers must come within it, even on
	// a loaded machine.
	idle := func(m Mapping) Mapping { m.StreamIdleTimeout = time.Second; return m }
	setMapping(t, s, idle(targetsOf("/fo", silent.URL, ok.URL)))
	setMapping(t, s, idle(targetsOf("/one", silent.URL)))
	setMapping(t, s, idle(targetsOf("/stream", stalls.URL)))

	res, err := front.Client().Get(front.URL + "/fo/x")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if string(body) != "ok" {
		t.Errorf("silent first target: got %d %q, want the second's ok", res.StatusCode, body)
	}
	res, err = front.Client().Get(front.URL + "/one/x")
	if err != nil {
		t.Fatal(err)
	}
	wantProxyError(t, res, readAll(t, res), http.StatusGatewayTimeout, "upstream_timeout")
	res.Body.Close()

	res, err = front.Client().Get(front.URL + "/stream/x")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil || string(b) != "data: 1\n\n" {
		t.Errorf("stalled stream: read %q, %v; want the first event, then a broken connection", b, err)
	}
	if r := rec.wait(t, 3); r.ProxyErr != "upstream_idle_timeout" || r.Status != http.StatusOK {
		t.Errorf("record = %d %q, want 200 upstream_idle_timeout", r.Status, r.ProxyErr)
	}
}

// TestFailoverResponseHeaderTimeout: a target that accepts and never
// answers fails over when UPSTREAM_RESPONSE_HEADER_TIMEOUT is set.
func TestFailoverResponseHeaderTimeout(t *testing.T) {
	silent := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ok := statusUpstream(t, http.StatusOK, "ok")
	// A second: the second target's head must come within it, even on a
	// loaded machine.
	cfg := testConfig(t, map[string]string{"UPSTREAM_RESPONSE_HEADER_TIMEOUT": "1s"})
	s, front := newTestServerConfig(t, cfg, nil)
	setMapping(t, s, targetsOf("/ai", silent.URL, ok.URL))
	res, err := front.Client().Get(front.URL + "/ai/x")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if string(body) != "ok" || silent.Hits() != 1 {
		t.Errorf("got %q (silent hits %d), want the second target's ok", body, silent.Hits())
	}
}

// TestFailoverClientLeaves: a client that leaves while a target is tried
// cancels the request: no further target is tried, and the target is
// not counted as failed.
func TestFailoverClientLeaves(t *testing.T) {
	busy := statusUpstream(t, http.StatusServiceUnavailable, "busy")
	entered := make(chan struct{}, 1)
	slow := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	never := statusUpstream(t, http.StatusOK, "never")
	s, front := newTestServer(t, nil)
	rec := recordRequests(s)
	setMapping(t, s, targetsOf("/ai", busy.URL, slow.URL, never.URL))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/ai/x", nil)
	go func() {
		waitClosed(t, entered, "the second target to be tried")
		cancel()
	}()
	if res, err := front.Client().Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("request succeeded with %d, want it cancelled", res.StatusCode)
	}
	r := rec.wait(t, 1)
	if never.Hits() != 0 || r.Status != 499 || triesString(r.Tries) != "0:retried 1:ok" {
		t.Errorf("third target hits %d, record %d tries %q; want 0, 499, 0:retried 1:ok", never.Hits(), r.Status, triesString(r.Tries))
	}
	if f := s.routes.Load().byPrefix["/ai"].targets[1].state.fails.Load(); f != 0 {
		t.Errorf("second target failures = %d, want 0 (the client left)", f)
	}
}

// TestFailoverStalledBody: a failed answer whose body stalls after its
// head, or trickles, does not hold the request: the next target is tried
// after maxDrainWait and answers. (Before, the client waited for the
// failed body's end, here the end of the test.) The same from an HTTP/2
// upstream, whose body is closed once (a second Close would give its
// unread bytes back to the connection's window twice).
func TestFailoverStalledBody(t *testing.T) {
	release := make(chan struct{})
	stall := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.(http.Flusher).Flush()
		if r.URL.Query().Has("trickle") {
			for {
				select {
				case <-release:
					return
				case <-r.Context().Done():
					return
				case <-time.After(10 * time.Millisecond):
					io.WriteString(w, "busy ")
					w.(http.Flusher).Flush()
				}
			}
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	stalled := newUpstream(t, stall)
	stalledH2 := newTLSUpstream(t, true, stall)
	defer close(release) // before the upstreams' own cleanup, which waits for their handlers
	ok := statusUpstream(t, http.StatusOK, "from the second")
	s, front := newTestServer(t, nil)
	trustUpstream(t, s, stalledH2)
	rec := recordRequests(s)
	setMapping(t, s, targetsOf("/ai", stalled.URL, ok.URL))
	setMapping(t, s, targetsOf("/h2", stalledH2.URL, ok.URL))
	n := 0
	for _, prefix := range []string{"/ai", "/h2"} {
		for _, q := range []string{"", "?trickle", ""} {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			req, _ := http.NewRequestWithContext(ctx, "POST", front.URL+prefix+"/x"+q, strings.NewReader(`{"n":1}`))
			res, err := front.Client().Do(req)
			if err != nil {
				cancel()
				t.Fatalf("%s%q: %v", prefix, q, err)
			}
			body := readAll(t, res)
			res.Body.Close()
			cancel()
			if res.StatusCode != http.StatusOK || string(body) != "from the second" {
				t.Errorf("%s%q: got %d %q, want the second target's 200", prefix, q, res.StatusCode, body)
			}
			n++
			if got := triesString(rec.wait(t, n).Tries); got != "0:retried 1:ok" {
				t.Errorf("%s%q: tries = %q, want 0:retried 1:ok", prefix, q, got)
			}
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"0", 0}, {"-5", 0}, {"abc", 0}, {"7", 7 * time.Second}, {"301", 5 * time.Minute},
		{"Wed, 02 Dec 2026 12:01:00 GMT", time.Minute}, {"Wed, 02 Dec 2026 11:59:00 GMT", 0},
		{"Wed, 02 Dec 2026 13:00:00 GMT", 5 * time.Minute},
	} {
		if got := parseRetryAfter(tt.v, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

// connSet counts the distinct client connections (remote addresses) that
// requests came on.
type connSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (c *connSet) add(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]bool{}
	}
	c.m[r.RemoteAddr] = true
}

func (c *connSet) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// TestFailoverReusesConnections: the failed answer's body is drained, so
// its connection is kept: a failover costs one dial to each target the
// first time, and none after.
func TestFailoverReusesConnections(t *testing.T) {
	var busyConns, okConns connSet
	busy := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		busyConns.add(r)
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, strings.Repeat("overloaded ", 100))
	})
	ok := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		okConns.add(r)
		io.WriteString(w, "ok")
	})
	s, front := newTestServer(t, nil)
	setMapping(t, s, targetsOf("/ai", busy.URL, ok.URL))
	for range 20 {
		res, err := front.Client().Post(front.URL+"/ai/x", "application/json", strings.NewReader(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", res.StatusCode)
		}
	}
	// 3 failures put the busy target in cooldown: 3 tries, on one connection.
	if busy.Hits() != 3 || busyConns.len() != 1 || okConns.len() != 1 {
		t.Errorf("busy target: %d tries on %d connections; ok target: %d connections; want 3 on 1, and 1",
			busy.Hits(), busyConns.len(), okConns.len())
	}
}

// BenchmarkFailover measures what a failover adds to a request: "direct"
// goes to a target that answers, "after-503" to one that answers 503 and
// then to that same answering target (the busy one never cools: its
// failures are cleared before each request). Both through real loopback
// connections, kept alive.
func BenchmarkFailover(b *testing.B) {
	busy := statusUpstream(b, http.StatusServiceUnavailable, "busy")
	ok := statusUpstream(b, http.StatusOK, strings.Repeat("x", 1<<10))
	s, front := newTestServer(b, nil)
	setMapping(b, s, targetsOf("/direct", ok.URL))
	setMapping(b, s, targetsOf("/failover", busy.URL, ok.URL))
	st := s.routes.Load().byPrefix["/failover"].targets[0].state
	client := front.Client()
	for _, path := range []string{"/direct", "/failover"} {
		name := map[string]string{"/direct": "direct", "/failover": "after-503"}[path]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				st.fails.Store(0)
				res, err := client.Get(front.URL + path + "/v1/chat")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
	}
}
