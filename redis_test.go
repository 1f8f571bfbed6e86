package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testRedisAddr returns the address of the Redis the tests share
// (APIPROXY_TEST_REDIS_ADDR, set by scripts/test.sh). Without it the test
// is skipped, unless APIPROXY_TEST_STRICT=1 (CI), where it fails.
func testRedisAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("APIPROXY_TEST_REDIS_ADDR")
	if addr == "" {
		if os.Getenv("APIPROXY_TEST_STRICT") == "1" {
			t.Fatal("APIPROXY_TEST_REDIS_ADDR is not set but APIPROXY_TEST_STRICT=1: run the tests through scripts/test.sh")
		}
		t.Skip("APIPROXY_TEST_REDIS_ADDR is not set; run scripts/test.sh to test against a real Redis")
	}
	return addr
}

// testKeyPrefix returns a key prefix of this test alone and deletes every
// key under it when the test ends.
func testKeyPrefix(t testing.TB, addr string) string {
	t.Helper()
	name := regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(t.Name(), "_")
	prefix := fmt.Sprintf("apiproxy-test:%s:%s:", name, rand.Text()[:8])
	t.Cleanup(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("clean up redis keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

// openTestRedisStore opens a Redis store on addr under keyPrefix, seeded
// as a first start would be; snapshotPath "" keeps no file. Cleanup closes
// it.
func openTestRedisStore(t testing.TB, addr, keyPrefix, snapshotPath string) *redisStore {
	t.Helper()
	s, err := openRedisStoreWith(context.Background(), &redis.Options{Addr: addr}, keyPrefix, snapshotPath, testLogger())
	if err != nil {
		t.Fatalf("open redis store on %s: %v", addr, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newRedisTestServer serves a Server on store with its loops started (so
// Pub/Sub is listened to). Cleanup closes the frontend, then the Server
// and its store.
func newRedisTestServer(t testing.TB, cfg Config, store Store) (*Server, *httptest.Server) {
	t.Helper()
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		store.Close()
		t.Fatalf("newServer: %v", err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	front := httptest.NewServer(s)
	serveRecycled(front, s)
	t.Cleanup(func() { closeFront(t, front) })
	return s, front
}

// newServerOnRedis is newRedisTestServer on the store run would open for
// the Redis of rs (API_PROXY_REDIS_URL), with testAdminToken; it returns
// the Config too.
func newServerOnRedis(t testing.TB, rs *redisServer) (*Server, *httptest.Server, Config) {
	t.Helper()
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "API_PROXY_REDIS_URL": rs.url()})
	store, err := openStore(context.Background(), cfg, testLogger())
	if err != nil {
		t.Fatalf("openStore: %v", err)
	}
	s, front := newRedisTestServer(t, cfg, store)
	return s, front, cfg
}

// waitReadyz waits until GET /readyz on front answers code.
func waitReadyz(t testing.TB, client *http.Client, front *httptest.Server, code int, what string) {
	t.Helper()
	eventually(t, func() bool {
		got, _ := getStatus(t, client, front.URL+"/readyz")
		return got == code
	}, what)
}

// routedURL is the target s routes prefix to now, "" if none.
func routedURL(s *Server, prefix string) string {
	if r := s.routes.Load().byPrefix[prefix]; r != nil {
		return r.targets[0].url
	}
	return ""
}

// TestRedisCrossInstance: a change made through the admin API of instance
// A routes on instance B, which shares only the Redis.
func TestRedisCrossInstance(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	_, frontA := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	b, frontB := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	up1 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "one") })
	up2 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "two") })

	getB := func() (int, string) {
		res, err := frontB.Client().Get(frontB.URL + "/shared/x")
		if err != nil {
			t.Fatalf("GET B /shared/x: %v", err)
		}
		defer res.Body.Close()
		return res.StatusCode, string(readAll(t, res))
	}

	if res, body := adminRequest(t, frontA, "POST", "/api/mappings", `{"prefix":"/shared","target":"`+up1.URL+`"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create on A: %d %s", res.StatusCode, body)
	}
	eventually(t, func() bool { return routedURL(b, "/shared") == up1.URL }, "B to route /shared to the first upstream")
	if code, body := getB(); code != http.StatusOK || body != "one" {
		t.Errorf("GET B /shared/x = %d %q, want 200 \"one\"", code, body)
	}

	if res, body := adminRequest(t, frontA, "PUT", "/api/mappings/shared", `{"target":"`+up2.URL+`"}`); res.StatusCode != http.StatusOK {
		t.Fatalf("update on A: %d %s", res.StatusCode, body)
	}
	eventually(t, func() bool { return routedURL(b, "/shared") == up2.URL }, "B to route /shared to the second upstream")
	if code, body := getB(); code != http.StatusOK || body != "two" {
		t.Errorf("GET B /shared/x = %d %q, want 200 \"two\"", code, body)
	}

	if res, body := adminRequest(t, frontA, "DELETE", "/api/mappings/shared", ""); res.StatusCode != http.StatusOK {
		t.Fatalf("delete on A: %d %s", res.StatusCode, body)
	}
	eventually(t, func() bool { return routedURL(b, "/shared") == "" }, "B to drop /shared")
	if code, _ := getB(); code != http.StatusNotFound {
		t.Errorf("GET B /shared/x after delete = %d, want 404", code)
	}

	// A writer of the original design: HSET and PUBLISH by hand.
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	if err := c.HSet(ctx, prefix+redisMappingsKey, "/byhand", up1.URL).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, prefix+redisUpdatesChannel, "/byhand").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return routedURL(b, "/byhand") == up1.URL }, "B to route a mapping written by hand")
}

// TestCrossInstanceDelay: a mapping created through the admin API of
// instance A routes on instance B (two Servers in this process, one Redis)
// by Pub/Sub, not by the 30 s safety-net reload: every one of 100 changes
// arrives within a second. SPEC §7's 100 ms is a speed target, measured by
// BenchmarkCrossInstanceDelay (and TestCrossInstanceDelayProcesses).
func TestCrossInstanceDelay(t *testing.T) {
	delays := measureCrossInstanceDelay(t, 100)
	p50, p99 := percentile(delays, 50), percentile(delays, 99)
	t.Logf("cross-instance delay over %d creates (admin POST on A until B routes): p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		len(delays), ms(p50), ms(p99), ms(slices.Max(delays)))
	if m := slices.Max(delays); m > time.Second {
		t.Errorf("a change took %v to reach instance B; Pub/Sub should deliver it well within a second", m)
	}
}

// BenchmarkCrossInstanceDelay reports the p50 and p99 delay between an
// admin create on instance A and the mapping routing on instance B, over
// 100 changes per iteration (target p99 ≤ 100 ms, SPEC §7):
//
//	go test -run '^$' -bench CrossInstanceDelay -benchtime 1x .
func BenchmarkCrossInstanceDelay(b *testing.B) {
	var all []time.Duration
	for range b.N {
		all = append(all, measureCrossInstanceDelay(b, 100)...)
	}
	b.ReportMetric(ms(percentile(all, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 99)), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// measureCrossInstanceDelay creates n mappings through the admin API of one
// instance and returns, for each, the time until a second instance on the
// same Redis routes it.
func measureCrossInstanceDelay(t testing.TB, n int) []time.Duration {
	t.Helper()
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	_, frontA := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	b, _ := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	up := newUpstream(t, nil)

	delays := make([]time.Duration, 0, n)
	for i := range n {
		p := fmt.Sprintf("/delay%d", i)
		start := time.Now()
		res, body := adminRequest(t, frontA, "POST", "/api/mappings", `{"prefix":"`+p+`","target":"`+up.URL+`"}`)
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("create %s on A: %d %s", p, res.StatusCode, body)
		}
		waitRoute(t, func() bool { return routedURL(b, p) != "" }, p)
		delays = append(delays, time.Since(start))
	}
	return delays
}

// waitRoute polls cond every 100µs (finer than eventually's 1 ms, since it
// times what it waits for) until it holds, failing after testTimeout.
func waitRoute(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(100 * time.Microsecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not route on B within %v", what, testTimeout)
		}
		<-tick.C
	}
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1 // nearest rank
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestCrossInstanceDelayProcesses is TestCrossInstanceDelay with two real
// apiproxy processes on a redis-server of its own, polling B over HTTP.
// It builds the binary, so it runs only when asked:
//
//	APIPROXY_TEST_PROCESSES=1 go test -run TestCrossInstanceDelayProcesses -v .
func TestCrossInstanceDelayProcesses(t *testing.T) {
	if os.Getenv("APIPROXY_TEST_PROCESSES") != "1" {
		t.Skip("set APIPROXY_TEST_PROCESSES=1 to build apiproxy and measure with two processes")
	}
	rs := startRedisServer(t)
	bin := filepath.Join(t.TempDir(), "apiproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a := startProxyProcess(t, bin, rs.url())
	b := startProxyProcess(t, bin, rs.url())
	up := newUpstream(t, nil)
	client := &http.Client{Timeout: testTimeout}

	const changes = 100
	delays := make([]time.Duration, 0, changes)
	for i := range changes {
		p := fmt.Sprintf("/delay%d", i)
		req, _ := http.NewRequest("POST", "http://"+a+"/api/mappings", strings.NewReader(`{"prefix":"`+p+`","target":"`+up.URL+`"}`))
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		start := time.Now()
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("create %s on A: %v", p, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("create %s on A: status %d", p, res.StatusCode)
		}
		routed := func() bool {
			res, err := client.Get("http://" + b + p + "/x")
			if err != nil {
				t.Fatalf("GET B %s/x: %v", p, err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			return res.StatusCode == http.StatusOK
		}
		deadline := time.Now().Add(testTimeout)
		for !routed() {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not route on B within %v", p, testTimeout)
			}
		}
		delays = append(delays, time.Since(start))
	}
	p50, p99 := percentile(delays, 50), percentile(delays, 99)
	t.Logf("two processes: cross-instance delay over %d creates (admin POST on A until B answers 200): p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		changes, ms(p50), ms(p99), ms(slices.Max(delays)))
	if p99 > 100*time.Millisecond {
		t.Errorf("p99 cross-instance delay = %v, want at most 100ms (SPEC §7)", p99)
	}
}

// startProxyProcess runs the apiproxy binary on redisURL with the test
// admin token and returns its listen address. Cleanup stops it with
// SIGTERM and waits.
func startProxyProcess(t *testing.T, bin, redisURL string) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir() // no .env there
	cmd.Env = append(os.Environ(),
		"API_PROXY_REDIS_URL="+redisURL, "ADMIN_TOKEN="+testAdminToken,
		"LISTEN_ADDR=127.0.0.1:0", "DATA_DIR="+filepath.Join(cmd.Dir, "data"), "LOG_FORMAT=json")
	// An os.Pipe rather than StderrPipe: the reader below may still be
	// reading when cleanup calls Wait.
	stderr, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		stderr.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		stderr.Close()
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "apiproxy listening" {
				addrc <- line.Addr
			}
		}
	}()
	select {
	case addr := <-addrc:
		return addr
	case <-time.After(testTimeout):
		t.Fatalf("%s did not log its listen address within %v", bin, testTimeout)
		return ""
	}
}

// redisServer is a redis-server process of one test, on a spare loopback
// port, without persistence: a restart comes back empty, like a Redis
// container without a volume.
type redisServer struct {
	t    testing.TB
	port int
	dir  string
	cmd  *exec.Cmd
	// persist turns the append-only file on (fsync on every write), so
	// that a restart after a kill comes back with everything, like a
	// Redis with a volume (docker-compose.yml).
	persist bool
}

// startRedisServer starts a redis-server of the test's own, so that it can
// be killed. It is skipped (or fails under APIPROXY_TEST_STRICT=1) when
// redis-server is not installed.
func startRedisServer(t testing.TB) *redisServer {
	t.Helper()
	return startRedisServerPersist(t, false)
}

// startRedisServerPersist is startRedisServer with the append-only file
// on when persist is set (see redisServer.persist).
func startRedisServerPersist(t testing.TB, persist bool) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("APIPROXY_TEST_STRICT") == "1" {
			t.Fatal("redis-server is not installed but APIPROXY_TEST_STRICT=1")
		}
		t.Skip("redis-server is not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	rs := &redisServer{t: t, port: port, dir: t.TempDir(), persist: persist}
	rs.start()
	t.Cleanup(rs.kill)
	return rs
}

func (rs *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(rs.port) }
func (rs *redisServer) url() string  { return "redis://" + rs.addr() + "/0" }

// start runs redis-server and waits until it answers PING.
func (rs *redisServer) start() {
	rs.t.Helper()
	args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(rs.port), "--save", "", "--dir", rs.dir}
	if rs.persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	rs.cmd = exec.Command("redis-server", args...)
	if err := rs.cmd.Start(); err != nil {
		rs.t.Fatalf("start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: rs.addr(), MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	defer c.Close()
	eventually(rs.t, func() bool { return c.Ping(context.Background()).Err() == nil }, "redis-server to answer PING")
}

// kill stops redis-server at once (SIGKILL) and waits for it to exit.
func (rs *redisServer) kill() {
	if rs.cmd == nil {
		return
	}
	rs.cmd.Process.Kill()
	rs.cmd.Wait()
	rs.cmd = nil
}

// client returns a client of this redis-server, closed by cleanup.
func (rs *redisServer) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: rs.addr()})
	rs.t.Cleanup(func() { c.Close() })
	return c
}

// proxyLoad sends GET requests to url one after another until stop, and
// counts them and the ones that failed (an error or a status other than
// 200).
type proxyLoad struct {
	requests, failures atomic.Int64
	mu                 sync.Mutex
	firstFailure       string
	stop               chan struct{}
	done               chan struct{}
}

func startProxyLoad(client *http.Client, url string) *proxyLoad {
	l := &proxyLoad{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			res, err := client.Get(url)
			fail := ""
			if err != nil {
				fail = err.Error()
			} else {
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					fail = fmt.Sprintf("status %d: %s", res.StatusCode, body)
				}
			}
			l.requests.Add(1)
			if fail != "" {
				l.failures.Add(1)
				l.mu.Lock()
				if l.firstFailure == "" {
					l.firstFailure = fail
				}
				l.mu.Unlock()
			}
		}
	}()
	return l
}

// waitMore waits until n more requests were sent than at the call.
func (l *proxyLoad) waitMore(t testing.TB, n int64, what string) {
	t.Helper()
	target := l.requests.Load() + n
	eventually(t, func() bool { return l.requests.Load() >= target }, what)
}

func (l *proxyLoad) finish(t testing.TB) {
	t.Helper()
	close(l.stop)
	<-l.done
	if f := l.failures.Load(); f > 0 {
		t.Errorf("%d of %d proxied requests failed; first: %s", f, l.requests.Load(), l.firstFailure)
	}
}

func getStatus(t testing.TB, client *http.Client, url string) (int, []byte) {
	t.Helper()
	res, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	return res.StatusCode, readAll(t, res)
}

// TestRedisRefusesWrites: a Redis that is up but refuses writes (out of
// memory under maxmemory) makes admin writes 503 store_unavailable with
// the reason, not a 500, and nothing is stored; proxying goes on.
func TestRedisRefusesWrites(t *testing.T) {
	rs := startRedisServer(t)
	s, front, _ := newServerOnRedis(t, rs)
	up := newUpstream(t, nil)
	setMapping(t, s, targetsOf("/llm", up.URL))
	c := rs.client()
	ctx := context.Background()
	if err := c.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/new","target":"https://new.example"}`)
	wantProxyError(t, res, body, http.StatusServiceUnavailable, "store_unavailable")
	if msg := adminErrorMessage(t, body); !strings.Contains(msg, "out of memory") {
		t.Errorf("message %q, want it to say Redis is out of memory", msg)
	}
	if code, _ := getStatus(t, front.Client(), front.URL+"/llm/x"); code != http.StatusOK {
		t.Errorf("a proxied request while Redis refuses writes = %d, want 200", code)
	}
	if err := c.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	ms, err := s.store.Mappings(ctx)
	if err != nil || slices.ContainsFunc(ms, func(m Mapping) bool { return m.Prefix == "/new" }) {
		t.Errorf("stored mappings = %+v, %v; want no /new", ms, err)
	}
}

// TestRedisOutage kills Redis under a proxy that is serving requests: no
// proxied request fails, admin writes answer 503 store_unavailable,
// /readyz is 503 with a reason; when Redis comes back (empty, as one
// without persistence does) the instance reconnects, restores what it
// knew into it, and admin writes work again.
func TestRedisOutage(t *testing.T) {
	rs := startRedisServer(t)
	s, front, cfg := newServerOnRedis(t, rs)
	up := newUpstream(t, nil)
	client := front.Client()

	if res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/llm","target":"`+up.URL+`"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create /llm: %d %s", res.StatusCode, body)
	}
	snapshot := filepath.Join(cfg.DataDir, snapshotFileName)
	eventually(t, func() bool { return readSnapshot(snapshot).Mappings["/llm"] == up.URL }, "the snapshot file to hold /llm")

	load := startProxyLoad(client, front.URL+"/llm/v1/models")
	load.waitMore(t, 20, "proxied requests before the outage")

	rs.kill()
	waitReadyz(t, client, front, http.StatusServiceUnavailable, "/readyz to report the outage")
	code, body := getStatus(t, client, front.URL+"/readyz")
	var ready struct{ Status, Reason string }
	if err := json.Unmarshal(body, &ready); err != nil || code != http.StatusServiceUnavailable || ready.Reason == "" {
		t.Errorf("/readyz during the outage = %d %s, want 503 with a JSON reason", code, body)
	}

	writes := []struct{ method, path, body string }{
		{"POST", "/api/mappings", `{"prefix":"/new","target":"https://new.example"}`},
		{"PUT", "/api/mappings/llm", `{"target":"https://elsewhere.example"}`},
		{"DELETE", "/api/mappings/llm", ""},
		{"GET", "/api/mappings", ""},
	}
	for _, w := range writes {
		res, body := adminRequest(t, front, w.method, w.path, w.body)
		wantProxyError(t, res, body, http.StatusServiceUnavailable, "store_unavailable")
		if bytes.Contains(body, []byte(strconv.Itoa(rs.port))) || bytes.Contains(body, []byte("dial")) {
			t.Errorf("%s %s: the Redis error reached the client: %s", w.method, w.path, body)
		}
	}
	load.waitMore(t, 50, "proxied requests during the outage")
	if got := routedURL(s, "/llm"); got != up.URL {
		t.Errorf("during the outage /llm routes to %q, want %q", got, up.URL)
	}

	rs.start() // empty: no persistence
	waitReadyz(t, client, front, http.StatusOK, "/readyz to recover")
	rc := rs.client()
	eventually(t, func() bool {
		return rc.HGet(context.Background(), redisKeyPrefix+redisMappingsKey, "/llm").Val() == up.URL
	}, "the instance to restore /llm into the empty Redis")
	if res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/after","target":"`+up.URL+`"}`); res.StatusCode != http.StatusCreated {
		t.Errorf("create after the outage: %d %s", res.StatusCode, body)
	}
	if code, body := getStatus(t, client, front.URL+"/after/x"); code != http.StatusOK {
		t.Errorf("GET /after/x = %d %s, want 200", code, body)
	}
	load.waitMore(t, 20, "proxied requests after the outage")
	load.finish(t)
}

func readSnapshot(path string) snapshotFile {
	var f snapshotFile
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &f)
	}
	return f
}

// syncBuffer is a bytes.Buffer that a logger may write from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

var tokenLine = regexp.MustCompile(`admin token: ([A-Z2-7]{26}) `)

// TestRedisRestartDuringOutage: an instance that starts while Redis is down
// routes with the snapshot file of the previous run and knows the
// generated admin token; when Redis comes back empty it restores both.
func TestRedisRestartDuringOutage(t *testing.T) {
	rs := startRedisServer(t)
	cfg := testConfig(t, map[string]string{"API_PROXY_REDIS_URL": rs.url()}) // no ADMIN_TOKEN: generated
	up := newUpstream(t, nil)
	ctx := context.Background()

	var log1 syncBuffer
	store1, err := openStore(ctx, cfg, slog.New(slog.NewTextHandler(&log1, nil)))
	if err != nil {
		t.Fatalf("openStore: %v", err)
	}
	s1, err := newServer(cfg, slog.New(slog.NewTextHandler(&log1, nil)), store1, nil)
	if err != nil {
		t.Fatalf("newServer: %v", err)
	}
	s1.Start()
	t.Cleanup(func() { s1.Close() })
	m := tokenLine.FindStringSubmatch(log1.String())
	if m == nil {
		t.Fatalf("no admin token line in the log:\n%s", log1.String())
	}
	token := m[1]
	if err := store1.CreateMapping(ctx, newMapping("/llm", up.URL)); err != nil {
		t.Fatalf("CreateMapping: %v", err)
	}
	if err := s1.reloadRoutes(ctx); err != nil { // as the admin API does after a write
		t.Fatalf("reloadRoutes: %v", err)
	}
	snapshot := filepath.Join(cfg.DataDir, snapshotFileName)
	eventually(t, func() bool {
		f := readSnapshot(snapshot)
		return f.Mappings["/llm"] == up.URL && f.AdminToken == token
	}, "the snapshot file to hold /llm and the token")
	s1.Close()
	rs.kill()

	var log2 syncBuffer
	logger2 := slog.New(slog.NewTextHandler(&log2, nil))
	store2, err := openStore(ctx, cfg, logger2)
	if err != nil {
		t.Fatalf("openStore during the outage: %v", err)
	}
	s2, err := newServer(cfg, logger2, store2, nil)
	if err != nil {
		t.Fatalf("newServer during the outage: %v", err)
	}
	s2.Start()
	t.Cleanup(func() { s2.Close() })
	front := httptest.NewServer(s2)
	defer front.Close()
	client := front.Client()

	if code, body := getStatus(t, client, front.URL+"/llm/x"); code != http.StatusOK {
		t.Errorf("GET /llm/x while Redis is down after a restart = %d %s, want 200 from the snapshot", code, body)
	}
	if code, _ := getStatus(t, client, front.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d, want 503", code)
	}
	if m := tokenLine.FindStringSubmatch(log2.String()); m == nil || m[1] != token {
		t.Errorf("after a restart during the outage the log shows token %v, want %s", m, token)
	}
	req, _ := http.NewRequest("POST", front.URL+"/api/mappings", strings.NewReader(`{"prefix":"/new","target":"https://new.example"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	wantProxyError(t, res, readAll(t, res), http.StatusServiceUnavailable, "store_unavailable")
	res.Body.Close()

	rs.start() // empty
	rc := rs.client()
	eventually(t, func() bool {
		return rc.HGet(ctx, redisKeyPrefix+redisMappingsKey, "/llm").Val() == up.URL
	}, "the restarted instance to restore /llm into the empty Redis")
	if got := rc.Get(ctx, redisKeyPrefix+redisAdminTokenKey).Val(); got != token {
		t.Errorf("admin token in the restored Redis = %q, want the one the fleet knows", got)
	}
	if code, body := getStatus(t, client, front.URL+"/llm/x"); code != http.StatusOK {
		t.Errorf("GET /llm/x after recovery = %d %s, want 200", code, body)
	}
	// The token appears on its own line only.
	for _, line := range strings.Split(log1.String()+log2.String(), "\n") {
		if strings.Contains(line, token) && !tokenLine.MatchString(line) {
			t.Errorf("the admin token appears in another log line: %s", line)
		}
	}
}

// TestRedisSnapshotFile: the snapshot file is written atomically (no
// temporary file left), and one of another Redis or a broken one is
// ignored.
func TestRedisSnapshotFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, snapshotFileName)
	newStore := func(addr string) *redisStore {
		c := redis.NewClient(&redis.Options{Addr: addr}) // never dialled here
		t.Cleanup(func() { c.Close() })
		return newRedisStore(c, redisKeyPrefix, path, testLogger())
	}
	s := newStore("127.0.0.1:1")
	s.remember(s.readSeq.Add(1), map[string]string{"/a": "https://a.example"})
	s.persistSnapshot()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != snapshotFileName {
		t.Errorf("data dir holds %v, want only %s", entries, snapshotFileName)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot file mode = %v, %v; want 0600", fi.Mode(), err)
	}

	same := newStore("127.0.0.1:1")
	same.loadSnapshot()
	if m, _, ok := same.offlineMappings(); !ok || !maps.Equal(mappingsMap(m), map[string]string{"/a": "https://a.example"}) {
		t.Errorf("offlineMappings after loading = %v, %v; want the snapshot", m, ok)
	}
	other := newStore("127.0.0.1:2")
	other.loadSnapshot()
	if m, _, ok := other.offlineMappings(); ok {
		t.Errorf("a store of another Redis loaded the snapshot: %v", m)
	}
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := newStore("127.0.0.1:1")
	broken.loadSnapshot()
	if m, _, ok := broken.offlineMappings(); ok {
		t.Errorf("a broken snapshot was loaded: %v", m)
	}

	// An older read never replaces a newer one.
	s.remember(10, map[string]string{"/new": "https://n.example"})
	s.remember(9, map[string]string{"/old": "https://o.example"})
	if m, _, _ := s.offlineMappings(); mappingsMap(m)["/new"] == "" {
		t.Errorf("last known = %v, want the newer read", m)
	}
}

// TestRedisSnapshotFileOldFormat: a snapshot file as earlier versions
// wrote it (prefix → target URL) still loads.
func TestRedisSnapshotFileOldFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), snapshotFileName)
	const old = `{
  "source": "127.0.0.1:1/0 apiproxy:",
  "saved_at": "2026-01-02T03:04:05Z",
  "mappings": {
    "/openai": "https://api.openai.com",
    "/local": "http://127.0.0.1:11434"
  },
  "admin_token": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
}
`
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled here
	t.Cleanup(func() { c.Close() })
	s := newRedisStore(c, redisKeyPrefix, path, testLogger())
	s.loadSnapshot()
	ms, readAt, ok := s.offlineMappings()
	want := []Mapping{newMapping("/local", "http://127.0.0.1:11434"), newMapping("/openai", "https://api.openai.com")}
	if !ok || !reflect.DeepEqual(ms, want) || !readAt.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("offlineMappings() = %v, %v, %v; want %v from the file", ms, readAt, ok, want)
	}
	if s.token != "ABCDEFGHIJKLMNOPQRSTUVWXYZ" {
		t.Errorf("token from the file = %q", s.token)
	}
}

// TestRedisObjectValue: a value in the object form of SPEC §9 that this
// version cannot read (a field a newer version added) is not routed, is
// listed by the admin API with its prefix, can be deleted there, and is
// kept as it is in the snapshot file; the plain values beside it work as
// before.
func TestRedisObjectValue(t *testing.T) {
	ctx := context.Background()
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	snapshot := filepath.Join(t.TempDir(), snapshotFileName)
	store := openTestRedisStore(t, addr, prefix, snapshot)
	if _, err := store.Mappings(ctx); err != nil { // seed the defaults
		t.Fatal(err)
	}
	const object = `{"prefix":"/obj","targets":[{"url":"https://a.example"},{"url":"https://b.example"}],"newer_rule":true}`
	if err := store.client.HSet(ctx, prefix+redisMappingsKey, "/obj", object, "/plain", "https://plain.example").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if routedURL(s, "/obj") != "" || routedURL(s, "/plain") != "https://plain.example" {
		t.Errorf("routes: /obj -> %q, /plain -> %q; want /obj skipped and /plain routed", routedURL(s, "/obj"), routedURL(s, "/plain"))
	}
	res, body := adminCall(t, s, "GET", "/api/mappings", "", bearer, "192.0.2.1:1")
	var list struct {
		Mappings map[string]string `json:"mappings"`
		Count    int               `json:"count"`
	}
	if err := json.Unmarshal(body, &list); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/mappings: %d %s", res.StatusCode, body)
	}
	if target, ok := list.Mappings["/obj"]; !ok || target != "" || list.Count != len(defaultMappings())+2 {
		t.Errorf("listing = %s, want /obj with no target among %d mappings", body, len(defaultMappings())+2)
	}
	store.persistSnapshot()
	if got := readSnapshot(snapshot).Mappings["/obj"]; got != object {
		t.Errorf("snapshot holds /obj = %q, want the stored value as it is", got)
	}
	if res, body := adminCall(t, s, "DELETE", "/api/mappings/obj", "", bearer, "192.0.2.1:1"); res.StatusCode != http.StatusOK {
		t.Errorf("DELETE /api/mappings/obj: %d %s", res.StatusCode, body)
	}
	if store.client.HExists(ctx, prefix+redisMappingsKey, "/obj").Val() {
		t.Errorf("/obj is still in the hash after DELETE")
	}
}

func TestParseRedisURL(t *testing.T) {
	tests := []struct {
		url      string
		addr     string
		user     string
		password string
		db       int
		tls      bool
	}{
		{"redis://localhost:6379", "localhost:6379", "", "", 0, false},
		{"redis://:s3cret@redis.internal:6380/3", "redis.internal:6380", "", "s3cret", 3, false},
		{"redis://default:s3cret@redis.internal/1", "redis.internal:6379", "default", "s3cret", 1, false},
		{"rediss://:s3cret@cache.example.com:6380/0", "cache.example.com:6380", "", "s3cret", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			o, err := parseRedisURL(tt.url)
			if err != nil {
				t.Fatalf("parseRedisURL: %v", err)
			}
			if o.Addr != tt.addr || o.Username != tt.user || o.Password != tt.password || o.DB != tt.db || (o.TLSConfig != nil) != tt.tls {
				t.Errorf("got addr %q user %q password %q db %d tls %v, want %q %q %q %d %v",
					o.Addr, o.Username, o.Password, o.DB, o.TLSConfig != nil, tt.addr, tt.user, tt.password, tt.db, tt.tls)
			}
			if tt.tls && o.TLSConfig.ServerName != strings.Split(tt.addr, ":")[0] {
				t.Errorf("TLS ServerName = %q, want the host", o.TLSConfig.ServerName)
			}
			if desc := redisDescription(o); strings.Contains(desc, "s3cret") {
				t.Errorf("redisDescription = %q holds the password", desc)
			}
		})
	}
	for _, bad := range []string{"http://localhost:6379", "redis://:s3cret@host:notaport/0", "redis://:s3cret@host:6379/notadb", "redis://:s3cret@host\x7f"} {
		_, err := parseRedisURL(bad)
		if err == nil {
			t.Errorf("parseRedisURL(%q) = nil error, want one", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("parseRedisURL(%q) error %q holds the password", bad, err)
		}
	}
}

func TestRedisUnavailableClassification(t *testing.T) {
	s := newRedisStore(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), redisKeyPrefix, "", testLogger())
	defer s.Close()
	tests := []struct {
		err         error
		unavailable bool
	}{
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{io.EOF, true},
		{context.DeadlineExceeded, true},
		{redis.ErrPoolTimeout, true},
		{redisReplyError("LOADING Redis is loading the dataset in memory"), true},
		{redisReplyError("READONLY You can't write against a read only replica."), true},
		{redisReplyError("OOM command not allowed when used memory > 'maxmemory'."), false},
		{redisReplyError("WRONGPASS invalid username-password pair"), false},
		{redisReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
	}
	for _, tt := range tests {
		err := s.wrap("op", tt.err)
		if got := errors.Is(err, errStoreUnavailable); got != tt.unavailable {
			t.Errorf("wrap(%v) unavailable = %v, want %v", tt.err, got, tt.unavailable)
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("wrap(%v) = %v lost the cause", tt.err, err)
		}
	}
	for _, reply := range []string{"OOM command not allowed when used memory > 'maxmemory'.",
		"NOREPLICAS Not enough good replicas to write.", "MISCONF Errors writing to the AOF file"} {
		if err := s.wrap("op", redisReplyError(reply)); !errors.Is(err, errStoreNotWritable) {
			t.Errorf("wrap(%q) = %v, want errStoreNotWritable", reply, err)
		}
	}
	if err := s.wrap("op", redis.ErrClosed); !errors.Is(err, errStoreClosed) {
		t.Errorf("wrap(ErrClosed) = %v, want errStoreClosed", err)
	}
}

// redisReplyError is an error reply of a Redis server, as go-redis types it.
type redisReplyError string

func (e redisReplyError) Error() string { return string(e) }
func (e redisReplyError) RedisError()   {}

// TestInitRedis: init-redis adds what is missing, keeps what differs unless
// forced, is idempotent, and says what it did.
func TestInitRedis(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	s := newRedisStore(redis.NewClient(&redis.Options{Addr: addr}), prefix, "", testLogger())
	defer s.Close()
	ctx := context.Background()
	if err := s.client.HSet(ctx, prefix+redisMappingsKey, "/groq", "https://my-groq.example", "/custom", "https://c.example").Err(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := initRedis(ctx, s, false, addr, &out); err != nil {
		t.Fatalf("initRedis: %v", err)
	}
	got, _ := s.client.HGetAll(ctx, prefix+redisMappingsKey).Result()
	want := mappingsMap(defaultMappings())
	want["/groq"] = "https://my-groq.example"
	want["/custom"] = "https://c.example"
	if !maps.Equal(got, want) {
		t.Errorf("after init-redis the hash = %v, want %v", got, want)
	}
	for _, line := range []string{"added        /openai -> https://api.openai.com", "kept         /groq -> https://my-groq.example", "11 added, 0 overwritten, 1 kept, 0 already set"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("output lacks %q:\n%s", line, out.String())
		}
	}
	if s.client.Exists(ctx, prefix+redisSeededKey).Val() != 1 {
		t.Errorf("init-redis did not mark the hash initialised")
	}

	out.Reset()
	if err := initRedis(ctx, s, false, addr, &out); err != nil {
		t.Fatalf("second initRedis: %v", err)
	}
	if !strings.Contains(out.String(), "0 added, 0 overwritten, 1 kept, 11 already set") {
		t.Errorf("second run output:\n%s", out.String())
	}

	out.Reset()
	if err := initRedis(ctx, s, true, addr, &out); err != nil {
		t.Fatalf("initRedis -force: %v", err)
	}
	if got := s.client.HGet(ctx, prefix+redisMappingsKey, "/groq").Val(); got != mappingsMap(defaultMappings())["/groq"] {
		t.Errorf("after -force /groq = %q, want the default", got)
	}
	if got := s.client.HGet(ctx, prefix+redisMappingsKey, "/custom").Val(); got != "https://c.example" {
		t.Errorf("-force touched a prefix that is not a default: /custom = %q", got)
	}
	if !strings.Contains(out.String(), "overwritten  /groq -> https://api.groq.com/openai (was https://my-groq.example)") {
		t.Errorf("-force output:\n%s", out.String())
	}
}

// TestInitRedisCommand runs the command end to end on a redis-server of
// its own (it uses the production key names) and checks its arguments.
func TestInitRedisCommand(t *testing.T) {
	ctx := context.Background()
	var out, errOut bytes.Buffer
	noRedis := func(string) string { return "" }
	if err := runInitRedisCommand(ctx, noRedis, nil, &out, &errOut); err == nil || !strings.Contains(err.Error(), "API_PROXY_REDIS_URL") {
		t.Errorf("without a Redis URL: %v, want an error naming API_PROXY_REDIS_URL", err)
	}
	if err := runInitRedisCommand(ctx, noRedis, []string{"extra"}, &out, &errOut); err == nil {
		t.Errorf("with a stray argument: nil error")
	}

	rs := startRedisServer(t)
	env := func(k string) string {
		if k == "API_PROXY_REDIS_URL" {
			return rs.url()
		}
		return ""
	}
	out.Reset()
	if err := runInitRedisCommand(ctx, env, nil, &out, &errOut); err != nil {
		t.Fatalf("init-redis: %v (stderr %s)", err, errOut.String())
	}
	if !strings.Contains(out.String(), "12 added") {
		t.Errorf("output:\n%s", out.String())
	}
	if got := rs.client().HGetAll(ctx, "apiproxy:mappings").Val(); !maps.Equal(got, mappingsMap(defaultMappings())) {
		t.Errorf("apiproxy:mappings = %v, want the defaults", got)
	}
	// -redis-url wins over the environment.
	out.Reset()
	if err := runInitRedisCommand(ctx, noRedis, []string{"-force", "-redis-url", rs.url()}, &out, &errOut); err != nil {
		t.Fatalf("init-redis -force -redis-url: %v", err)
	}
	if !strings.Contains(out.String(), "12 already set") {
		t.Errorf("output:\n%s", out.String())
	}
	// A Redis that wants a password, not given: the error says so.
	if err := rs.client().ConfigSet(ctx, "requirepass", "s3cret-password").Err(); err != nil {
		t.Fatal(err)
	}
	if err := runInitRedisCommand(ctx, env, nil, &out, &errOut); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("init-redis without the password: %v, want NOAUTH", err)
	}
}

// TestAdminLockoutFleet: on Redis the failure counts are the fleet's, so
// the budget of guesses does not grow with the replicas (issue 14): 10
// failures split over two instances block the address on both, and only
// that address.
func TestAdminLockoutFleet(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	a, _ := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	b, _ := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	const guesser, operator = "203.0.113.50:4000", "203.0.113.51:4000"
	wrong := "Bearer guess-0123456789abcdef"
	for i := range authMaxFailures {
		s := a
		if i%2 == 1 {
			s = b
		}
		if got := adminCallXFF(t, s, wrong, guesser, ""); got != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i+1, got)
		}
	}
	for name, s := range map[string]*Server{"A": a, "B": b} {
		if got := adminCallXFF(t, s, bearer, guesser, ""); got != http.StatusTooManyRequests {
			t.Errorf("%s: the guesser with the right token: status %d, want 429", name, got)
		}
		if got := adminCallXFF(t, s, bearer, operator, ""); got != http.StatusOK {
			t.Errorf("%s: another address: status %d, want 200", name, got)
		}
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ttl, err := c.PTTL(context.Background(), prefix+redisAuthFailuresKey+"203.0.113.50").Result()
	if err != nil || ttl <= 0 || ttl > authWindow {
		t.Errorf("TTL of the shared counter = %v, %v; want within the window", ttl, err)
	}
}

// TestAdminLockoutRedisDown: with Redis gone the lockout counts in each
// instance: the admin API stays usable, and guessing is still limited.
func TestAdminLockoutRedisDown(t *testing.T) {
	rs := startRedisServer(t)
	s, _, _ := newServerOnRedis(t, rs)
	rs.kill()
	const guesser, operator = "203.0.113.60:4000", "203.0.113.61:4000"
	for i := 1; i <= authMaxFailures; i++ {
		if got := adminCallXFF(t, s, "Bearer guess-0123456789abcdef", guesser, ""); got != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i, got)
		}
	}
	if got := adminCallXFF(t, s, bearer, guesser, ""); got != http.StatusTooManyRequests {
		t.Errorf("the guesser with the right token: status %d, want 429", got)
	}
	// Past authentication the listing needs the store: 503, not 401 or 429.
	if got := adminCallXFF(t, s, bearer, operator, ""); got == http.StatusUnauthorized || got == http.StatusTooManyRequests {
		t.Errorf("another address with the right token: status %d, want it past the lockout", got)
	}
}

// muteRelay forwards TCP connections to a server and, while muted, drops
// what the server sends back: a network that loses replies after the
// server acted on the commands. Cleanup closes it and its connections.
type muteRelay struct {
	ln      net.Listener
	target  string
	muted   atomic.Bool
	dropped chan struct{} // a value after replies were dropped; coalesced

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// newMuteRelay starts a relay to target on a port of its own.
func newMuteRelay(t testing.TB, target string) *muteRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &muteRelay{ln: ln, target: target, dropped: make(chan struct{}, 1)}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closed = true
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *muteRelay) addr() string { return r.ln.Addr().String() }

func (r *muteRelay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", r.target)
		if err != nil {
			client.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		r.conns = append(r.conns, client, server)
		r.wg.Add(2)
		r.mu.Unlock()
		go func() {
			defer r.wg.Done()
			io.Copy(server, client)
			server.Close()
		}()
		go func() {
			defer r.wg.Done()
			defer client.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 {
					if r.muted.Load() {
						notify(r.dropped)
					} else if _, werr := client.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
