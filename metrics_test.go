package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricValue returns the value of the sample line that starts with name
// and holds every label in labels, or -1 if there is none.
func metricValue(t testing.TB, body, name string, labels ...string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		fields := strings.Fields(line)
		if len(fields) != 2 || !strings.HasPrefix(fields[0], name) {
			continue
		}
		series := fields[0]
		if rest := series[len(name):]; rest != "" && rest[0] != '{' {
			continue // a longer metric name
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if match {
			v, err := strconv.ParseFloat(fields[1], 64)
			if err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			return v
		}
	}
	return -1
}

func TestMetrics(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chat":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, openAIChatJSON)
		case "/gemini":
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, geminiSSE)
		default:
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL, "/q": up.URL})
	client := front.Client()
	for _, path := range []string{"/p/chat", "/p/chat", "/p/gemini", "/p/limited", "/q/chat"} {
		getStatus(t, client, front.URL+path)
	}
	res, err := client.Get(front.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := string(readAll(t, res))
	res.Body.Close()
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"apiproxy_requests_total", []string{`prefix="/p"`, `code="200"`}, 3},
		{"apiproxy_requests_total", []string{`prefix="/p"`, `code="429"`}, 1},
		{"apiproxy_requests_total", []string{`prefix="/q"`, `code="200"`}, 1},
		{"apiproxy_request_duration_seconds_count", []string{`prefix="/p"`}, 4},
		{"apiproxy_request_duration_seconds_bucket", []string{`prefix="/p"`, `le="+Inf"`}, 4},
		{"apiproxy_time_to_first_byte_seconds_count", []string{`prefix="/p"`}, 4},
		{"apiproxy_tokens_total", []string{`prefix="/p"`, `model="gpt-4o-2024-08-06"`, `kind="prompt"`}, 2 * 1117},
		{"apiproxy_tokens_total", []string{`prefix="/p"`, `model="gpt-4o-2024-08-06"`, `kind="total"`}, 2 * 1163},
		{"apiproxy_tokens_total", []string{`prefix="/p"`, `model="gemini-2.0-flash"`, `kind="completion"`}, 35},
		{"apiproxy_tokens_total", []string{`prefix="/q"`, `model="gpt-4o-2024-08-06"`, `kind="completion"`}, 46},
		{"apiproxy_bytes_total", []string{`prefix="/p"`, `direction="out"`}, float64(2*len(openAIChatJSON) + len(geminiSSE))},
		{"apiproxy_upstream_attempts_total", []string{`prefix="/p"`, `target="0"`, `outcome="ok"`}, 3},
		{"apiproxy_upstream_attempts_total", []string{`prefix="/p"`, `target="0"`, `outcome="error"`}, 1}, // 429 is in retry_on
		{"apiproxy_upstream_attempts_total", []string{`prefix="/p"`, `target="0"`, `outcome="retried"`}, 0},
		{"apiproxy_active_requests", nil, 0},
	} {
		if got := metricValue(t, body, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total"} {
		if metricValue(t, body, name) < 0 {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	// Durations are in seconds, bucket bounds increasing.
	if sum := metricValue(t, body, "apiproxy_request_duration_seconds_sum", `prefix="/p"`); sum <= 0 || sum > 10 {
		t.Errorf("duration sum = %v s, want a few milliseconds", sum)
	}
	les := regexp.MustCompile(`apiproxy_request_duration_seconds_bucket\{prefix="/p",le="([0-9.e+-]+)"\}`).FindAllStringSubmatch(body, -1)
	if len(les) < 10 {
		t.Fatalf("%d duration buckets, want a full set", len(les))
	}
	prev := 0.0
	for _, m := range les {
		le, _ := strconv.ParseFloat(m[1], 64)
		if le <= prev {
			t.Errorf("bucket bound %v after %v", le, prev)
		}
		prev = le
	}
}

// TestMetricsUpstreamAttempts: each try of a target counts under its
// index and outcome; a target that was tried has every outcome, a target
// never tried has none.
func TestMetricsUpstreamAttempts(t *testing.T) {
	_, front, _, _ := newFailoverServer(t)
	client := front.Client()
	for range 2 {
		if code, _ := getStatus(t, client, front.URL+"/f/x"); code != 200 {
			t.Fatalf("GET /f/x = %d, want 200", code)
		}
	}
	_, body := getStatus(t, client, front.URL+"/metrics")
	for _, c := range []struct {
		target, outcome string
		want            float64
	}{
		{"0", "ok", 0},
		{"0", "error", 0},
		{"0", "retried", 2},
		{"1", "ok", 2},
		{"1", "error", 0},
		{"1", "retried", 0},
		{"2", "ok", -1},
	} {
		labels := []string{`prefix="/f"`, `target="` + c.target + `"`, `outcome="` + c.outcome + `"`}
		if got := metricValue(t, string(body), "apiproxy_upstream_attempts_total", labels...); got != c.want {
			t.Errorf("apiproxy_upstream_attempts_total%v = %v, want %v", labels, got, c.want)
		}
	}
}

// TestMetricsOwnRegistry: every Server has its own registry, so building
// several in one process neither panics nor mixes their counts.
func TestMetricsOwnRegistry(t *testing.T) {
	up := newUpstream(t, nil)
	_, a := newTestServer(t, map[string]string{"/p": up.URL})
	_, b := newTestServer(t, map[string]string{"/p": up.URL})
	getStatus(t, a.Client(), a.URL+"/p/x")
	_, body := getStatus(t, b.Client(), b.URL+"/metrics")
	if got := metricValue(t, string(body), "apiproxy_requests_total", `prefix="/p"`); got != -1 {
		t.Errorf("server b reports %v requests of server a", got)
	}
}

// TestMetricsDisabledStats: with stats off /metrics still serves the
// runtime metrics and the active-requests gauge, and no request counters.
func TestMetricsDisabledStats(t *testing.T) {
	up := newUpstream(t, nil)
	cfg := testConfig(t, map[string]string{"ENABLE_STATS": "false"})
	_, front := newTestServerConfig(t, cfg, map[string]string{"/p": up.URL})
	getStatus(t, front.Client(), front.URL+"/p/x")
	_, body := getStatus(t, front.Client(), front.URL+"/metrics")
	if metricValue(t, string(body), "apiproxy_requests_total") != -1 {
		t.Error("request counters with stats off")
	}
	if metricValue(t, string(body), "apiproxy_active_requests") != 0 || metricValue(t, string(body), "go_goroutines") <= 0 {
		t.Error("runtime metrics or the active-requests gauge missing with stats off")
	}
}

// TestMetricsKeys: requests made with a proxy key count under the key's
// id, by prefix and code, refused ones too, and their tokens by kind; a
// request without a key counts under none; no secret or hash is exposed.
func TestMetricsKeys(t *testing.T) {
	_, front, a, b, secretA, secretB := keyedServer(t)
	keyedRequests(t, front, secretA, secretB)
	res, err := front.Client().Get(front.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := string(readAll(t, res))
	res.Body.Close()
	keyA, keyB := `key="`+a.ID+`"`, `key="`+b.ID+`"`
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"apiproxy_key_requests_total", []string{keyA, `prefix="/ai"`, `code="200"`}, 2},
		{"apiproxy_key_requests_total", []string{keyA, `prefix="/ai"`, `code="429"`}, 1},
		{"apiproxy_key_requests_total", []string{keyB, `prefix="/ai"`, `code="403"`}, 1},
		{"apiproxy_key_requests_total", []string{`code="401"`}, -1},
		{"apiproxy_key_tokens_total", []string{keyA, `kind="prompt"`}, 2 * 1117},
		{"apiproxy_key_tokens_total", []string{keyA, `kind="total"`}, 2 * 1163},
		{"apiproxy_key_tokens_total", []string{keyB}, -1},
		{"apiproxy_requests_total", []string{`prefix="/ai"`, `code="200"`}, 2},
		{"apiproxy_requests_total", []string{`prefix="/ai"`, `code="401"`}, 1},
	} {
		if got := metricValue(t, body, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, secret := range []string{secretA, secretB, a.Hash, b.Hash} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics holds a key's secret or hash")
		}
	}
}

// TestMetricsRateLimited: apiproxy_rate_limited_total counts refusals by
// prefix, key id ("" without one) and limit, each once; a 429 from
// upstream is none.
func TestMetricsRateLimited(t *testing.T) {
	now := time.Now()
	st := newTestStats(t, nil, &fakeClock{t: now})
	recordRefusals(t, st, now)
	reg := prometheus.NewRegistry()
	reg.MustRegister(newStatsCollector(st))
	rw := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rw, httptest.NewRequest("GET", "/metrics", nil))
	body := rw.Body.String()
	const name = "apiproxy_rate_limited_total"
	for _, c := range []struct {
		prefix, key, limit string
		want               float64
	}{
		{"/a", "", "rpm", 2},
		{"/a", "", "tpm", 1},
		{"/a", "", "concurrency", -1},
		{"/a", "k_a", "concurrency", 1},
		{"/a", "k_a", "rpm", -1},
		{"/b", "", "concurrency", 1},
		{"/b", "k_a", "rpm", 1},
		{"/gone", "k_b", "rpm", 1},
	} {
		labels := []string{`prefix="` + c.prefix + `"`, `key="` + c.key + `"`, `limit="` + c.limit + `"`}
		if got := metricValue(t, body, name, labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", name, labels, got, c.want)
		}
	}
	if n := strings.Count(body, "\n"+name+"{"); n != 6 {
		t.Errorf("%d series of %s, want 6:\n%s", n, name, body)
	}
}
