package main

// Fault tests (issue 6, SPEC §3.8, §3.9, §7): upstreams and clients that
// fail in every way the network allows, and Redis killed under load. Each
// case checks the answer (a status or an aborted connection), that the
// upstream request was cancelled, that no goroutine is left behind, that
// the server keeps serving and that stats counted the request as it was.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// endpointCounts is the part of one /stats endpoint the fault tests check.
type endpointCounts struct {
	Count        int64            `json:"count"`
	ErrorCount   int64            `json:"error_count"`
	ClientClosed int64            `json:"client_closed"`
	Status       map[string]int64 `json:"status"`
}

func (c endpointCounts) String() string {
	return fmt.Sprintf("count=%d error_count=%d client_closed=%d 2xx=%d 4xx=%d 5xx=%d",
		c.Count, c.ErrorCount, c.ClientClosed, c.Status["2xx"], c.Status["4xx"], c.Status["5xx"])
}

// statsOf reads the counts of prefix from GET /stats.
func statsOf(t testing.TB, client *http.Client, base, prefix string) endpointCounts {
	t.Helper()
	res, err := client.Get(base + "/stats")
	if err != nil {
		t.Fatalf("GET /stats: %v", err)
	}
	defer res.Body.Close()
	var v struct {
		Endpoints map[string]endpointCounts `json:"endpoints"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatalf("decode /stats: %v", err)
	}
	return v.Endpoints[prefix]
}

// waitCounts polls /stats (computed at most once a second) until prefix
// shows want, failing with the last counts seen after testTimeout.
func waitCounts(t testing.TB, client *http.Client, base, prefix string, want endpointCounts) {
	t.Helper()
	var got endpointCounts
	deadline := time.Now().Add(testTimeout)
	for {
		got = statsOf(t, client, base, prefix)
		if got.String() == want.String() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats of %s = %v, want %v", prefix, got, want)
		}
		waitTick(50 * time.Millisecond)
	}
}

// waitTick waits d between two polls of a condition.
func waitTick(d time.Duration) { <-time.After(d) }

// closeIdle closes the idle keep-alive connections of the clients and of
// s's upstream transport, so that only connections still in use hold
// goroutines.
func closeIdle(s *Server, clients ...*http.Client) {
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	if c, ok := s.proxy.transport.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// waitGoroutines waits until the number of goroutines is back to baseline
// or less; after testTimeout it fails with the stacks of all of them.
func waitGoroutines(t testing.TB, baseline int, what string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%s: %d goroutines, want at most the baseline %d; stacks:\n%s", what, runtime.NumGoroutine(), baseline, buf)
		}
		waitTick(5 * time.Millisecond)
	}
}

// faultRig is one server with a faulty mapping /p and a healthy one /ok,
// and the goroutine count taken before any request.
type faultRig struct {
	s        *Server
	front    *httptest.Server
	client   *http.Client
	baseline int
}

func newFaultRig(t *testing.T, cfg Config, target string) *faultRig {
	t.Helper()
	ok := newUpstream(t, nil)
	s, front := newTestServerConfig(t, cfg, map[string]string{"/p": target, "/ok": ok.URL})
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	return &faultRig{s: s, front: front, client: client, baseline: runtime.NumGoroutine()}
}

// finish checks what every fault case must leave: no goroutine beyond the
// baseline once idle connections are closed, a server that still proxies,
// and stats of /p equal to want.
func (r *faultRig) finish(t *testing.T, want endpointCounts) {
	t.Helper()
	closeIdle(r.s, r.client)
	waitGoroutines(t, r.baseline, "after the fault")
	res, err := r.client.Get(r.front.URL + "/ok/x")
	if err != nil {
		t.Fatalf("the server stopped serving after the fault: %v", err)
	}
	body := readAll(t, res)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("GET /ok/x after the fault = %d %q, want 200 %q", res.StatusCode, body, "ok")
	}
	waitCounts(t, r.client, r.front.URL, "/p", want)
}

// faultRepeat is how many times each fault is caused: a leak of one
// goroutine per request shows as several, whatever else winds down.
const faultRepeat = 3

// TestFaultsUpstreamNoResponse: upstreams that give no usable response.
// The client gets the proxy's JSON error, the upstream request is not
// left waiting, and stats count an error per request.
func TestFaultsUpstreamNoResponse(t *testing.T) {
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}
	raw := func(fn func(net.Conn, *bufio.ReadWriter)) func(t *testing.T) string {
		return func(t *testing.T) string { return newRawUpstream(t, fn).URL }
	}
	// reply: an upstream that answers every connection with s, then closes.
	reply := func(s string) func(t *testing.T) string {
		return raw(func(conn net.Conn, _ *bufio.ReadWriter) { io.WriteString(conn, s) })
	}
	tests := []struct {
		name       string
		target     func(t *testing.T) string
		headerWait time.Duration
		status     int
		code       string
	}{
		{"refused", closedPort, 0, http.StatusBadGateway, "upstream_unreachable"},
		{"reset before headers", raw(func(conn net.Conn, _ *bufio.ReadWriter) {
			conn.(*net.TCPConn).SetLinger(0) // RST on close
		}), 0, http.StatusBadGateway, "upstream_unreachable"},
		{"closed before headers", raw(func(net.Conn, *bufio.ReadWriter) {}), 0, http.StatusBadGateway, "upstream_unreachable"},
		{"malformed status line", reply("HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"malformed header", reply("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"bad content-length", reply("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"two content-lengths", reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"unknown transfer-encoding", reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"switch protocols unasked", reply("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"cut inside the headers", reply("HTTP/1.1 200 OK\r\nContent-Type: appl"), 0, http.StatusBadGateway, "upstream_unreachable"},
		{"not HTTP", reply("220 smtp.example ESMTP ready\r\n\r\n"), 0, http.StatusBadGateway, "upstream_bad_response"},
		// Over the Transport's 1 MiB bound (newTransport), as a client's head
		// over 1 MiB is over the server's.
		{"headers over 1 MiB", reply("HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("x", 2<<20) + "\r\nContent-Length: 0\r\n\r\n"), 0, http.StatusBadGateway, "upstream_bad_response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, nil)
			cfg.ResponseHeaderTimeout = tt.headerWait
			r := newFaultRig(t, cfg, tt.target(t))
			for range faultRepeat {
				res, err := r.client.Get(r.front.URL + "/p/v1/models")
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, res)
				res.Body.Close()
				wantProxyError(t, res, body, tt.status, tt.code)
			}
			r.finish(t, endpointCounts{Count: faultRepeat, ErrorCount: faultRepeat,
				Status: map[string]int64{"5xx": faultRepeat}})
		})
	}
}

// TestFaultsUpstreamStallsBeforeHeaders: an upstream that accepts the
// request and never answers. With UPSTREAM_RESPONSE_HEADER_TIMEOUT the
// client gets 504 when it expires; without one the proxy waits (a model
// may think for minutes) until the client gives up. Either way the
// upstream request is cancelled at once.
func TestFaultsUpstreamStallsBeforeHeaders(t *testing.T) {
	for _, withTimeout := range []bool{true, false} {
		name := "no header timeout, client gives up"
		if withTimeout {
			name = "header timeout"
		}
		t.Run(name, func(t *testing.T) {
			started := make(chan struct{}, faultRepeat)
			cancelled := make(chan struct{}, faultRepeat)
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				// Read the body as an API does: net/http notices a closed
				// connection (and cancels r.Context) only once it is read.
				io.Copy(io.Discard, r.Body)
				started <- struct{}{}
				<-r.Context().Done()
				cancelled <- struct{}{}
			})
			cfg := testConfig(t, nil)
			if withTimeout {
				cfg.ResponseHeaderTimeout = 50 * time.Millisecond
			}
			r := newFaultRig(t, cfg, up.URL)
			for range faultRepeat {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "POST", r.front.URL+"/p/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
				done := make(chan struct{})
				var res *http.Response
				var err error
				go func() {
					defer close(done)
					res, err = r.client.Do(req)
				}()
				waitClosed(t, started, "the upstream to get the request")
				if !withTimeout {
					select {
					case <-done:
						t.Fatalf("the proxy answered a stalled upstream without a header timeout: %v %v", res, err)
					default:
					}
					cancel()
				}
				waitClosed(t, done, "the client's request to end")
				waitClosed(t, cancelled, "the upstream request to be cancelled")
				if withTimeout {
					if err != nil {
						t.Fatal(err)
					}
					body := readAll(t, res)
					res.Body.Close()
					wantProxyError(t, res, body, http.StatusGatewayTimeout, "upstream_timeout")
				} else if err == nil {
					res.Body.Close()
					t.Fatalf("the client's cancelled request got %d, want a cancellation error", res.StatusCode)
				}
				cancel()
			}
			want := endpointCounts{Count: faultRepeat, ErrorCount: faultRepeat, Status: map[string]int64{"5xx": faultRepeat}}
			if !withTimeout {
				want = endpointCounts{Count: faultRepeat, ClientClosed: faultRepeat}
			}
			r.finish(t, want)
		})
	}
}

// TestFaultsUpstreamBreaksMidBody: an upstream that sends headers and part
// of the body, then resets or closes the connection (or stalls and is
// reset later). The client must see its connection broken after the bytes
// that came, never a clean end; stats count an error with the status sent.
func TestFaultsUpstreamBreaksMidBody(t *testing.T) {
	tests := []struct {
		name  string
		head  string
		reset bool // RST instead of FIN
	}{
		{"reset, content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"partial\":", true},
		{"reset, SSE", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n", true},
		{"close, chunked without last chunk", "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n", false},
		{"close, bad chunk size", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\nzz\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newRawUpstream(t, func(conn net.Conn, rw *bufio.ReadWriter) {
				io.WriteString(conn, tt.head)
				if tt.reset {
					conn.(*net.TCPConn).SetLinger(0)
				}
			})
			r := newFaultRig(t, testConfig(t, nil), up.URL)
			for range faultRepeat {
				res, err := r.client.Get(r.front.URL + "/p/stream")
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err == nil {
					t.Fatalf("body %q ended cleanly, want the connection broken", body)
				}
				if res.StatusCode != http.StatusOK {
					t.Errorf("status = %d, want the upstream's 200", res.StatusCode)
				}
			}
			r.finish(t, endpointCounts{Count: faultRepeat, ErrorCount: faultRepeat, Status: map[string]int64{"2xx": faultRepeat}})
		})
	}
}

// TestFaultsClientLeavesMidStream: a client that drops its connection in
// the middle of a token stream. The upstream request is cancelled at once
// and stats count a client disconnect, not an error.
func TestFaultsClientLeavesMidStream(t *testing.T) {
	const event = "data: {\"token\":1}\n\n"
	started := make(chan struct{}, faultRepeat)
	cancelled := make(chan struct{}, faultRepeat)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, event)
		w.(http.Flusher).Flush()
		started <- struct{}{}
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	r := newFaultRig(t, testConfig(t, nil), up.URL)
	addr := r.front.Listener.Addr().String()
	for range faultRepeat {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(testTimeout))
		io.WriteString(conn, "POST /p/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
		br := bufio.NewReader(conn)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(event))
		if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != event {
			t.Fatalf("first event = %q, %v; want %q", buf, err, event)
		}
		waitClosed(t, started, "the stream to start")
		conn.Close()
		waitClosed(t, cancelled, "the upstream request to be cancelled")
	}
	r.finish(t, endpointCounts{Count: faultRepeat, ClientClosed: faultRepeat})
}

// TestFaultsClientLeavesMidUpload: a client that drops its connection in
// the middle of a request body (Content-Length or chunked). The upstream
// sees its request body broken, not a short body that looks complete, and
// stats count a client disconnect, not an upstream error.
func TestFaultsClientLeavesMidUpload(t *testing.T) {
	tests := []struct {
		name, head, part string
	}{
		{"content-length", "Content-Length: 1048576\r\n\r\n", strings.Repeat("a", 64<<10)},
		{"chunked", "Transfer-Encoding: chunked\r\n\r\n", fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat("a", 64<<10))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reading := make(chan struct{}, faultRepeat)
			bodyErr := make(chan error, faultRepeat)
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if _, err := r.Body.Read(make([]byte, 1)); err != nil {
					bodyErr <- err
					return
				}
				reading <- struct{}{}
				_, err := io.Copy(io.Discard, r.Body)
				bodyErr <- err
			})
			r := newFaultRig(t, testConfig(t, nil), up.URL)
			addr := r.front.Listener.Addr().String()
			for range faultRepeat {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				io.WriteString(conn, "POST /p/v1/files HTTP/1.1\r\nHost: x\r\n"+tt.head+tt.part)
				waitClosed(t, reading, "the upstream to get the first body bytes")
				conn.Close()
				select {
				case err := <-bodyErr:
					if err == nil {
						t.Fatalf("the upstream read the cut body to a clean end")
					}
				case <-time.After(testTimeout):
					t.Fatalf("the upstream request was still open %v after the client left", testTimeout)
				}
			}
			r.finish(t, endpointCounts{Count: faultRepeat, ClientClosed: faultRepeat})
		})
	}
}

// TestFaultsRedisKilledUnderLoad kills the Redis of a Redis-backed server
// while clients keep it busy, then restarts it (with its append-only file,
// as docker-compose.yml runs it). No proxied request fails, admin writes
// answer 503 during the outage and work after it, every request is in the
// stats written to Redis exactly once, and the goroutines go back to what
// they were before the outage.
func TestFaultsRedisKilledUnderLoad(t *testing.T) {
	rs := startRedisServerPersist(t, true)
	s, front, _ := newServerOnRedis(t, rs)
	up := newUpstream(t, nil)
	if res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/llm","target":"`+up.URL+`"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create /llm: %d %s", res.StatusCode, body)
	}
	client := &http.Client{Transport: &http.Transport{}}
	closeIdle(s, client, front.Client())
	baseline := runtime.NumGoroutine()

	const clients = 4
	var loads []*proxyLoad
	for range clients {
		loads = append(loads, startProxyLoad(client, front.URL+"/llm/v1/models"))
	}
	waitAll := func(n int64, what string) {
		t.Helper()
		for _, l := range loads {
			l.waitMore(t, n, what)
		}
	}
	waitAll(20, "requests before the outage")

	rs.kill()
	waitReadyz(t, client, front, http.StatusServiceUnavailable, "/readyz to see the outage")
	res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/during","target":"https://x.example"}`)
	wantProxyError(t, res, body, http.StatusServiceUnavailable, "store_unavailable")
	waitAll(50, "requests during the outage")

	rs.start()
	waitReadyz(t, client, front, http.StatusOK, "/readyz to recover")
	if res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/after","target":"`+up.URL+`"}`); res.StatusCode != http.StatusCreated {
		t.Errorf("create after the outage: %d %s", res.StatusCode, body)
	}
	waitAll(20, "requests after the outage")
	var sent int64
	for _, l := range loads {
		l.finish(t)
		sent += l.requests.Load()
	}

	rc := rs.client()
	var stored int64
	deadline := time.Now().Add(3 * testTimeout) // flushes back off after failures
	for {
		stored, _ = rc.HGet(context.Background(), redisKeyPrefix+redisStatsTotalKey, "/llm|count").Int64()
		if stored == sent || time.Now().After(deadline) {
			break
		}
		waitTick(50 * time.Millisecond)
	}
	if stored != sent {
		t.Errorf("Redis counts %d requests to /llm, want the %d sent", stored, sent)
	}
	t.Logf("%d requests across the outage, all answered and counted", sent)

	closeIdle(s, client, front.Client())
	waitGoroutines(t, baseline, "after the outage")
}
