package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// checkGolden compares got with testdata/name, or rewrites the file when
// the test runs with -update.
func checkGolden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		from := max(i-80, 0)
		t.Errorf("%s differs from %s at byte %d:\n got ...%s\nwant ...%s", name, path, i,
			got[from:min(i+80, len(got))], want[from:min(i+80, len(want))])
	}
}

// goldenStats returns a Stats holding known data: three prefixes (one no
// longer mapped, one with two targets, the second cooling down), requests
// over 40 days, every status class, a client that left, token usage with
// and without a model, models past maxModels, failovers, and counts both
// flushed to the store and still pending, some requests made with a proxy
// key ("k_team", and "k_old", deleted since). The process figures are
// fixed.
func goldenStats(t testing.TB) (*Stats, time.Time) {
	t.Helper()
	now0 := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	clock := &fakeClock{t: now0.Add(-40 * 24 * time.Hour)}
	st := newTestStats(t, nil, clock)
	st.routes = testRouteObjects(t,
		Mapping{Prefix: "/a", Targets: []Target{{URL: "https://a.example"}, {URL: "https://a2.example"}}},
		newMapping("/b", "http://b.example/base"))
	st.proxyKeys = testKeyNames("k_team", "team-a")
	ctx := context.Background()
	ms, day := time.Millisecond, 24*time.Hour
	at := func(ago time.Duration, flush bool, recs ...*requestRecord) {
		t.Helper()
		when := now0.Add(-ago)
		clock.Set(when)
		for _, r := range recs {
			r.Start = when.Add(-r.Duration)
			st.record(r)
		}
		if flush {
			if err := st.flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
		}
	}
	usage := func(prefix, model string, status int, d time.Duration, tok tokenCounts) *requestRecord {
		r := rec(prefix, now0, status, d)
		r.Usage = tokenUsage{Known: true, Tokens: tok}
		if model != "" {
			r.Usage.Model = []byte(model)
		}
		return r
	}
	closed := rec("/b", now0, 499, 7*ms)
	closed.ProxyErr = "client_closed"
	unreachable := rec("/a", now0, 502, ms)
	unreachable.ProxyErr, unreachable.BytesOut, unreachable.TTFB = "upstream_unreachable", 0, 0
	unreachable.Tries = []targetTry{{0, tryRetried}, {1, tryError}}
	odd := rec("/b", now0, 99, 2*ms)
	failedOver := rec("/a", now0, 200, 12*ms)
	failedOver.Tries = []targetTry{{0, tryRetried}, {1, tryOK}}
	goneFailedOver := rec("/gone", now0, 404, 5*ms)
	goneFailedOver.Tries = []targetTry{{0, tryRetried}, {1, tryOK}}
	limited := rec("/a", now0, 429, 3*ms)
	limited.Tries = []targetTry{{0, tryRetried}, {1, tryError}}
	keyed := func(id string, r *requestRecord) *requestRecord {
		r.KeyID = id
		return r
	}
	goneFailedOver.KeyID, unreachable.KeyID, limited.KeyID = "k_old", "k_team", "k_team"

	at(40*day, true, rec("/a", now0, 200, 10*ms), rec("/gone", now0, 200, 3*ms))
	at(10*day, true, failedOver, rec("/a", now0, 500, 30*ms), goneFailedOver)
	at(3*day, true, keyed("k_team", rec("/a", now0, 201, 9*ms)), rec("/b", now0, 101, 2*ms), rec("/b", now0, 304, 4*ms))
	at(5*time.Hour, true, closed, odd, rec("/b", now0, 200, 250*ms),
		usage("/b", "", 200, 40*ms, tokenCounts{tokPrompt: 7, tokCompletion: 3, tokTotal: 10}))
	var many []*requestRecord
	for i := range maxModels + 2 {
		many = append(many, usage("/b", fmt.Sprintf("m-%02d", i), 200, time.Duration(i+1)*ms,
			tokenCounts{tokPrompt: int64(i), tokCompletion: 1, tokTotal: int64(i) + 2}))
	}
	at(2*time.Hour, true, many...)
	at(30*time.Minute, true,
		keyed("k_team", usage("/a", "gpt-4o", 200, 800*ms, tokenCounts{tokPrompt: 1117, tokCompletion: 46, tokTotal: 1163, tokCacheRead: 1024})),
		usage("/a", "claude-x", 200, 1500*ms, tokenCounts{tokPrompt: 40, tokCompletion: 15, tokTotal: 55, tokCacheRead: 5, tokCacheWrite: 10}),
		unreachable)
	// Another instance saw other models of /b: past maxModels in all, the
	// view folds the least used into "other".
	other := newStatsData()
	for i := range 3 {
		other.Total[fmt.Sprintf("/b|m|z-%d|count", i)] = int64(i + 1)
		other.Total[fmt.Sprintf("/b|m|z-%d|prompt", i)] = int64(10 * (i + 1))
	}
	if err := st.store.AddStats(ctx, other); err != nil {
		t.Fatal(err)
	}
	// Pending: counted here, not yet written to the store.
	at(0, false, usage("/a", "gpt-4o", 200, 600*ms, tokenCounts{tokPrompt: 9, tokCompletion: 12, tokTotal: 21}),
		limited, rec("/gone", now0, 200, time.Second))
	st.perf.Store(&perfFigures{RequestsPerSec: 1.25, AvgResponseTimeMS: 12.5, ErrorRate: 3.33,
		MemoryUsageMB: 10.5, GoroutineCount: 7})
	now := now0.Add(2 * time.Second)
	clock.Set(now)
	st.routes.Load().byPrefix["/a"].targets[1].state.failed(now, 2*time.Minute)
	return st, now
}

// TestStatsViewGolden pins the exact /stats body for known data: the field
// names, their order and the figures are a contract with the dashboard and
// users' scripts (SPEC §4).
func TestStatsViewGolden(t *testing.T) {
	st, now := goldenStats(t)
	checkGolden(t, "stats_view.golden.json", st.render(context.Background(), now))
}

// TestMetricsGolden pins the exact /metrics output of the stats collector
// for the same data.
func TestMetricsGolden(t *testing.T) {
	st, _ := goldenStats(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(newStatsCollector(st))
	rw := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rw, httptest.NewRequest("GET", "/metrics", nil))
	checkGolden(t, "stats_metrics.golden.txt", rw.Body.Bytes())
}

// BenchmarkStatsRender measures building the /stats body from the store
// and the pending counts (done at most once per statsCacheTTL).
func BenchmarkStatsRender(b *testing.B) {
	st, now := goldenStats(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		st.render(ctx, now)
	}
}
