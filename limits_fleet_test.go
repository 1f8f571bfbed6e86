package main

// Limits through real HTTP on a fleet of Servers that share one real
// redis-server (SPEC §11): exact across instances, tokens counted at a
// response's end, concurrency slots held by open streams, the fallback to
// each instance's own counts during an outage, and a burst against a small
// rpm. Every request goes through a frontend to an httptest upstream; the
// tests wait on the proxy's request records (a ticket is released before
// its request is recorded, proxy.go finish), never on sleeps.

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fleetMember is one Server of a test fleet with its frontend and the
// records of the requests it finished.
type fleetMember struct {
	s     *Server
	front *httptest.Server
	rec   *recorder
	logs  *syncBuffer // what s logged, text
}

// newFleetMember serves a Server on store, logging into a buffer, with
// the shared limiter's probe shortened so that a test sees Redis come back
// within milliseconds, and serves it as run does (newFront). Cleanup
// closes the frontend, then the Server.
func newFleetMember(t testing.TB, store Store) *fleetMember {
	t.Helper()
	logs := &syncBuffer{}
	s, err := newServer(testConfig(t, nil), slog.New(slog.NewTextHandler(logs, nil)), store, nil)
	if err != nil {
		store.Close()
		t.Fatalf("newServer: %v", err)
	}
	if rl, ok := s.proxy.limiter.(*redisLimiter); ok {
		rl.probeEvery = 10 * time.Millisecond
	} else {
		t.Fatalf("limiter on a redis store is %T, want *redisLimiter", s.proxy.limiter)
	}
	rec := recordRequests(s)
	s.Start()
	t.Cleanup(func() { s.Close() })
	return &fleetMember{s: s, front: newFront(t, s), rec: rec, logs: logs}
}

// newFleet serves n Servers on the Redis at addr, under one key prefix,
// as n instances of one deployment would be.
func newFleet(t testing.TB, addr string, n int) []*fleetMember {
	t.Helper()
	prefix := testKeyPrefix(t, addr)
	fleet := make([]*fleetMember, n)
	for i := range fleet {
		fleet[i] = newFleetMember(t, openTestRedisStore(t, addr, prefix, ""))
	}
	return fleet
}

// setFleetMapping stores m through the first member and reloads every
// member's routes, so that all route it before the test goes on.
func setFleetMapping(t testing.TB, fleet []*fleetMember, m Mapping) {
	t.Helper()
	setMapping(t, fleet[0].s, m)
	reloadFleet(t, fleet[1:], m.Prefix)
}

// setFleetKeys stores keys through the first member and reloads every
// member, as the keys API and Pub/Sub would.
func setFleetKeys(t testing.TB, fleet []*fleetMember, keys ...ProxyKey) {
	t.Helper()
	setKeys(t, fleet[0].s, keys...)
	reloadFleet(t, fleet[1:], "")
}

func reloadFleet(t testing.TB, members []*fleetMember, prefix string) {
	t.Helper()
	for _, f := range members {
		if err := f.s.reloadRoutes(context.Background()); err != nil {
			t.Fatalf("reloadRoutes: %v", err)
		}
		if prefix != "" && f.s.routes.Load().byPrefix[prefix] == nil {
			t.Fatalf("mapping %s is not routed on every instance", prefix)
		}
	}
}

// limitAnswer is what a client saw of one request.
type limitAnswer struct {
	status     int
	retryAfter string
	body       []byte
	res        *http.Response // body unread when hold was set
}

// send makes req through client; with hold, the body of a 200 is left
// open (the caller closes it), after its first line was read.
func send(t testing.TB, client *http.Client, req *http.Request, hold bool) limitAnswer {
	t.Helper()
	res, err := client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL, err)
		return limitAnswer{}
	}
	a := limitAnswer{status: res.StatusCode, retryAfter: res.Header.Get("Retry-After"), res: res}
	if hold && res.StatusCode == http.StatusOK {
		// The first SSE event: the stream is open end to end.
		buf := make([]byte, len("data: 1\n\n"))
		if _, err := io.ReadFull(res.Body, buf); err != nil {
			t.Errorf("read the first event of a held stream: %v", err)
		}
		return a
	}
	a.body, err = io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Errorf("read body: %v", err)
	}
	return a
}

// burst sends n requests at once, the i-th to fleet[i % len(fleet)], and
// returns the answers in order. newReq builds the request for a frontend.
func burst(t testing.TB, fleet []*fleetMember, n int, hold bool, newReq func(front string) *http.Request) []limitAnswer {
	t.Helper()
	out := make([]limitAnswer, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		f := fleet[i%len(fleet)]
		req := newReq(f.front.URL)
		wg.Go(func() {
			<-start
			out[i] = send(t, f.front.Client(), req, hold)
		})
	}
	close(start)
	wg.Wait()
	return out
}

// checkRefusals checks that every answer is 200 or a 429 rate_limited
// with a Retry-After of 1 to 60 whole seconds, and returns how many were
// 200.
func checkRefusals(t testing.TB, answers []limitAnswer) (ok int) {
	t.Helper()
	for _, a := range answers {
		switch a.status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			wantProxyError(t, a.res, a.body, http.StatusTooManyRequests, "rate_limited")
			if ra, err := strconv.Atoi(a.retryAfter); err != nil || ra < 1 || ra > 60 {
				t.Errorf("Retry-After = %q, want whole seconds from 1 to 60", a.retryAfter)
			}
		default:
			t.Errorf("status = %d (%s), want 200 or 429", a.status, a.body)
		}
	}
	return ok
}

func getReq(url string) *http.Request {
	req, _ := http.NewRequest("GET", url, nil)
	return req
}

// TestLimitsFleetRPM: three instances on one Redis, an rpm limit on a
// mapping, three times as many near-simultaneous requests round-robin:
// exactly rpm are admitted, the others are 429 with Retry-After, and the
// upstream saw exactly rpm. At rpm 10 each request makes its own call; at
// 100 most are admitted from allowances (limiter_lease.go).
func TestLimitsFleetRPM(t *testing.T) {
	addr := testRedisAddr(t)
	for _, rpm := range []int{10, 100} {
		t.Run(strconv.Itoa(rpm), func(t *testing.T) {
			fleet := newFleet(t, addr, 3)
			up := statusUpstream(t, http.StatusOK, "ok")
			m := targetsOf("/fleet", up.URL)
			m.Limits.RPM = int64(rpm)
			setFleetMapping(t, fleet, m)

			rc := fleet[0].s.proxy.limiter.(*redisLimiter).client
			start := redisMillis(t, rc)
			answers := burst(t, fleet, 3*rpm, false, func(front string) *http.Request { return getReq(front + "/fleet/x") })
			end := redisMillis(t, rc)
			if ok := checkRefusals(t, answers); ok != rpm {
				t.Errorf("admitted %d of %d at rpm %d on 3 instances, want %d", ok, 3*rpm, rpm, rpm)
			}
			if got := up.Hits(); got != int64(rpm) {
				t.Errorf("upstream saw %d requests, want %d", got, rpm)
			}
			// The oldest admission leaves the window 60 s after it: no
			// sooner than start+60 s, Redis time, and the refusals were
			// made by end, so Retry-After is at least the whole seconds
			// from end to then (59 or 60 unless the burst was slow).
			lo := retryFloor(start+60000, end)
			for _, a := range answers {
				if a.status == http.StatusTooManyRequests {
					if ra, _ := strconv.Atoi(a.retryAfter); int64(ra) < lo {
						t.Errorf("rpm Retry-After = %d, want %d to 60", ra, lo)
					}
				}
			}
		})
	}
}

// heldStreamUpstream answers every request with one SSE event and holds
// the stream open until the client leaves or end is closed. ended
// receives once per stream that ended.
func heldStreamUpstream(t testing.TB) (up *upstream, end chan struct{}, ended <-chan struct{}) {
	t.Helper()
	end = make(chan struct{})
	done := make(chan struct{}, 64)
	up = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-end:
			io.WriteString(w, "data: [DONE]\n\n")
		}
		done <- struct{}{}
	})
	return up, end, done
}

// TestLimitsFleetConcurrency: a key of concurrency 2 on three instances,
// 30 near-simultaneous streams round-robin: exactly 2 are held open
// across the fleet, the rest 429; when one ends, the next request (on any
// instance) gets its slot, and only that one.
func TestLimitsFleetConcurrency(t *testing.T) {
	addr := testRedisAddr(t)
	fleet := newFleet(t, addr, 3)
	up, _, ended := heldStreamUpstream(t)
	k, secret := testKey("two-streams")
	k.Limits.Concurrency = 2
	setFleetKeys(t, fleet, k)
	setFleetMapping(t, fleet, keysMapping("/conc", up.URL, "sk-up", "bearer"))
	newReq := func(front string) *http.Request {
		req := getReq(front + "/conc/v1/chat/completions")
		req.Header.Set("Authorization", "Bearer "+secret)
		return req
	}

	answers := burst(t, fleet, 30, true, newReq)
	var held []limitAnswer
	for _, a := range answers {
		if a.status == http.StatusOK {
			held = append(held, a)
		}
	}
	if ok := checkRefusals(t, answers); ok != 2 {
		t.Fatalf("held %d streams of 30 at concurrency 2 on 3 instances, want 2", ok)
	}
	for _, a := range answers {
		if a.status == http.StatusTooManyRequests && a.retryAfter != "1" {
			t.Errorf("concurrency Retry-After = %q, want 1", a.retryAfter)
		}
	}
	if got := up.Hits(); got != 2 {
		t.Errorf("upstream saw %d requests, want 2", got)
	}

	// The client of one stream leaves: once the proxy recorded that
	// request (its slot freed just before), one more is admitted.
	recorded := func() int64 {
		var n int64
		for _, f := range fleet {
			n += f.rec.n.Load()
		}
		return n
	}
	before := recorded()
	held[0].res.Body.Close()
	waitClosed(t, ended, "the first stream to end upstream")
	eventually(t, func() bool { return recorded() > before }, "the ended stream to be recorded")

	next := burst(t, fleet, 6, true, newReq)
	if ok := checkRefusals(t, next); ok != 1 {
		t.Errorf("after one stream ended: admitted %d of 6, want 1", ok)
	}
	for _, a := range append(next, held[1]) {
		if a.status == http.StatusOK {
			a.res.Body.Close()
		}
	}
}

// TestLimitsTPM: a mapping with tpm 100 whose upstream reports 40 tokens
// per response: three responses are admitted (0, 40, 80 counted before
// each), then 120 ≥ 100 refuses the fourth with 429 rate_limited. On the
// fleet the tokens counted by one instance refuse on another.
func TestLimitsTPM(t *testing.T) {
	const body = `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-test",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}`
	for _, tt := range []struct {
		name  string
		fleet func(t *testing.T) []*fleetMember
	}{
		{"local", func(t *testing.T) []*fleetMember {
			s, front := newTestServer(t, nil)
			return []*fleetMember{{s: s, front: front, rec: recordRequests(s)}}
		}},
		{"redis fleet", func(t *testing.T) []*fleetMember { return newFleet(t, testRedisAddr(t), 3) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fleet := tt.fleet(t)
			up := statusUpstream(t, http.StatusOK, body, "Content-Type", "application/json")
			m := targetsOf("/tpm", up.URL)
			m.Limits.TPM = 100
			setFleetMapping(t, fleet, m)

			for i := range 4 {
				f := fleet[i%len(fleet)]
				req, _ := http.NewRequest("POST", f.front.URL+"/tpm/v1/chat/completions",
					strings.NewReader(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`))
				req.Header.Set("Content-Type", "application/json")
				before := f.rec.n.Load()
				a := send(t, f.front.Client(), req, false)
				if i < 3 {
					if a.status != http.StatusOK {
						t.Fatalf("request %d (%d tokens counted): %d %s, want 200", i+1, 40*i, a.status, a.body)
					}
					// Its tokens are counted when its response ends, before
					// the request is recorded.
					eventually(t, func() bool { return f.rec.n.Load() > before }, "the response to be recorded")
					continue
				}
				wantProxyError(t, a.res, a.body, http.StatusTooManyRequests, "rate_limited")
				if ra, err := strconv.Atoi(a.retryAfter); err != nil || ra < 1 || ra > 60 {
					t.Errorf("Retry-After = %q, want 1 to 60 seconds", a.retryAfter)
				}
				if !strings.Contains(string(a.body), "tpm") {
					t.Errorf("refusal %s does not name the tpm limit", a.body)
				}
			}
			if got := up.Hits(); got != 3 {
				t.Errorf("upstream saw %d requests, want 3", got)
			}
		})
	}
}

// TestLimitsRedisOutage kills the Redis under two instances with rpm 3
// on a mapping: requests are still proxied and each instance enforces the
// limit alone from its own counts, each log says so once; when Redis is
// back (with what it held: an append-only file) the shared count applies
// to the fleet again.
func TestLimitsRedisOutage(t *testing.T) {
	rs := startRedisServerPersist(t, true)
	prefix := testKeyPrefix(t, rs.addr())
	var fleet []*fleetMember
	for range 2 {
		fleet = append(fleet, newFleetMember(t, openTestRedisStore(t, rs.addr(), prefix, "")))
	}
	up := statusUpstream(t, http.StatusOK, "ok")
	m := targetsOf("/out", up.URL)
	m.Limits.RPM = 3
	setFleetMapping(t, fleet, m)

	admitted := func(f *fleetMember, n int) int {
		ok := 0
		for range n {
			a := send(t, f.front.Client(), getReq(f.front.URL+"/out/x"), false)
			switch a.status {
			case http.StatusOK:
				ok++
			case http.StatusTooManyRequests:
			default:
				t.Errorf("status = %d %s, want 200 or 429", a.status, a.body)
			}
		}
		return ok
	}
	if got := admitted(fleet[0], 2); got != 2 {
		t.Fatalf("redis up: admitted %d of 2 at rpm 3", got)
	}

	rs.kill()
	for i, f := range fleet {
		if got := admitted(f, 5); got != 3 {
			t.Errorf("redis down, instance %d: admitted %d of 5 at rpm 3, want 3 (its own counts)", i, got)
		}
	}
	if got := up.Hits(); got != 2+3+3 {
		t.Errorf("upstream saw %d requests, want 8 (proxying goes on)", got)
	}

	rs.start()
	for _, f := range fleet {
		rl := f.s.proxy.limiter.(*redisLimiter)
		eventually(t, func() bool { return !rl.down.Load() }, "the limiter to see redis back")
	}
	// The shared log still holds the 2 admitted before the outage: one
	// more across the fleet.
	if got := admitted(fleet[1], 2) + admitted(fleet[0], 2); got != 1 {
		t.Errorf("redis back: admitted %d of 4 across the fleet, want 1 (shared count: 2 of 3 used)", got)
	}
	for i, f := range fleet {
		out := f.logs.String()
		if n := strings.Count(out, "rate limits: redis unreachable"); n != 1 {
			t.Errorf("instance %d logged the fallback %d times, want once:\n%s", i, n, out)
		}
		if n := strings.Count(out, "rate limits: redis reachable again"); n != 1 {
			t.Errorf("instance %d logged the recovery %d times, want once:\n%s", i, n, out)
		}
	}
}

// TestLimitsBurst: 10,000 requests from 50 clients at once against rpm 5
// through one instance: 5 are admitted, every other one is answered 429
// at once (nothing reaches the upstream), and the shared rpm log holds 5
// entries.
func TestLimitsBurst(t *testing.T) {
	addr := testRedisAddr(t)
	fleet := newFleet(t, addr, 1)
	f := fleet[0]
	up := statusUpstream(t, http.StatusOK, "ok")
	k, secret := testKey("bursty")
	k.Limits.RPM = 5
	setFleetKeys(t, fleet, k)
	setFleetMapping(t, fleet, keysMapping("/burst", up.URL, "sk-up", "bearer"))

	tr := f.front.Client().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64 // one kept connection per worker
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	const total, workers = 10000, 50
	jobs := make(chan struct{})
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range jobs {
				req := getReq(f.front.URL + "/burst/x")
				req.Header.Set("Authorization", "Bearer "+secret)
				res, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				switch res.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusTooManyRequests:
					refused.Add(1)
				default:
					t.Errorf("status = %d, want 200 or 429", res.StatusCode)
				}
			}
		})
	}
	start := time.Now()
	for range total {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d requests in %v", total, time.Since(start))
	if ok.Load() != 5 || refused.Load() != total-5 {
		t.Errorf("admitted %d, refused %d; want 5 and %d", ok.Load(), refused.Load(), total-5)
	}
	if got := up.Hits(); got != 5 {
		t.Errorf("upstream saw %d requests, want 5", got)
	}
	rl := f.s.proxy.limiter.(*redisLimiter)
	c := rl.client
	key := rl.scopeKey(keyScope(k.ID, k.Limits), redisLimitRPMKey)
	if n := c.ZCard(context.Background(), key).Val(); n != 5 {
		t.Errorf("rpm log %s holds %d entries, want 5", key, n)
	}
}

// TestUnreadBodyKeepsConnection: a request with a body that the proxy
// answers without reading it (429 rate_limited, 401 invalid_api_key, 502
// upstream_unreachable) leaves its keep-alive connection usable. With full duplex on (proxy.go
// serve), net/http panics with "invalid concurrent Body.Read call" when it
// reads the next request of a connection whose handler returned without
// closing the request body (golang/go#68560); the panic is logged by the
// http.Server at Debug and the connection is dropped, so that the client's
// next request on it may fail with "connection reset by peer".
func TestUnreadBodyKeepsConnection(t *testing.T) {
	for _, tt := range []struct {
		name string
		code string
		m    func(up string) Mapping
	}{
		{"rpm", "rate_limited", func(up string) Mapping {
			m := targetsOf("/p", up)
			m.Limits.RPM = 1
			return m
		}},
		{"keys", "invalid_api_key", func(up string) Mapping { return keysMapping("/p", up, "sk-up", "bearer") }},
		{"unreachable", "upstream_unreachable", func(string) Mapping { return targetsOf("/p", refusedURL(t)) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			cfg := testConfig(t, nil)
			store, err := openBoltStore(cfg.DataDir)
			if err != nil {
				t.Fatal(err)
			}
			s, err := newServer(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), store, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			front := newFront(t, s)
			up := statusUpstream(t, http.StatusOK, `{"usage":{"total_tokens":1}}`, "Content-Type", "application/json")
			setMapping(t, s, tt.m(up.URL))
			refused := 0
			for range 4 {
				res, err := front.Client().Post(front.URL+"/p/v1/chat/completions", "application/json",
					strings.NewReader(`{"model":"m","messages":[]}`))
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, res)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					wantProxyError(t, res, body, res.StatusCode, tt.code)
					refused++
				}
			}
			closeFront(t, front)
			if refused == 0 {
				t.Fatal("nothing was refused")
			}
			if out := logs.String(); strings.Contains(out, "panic serving") {
				t.Errorf("after a request whose body was left unread, the server panicked on its connection:\n%.600s", out)
			}
		})
	}
}
