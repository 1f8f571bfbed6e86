package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requestsPage is GET /api/requests' answer.
type requestsPage struct {
	Requests []logRecord `json:"requests"`
	Next     *string     `json:"next"`
}

// getRequests calls GET /api/requests?query with the admin token and
// decodes a 200.
func getRequests(t testing.TB, front *httptest.Server, query string) requestsPage {
	t.Helper()
	res, body := adminRequest(t, front, http.MethodGet, "/api/requests?"+query, "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/requests?%s: %d %s", query, res.StatusCode, body)
	}
	var p requestsPage
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return p
}

// flushLog writes what waits in s's request log now, as the writer loop
// would within a second.
func flushLog(t testing.TB, s *Server) {
	t.Helper()
	if err := s.reqlog.flush(context.Background()); err != nil {
		t.Fatalf("flush request log: %v", err)
	}
}

// lastRecord sends req through front, flushes s's log and returns the
// newest record.
func lastRecord(t testing.TB, s *Server, front *httptest.Server, req *http.Request) logRecord {
	t.Helper()
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the request to be recorded")
	flushLog(t, s)
	p := getRequests(t, front, "limit=1")
	if len(p.Requests) != 1 {
		t.Fatalf("got %d records, want 1", len(p.Requests))
	}
	return p.Requests[0]
}

const logUsageJSON = `{"id":"chatcmpl-1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}`

// TestRequestLogRecords: every proxied request leaves one record with
// true values (SPEC §12): keys, refusals, limits, failover, an unreachable
// target, an event stream, a client that left; a request no mapping
// matches leaves none.
func TestRequestLogRecords(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, logUsageJSON, "Content-Type", "application/json")
	sse := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"model\":\"gpt-4o-mini\",\"choices\":[]}\n\n")
		io.WriteString(w, "data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\ndata: [DONE]\n\n")
	})
	failing := statusUpstream(t, http.StatusServiceUnavailable, "down")
	s, front := newAdminTestServer(t, nil)
	key, secret := testKey("team-a", "/k")
	other, otherSecret := testKey("team-b", "/elsewhere")
	setKeys(t, s, key, other)
	setMapping(t, s, keysMapping("/k", up.URL, "sk-upstream", "bearer"))
	setMapping(t, s, targetsOf("/f", failing.URL, up.URL))
	setMapping(t, s, targetsOf("/down", refusedURL(t)))
	setMapping(t, s, targetsOf("/sse", sse.URL))
	limited := targetsOf("/r", up.URL)
	limited.Limits.RPM = 1
	setMapping(t, s, limited)

	post := func(url, body string, header ...string) *http.Request {
		req, err := http.NewRequest(http.MethodPost, front.URL+url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		return req
	}
	body := `{"model":"gpt-4o","messages":[]}`

	t.Run("with a key", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/k/v1/chat/completions?x=1", body, "Authorization", "Bearer "+secret))
		want := logRecord{Prefix: "/k", Method: "POST", Path: "/v1/chat/completions", Status: 200,
			KeyID: optString(key.ID), KeyName: "team-a", Model: "gpt-4o",
			PromptTokens: 12, CompletionTokens: 30, TotalTokens: 42,
			BytesIn: int64(len(body)), BytesOut: int64(len(logUsageJSON)), Target: 0, Attempts: 1}
		checkRecord(t, r, want)
		if r.ClientIP.String() != "127.0.0.1" || r.LatencyMS <= 0 || r.TTFBMS <= 0 || r.TTFBMS > r.LatencyMS {
			t.Errorf("got client_ip %q, latency %v, ttfb %v; want 127.0.0.1 and 0 < ttfb <= latency", r.ClientIP, r.LatencyMS, r.TTFBMS)
		}
		if age := time.Since(time.Time(r.Time)); age < 0 || age > time.Minute {
			t.Errorf("got time %v, want about now", time.Time(r.Time))
		}
	})
	t.Run("no key", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/k/v1/chat/completions", body))
		checkRecord(t, r, logRecord{Prefix: "/k", Method: "POST", Path: "/v1/chat/completions", Status: 401,
			Code: "invalid_api_key", Target: noIndex, BytesIn: int64(len(body)), BytesOut: r.BytesOut})
	})
	t.Run("key not allowed", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/k/v1/x", "", "X-Api-Key", otherSecret))
		checkRecord(t, r, logRecord{Prefix: "/k", Method: "POST", Path: "/v1/x", Status: 403,
			Code: "key_not_allowed", KeyID: optString(other.ID), KeyName: "team-b", Target: noIndex, BytesOut: r.BytesOut})
	})
	t.Run("rate limited", func(t *testing.T) {
		lastRecord(t, s, front, post("/r/v1/x", ""))
		r := lastRecord(t, s, front, post("/r/v1/x", ""))
		checkRecord(t, r, logRecord{Prefix: "/r", Method: "POST", Path: "/v1/x", Status: 429,
			Code: "rate_limited", Target: noIndex, BytesOut: r.BytesOut})
	})
	t.Run("after a failover", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/f/v1/chat/completions", body))
		checkRecord(t, r, logRecord{Prefix: "/f", Method: "POST", Path: "/v1/chat/completions", Status: 200,
			Model: "gpt-4o", PromptTokens: 12, CompletionTokens: 30, TotalTokens: 42,
			BytesIn: int64(len(body)), BytesOut: int64(len(logUsageJSON)), Target: 1, Attempts: 2})
	})
	t.Run("unreachable", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/down/v1/x", ""))
		checkRecord(t, r, logRecord{Prefix: "/down", Method: "POST", Path: "/v1/x", Status: 502,
			Code: "upstream_unreachable", Target: 0, Attempts: 1, BytesOut: r.BytesOut})
	})
	t.Run("event stream", func(t *testing.T) {
		r := lastRecord(t, s, front, post("/sse/v1/chat/completions", body))
		checkRecord(t, r, logRecord{Prefix: "/sse", Method: "POST", Path: "/v1/chat/completions", Status: 200,
			Model: "gpt-4o-mini", Stream: true, PromptTokens: 5, CompletionTokens: 7, TotalTokens: 12,
			BytesIn: int64(len(body)), BytesOut: r.BytesOut, Target: 0, Attempts: 1})
		if r.BytesOut < 100 {
			t.Errorf("got bytes_out %d, want the stream's", r.BytesOut)
		}
	})
	t.Run("no mapping", func(t *testing.T) {
		before := getRequests(t, front, "limit=1").Requests[0].ID
		res, err := front.Client().Get(front.URL + "/nothing-here/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		flushLog(t, s)
		if got := getRequests(t, front, "limit=1").Requests[0].ID; got != before || res.StatusCode != 404 {
			t.Errorf("a 404 no_mapping left record %s (status %d), want none", got, res.StatusCode)
		}
	})
}

// checkRecord compares got with want in every field but the id, the time,
// the timings and the client address.
func checkRecord(t testing.TB, got, want logRecord) {
	t.Helper()
	want.ID, want.Time, want.LatencyMS, want.TTFBMS, want.ClientIP = got.ID, got.Time, got.LatencyMS, got.TTFBMS, got.ClientIP
	if got != want {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("got record\n%s\nwant\n%s", g, w)
	}
}

// TestRequestLogClientClosed: a caller that leaves mid-stream is recorded
// as client_closed, 499.
func TestRequestLogClientClosed(t *testing.T) {
	up, cancelled := newIdleStreamUpstream(t)
	s, front := newAdminTestServer(t, map[string]string{"/s": up.URL})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front.URL+"/s/v1/stream", nil)
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// The first event has arrived: the stream runs.
	if _, err := bufio.NewReader(res.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	res.Body.Close()
	waitClosed(t, cancelled, "the upstream request to be cancelled")
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the request to end")
	flushLog(t, s)
	r := getRequests(t, front, "").Requests[0]
	if !r.ClientClosed || r.Status != 499 || !r.Stream || r.Path != "/v1/stream" {
		t.Errorf("got client_closed %v, status %d, stream %v, path %q; want true, 499, true, /v1/stream", r.ClientClosed, r.Status, r.Stream, r.Path)
	}
}

// TestRequestLogQuery: the filters, the limit, newest first, and 400 for
// bad parameters (SPEC §12); the admin token is required.
func TestRequestLogQuery(t *testing.T) {
	ok := statusUpstream(t, http.StatusOK, logUsageJSON, "Content-Type", "application/json")
	bad := statusUpstream(t, http.StatusInternalServerError, "")
	missing := statusUpstream(t, http.StatusNotFound, "")
	s, front := newAdminTestServer(t, map[string]string{"/a": ok.URL, "/b": bad.URL, "/c": missing.URL})
	key, secret := testKey("team-a")
	setKeys(t, s, key)
	setMapping(t, s, keysMapping("/k", ok.URL, "sk-up", "bearer"))
	send := func(path string, header ...string) {
		req, _ := http.NewRequest(http.MethodGet, front.URL+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	for range 3 {
		send("/a/x")
		send("/b/x")
		send("/c/x")
	}
	send("/k/x", "Authorization", "Bearer "+secret)
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	flushLog(t, s)

	count := func(query string) int { return len(getRequests(t, front, query).Requests) }
	for query, want := range map[string]int{
		"": 10, "limit=4": 4, "prefix=/a": 3, "prefix=/nope": 0, "status=5xx": 3, "status=500": 3,
		"status=4xx": 3, "status=2XX": 4, "status=404": 3, "model=gpt-4o": 4, "key_id=" + key.ID: 1,
		"prefix=/a&model=gpt-4o": 3, "prefix=/b&status=2xx": 0, "prefix=": 10,
	} {
		if got := count(query); got != want {
			t.Errorf("?%s: got %d records, want %d", query, got, want)
		}
	}
	all := getRequests(t, front, "").Requests
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID {
			t.Errorf("record %d: id %s after %s, want newest first", i, all[i].ID, all[i-1].ID)
		}
	}
	if all[0].Prefix != "/k" {
		t.Errorf("got newest prefix %q, want /k", all[0].Prefix)
	}
	if p := getRequests(t, front, ""); p.Next != nil {
		t.Errorf("got next %q with every record on the page, want null", *p.Next)
	}

	for _, query := range []string{"limit=0", "limit=1001", "limit=x", "limit=-1", "status=6xx", "status=99",
		"status=abc", "before=nope", "prefx=/a", "limit=1&limit=2", "model=" + strings.Repeat("m", 300)} {
		res, body := adminRequest(t, front, http.MethodGet, "/api/requests?"+query, "")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_query")
	}
	res, err := front.Client().Get(front.URL + "/api/requests")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("without the admin token: got %d, want 401", res.StatusCode)
	}
	res, body := adminRequest(t, front, http.MethodDelete, "/api/requests", "")
	wantProxyError(t, res, body, http.StatusMethodNotAllowed, "method_not_allowed")
}

// TestRequestLogPaging: paging with next while records arrive neither
// skips nor repeats one.
func TestRequestLogPaging(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	s, front := newAdminTestServer(t, map[string]string{"/a": up.URL})
	send := func(n int) {
		for range n {
			res, err := front.Client().Get(front.URL + "/a/x")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
		flushLog(t, s)
	}
	send(25)
	seen := map[string]bool{}
	var ids []string
	query := "limit=7"
	for pages := 0; ; pages++ {
		p := getRequests(t, front, query)
		for _, r := range p.Requests {
			if seen[r.ID] {
				t.Fatalf("record %s on two pages", r.ID)
			}
			seen[r.ID] = true
			ids = append(ids, r.ID)
		}
		if p.Next == nil {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		send(3) // newer records arrive between pages
		query = "limit=7&before=" + *p.Next
	}
	if len(ids) != 25 {
		t.Errorf("paged through %d records, want the 25 there were when paging started", len(ids))
	}
}

// TestRequestLogNoSecrets: a unique marker in the query string, a header,
// the request body, the response body and the proxy key reaches none of
// GET /api/requests, the store's file and the REQUEST_LOG file (SPEC §12).
func TestRequestLogNoSecrets(t *testing.T) {
	const (
		queryMarker  = "QMARKq7f3a"
		headerMarker = "HMARKh81c2"
		bodyMarker   = "BMARKb55e0"
		replyMarker  = "RMARKr09d4"
		upKeyMarker  = "sk-UMARKu3e1"
	)
	up := statusUpstream(t, http.StatusOK, `{"model":"gpt-4o","note":"`+replyMarker+`"}`, "Content-Type", "application/json")
	logPath := filepath.Join(t.TempDir(), "requests.log")
	// SECRET_KEY seals the upstream key in the store, where it would
	// otherwise be, as part of its mapping (SPEC §10).
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "REQUEST_LOG": logPath,
		"SECRET_KEY": "0123456789abcdef0123456789abcdef-test"})
	store, err := openStore(context.Background(), cfg, testLogger()) // as run opens it: sealed keys
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	front := newFront(t, s)
	key, secret := testKey("team-a")
	setKeys(t, s, key)
	setMapping(t, s, keysMapping("/k", up.URL, upKeyMarker, "bearer"))
	setMapping(t, s, targetsOf("/p", up.URL))
	for _, target := range []string{"/k/v1/chat?key=" + secret + "&q=" + queryMarker, "/p/v1/chat?q=" + queryMarker} {
		req, _ := http.NewRequest(http.MethodPost, front.URL+target, strings.NewReader(`{"messages":"`+bodyMarker+`"}`))
		req.Header.Set("X-Custom", headerMarker)
		req.Header.Set("Authorization", "Bearer "+secret)
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: got %d, want 200", target, res.StatusCode)
		}
	}
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	flushLog(t, s)
	_, apiBody := adminRequest(t, front, http.MethodGet, "/api/requests", "")
	if n := len(getRequests(t, front, "").Requests); n != 2 {
		t.Fatalf("got %d records, want 2", n)
	}
	lines, err := os.ReadFile(logPath)
	if err != nil { // the file, as written
		t.Fatal(err)
	}
	if n := strings.Count(string(lines), "\n"); n != 2 {
		t.Errorf("REQUEST_LOG has %d lines, want 2:\n%s", n, lines)
	}
	s.Close() // the store's file, whole
	stored, err := os.ReadFile(filepath.Join(cfg.DataDir, boltFileName))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"GET /api/requests": apiBody, "REQUEST_LOG": lines, "the store": stored} {
		for _, marker := range []string{queryMarker, headerMarker, bodyMarker, replyMarker, upKeyMarker, secret} {
			if strings.Contains(string(b), marker) {
				t.Errorf("%s holds %q", name, marker)
			}
		}
	}
	if !strings.Contains(string(apiBody), key.ID) || !strings.Contains(string(lines), key.ID) {
		t.Errorf("the records lack the key's id %s", key.ID)
	}
}

// TestRequestLogShutdownFlush: records that wait when the Server closes
// are written before its store closes, with no writer loop running.
func TestRequestLogShutdownFlush(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	s, front := newTestServerConfig(t, cfg, map[string]string{"/a": up.URL})
	for range 5 {
		res, err := front.Client().Get(front.URL + "/a/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	if n := s.reqlog.queues[0].waiting(); n != 5 {
		t.Fatalf("got %d records waiting, want 5", n)
	}
	closeFront(t, front)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	recs, _, err := store.readLog(context.Background(), logQuery{Limit: 100})
	if err != nil || len(recs) != 5 {
		t.Errorf("after Close: got %d records (%v), want 5", len(recs), err)
	}
}

// TestRequestLogWriterLoop: with the Server's loops running, records reach
// the store within about a second, no flush asked for.
func TestRequestLogWriterLoop(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	s, front := newAdminTestServer(t, map[string]string{"/a": up.URL})
	s.Start()
	res, err := front.Client().Get(front.URL + "/a/loop")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	eventually(t, func() bool {
		p := getRequests(t, front, "prefix=/a")
		return len(p.Requests) == 1 && p.Requests[0].Path == "/loop"
	}, "the record to be written by the loop")
}

// TestRequestLogDroppedMetric: records that find the queue full are
// counted in apiproxy_request_log_dropped_total.
func TestRequestLogDroppedMetric(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	s, front := newAdminTestServer(t, map[string]string{"/a": up.URL})
	s.reqlog.queues[0].size = 2
	for range 5 {
		res, err := front.Client().Get(front.URL + "/a/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	res, err := front.Client().Get(front.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	if !strings.Contains(string(body), "\napiproxy_request_log_dropped_total 3\n") {
		t.Errorf("/metrics lacks apiproxy_request_log_dropped_total 3:\n%s", grepLines(string(body), "request_log"))
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			out = append(out, sc.Text())
		}
	}
	return strings.Join(out, "\n")
}

// TestRequestLogRotate: the binary appends to REQUEST_LOG and, on SIGHUP
// after a rename (logrotate), writes to a new file at the path.
func TestRequestLogRotate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	up := statusUpstream(t, http.StatusOK, "ok")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "requests.log")
	if err := os.WriteFile(logPath, []byte("an earlier line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	if out, err := exec.Command(bin, "map", "-data-dir", dataDir, "set", "/p", up.URL).CombinedOutput(); err != nil {
		t.Fatalf("map set: %v\n%s", err, out)
	}
	p := startBinary(t, bin, "DATA_DIR="+dataDir, "REQUEST_LOG="+logPath)
	get := func(path string) {
		res, err := http.Get("http://" + p.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	hasLine := func(file, path string) bool {
		b, _ := os.ReadFile(file)
		return strings.Contains(string(b), fmt.Sprintf(`"path":%q`, path))
	}
	get("/p/first")
	eventually(t, func() bool { return hasLine(logPath, "/first") }, "the first record in REQUEST_LOG")
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { _, err := os.Stat(logPath); return err == nil }, "a new file at the path after SIGHUP")
	get("/p/second")
	eventually(t, func() bool { return hasLine(logPath, "/second") }, "the second record in the new file")
	old, _ := os.ReadFile(rotated)
	if !strings.HasPrefix(string(old), "an earlier line\n") || !hasLine(rotated, "/first") || hasLine(rotated, "/second") {
		t.Errorf("rotated file: got\n%s\nwant the earlier line, then /first only", old)
	}
}

// TestRequestLogDest: REQUEST_LOG turns off as the other switches do, in
// any case; stdout in any case; anything else is a file path.
func TestRequestLogDest(t *testing.T) {
	for in, want := range map[string]string{"off": "", "OFF": "", " False ": "", "no": "", "0": "",
		"stdout": "stdout", "STDOUT": "stdout", "./off": "./off", "/var/log/requests.log": "/var/log/requests.log"} {
		if got, err := requestLogDest(in); got != want || err != nil {
			t.Errorf("requestLogDest(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	dir := t.TempDir()
	t.Chdir(dir)
	l, err := newServerLog(Config{RequestLog: "Off"}, nil, testLogger())
	if err != nil || l.on() {
		t.Errorf("REQUEST_LOG=Off: %v, on %v; want no sink", err, l != nil && l.on())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("REQUEST_LOG=Off made files: %v", entries)
	}
}

// TestRequestLogSpillLoad: the records of a spill file are queued for the
// store at start, with the queue's ids made to follow theirs (even from a
// clock that is behind them); the file goes once they are written. An
// unreadable one is moved aside, not replaced by this run's.
func TestRequestLogSpillLoad(t *testing.T) {
	dir := t.TempDir()
	store, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var ids logIDs
	later := time.Now().Add(time.Hour) // written by a clock an hour ahead
	spilled := []logRecord{{ID: ids.next(later), Prefix: "/p", Method: "GET", Path: "/one", Status: 200},
		{ID: ids.next(later), Prefix: "/p", Method: "GET", Path: "/two", Status: 200}}
	b, _ := json.Marshal(spilled)
	spill := filepath.Join(dir, requestLogSpillFile)
	if err := os.WriteFile(spill, b, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := newServerLog(Config{DataDir: dir, RequestLog: "off"}, store, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if id := l.ids.next(time.Now()); id <= spilled[1].ID {
		t.Errorf("a new record's id %s is not after the spilled ones' (%s): Redis's duplicate check would skip it", id, spilled[1].ID)
	}
	l.add(logRecord{Prefix: "/p", Method: "GET", Path: "/three", Status: 200}, time.Now())
	if _, err := os.Stat(spill); err != nil {
		t.Errorf("the spill file is gone before its records were written: %v", err)
	}
	if err := l.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, _, err := store.readLog(context.Background(), logQuery{Limit: 10})
	if err != nil || len(recs) != 3 || recs[0].Path != "/three" {
		t.Fatalf("stored %+v, %v; want the two spilled records and /three, newest first", recs, err)
	}
	if _, err := os.Stat(spill); !os.IsNotExist(err) {
		t.Errorf("the spill file is still there after its records were written: %v", err)
	}

	if err := os.WriteFile(spill, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newServerLog(Config{DataDir: dir, RequestLog: "off"}, store, testLogger()); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(spill + ".unreadable"); err != nil || string(b) != "not json" {
		t.Errorf("the unreadable spill file was not moved aside: %q, %v", b, err)
	}
}

// TestSIGHUPWithoutLogFile: without a REQUEST_LOG file, SIGHUP is logged
// and ignored; the process goes on serving (Go's default for it is to
// exit at once, with no final flush).
func TestSIGHUPWithoutLogFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	p := startBinary(t, bin, "DATA_DIR="+t.TempDir())
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("the process exited on SIGHUP: %v\n%s", p.err, p.stderr.String())
		default:
		}
		return strings.Contains(p.stderr.String(), "SIGHUP ignored")
	}, "the SIGHUP to be logged as ignored")
	res, err := http.Get("http://" + p.addr + "/healthz")
	if err != nil {
		t.Fatalf("after SIGHUP: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("/healthz after SIGHUP = %d, want 200", res.StatusCode)
	}
}

// TestStatsRecentErrors: a ranged /stats lists the request log's newest
// non-2xx records, at most 20, without keys or clients; /stats without a
// range does not.
func TestStatsRecentErrors(t *testing.T) {
	ok := statusUpstream(t, http.StatusOK, logUsageJSON, "Content-Type", "application/json")
	bad := statusUpstream(t, http.StatusBadGateway, "")
	s, front := newAdminTestServer(t, map[string]string{"/ok": ok.URL, "/bad": bad.URL})
	for i := range 25 {
		sendN(t, front, "/bad/e"+strconv.Itoa(i), 1)
		sendN(t, front, "/ok/fine", 1)
	}
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	flushLog(t, s)
	var v struct {
		RecentErrors *[]map[string]any `json:"recent_errors"`
	}
	res, body := adminRequest(t, front, http.MethodGet, "/stats?range=24h", "")
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil || v.RecentErrors == nil {
		t.Fatalf("/stats?range=24h: %d, no recent_errors: %.300s", res.StatusCode, body)
	}
	errs := *v.RecentErrors
	if len(errs) != 20 || errs[0]["path"] != "/e24" || errs[19]["path"] != "/e5" {
		t.Fatalf("got %d recent errors from %v to %v, want 20 from /e24 to /e5", len(errs), errs[0]["path"], errs[len(errs)-1]["path"])
	}
	want := map[string]any{"prefix": "/bad", "method": "GET", "status": 502.0, "code": "", "model": ""}
	for k, w := range want {
		if errs[0][k] != w {
			t.Errorf("recent error %s = %v, want %v", k, errs[0][k], w)
		}
	}
	for _, k := range []string{"key_id", "key_name", "client_ip"} {
		if _, ok := errs[0][k]; ok {
			t.Errorf("recent error has %s", k)
		}
	}
	_, body = adminRequest(t, front, http.MethodGet, "/stats", "")
	if strings.Contains(string(body), "recent_errors") {
		t.Errorf("/stats without a range lists recent errors")
	}
}
