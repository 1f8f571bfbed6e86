package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// fakeClock is an injected clock for window tests. Safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// testRoutes returns a route table pointer holding mappings.
func testRoutes(t testing.TB, mappings map[string]string) *atomic.Pointer[routeTable] {
	t.Helper()
	return testRouteObjects(t, mappingsOf(mappings)...)
}

// testRouteObjects returns a route table pointer holding mappings, whose
// targets have fresh states.
func testRouteObjects(t testing.TB, mappings ...Mapping) *atomic.Pointer[routeTable] {
	t.Helper()
	rt, skipped := newRouteTable(mappings, selfAddrs{}, newTargetStates())
	if len(skipped) > 0 {
		t.Fatalf("invalid test mappings %v", skipped)
	}
	var p atomic.Pointer[routeTable]
	p.Store(rt)
	return &p
}

// newTestStats builds an enabled Stats on store (nil: a memStatsStore)
// with the fake clock and routes for "/a" and "/b".
func newTestStats(t testing.TB, store statsStore, clock *fakeClock) *Stats {
	t.Helper()
	if store == nil {
		store = &memStatsStore{}
	}
	return newStats(statsConfig{
		enabled: true, store: store, logger: testLogger(), now: clock.Now,
		active: func() int64 { return 0 },
		routes: testRoutes(t, map[string]string{"/a": "https://a.example", "/b": "http://b.example/base"}),
	})
}

// viewOf returns what /stats would answer now, with the cache and the
// stored figures read afresh.
func viewOf(t testing.TB, st *Stats) statsView {
	t.Helper()
	st.viewMu.Lock()
	st.cache = nil
	st.viewMu.Unlock()
	st.mu.Lock()
	st.baseAt = time.Time{}
	st.mu.Unlock()
	var v statsView
	if err := json.Unmarshal(st.json(context.Background()), &v); err != nil {
		t.Fatalf("decode /stats: %v", err)
	}
	return v
}

// rec is a finished request of prefix at start, lasting d, that tried the
// first target once: a failure if status is one of defaultRetryOn, as the
// proxy counts a mapping with one target.
func rec(prefix string, start time.Time, status int, d time.Duration) *requestRecord {
	o := tryOK
	if slices.Contains(defaultRetryOn, status) {
		o = tryError
	}
	return &requestRecord{Prefix: prefix, Status: status, Start: start, Duration: d, TTFB: d / 2, BytesIn: 100, BytesOut: 1000,
		Tries: []targetTry{{Index: 0, Outcome: o}}}
}

func TestHistIndex(t *testing.T) {
	prev := 0
	for us := int64(0); us < 1<<34; us = us*9/8 + 1 {
		i := histIndex(us)
		if i < prev {
			t.Fatalf("histIndex(%d) = %d, below histIndex of a smaller value (%d)", us, i, prev)
		}
		prev = i
		lo, hi := histBounds(i)
		if i < histBuckets-1 && (float64(us) < lo || float64(us) >= hi) {
			t.Fatalf("histIndex(%d) = %d with bounds [%v, %v)", us, i, lo, hi)
		}
		if i >= 4 && i < histBuckets-1 && (hi-lo)/lo > 0.25 {
			t.Fatalf("bucket %d [%v, %v) is wider than 25%%", i, lo, hi)
		}
	}
	if got := histIndex(-5); got != 0 {
		t.Errorf("histIndex(-5) = %d, want 0", got)
	}
	if got := histIndex(math.MaxInt64); got != histBuckets-1 {
		t.Errorf("histIndex(max) = %d, want %d", got, histBuckets-1)
	}
}

// countCheck is one figure checked: its name, the value found and the one
// wanted.
type countCheck struct {
	name      string
	got, want int64
}

// checkCounts reports every check whose value is not the one wanted.
func checkCounts(t testing.TB, checks []countCheck) {
	t.Helper()
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// recordWindows records and flushes requests of "/a" and "/b" over the 40
// days up to now0, moving clock to each request's end. Some were made
// with the proxy keys "k_a" (on "/a"), "k_b" (on "/b" and "/a") and
// "k_gone" (once); see checkWindowKeys.
func recordWindows(t testing.TB, st *Stats, clock *fakeClock, now0 time.Time) {
	t.Helper()
	ctx := context.Background()
	at := func(ago time.Duration, recs ...*requestRecord) {
		t.Helper()
		when := now0.Add(-ago)
		clock.Set(when)
		for _, r := range recs {
			r.Start = when.Add(-r.Duration)
			st.record(r)
		}
		if err := st.flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
	}
	ms := time.Millisecond
	day := 24 * time.Hour
	keyed := func(id string, r *requestRecord) *requestRecord {
		r.KeyID = id
		return r
	}
	at(40*day, keyed("k_a", rec("/a", now0, 200, 10*ms)))
	at(10*day, keyed("k_a", rec("/a", now0, 200, 10*ms)), keyed("k_a", rec("/a", now0, 500, 10*ms)))
	at(3*day, keyed("k_gone", rec("/a", now0, 200, 10*ms)), rec("/a", now0, 200, 10*ms), rec("/a", now0, 201, 10*ms))
	closed := rec("/b", now0, 499, 10*ms)
	closed.ProxyErr, closed.KeyID = "aborted", "k_b"
	at(5*time.Hour, keyed("k_b", rec("/b", now0, 200, 10*ms)), rec("/b", now0, 200, 10*ms), rec("/b", now0, 200, 10*ms), rec("/b", now0, 302, 10*ms), closed)
	withUsage := func(model string, p, c, cr int64) *requestRecord {
		r := rec("/a", now0, 200, 10*ms)
		r.Usage = tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: p, tokCompletion: c, tokTotal: p + c, tokCacheRead: cr}, Model: []byte(model)}
		return r
	}
	unreachable := rec("/a", now0, 502, ms)
	unreachable.ProxyErr, unreachable.BytesOut, unreachable.TTFB = "upstream_unreachable", 0, 0
	unreachable.KeyID = "k_a"
	at(0, keyed("k_a", withUsage("gpt-4o", 10, 5, 0)), keyed("k_b", withUsage("claude-x", 3, 4, 1)), rec("/a", now0, 200, 10*ms),
		keyed("k_a", rec("/a", now0, 404, 10*ms)), unreachable)
}

// TestStatsWindows records requests over 40 days with an injected clock
// and checks every window, the series, the per-endpoint figures and that
// a client that left is counted apart from errors. Requests made with a
// proxy key count once in all of these, and again under their key.
func TestStatsWindows(t *testing.T) {
	now0 := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	clock := &fakeClock{t: now0.Add(-40 * 24 * time.Hour)}
	st := newTestStats(t, nil, clock)
	st.proxyKeys = testKeyNames("k_a", "team-a", "k_b", "team-b")
	recordWindows(t, st, clock, now0)
	clock.Set(now0.Add(2 * time.Second))

	v := viewOf(t, st)
	checkCounts(t, []countCheck{
		{"total", v.Total, 16},
		{"errors", v.Errors, 3},
		{"client_closed", v.ClientClosed, 1},
		{"last_24h", v.Last24h, 10},
		{"last_7d", v.Last7d, 13},
		{"last_30d", v.Last30d, 15},
		{"tokens.prompt", v.Tokens.Counts[tokPrompt], 13},
		{"tokens.completion", v.Tokens.Counts[tokCompletion], 9},
		{"tokens.total", v.Tokens.Counts[tokTotal], 22},
		{"tokens.unknown_responses", v.Tokens.UnknownResponses, 6 + 3},
	})
	checkWindowSeries(t, &v, now0)
	checkWindowEndpoints(t, &v, now0)
	checkWindowKeys(t, &v, now0)

	// A day later the hour and the day have moved on; totals have not.
	clock.Set(now0.Add(24 * time.Hour))
	v = viewOf(t, st)
	if v.Total != 16 || v.Last24h != 0 || v.Last7d != 13 || v.Series.Daily[28].Count != 10 {
		t.Errorf("a day later: total %d last_24h %d last_7d %d daily[28] %+v; want 16, 0, 13, 10 requests",
			v.Total, v.Last24h, v.Last7d, v.Series.Daily[28])
	}
	if a := v.Keys["k_a"]; a == nil || a.Count != 6 || a.Last24h != 0 || a.Last7d != 3 || a.Last30d != 5 {
		t.Errorf("a day later: k_a = %+v, want 6 requests, 0 in 24 h, 3 in 7 d, 5 in 30 d", a)
	}
}

// checkWindowSeries checks the hourly and daily series of what
// recordWindows recorded, seen at now0.
func checkWindowSeries(t testing.TB, v *statsView, now0 time.Time) {
	t.Helper()
	if len(v.Series.Hourly) != 24 || len(v.Series.Daily) != 30 {
		t.Fatalf("series: %d hourly, %d daily points; want 24 and 30", len(v.Series.Hourly), len(v.Series.Daily))
	}
	hourStart := now0.Truncate(time.Hour).Unix()
	if got := v.Series.Hourly[23]; got != (seriesPoint{T: hourStart, Count: 5, Errors: 2}) {
		t.Errorf("hourly[23] = %+v, want this hour: 5 requests, 2 errors", got)
	}
	if got := v.Series.Hourly[18]; got != (seriesPoint{T: hourStart - 5*3600, Count: 5}) {
		t.Errorf("hourly[18] = %+v, want 5 hours ago: 5 requests", got)
	}
	var hourly int64
	for _, p := range v.Series.Hourly {
		hourly += p.Count
	}
	if hourly != v.Last24h {
		t.Errorf("sum of hourly series = %d, want last_24h %d", hourly, v.Last24h)
	}
	dayStart := now0.Truncate(24 * time.Hour).Unix()
	for i, want := range map[int]seriesPoint{
		29: {T: dayStart, Count: 10, Errors: 2},
		26: {T: dayStart - 3*86400, Count: 3},
		19: {T: dayStart - 10*86400, Count: 2, Errors: 1},
		0:  {T: dayStart - 29*86400},
	} {
		if got := v.Series.Daily[i]; got != want {
			t.Errorf("daily[%d] = %+v, want %+v", i, got, want)
		}
	}
}

// checkWindowEndpoints checks the per-endpoint figures of what
// recordWindows recorded, seen at now0.
func checkWindowEndpoints(t testing.TB, v *statsView, now0 time.Time) {
	t.Helper()
	a, b := v.Endpoints["/a"], v.Endpoints["/b"]
	if a == nil || b == nil || len(v.Endpoints) != 2 {
		t.Fatalf("endpoints = %v, want /a and /b", v.Endpoints)
	}
	if a.Target != "https://a.example" || b.Target != "http://b.example/base" {
		t.Errorf("targets = %q, %q", a.Target, b.Target)
	}
	checkCounts(t, []countCheck{
		{"/a count", a.Count, 11},
		{"/a error_count", a.ErrorCount, 3},
		{"/a last_24h", a.Last24h, 5},
		{"/a last_7d", a.Last7d, 8},
		{"/a last_30d", a.Last30d, 10},
		{"/a 2xx", a.Status.S2xx, 8},
		{"/a 4xx", a.Status.S4xx, 1},
		{"/a 5xx", a.Status.S5xx, 2},
		{"/a bytes_in", a.BytesIn, 1100},
		{"/a bytes_out", a.BytesOut, 1000 * 10},
		{"/a last_request", a.LastRequest, now0.Unix()},
		{"/a tokens.prompt", a.Tokens.Counts[tokPrompt], 13},
		{"/a tokens.cache_read", a.Tokens.Counts[tokCacheRead], 1},
		{"/a tokens.unknown_responses", a.Tokens.UnknownResponses, 6},
		{"/b count", b.Count, 5},
		{"/b error_count", b.ErrorCount, 0},
		{"/b client_closed", b.ClientClosed, 1},
		{"/b 2xx", b.Status.S2xx, 3},
		{"/b 3xx", b.Status.S3xx, 1},
		{"/b 4xx", b.Status.S4xx, 0},
		{"/b last_request", b.LastRequest, now0.Add(-5 * time.Hour).Unix()},
	})
	checkModels(t, "/a", a.Models, map[string]modelView{
		"gpt-4o":   {Count: 1, Tokens: tokenCounts{tokPrompt: 10, tokCompletion: 5, tokTotal: 15}},
		"claude-x": {Count: 1, Tokens: tokenCounts{tokPrompt: 3, tokCompletion: 4, tokTotal: 7, tokCacheRead: 1}},
	})
	// Latency over the last 24 h: four 10 ms requests and one of 1 ms.
	if got, want := a.LatencyMS.Avg, 8.2; got != want {
		t.Errorf("/a latency avg = %v ms, want %v", got, want)
	}
	if got := a.LatencyMS.P50; got < 8 || got > 12.5 {
		t.Errorf("/a latency p50 = %v ms, want about 10", got)
	}
}

// TestStatsLatencyAllEndpoints: the top-level latency figures are all
// requests' together, from the endpoints' histograms added up: /a's 300
// requests take 1-300 ms, /b's 700 take 301-1000 ms, so the whole's p95
// is near 950 ms, not an average of the two p95s (about 625), and its
// average 500.5 ms, not one of the two averages (400.5).
func TestStatsLatencyAllEndpoints(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	st := newTestStats(t, nil, clock)
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Millisecond
		prefix := "/a"
		if i > 300 {
			prefix = "/b"
		}
		st.record(&requestRecord{Prefix: prefix, Status: 200, Start: clock.Now().Add(-d), Duration: d, TTFB: d / 10})
	}
	v := viewOf(t, st)
	if v.LatencyMS.Avg != 500.5 {
		t.Errorf("latency avg = %v, want exactly 500.5", v.LatencyMS.Avg)
	}
	nearPct(t, "latency p50", v.LatencyMS.P50, 500)
	nearPct(t, "latency p95", v.LatencyMS.P95, 950)
	nearPct(t, "ttfb p95", v.TTFBMS.P95, 95)
	nearPct(t, "/a latency p95", v.Endpoints["/a"].LatencyMS.P95, 285)
}

func TestStatsLatencyPercentiles(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	st := newTestStats(t, nil, clock)
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Millisecond
		st.record(&requestRecord{Prefix: "/a", Status: 200, Start: clock.Now().Add(-d), Duration: d, TTFB: d / 10})
	}
	a := viewOf(t, st).Endpoints["/a"]
	if a.LatencyMS.Avg != 500.5 {
		t.Errorf("latency avg = %v, want exactly 500.5", a.LatencyMS.Avg)
	}
	nearPct(t, "latency p50", a.LatencyMS.P50, 500)
	nearPct(t, "latency p95", a.LatencyMS.P95, 950)
	nearPct(t, "latency p99", a.LatencyMS.P99, 990)
	nearPct(t, "ttfb p50", a.TTFBMS.P50, 50)
	nearPct(t, "ttfb p95", a.TTFBMS.P95, 95)
	nearPct(t, "ttfb p99", a.TTFBMS.P99, 99)
}

// nearPct checks that a percentile read from a histogram (buckets at most
// 25 % wide) is want within 15 %.
func nearPct(t *testing.T, name string, got, want float64) {
	t.Helper()
	if math.Abs(got-want)/want > 0.15 {
		t.Errorf("%s = %v, want %v within 15%%", name, got, want)
	}
}

// TestStatsModelsBounded: past maxModels names per prefix, responses count
// under "other", and nothing is lost.
func TestStatsModelsBounded(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	st := newTestStats(t, nil, clock)
	for i := range maxModels + 10 {
		r := rec("/a", clock.Now(), 200, time.Millisecond)
		r.Usage = tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 1, tokTotal: 1}, Model: fmt.Appendf(nil, "model-%d", i)}
		st.record(r)
		st.record(r)
	}
	a := viewOf(t, st).Endpoints["/a"]
	if len(a.Models) != maxModels+1 {
		t.Errorf("%d models, want %d named and other", len(a.Models), maxModels)
	}
	if o := a.Models["other"]; o == nil || o.Count != 20 || o.Tokens[tokPrompt] != 20 {
		t.Errorf("other = %+v, want 20 responses, 20 prompt tokens", o)
	}
	var n int64
	for _, m := range a.Models {
		n += m.Count
	}
	if n != 2*(maxModels+10) {
		t.Errorf("models count %d responses, want %d", n, 2*(maxModels+10))
	}
	if len(*(*st.prefixes.Load())["/a"].models.Load()) > 4*maxModels {
		t.Errorf("raw model names kept without bound")
	}
}

// TestStatsDeletedPrefix: requests of a prefix that is no longer mapped
// stay in the totals, without an endpoint row.
func TestStatsDeletedPrefix(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	st := newTestStats(t, nil, clock)
	st.record(rec("/gone", clock.Now(), 200, time.Millisecond))
	st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	v := viewOf(t, st)
	if v.Total != 2 || v.Last24h != 2 {
		t.Errorf("total %d, last_24h %d; want 2 and 2", v.Total, v.Last24h)
	}
	if _, ok := v.Endpoints["/gone"]; ok {
		t.Errorf("deleted prefix /gone has an endpoint row")
	}
	if e := v.Endpoints["/b"]; e == nil || e.Count != 0 || e.Models == nil {
		t.Errorf("mapped prefix without requests: %+v, want a zero row", e)
	}
}

// failoverMappings are "/f", two targets failing over, and "/a", one.
func failoverMappings() []Mapping {
	return []Mapping{
		{Prefix: "/f", Targets: []Target{{URL: "https://f0.example"}, {URL: "https://f1.example/v1"}}},
		newMapping("/a", "https://a.example"),
	}
}

// targetRec is a finished request of prefix at now with status and tries.
func targetRec(prefix string, now time.Time, status int, tries ...targetTry) *requestRecord {
	r := rec(prefix, now.Add(-time.Millisecond), status, time.Millisecond)
	r.Tries = tries
	return r
}

// recordFailovers records, at clock's time, requests of "/f" (two
// targets), "/a" (one) and "/gone" (no longer mapped), flushing half of
// them: 3 failovers in all, 2 of them of "/f"'s target 0.
func recordFailovers(st *Stats, clock *fakeClock) error {
	now := clock.Now()
	for _, r := range []*requestRecord{
		targetRec("/f", now, 200, targetTry{0, tryRetried}, targetTry{1, tryOK}),
		targetRec("/f", now, 503, targetTry{0, tryRetried}, targetTry{1, tryError}),
		targetRec("/a", now, 200, targetTry{0, tryOK}),
		targetRec("/gone", now, 200, targetTry{0, tryRetried}, targetTry{1, tryOK}),
	} {
		st.record(r)
	}
	if err := st.flush(context.Background()); err != nil {
		return err
	}
	for _, r := range []*requestRecord{
		targetRec("/f", now, 200, targetTry{1, tryOK}), // target 0 cooling down
		targetRec("/f", now, 503),                      // refused before any try
		targetRec("/a", now, 502, targetTry{0, tryError}),
	} {
		st.record(r)
	}
	return nil
}

// checkFailoverTargets checks what recordFailovers recorded n times, seen
// in v: cool is "/f"'s target 1's cooldown_until.
func checkFailoverTargets(t testing.TB, v *statsView, n, cool int64) {
	t.Helper()
	f, a := v.Endpoints["/f"], v.Endpoints["/a"]
	if f == nil || a == nil {
		t.Fatalf("endpoints = %v, want /f and /a", v.Endpoints)
	}
	want := map[string][]targetView{
		"/f": {
			{URL: "https://f0.example", Count: 2 * n, Errors: 2 * n, Failovers: 2 * n},
			{URL: "https://f1.example/v1", Count: 3 * n, Errors: n, CooldownUntil: cool},
		},
		"/a": {{URL: "https://a.example", Count: 2 * n, Errors: n}},
	}
	for prefix, w := range want {
		if got := v.Endpoints[prefix].Targets; !slices.Equal(got, w) {
			t.Errorf("%s targets = %+v, want %+v", prefix, got, w)
		}
	}
	checkCounts(t, []countCheck{
		{"failovers", v.Failovers, 3 * n},
		{"total", v.Total, 7 * n},
		{"/f count", f.Count, 4 * n},
		{"/f error_count", f.ErrorCount, 2 * n},
		{"/a count", a.Count, 2 * n},
	})
}

// TestStatsTargets: the tries of each target are counted by position,
// flushed or pending, and shown for the current mapping's targets with
// their cooldowns; failovers of every prefix add up at the top level.
func TestStatsTargets(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	clock := &fakeClock{t: now}
	st := newTestStats(t, nil, clock)
	st.routes = testRouteObjects(t, failoverMappings()...)
	if err := recordFailovers(st, clock); err != nil {
		t.Fatal(err)
	}
	st.routes.Load().byPrefix["/f"].targets[1].state.failed(now, 90*time.Second)
	v := viewOf(t, st)
	checkFailoverTargets(t, &v, 1, now.Unix()+90)

	// The mapping edited: positions keep their counts, under the new URLs;
	// a position without tries shows zeros.
	st.routes = testRouteObjects(t,
		Mapping{Prefix: "/f", Targets: []Target{{URL: "https://f1.example/v1"}, {URL: "https://new.example"}, {URL: "https://f2.example"}}},
		Mapping{Prefix: "/a", Targets: []Target{{URL: "https://a.example"}, {URL: "https://a2.example"}}})
	v = viewOf(t, st)
	wantF := []targetView{
		{URL: "https://f1.example/v1", Count: 2, Errors: 2, Failovers: 2},
		{URL: "https://new.example", Count: 3, Errors: 1},
		{URL: "https://f2.example"},
	}
	if got := v.Endpoints["/f"].Targets; !slices.Equal(got, wantF) {
		t.Errorf("edited /f targets = %+v, want %+v", got, wantF)
	}
	if got := v.Endpoints["/a"].Targets; len(got) != 2 || got[1] != (targetView{URL: "https://a2.example"}) {
		t.Errorf("edited /a targets = %+v, want a zero second target", got)
	}

	// Stored as Total fields "<prefix>|t<index>|<figure>".
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := st.store.LoadStats(context.Background(), now)
	for field, want := range map[string]int64{
		"/f|t0|count": 2, "/f|t0|errors": 2, "/f|t0|failovers": 2,
		"/f|t1|count": 3, "/f|t1|errors": 1, "/f|t1|failovers": 0,
		"/a|t0|count": 2, "/a|t0|errors": 1, "/gone|t0|failovers": 1, "/gone|t1|count": 1,
	} {
		if got := d.Total[field]; got != want {
			t.Errorf("stored %s = %d, want %d", field, got, want)
		}
	}
}

// TestTargetField: stored target fields are read back, anything else
// that looks like one is ignored.
func TestTargetField(t *testing.T) {
	for _, tt := range []struct {
		name          string
		index, figure int
		ok            bool
	}{
		{"t0|count", 0, figTries, true},
		{"t15|errors", 15, figErrors, true},
		{"t3|failovers", 3, figFailovers, true},
		{"t16|count", 0, 0, false},
		{"t-1|count", 0, 0, false},
		{"t+1|count", 0, 0, false},
		{"t|count", 0, 0, false},
		{"t1|retried", 0, 0, false},
		{"t1", 0, 0, false},
		{"tok_prompt", 0, 0, false},
		{"ttfb|3", 0, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			i, f, ok := targetField(tt.name)
			if i != tt.index || f != tt.figure || ok != tt.ok {
				t.Errorf("targetField(%q) = %d, %d, %v; want %d, %d, %v", tt.name, i, f, ok, tt.index, tt.figure, tt.ok)
			}
		})
	}
}

// memStatsStore keeps stats in memory: the statsStore of tests that need
// no real store. Safe for concurrent use.
type memStatsStore struct {
	mu sync.Mutex
	d  *statsData
}

func (m *memStatsStore) AddStats(ctx context.Context, d *statsData) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.d == nil {
		m.d = newStatsData()
	}
	m.d.add(d)
	return nil
}

func (m *memStatsStore) LoadStats(ctx context.Context, now time.Time) (*statsData, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.d == nil {
		return newStatsData(), nil
	}
	return m.d.window(now), nil
}

// failingStore is a statsStore whose writes fail while down is set.
type failingStore struct {
	memStatsStore
	down   atomic.Bool
	writes atomic.Int64
}

var errTestStoreDown = errors.New("test store down")

func (f *failingStore) AddStats(ctx context.Context, d *statsData) error {
	if f.down.Load() {
		return errTestStoreDown
	}
	f.writes.Add(1)
	return f.memStatsStore.AddStats(ctx, d)
}

func (f *failingStore) LoadStats(ctx context.Context, now time.Time) (*statsData, error) {
	if f.down.Load() {
		return nil, errTestStoreDown
	}
	return f.memStatsStore.LoadStats(ctx, now)
}

// TestStatsStoreOutage: while the store fails, counts stay in memory and
// show in /stats; when it is back they are written once, not twice.
func TestStatsStoreOutage(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	fs := &failingStore{}
	st := newTestStats(t, fs, clock)
	ctx := context.Background()
	for range 3 {
		st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	}
	if err := st.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if v := viewOf(t, st); v.Total != 3 {
		t.Fatalf("/stats before the outage: total %d, want 3", v.Total)
	}
	fs.down.Store(true)
	for range 4 {
		st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	}
	if err := st.flush(ctx); !errors.Is(err, errTestStoreDown) {
		t.Fatalf("flush while down = %v, want the store's error", err)
	}
	clock.Set(clock.Now().Add(time.Hour)) // the outage spans an hour
	st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	if err := st.flush(ctx); err == nil {
		t.Fatal("flush while down succeeded")
	}
	if v := viewOf(t, st); v.Total != 8 {
		t.Errorf("/stats during the outage: total %d, want 8 (3 stored, 5 in memory)", v.Total)
	}
	fs.down.Store(false)
	if err := st.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := fs.writes.Load(); n != 3 {
		t.Errorf("%d writes, want 3 (before the outage; after it, the batch that failed as it was, then the newer counts; nothing left to write after)", n)
	}
	d, _ := fs.memStatsStore.LoadStats(ctx, clock.Now())
	if got := d.Total["/a|count"]; got != 8 {
		t.Errorf("stored count = %d, want 8", got)
	}
	h := clock.Now().Unix() / hourSeconds
	if got, got2 := d.Hours[h-1]["/a|count"], d.Hours[h]["/a|count"]; got != 7 || got2 != 1 {
		t.Errorf("stored hours = %d and %d, want 7 and 1", got, got2)
	}
	if v := viewOf(t, st); v.Total != 8 {
		t.Errorf("/stats after the outage: total %d, want 8", v.Total)
	}
}

// TestStatsSpill: a final flush that fails leaves the counts in the spill
// file; the next start writes them and removes it.
func TestStatsSpill(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	dir := t.TempDir()
	fs := &failingStore{}
	newSt := func() *Stats {
		return newStats(statsConfig{enabled: true, store: fs, logger: testLogger(),
			now: clock.Now, routes: testRoutes(t, nil), dataDir: dir})
	}
	st := newSt()
	fs.down.Store(true)
	for range 5 {
		st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	}
	st.close()
	spill := filepath.Join(dir, statsSpillFile)
	if _, err := os.Stat(spill); err != nil {
		t.Fatalf("no spill file after a failed final flush: %v", err)
	}
	fs.down.Store(false)
	st = newSt()
	if v := viewOf(t, st); v.Total != 5 {
		t.Errorf("/stats before the first flush: total %d, want the 5 spilled", v.Total)
	}
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spill); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill file still there after its counts were written: %v", err)
	}
	st.close()
	d, _ := fs.memStatsStore.LoadStats(context.Background(), clock.Now())
	if got := d.Total["/a|count"]; got != 5 {
		t.Errorf("stored count = %d, want 5", got)
	}
}

// TestStatsStoreContract runs AddStats/LoadStats against each store.
func TestStatsStoreContract(t *testing.T) {
	stores := map[string]func(t *testing.T) statsStore{
		"memory": func(t *testing.T) statsStore { return &memStatsStore{} },
		"bolt": func(t *testing.T) statsStore {
			s, err := openBoltStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"redis": func(t *testing.T) statsStore {
			addr := testRedisAddr(t)
			return openTestRedisStore(t, addr, testKeyPrefix(t, addr), "")
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := context.Background()
			now := time.Now() // Redis expires buckets by their time
			h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
			d1 := newStatsData()
			d1.Total["/a|count"] = 3
			d1.Last["/a"] = 100
			bucket(d1.Hours, h)["/a|count"] = 2
			bucket(d1.Hours, h-1)["/a|count"] = 1
			bucket(d1.Hours, h-windowHours)["/a|count"] = 7 // outside the window
			bucket(d1.Days, day)["/a|count"] = 3
			bucket(d1.Days, day-windowDays)["/a|count"] = 9 // outside the window
			d2 := newStatsData()
			d2.Total["/a|count"] = 4
			d2.Total["/a|m|gpt-4o|count"] = 1
			d2.Last["/a"] = 50
			d2.Last["/b"] = 70
			bucket(d2.Hours, h)["/a|count"] = 4
			for _, d := range []*statsData{d1, d2} {
				if err := s.AddStats(ctx, d); err != nil {
					t.Fatalf("AddStats: %v", err)
				}
			}
			got, err := s.LoadStats(ctx, now)
			if err != nil {
				t.Fatalf("LoadStats: %v", err)
			}
			if got.Total["/a|count"] != 7 || got.Total["/a|m|gpt-4o|count"] != 1 {
				t.Errorf("total = %v, want count 7 and the model's 1", got.Total)
			}
			if got.Last["/a"] != 100 || got.Last["/b"] != 70 {
				t.Errorf("last = %v, want the larger values", got.Last)
			}
			if got.Hours[h]["/a|count"] != 6 || got.Hours[h-1]["/a|count"] != 1 || len(got.Hours) != 2 {
				t.Errorf("hours = %v, want this hour 6 and the one before 1, nothing older", got.Hours)
			}
			if got.Days[day]["/a|count"] != 3 || len(got.Days) != 1 {
				t.Errorf("days = %v, want today 3, nothing older", got.Days)
			}
		})
	}
}

// TestStatsBoltPrunes: the embedded store keeps keepHours of hours and
// keepDays of days, however long it runs.
func TestStatsBoltPrunes(t *testing.T) {
	s, err := openBoltStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := range int64(24 * 60) { // 60 days, hour by hour
		d := newStatsData()
		h := start/hourSeconds + i
		bucket(d.Hours, h)["/a|count"] = 1
		bucket(d.Days, h/24)["/a|count"] = 1
		if err := s.AddStats(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	var hours, days int
	s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(boltStats)
		hours = root.Bucket(boltStatsHours).Stats().BucketN - 1
		days = root.Bucket(boltStatsDays).Stats().BucketN - 1
		return nil
	})
	if hours > keepHours+1 || days > keepDays+1 {
		t.Errorf("kept %d hours and %d days, want at most %d and %d", hours, days, keepHours+1, keepDays+1)
	}
}

// TestRecordAllocs: the proxy's observer allocates nothing once the prefix
// and model, and the proxy key with its prefix and code (and limit, for a
// refusal), were seen, whatever tries the request made.
func TestRecordAllocs(t *testing.T) {
	st := newTestStats(t, nil, &fakeClock{t: time.Now()})
	r := rec("/a", time.Now(), 200, 3*time.Millisecond)
	ru := rec("/a", time.Now(), 200, 3*time.Millisecond)
	ru.Usage = tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 10, tokCompletion: 20, tokTotal: 30}, Model: []byte("gpt-4o")}
	ru.Tries = []targetTry{{0, tryRetried}, {2, tryRetried}, {1, tryOK}}
	ru.KeyID = "k_a"
	refused := refusal("/a", time.Now(), "", limitRPM)
	refusedKey := refusal("/a", time.Now(), "k_a", limitConcurrency)
	for _, r := range []*requestRecord{r, ru, refused, refusedKey} {
		st.record(r)
	}
	if n := testing.AllocsPerRun(1000, func() { st.record(r); st.record(ru); st.record(refused); st.record(refusedKey) }); n != 0 {
		t.Errorf("record allocates %v times per call, want 0", n)
	}
}

// BenchmarkRecord measures the proxy's observer: a request without usage
// (most proxied calls), one with usage and a model, the same made with a
// proxy key, one a key's limit refused, one that failed over to a second target, and all cores
// recording on one prefix at once.
func BenchmarkRecord(b *testing.B) {
	st := newTestStats(b, nil, &fakeClock{t: time.Now()})
	plain := rec("/a", time.Now(), 200, 3*time.Millisecond)
	usage := rec("/a", time.Now(), 200, 3*time.Millisecond)
	usage.Usage = tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 10, tokCompletion: 20, tokTotal: 30}, Model: []byte("gpt-4o-2024-08-06")}
	keyed := rec("/a", time.Now(), 200, 3*time.Millisecond)
	keyed.Usage, keyed.KeyID = usage.Usage, "k_bench"
	failover := rec("/a", time.Now(), 200, 3*time.Millisecond)
	failover.Tries = []targetTry{{0, tryRetried}, {1, tryOK}}
	refused := refusal("/a", time.Now(), "k_bench", limitRPM)
	st.record(usage)
	st.record(keyed)
	st.record(refused)
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.record(plain)
		}
	})
	b.Run("usage", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.record(usage)
		}
	})
	b.Run("key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.record(keyed)
		}
	})
	b.Run("refused", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.record(refused)
		}
	})
	b.Run("failover", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.record(failover)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				st.record(plain)
			}
		})
	})
}

// getStats GETs /stats from base and decodes it.
func getStats(t testing.TB, client *http.Client, base string) statsView {
	t.Helper()
	res, err := client.Get(base + "/stats")
	if err != nil {
		t.Fatalf("GET /stats: %v", err)
	}
	defer res.Body.Close()
	body := readAll(t, res)
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /stats = %d %q %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	var v statsView
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode /stats %s: %v", body, err)
	}
	return v
}

// waitStats polls /stats until cond holds (the answer is cached for up to
// statsCacheTTL) and returns the answer that satisfied it.
func waitStats(t testing.TB, client *http.Client, base string, cond func(v statsView) bool, what string) statsView {
	t.Helper()
	var v statsView
	eventually(t, func() bool {
		v = getStats(t, client, base)
		return cond(v)
	}, what)
	return v
}

// writeInPieces writes s to w in pieces of 1 to 40 bytes, flushing each, so
// that events reach the proxy split across reads.
func writeInPieces(w http.ResponseWriter, s string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	for len(s) > 0 {
		n := min(1+rng.IntN(40), len(s))
		io.WriteString(w, s[:n])
		w.(http.Flusher).Flush()
		s = s[n:]
	}
}

// newProviderUpstream starts a backend answering like the providers do
// under /v1/: chat (OpenAI JSON), anthropic and gemini (SSE split in small
// pieces), gzip and gzipjson (encoded bodies), fail (a 500) and hang (an
// SSE stream that stays open; entered is closed once it has started).
func newProviderUpstream(t testing.TB, entered chan<- struct{}) *upstream {
	t.Helper()
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		switch strings.TrimPrefix(r.URL.Path, "/v1/") {
		case "chat":
			h.Set("Content-Type", "application/json")
			io.WriteString(w, openAIChatJSON)
		case "anthropic":
			h.Set("Content-Type", "text/event-stream")
			writeInPieces(w, anthropicSSE, 1)
		case "gemini":
			h.Set("Content-Type", "text/event-stream")
			writeInPieces(w, geminiSSE, 2)
		case "gzip":
			h.Set("Content-Type", "application/json")
			h.Set("Content-Encoding", "br") // http.Client would decode gzip
			io.WriteString(w, "\x1f\x8b not really br")
		case "gzipjson":
			// What api.openai.com sends the OpenAI SDKs, which ask for gzip.
			h.Set("Content-Type", "application/json")
			h.Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			io.WriteString(zw, openAIChatJSON)
			zw.Close()
		case "fail":
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, openAIErrorJSON)
		case "hang":
			h.Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: {\"type\":\"ping\"}\n\n")
			w.(http.Flusher).Flush()
			close(entered)
			<-r.Context().Done()
		}
	})
}

// checkModels reports the differences between the models of an endpoint
// and the ones wanted.
func checkModels(t testing.TB, prefix string, got map[string]*modelView, want map[string]modelView) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s models = %v, want %v", prefix, got, want)
	}
	for name, w := range want {
		if m := got[name]; m == nil || *m != w {
			t.Errorf("%s models[%s] = %+v, want %+v", prefix, name, m, w)
		}
	}
}

// TestStatsThroughProxy sends provider-shaped responses through the real
// server and checks what /stats reports, and that the bodies arrive
// unchanged.
func TestStatsThroughProxy(t *testing.T) {
	entered := make(chan struct{})
	up := newProviderUpstream(t, entered)
	dead := newUpstream(t, nil)
	dead.Close() // refuses connections: 502
	s, front := newTestServer(t, map[string]string{"/p": up.URL, "/dead": dead.URL})
	client := front.Client()

	for _, c := range []struct {
		path, want string
		status     int
	}{
		{"/p/v1/chat", openAIChatJSON, 200},
		{"/p/v1/chat", openAIChatJSON, 200},
		{"/p/v1/anthropic", anthropicSSE, 200},
		{"/p/v1/gemini", geminiSSE, 200},
		{"/p/v1/gzip", "\x1f\x8b not really br", 200},
		{"/p/v1/gzipjson", openAIChatJSON, 200}, // the client decodes it
		{"/p/v1/fail", openAIErrorJSON, 500},
		{"/dead/v1/chat", "", 502},
	} {
		code, body := getStatus(t, client, front.URL+c.path)
		if code != c.status || c.want != "" && string(body) != c.want {
			t.Errorf("GET %s = %d %q, want %d and the upstream's body unchanged", c.path, code, body, c.status)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/p/v1/hang", nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, entered, "the upstream to start the stream")
	cancel()
	res.Body.Close()

	v := waitStats(t, client, front.URL, func(v statsView) bool {
		p := v.Endpoints["/p"]
		return p != nil && p.Count == 8 && v.Total == 9
	}, "/stats to count 8 requests of /p and 9 in all")
	p, d := v.Endpoints["/p"], v.Endpoints["/dead"]
	checkCounts(t, []countCheck{
		{"errors", v.Errors, 2},
		{"last_24h", v.Last24h, 9},
		{"last_7d", v.Last7d, 9},
		{"last_30d", v.Last30d, 9},
		{"client_closed", v.ClientClosed, 1},
		{"/p error_count", p.ErrorCount, 1},
		{"/p client_closed", p.ClientClosed, 1},
		{"/p 2xx", p.Status.S2xx, 6},
		{"/p 5xx", p.Status.S5xx, 1},
		{"/p tokens.prompt", p.Tokens.Counts[tokPrompt], 3*1117 + 40 + 8},
		{"/p tokens.completion", p.Tokens.Counts[tokCompletion], 3*46 + 15 + 35},
		{"/p tokens.total", p.Tokens.Counts[tokTotal], 3*1163 + 55 + 43},
		{"/p tokens.cache_read", p.Tokens.Counts[tokCacheRead], 3*1024 + 5},
		{"/p tokens.cache_write", p.Tokens.Counts[tokCacheWrite], 10},
		{"/p tokens.unknown_responses", p.Tokens.UnknownResponses, 1},
		{"/dead count", d.Count, 1},
		{"/dead error_count", d.ErrorCount, 1},
		{"/dead 5xx", d.Status.S5xx, 1},
		{"tokens.total", v.Tokens.Counts[tokTotal], 3*1163 + 55 + 43},
	})
	checkModels(t, "/p", p.Models, map[string]modelView{
		"gpt-4o-2024-08-06":        {Count: 3, Tokens: tokenCounts{tokPrompt: 3351, tokCompletion: 138, tokTotal: 3489, tokCacheRead: 3072}},
		"claude-opus-4-1-20250805": {Count: 1, Tokens: tokenCounts{tokPrompt: 40, tokCompletion: 15, tokTotal: 55, tokCacheRead: 5, tokCacheWrite: 10}},
		"gemini-2.0-flash":         {Count: 1, Tokens: tokenCounts{tokPrompt: 8, tokCompletion: 35, tokTotal: 43}},
	})
	if p.BytesOut < int64(2*len(openAIChatJSON)+len(anthropicSSE)+len(geminiSSE)) || p.LastRequest == 0 || p.LatencyMS.P50 <= 0 || p.TTFBMS.P50 <= 0 {
		t.Errorf("/p bytes_out %d, last_request %d, latency %+v, ttfb %+v; want them all set", p.BytesOut, p.LastRequest, p.LatencyMS, p.TTFBMS)
	}
	if p.Target != up.URL || d.Target != dead.URL {
		t.Errorf("targets %q, %q; want %q, %q", p.Target, d.Target, up.URL, dead.URL)
	}
	perf := v.Performance
	if perf.GoroutineCount <= 0 || perf.MemoryUsageMB <= 0 || perf.UptimeSeconds < 0 || perf.ActiveRequests != 0 {
		t.Errorf("performance = %+v", perf)
	}
	if !v.StatsEnabled {
		t.Error("stats_enabled = false, want true")
	}
	_ = s
}

// newFailoverServer serves a Server mapping "/f" to two upstreams: the
// first answers 503, the second 200 "ok".
func newFailoverServer(t testing.TB) (s *Server, front *httptest.Server, first, second *upstream) {
	t.Helper()
	first = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "busy")
	})
	second = newUpstream(t, nil)
	s, front = newTestServer(t, nil)
	ctx := context.Background()
	m := Mapping{Prefix: "/f", Targets: []Target{{URL: first.URL}, {URL: second.URL}}}
	if err := s.store.CreateMapping(ctx, m); err != nil {
		t.Fatalf("create mapping: %v", err)
	}
	if err := s.reloadRoutes(ctx); err != nil {
		t.Fatalf("reloadRoutes: %v", err)
	}
	return s, front, first, second
}

// TestStatsFailoverThroughProxy: requests whose first target answers 503
// and whose second answers 200 count a failed try and a failover of the
// first, a try of the second, and, once the first failed failuresToCool
// times, its cooldown.
func TestStatsFailoverThroughProxy(t *testing.T) {
	_, front, first, second := newFailoverServer(t)
	client := front.Client()
	before := time.Now().Unix()
	for range failuresToCool {
		if code, body := getStatus(t, client, front.URL+"/f/x"); code != 200 || string(body) != "ok" {
			t.Fatalf("GET /f/x = %d %q, want the second target's 200 ok", code, body)
		}
	}
	after := time.Now().Unix()
	if first.Hits() != failuresToCool || second.Hits() != failuresToCool {
		t.Fatalf("upstream hits %d, %d; want %d each", first.Hits(), second.Hits(), failuresToCool)
	}
	n := int64(failuresToCool)
	v := waitStats(t, client, front.URL, func(v statsView) bool {
		f := v.Endpoints["/f"]
		return f != nil && f.Count == n && len(f.Targets) == 2 && f.Targets[1].Count == n
	}, "/stats to count the requests of /f")
	f := v.Endpoints["/f"]
	t0, t1 := f.Targets[0], f.Targets[1]
	checkCounts(t, []countCheck{
		{"failovers", v.Failovers, n},
		{"/f error_count", f.ErrorCount, 0},
		{"/f 2xx", f.Status.S2xx, n},
		{"targets[0].count", t0.Count, n},
		{"targets[0].errors", t0.Errors, n},
		{"targets[0].failovers", t0.Failovers, n},
		{"targets[1].count", t1.Count, n},
		{"targets[1].errors", t1.Errors, 0},
		{"targets[1].failovers", t1.Failovers, 0},
		{"targets[1].cooldown_until", t1.CooldownUntil, 0},
	})
	if t0.URL != first.URL || t1.URL != second.URL || f.Target != first.URL {
		t.Errorf("target %q, targets %q and %q; want %q first, then %q", f.Target, t0.URL, t1.URL, first.URL, second.URL)
	}
	cool := int64(failureCooldown / time.Second)
	if t0.CooldownUntil < before+cool || t0.CooldownUntil > after+cool+1 {
		t.Errorf("targets[0].cooldown_until = %d, want %v after the third failure, between %d and %d",
			t0.CooldownUntil, failureCooldown, before+cool, after+cool+1)
	}
}

// TestStatsJSONShape checks the field names of /stats that the dashboard
// and users' scripts read (SPEC §4).
func TestStatsJSONShape(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/openai": up.URL})
	getStatus(t, front.Client(), front.URL+"/openai/x")
	_, body := getStatus(t, front.Client(), front.URL+"/stats")
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	has := func(obj map[string]any, where string, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, ok := obj[k]; !ok {
				t.Errorf("%s has no %q: %v", where, k, obj)
			}
		}
	}
	has(m, "/stats", "total", "errors", "failovers", "last_24h", "last_7d", "last_30d", "tokens", "endpoints", "keys", "series", "performance")
	has(m["tokens"].(map[string]any), "tokens", "prompt", "completion", "total")
	ep := m["endpoints"].(map[string]any)["/openai"].(map[string]any)
	has(ep, "endpoint", "target", "count", "error_count", "last_request", "last_24h", "last_7d", "last_30d",
		"status", "client_closed", "bytes_in", "bytes_out", "latency_ms", "ttfb_ms", "tokens", "models", "targets")
	targets, _ := ep["targets"].([]any)
	if len(targets) != 1 {
		t.Fatalf("endpoint targets = %v, want one", ep["targets"])
	}
	has(targets[0].(map[string]any), "endpoint target", "url", "count", "errors", "failovers", "cooldown_until")
	has(ep["status"].(map[string]any), "status", "2xx", "3xx", "4xx", "5xx")
	has(ep["latency_ms"].(map[string]any), "latency_ms", "avg", "p50", "p95", "p99")
	has(ep["ttfb_ms"].(map[string]any), "ttfb_ms", "p50", "p95", "p99")
	has(ep["tokens"].(map[string]any), "endpoint tokens", "prompt", "completion", "total", "unknown_responses")
	series := m["series"].(map[string]any)
	for name, n := range map[string]int{"hourly": 24, "daily": 30} {
		pts, _ := series[name].([]any)
		if len(pts) != n {
			t.Fatalf("series.%s has %d points, want %d", name, len(pts), n)
		}
		has(pts[0].(map[string]any), "series point", "t", "count", "errors")
	}
	has(m["performance"].(map[string]any), "performance", "requests_per_sec", "avg_response_time_ms",
		"error_rate", "memory_usage_mb", "goroutine_count", "active_requests", "uptime_seconds")
}

// TestStatsDisabled: with ENABLE_STATS=false requests are proxied as
// always and nothing is counted or stored.
func TestStatsDisabled(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, openAIChatJSON)
	})
	cfg := testConfig(t, map[string]string{"ENABLE_STATS": "false"})
	s, front := newTestServerConfig(t, cfg, map[string]string{"/p": up.URL})
	for range 3 {
		if code, body := getStatus(t, front.Client(), front.URL+"/p/v1/chat"); code != 200 || string(body) != openAIChatJSON {
			t.Fatalf("proxied request = %d %q", code, body)
		}
	}
	v := getStats(t, front.Client(), front.URL)
	if v.StatsEnabled || v.Total != 0 || v.Endpoints["/p"] == nil || v.Endpoints["/p"].Target != up.URL {
		t.Errorf("/stats = %+v, want stats_enabled false, total 0 and the endpoint listed", v)
	}
	s.stats.close()
	d, err := s.store.LoadStats(context.Background(), time.Now())
	if err != nil || len(d.Total) != 0 {
		t.Errorf("stored stats = %v, %v; want none", d.Total, err)
	}
	// The request log does not depend on the stats.
	flushLog(t, s)
	if recs, _, err := s.reqlog.store.readLog(context.Background(), logQuery{Limit: 10}); err != nil || len(recs) != 3 {
		t.Errorf("request log: %d records (%v), want 3 with stats off", len(recs), err)
	}
}

// TestStatsSurviveShutdown sends requests while run() is cancelled (what
// SIGTERM does), restarts it on the same store and finds exactly the
// requests that were answered counted: with the embedded store and with
// Redis.
func TestStatsSurviveShutdown(t *testing.T) {
	for _, kind := range []string{"embedded", "redis"} {
		t.Run(kind, func(t *testing.T) {
			up := newUpstream(t, nil)
			cfg := testConfig(t, nil)
			if kind == "redis" {
				cfg.RedisURL = startRedisServer(t).url()
			}
			seedMapping(t, cfg, "/p", up.URL)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			addr, runErr := startRun(t, ctx, cfg)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
			defer client.CloseIdleConnections()
			var ok atomic.Int64
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						res, err := client.Get("http://" + addr + "/p/x")
						if err != nil {
							return // the listener closed
						}
						_, err = io.Copy(io.Discard, res.Body)
						res.Body.Close()
						if err == nil && res.StatusCode == http.StatusOK {
							ok.Add(1)
						}
					}
				}()
			}
			eventually(t, func() bool { return ok.Load() >= 300 }, "300 requests answered")
			cancel()
			select {
			case err := <-runErr:
				if err != nil {
					t.Fatalf("run = %v", err)
				}
			case <-time.After(testTimeout):
				t.Fatal("run did not return after cancel")
			}
			wg.Wait()
			n := ok.Load()
			t.Logf("%d requests answered before and during the shutdown", n)

			ctx2, cancel2 := context.WithCancel(context.Background())
			defer cancel2()
			addr2, runErr2 := startRun(t, ctx2, cfg)
			v := getStats(t, client, "http://"+addr2)
			if v.Total != n || v.Endpoints["/p"] == nil || v.Endpoints["/p"].Count != n || v.Last24h != n {
				t.Errorf("after restart: total %d, last_24h %d, /p %+v; want exactly the %d requests answered", v.Total, v.Last24h, v.Endpoints["/p"], n)
			}
			cancel2()
			if err := <-runErr2; err != nil {
				t.Errorf("second run = %v", err)
			}
		})
	}
}

// TestStatsRedisFleet: two instances on one Redis each count their own
// requests, and /stats on either shows the sum.
func TestStatsRedisFleet(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	up := newUpstream(t, nil)
	var servers []*Server
	var fronts []*httptest.Server
	for range 2 {
		cfg := testConfig(t, nil)
		s, front := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
		servers = append(servers, s)
		fronts = append(fronts, front)
	}
	// The mappings are set through one instance only: setting them through
	// each would delete /p and create it again while the other instance
	// reloads. Creating /p is the last change, so a route table holding it
	// is the final one, and later reloads keep it.
	setMappings(t, servers[0], map[string]string{"/p": up.URL})
	for i, s := range servers {
		eventually(t, func() bool { return routedURL(s, "/p") == up.URL }, fmt.Sprintf("instance %d to route /p", i))
	}
	for i, n := range []int{3, 2} {
		for range n {
			if code, _ := getStatus(t, fronts[i].Client(), fronts[i].URL+"/p/x"); code != 200 {
				t.Fatalf("request through instance %d = %d", i, code)
			}
		}
	}
	for i, f := range fronts {
		waitStats(t, f.Client(), f.URL, func(v statsView) bool {
			return v.Total == 5 && v.Endpoints["/p"] != nil && v.Endpoints["/p"].Count == 5 && v.Last24h == 5
		}, fmt.Sprintf("instance %d to show the fleet's 5 requests", i))
	}
}

// TestStatsRedisFleetTargets: the per-target figures of two instances
// flushing to one Redis add up, and either shows the fleet's.
func TestStatsRedisFleetTargets(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	now := time.Now() // Redis expires buckets by their time
	clock := &fakeClock{t: now}
	var fleet []*Stats
	for range 2 {
		st := newTestStats(t, openTestRedisStore(t, addr, prefix, ""), clock)
		st.routes = testRouteObjects(t, failoverMappings()...)
		if err := recordFailovers(st, clock); err != nil {
			t.Fatal(err)
		}
		fleet = append(fleet, st)
	}
	for _, st := range fleet {
		if err := st.flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i, st := range fleet {
		t.Run(fmt.Sprintf("instance %d", i), func(t *testing.T) {
			v := viewOf(t, st)
			checkFailoverTargets(t, &v, 2, 0)
		})
	}
}

// TestStatsRedisOutage: while Redis is down requests are still counted in
// memory and shown; when it is back the deltas are written to it.
func TestStatsRedisOutage(t *testing.T) {
	rs := startRedisServer(t)
	up := newUpstream(t, nil)
	store := openTestRedisStore(t, rs.addr(), redisKeyPrefix, "")
	s, front := newRedisTestServer(t, testConfig(t, nil), store)
	setMappings(t, s, map[string]string{"/p": up.URL})
	client := front.Client()
	rc := rs.client()
	count := func() int64 {
		n, _ := rc.HGet(context.Background(), redisKeyPrefix+redisStatsTotalKey, "/p|count").Int64()
		return n
	}
	for range 3 {
		getStatus(t, client, front.URL+"/p/x")
	}
	eventually(t, func() bool { return count() == 3 }, "3 requests written to Redis")
	waitStats(t, client, front.URL, func(v statsView) bool { return v.Total == 3 }, "/stats to read 3 from Redis")

	rs.kill()
	// The outage's requests count in the hour buckets of when they ended
	// and were drained, from first to the hour read once they are written:
	// two buckets, not the one of either read, when an hour begins
	// meanwhile.
	first := time.Now().Unix() / hourSeconds
	for range 4 {
		if code, _ := getStatus(t, client, front.URL+"/p/x"); code != 200 {
			t.Fatalf("proxying during the outage = %d", code)
		}
	}
	waitStats(t, client, front.URL, func(v statsView) bool { return v.Total == 7 }, "/stats during the outage to show 3 read + 4 in memory")

	rs.start() // empty: no persistence
	eventually(t, func() bool { return count() == 4 }, "the 4 requests of the outage written to Redis once it is back")
	buckets := 0
	for h := first; h <= time.Now().Unix()/hourSeconds; h++ {
		key := redisKeyPrefix + redisStatsHourKey + strconv.FormatInt(h, 10)
		if rc.Exists(context.Background(), key).Val() == 0 {
			continue
		}
		buckets++
		if ttl := rc.TTL(context.Background(), key).Val(); ttl <= 0 || ttl > (keepHours+1)*time.Hour {
			t.Errorf("hour bucket %d TTL = %v, want it to expire within %d h", h, ttl, keepHours+1)
		}
	}
	if buckets == 0 {
		t.Errorf("no hour bucket written for the hours of the outage (from %d)", first)
	}
}

// TestStatsGzip checks that /stats is sent gzip-compressed to a client
// that accepts it (the dashboard fetches it every few seconds) and plain
// to one that does not.
func TestStatsGzip(t *testing.T) {
	_, front := newTestServer(t, map[string]string{"/p": "http://127.0.0.1:1"})
	for _, tt := range []struct {
		accept, wantEncoding string
	}{
		{"gzip, deflate, br", "gzip"},
		{"", ""},
		{"br", ""},
	} {
		req, _ := http.NewRequest("GET", front.URL+"/stats", nil)
		if tt.accept != "" {
			req.Header.Set("Accept-Encoding", tt.accept)
		}
		// A transport that never asks for nor decodes gzip by itself.
		res, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if got := res.Header.Get("Content-Encoding"); got != tt.wantEncoding {
			t.Errorf("Accept-Encoding %q: Content-Encoding = %q, want %q", tt.accept, got, tt.wantEncoding)
			continue
		}
		if tt.wantEncoding == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("Accept-Encoding %q: body is not gzip: %v", tt.accept, err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		var v statsView
		if err := json.Unmarshal(body, &v); err != nil || v.Endpoints["/p"] == nil {
			t.Errorf("Accept-Encoding %q: body %.200q is not the stats JSON with /p (%v)", tt.accept, body, err)
		}
	}
}

// openMutedRedisStore opens a Redis store on addr under keyPrefix through
// a muteRelay, with a short read timeout and no client retries, so that a
// write whose reply the relay drops fails fast.
func openMutedRedisStore(t testing.TB, addr, keyPrefix string) (*redisStore, *muteRelay) {
	t.Helper()
	relay := newMuteRelay(t, addr)
	opts := &redis.Options{Addr: relay.addr(), ReadTimeout: 200 * time.Millisecond, MaxRetries: -1}
	s, err := openRedisStoreWith(context.Background(), opts, keyPrefix, "", testLogger())
	if err != nil {
		t.Fatalf("open redis store through the relay: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	// Loaded now, so that a muted write is an EVALSHA that Redis runs,
	// not a NOSCRIPT answer that the relay drops.
	if err := redisStatsAddScript.Load(context.Background(), s.client).Err(); err != nil {
		t.Fatalf("load the stats script: %v", err)
	}
	return s, relay
}

// storedCount returns the all-time request count of prefix in store.
func storedCount(t testing.TB, store statsStore, prefix string) int64 {
	t.Helper()
	d, err := store.LoadStats(context.Background(), time.Now())
	if err != nil {
		t.Fatalf("LoadStats: %v", err)
	}
	return d.Total[prefix+"|"+fieldCount]
}

// flushMuted flushes st while relay drops Redis's replies: the write is
// applied, its reply lost. It returns once the relay dropped the reply,
// unmuted.
func flushMuted(t testing.TB, relay *muteRelay, flush func() error) {
	t.Helper()
	relay.muted.Store(true)
	if err := flush(); err == nil {
		t.Fatal("flush whose reply was dropped succeeded")
	}
	waitClosed(t, relay.dropped, "the relay to drop the reply")
	relay.muted.Store(false)
}

// TestStatsRedisLostReply: a batch that Redis applied but whose reply was
// lost is given again after the error and counted once, with the stored
// keys and expiries of any other batch.
func TestStatsRedisLostReply(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	store, relay := openMutedRedisStore(t, addr, prefix)
	direct := openTestRedisStore(t, addr, prefix, "")
	// Redis expires buckets by their time. A whole second, so that the
	// requests, which end 1 ms after it, end in its hour.
	clock := &fakeClock{t: time.Now().Truncate(time.Second)}
	st := newTestStats(t, store, clock)
	ctx := context.Background()

	st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	if err := st.flush(ctx); err != nil {
		t.Fatalf("first flush: %v", err)
	}
	if got := storedCount(t, direct, "/a"); got != 1 {
		t.Fatalf("Redis counts %d requests after the first flush, want 1", got)
	}

	st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	flushMuted(t, relay, func() error {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return st.flush(fctx)
	})
	if err := st.flush(ctx); err != nil {
		t.Fatalf("flush after the lost reply: %v", err)
	}
	if got := storedCount(t, direct, "/a"); got != 2 {
		t.Errorf("Redis counts %d requests, want the 2 recorded", got)
	}
	st.mu.Lock()
	left := len(st.unacked)
	st.mu.Unlock()
	if left != 0 {
		t.Errorf("%d batches unacknowledged after a flush that succeeded, want 0", left)
	}

	// The key layout: the same hashes and expiries as before batches had
	// ids, plus one marker per batch that expires.
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	now := clock.Now().Unix()
	h, day := strconv.FormatInt(now/hourSeconds, 10), strconv.FormatInt(now/daySeconds, 10)
	wantExpiry := map[string]int64{
		redisStatsTotalKey:     -1,
		redisStatsLastKey:      -1,
		redisStatsHourKey + h:  (now/hourSeconds + 1 + keepHours) * hourSeconds,
		redisStatsDayKey + day: (now/daySeconds + 1 + keepDays) * daySeconds,
	}
	keys, err := rc.Keys(ctx, prefix+"stats:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	markers := 0
	for _, k := range keys {
		name := strings.TrimPrefix(k, prefix)
		if strings.HasPrefix(name, redisStatsAppliedKey) {
			markers++
			if ttl := rc.TTL(ctx, k).Val(); ttl <= 0 || ttl > redisStatsAppliedTTL {
				t.Errorf("TTL of marker %s = %v, want within %v", name, ttl, redisStatsAppliedTTL)
			}
			continue
		}
		want, ok := wantExpiry[name]
		if !ok {
			t.Errorf("unexpected stats key %s", name)
			continue
		}
		delete(wantExpiry, name)
		if got, err := rc.Do(ctx, "EXPIRETIME", k).Int64(); got != want || err != nil {
			t.Errorf("EXPIRETIME %s = %d, %v; want %d", name, got, err, want)
		}
	}
	if len(wantExpiry) > 0 {
		t.Errorf("stats keys missing: %v", slices.Sorted(maps.Keys(wantExpiry)))
	}
	if markers != 2 {
		t.Errorf("%d batch markers, want 2 (one per batch)", markers)
	}
}

// TestStatsSpillUnacked: a final flush whose reply was lost spills its
// batch with the batch's id; the next start gives it again and Redis
// counts it once, and the counts never handed to Redis once too.
func TestStatsSpillUnacked(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	store, relay := openMutedRedisStore(t, addr, prefix)
	direct := openTestRedisStore(t, addr, prefix, "")
	clock := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	newSt := func(store statsStore) *Stats {
		return newStats(statsConfig{enabled: true, store: store, logger: testLogger(),
			now: clock.Now, routes: testRoutes(t, nil), dataDir: dir})
	}
	st := newSt(store)
	for range 2 {
		st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	}
	flushMuted(t, relay, func() error { return st.flush(context.Background()) })
	for range 3 {
		st.record(rec("/a", clock.Now(), 200, time.Millisecond))
	}
	// The final flush gives the unacknowledged batch again and loses that
	// reply too; the 3 newer requests are never sent.
	spill := filepath.Join(dir, statsSpillFile)
	flushMuted(t, relay, func() error {
		st.close()
		// close reports a failed final flush by writing the spill file.
		if _, err := os.Stat(spill); err != nil {
			return nil
		}
		return errors.New("final flush failed")
	})
	if got := storedCount(t, direct, "/a"); got != 2 {
		t.Fatalf("Redis counts %d requests before the restart, want the 2 of the batch whose reply was lost", got)
	}
	b, err := os.ReadFile(spill)
	if err != nil {
		t.Fatal(err)
	}
	spilled, err := decodeSpill(b)
	if err != nil {
		t.Fatalf("decode the spill file: %v", err)
	}
	if len(spilled) != 2 || spilled[0].Batch == "" || spilled[0].Total["/a|count"] != 2 ||
		spilled[1].Batch != "" || spilled[1].Total["/a|count"] != 3 {
		t.Fatalf("spill file = %s, want the batch of 2 with its id, then the 3 never sent without one", b)
	}

	st = newSt(direct)
	if err := st.flush(context.Background()); err != nil {
		t.Fatalf("first flush after the restart: %v", err)
	}
	if got := storedCount(t, direct, "/a"); got != 5 {
		t.Errorf("Redis counts %d requests, want the 5 recorded", got)
	}
	if _, err := os.Stat(spill); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill file still there after its counts were written: %v", err)
	}
}

// TestStatsSpillOldFormat: a spill file of one statsData object, as
// written before batches had ids, is still read and written once.
func TestStatsSpillOldFormat(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	dir := t.TempDir()
	h := clock.Now().Unix() / hourSeconds
	old := fmt.Sprintf(`{"total":{"/a|count":4},"hours":{"%d":{"/a|count":4}},"days":{},"last":{"/a":%d}}`, h, clock.Now().Unix())
	spill := filepath.Join(dir, statsSpillFile)
	if err := os.WriteFile(spill, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := &failingStore{}
	st := newStats(statsConfig{enabled: true, store: fs, logger: testLogger(),
		now: clock.Now, routes: testRoutes(t, nil), dataDir: dir})
	if v := viewOf(t, st); v.Total != 4 {
		t.Errorf("/stats before the first flush: total %d, want the 4 spilled", v.Total)
	}
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := fs.memStatsStore.LoadStats(context.Background(), clock.Now())
	if got, gotH := d.Total["/a|count"], d.Hours[h]["/a|count"]; got != 4 || gotH != 4 {
		t.Errorf("stored count = %d, this hour %d, want 4 and 4", got, gotH)
	}
	if _, err := os.Stat(spill); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill file still there after its counts were written: %v", err)
	}
}

// refusal is a request of prefix at start that a limit refused (SPEC §11),
// made with the proxy key keyID ("" for none): what admitLimits records.
func refusal(prefix string, start time.Time, keyID, limit string) *requestRecord {
	return &requestRecord{Prefix: prefix, Status: http.StatusTooManyRequests, ProxyErr: "rate_limited",
		Start: start, Duration: time.Millisecond, KeyID: keyID, Limit: limit}
}

// recordRefusals records, at now, on st with the routes "/a" and "/b":
// refusals of /a (rpm twice, tpm once) and /b (concurrency) without a key,
// of /a (concurrency) and /b (rpm) with "k_a", of /gone (a deleted
// mapping; rpm) with "k_b", and a 429 the upstream answered, which no
// limit refused. Half is flushed to the store, half left pending.
func recordRefusals(t testing.TB, st *Stats, now time.Time) {
	t.Helper()
	upstream429 := rec("/a", now, http.StatusTooManyRequests, time.Millisecond)
	upstream429.KeyID = "k_a"
	for i, r := range []*requestRecord{
		refusal("/a", now, "", limitRPM),
		refusal("/a", now, "k_a", limitConcurrency),
		refusal("/gone", now, "k_b", limitRPM),
		upstream429,
		refusal("/a", now, "", limitRPM),
		refusal("/a", now, "", limitTPM),
		refusal("/b", now, "", limitConcurrency),
		refusal("/b", now, "k_a", limitRPM),
	} {
		st.record(r)
		if i == 3 {
			if err := st.flush(context.Background()); err != nil {
				t.Fatalf("flush: %v", err)
			}
		}
	}
}

// TestStatsRateLimited: requests a limit refused count in "rate_limited"
// of their endpoint, of their key and at the top (a deleted mapping's
// there too), stored or pending; a 429 from upstream is no refusal. They
// count as requests and errors too.
func TestStatsRateLimited(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	st := newTestStats(t, nil, &fakeClock{t: now})
	recordRefusals(t, st, now)
	v := viewOf(t, st)
	if v.Endpoints["/a"] == nil || v.Endpoints["/b"] == nil || v.Keys["k_a"] == nil || v.Keys["k_b"] == nil {
		t.Fatalf("endpoints = %v, keys = %v; want /a, /b, k_a and k_b", v.Endpoints, v.Keys)
	}
	checkCounts(t, []countCheck{
		{"rate_limited", v.RateLimited, 7},
		{"total", v.Total, 8},
		{"errors", v.Errors, 8},
		{"/a rate_limited", v.Endpoints["/a"].RateLimited, 4},
		{"/a 4xx", v.Endpoints["/a"].Status.S4xx, 5},
		{"/b rate_limited", v.Endpoints["/b"].RateLimited, 2},
		{"k_a rate_limited", v.Keys["k_a"].RateLimited, 2},
		{"k_a count", v.Keys["k_a"].Count, 3},
		{"k_b rate_limited", v.Keys["k_b"].RateLimited, 1},
	})
}

// TestStatsRateLimitedThroughProxy: a mapping with rpm 1 and a key with
// rpm 1 each refuse their second request; /stats and /metrics count each
// refusal once, under its endpoint, its key and its limit.
func TestStatsRateLimitedThroughProxy(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	s, front := newTestServer(t, nil)
	m := targetsOf("/rpm", up.URL)
	m.Limits.RPM = 1
	setMapping(t, s, m)
	k, secret := testKey("one-a-minute")
	k.Limits.RPM = 1
	setKeys(t, s, k)
	setMapping(t, s, keysMapping("/keyed", up.URL, "sk-up", "bearer"))

	for _, c := range []struct {
		path, secret string
		want         int
	}{
		{"/rpm/x", "", 200},
		{"/rpm/x", "", 429},
		{"/keyed/x", secret, 200},
		{"/keyed/x", secret, 429},
	} {
		req, _ := http.NewRequest("GET", front.URL+c.path, nil)
		if c.secret != "" {
			req.Header.Set("Authorization", "Bearer "+c.secret)
		}
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != c.want {
			t.Fatalf("GET %s = %d, want %d", c.path, res.StatusCode, c.want)
		}
	}
	v := waitStats(t, front.Client(), front.URL, func(v statsView) bool { return v.Total == 4 }, "4 requests")
	if v.Endpoints["/rpm"] == nil || v.Endpoints["/keyed"] == nil || v.Keys[k.ID] == nil {
		t.Fatalf("endpoints = %v, keys = %v; want /rpm, /keyed and %s", v.Endpoints, v.Keys, k.ID)
	}
	checkCounts(t, []countCheck{
		{"rate_limited", v.RateLimited, 2},
		{"/rpm rate_limited", v.Endpoints["/rpm"].RateLimited, 1},
		{"/keyed rate_limited", v.Endpoints["/keyed"].RateLimited, 1},
		{"key rate_limited", v.Keys[k.ID].RateLimited, 1},
	})

	_, body := getStatus(t, front.Client(), front.URL+"/metrics")
	const name = "apiproxy_rate_limited_total"
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{`prefix="/rpm"`, `key=""`, `limit="rpm"`}, 1},
		{[]string{`prefix="/keyed"`, `key="` + k.ID + `"`, `limit="rpm"`}, 1},
		{[]string{`prefix="/keyed"`, `key=""`}, -1},
	} {
		if got := metricValue(t, string(body), name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", name, c.labels, got, c.want)
		}
	}
}
