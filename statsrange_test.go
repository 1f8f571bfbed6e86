package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// seriesPointJSON is a series point as /stats writes it, every figure
// included (seriesPoint decodes t, count and errors only).
type seriesPointJSON struct {
	T            int64   `json:"t"`
	Count        int64   `json:"count"`
	Errors       int64   `json:"errors"`
	OK           int64   `json:"ok"`
	S4xx         int64   `json:"s4xx"`
	S429         int64   `json:"s429"`
	S5xx         int64   `json:"s5xx"`
	ClientClosed int64   `json:"client_closed"`
	Prompt       int64   `json:"prompt"`
	Completion   int64   `json:"completion"`
	Cache        int64   `json:"cache"`
	TTFBP50      float64 `json:"ttfb_p50"`
	TTFBP95      float64 `json:"ttfb_p95"`
}

// rangedView is a /stats body decoded: the view, and its series with
// every figure.
type rangedView struct {
	statsView
	series struct {
		Hourly, Daily, Points []seriesPointJSON
	}
}

// decodeRanged decodes a /stats body.
func decodeRanged(t testing.TB, body []byte) rangedView {
	t.Helper()
	var v rangedView
	if err := json.Unmarshal(body, &v.statsView); err != nil {
		t.Fatalf("decode /stats: %v", err)
	}
	var s struct {
		Series struct {
			Hourly []seriesPointJSON `json:"hourly"`
			Daily  []seriesPointJSON `json:"daily"`
			Points []seriesPointJSON `json:"points"`
		} `json:"series"`
	}
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("decode /stats series: %v", err)
	}
	v.series.Hourly, v.series.Daily, v.series.Points = s.Series.Hourly, s.Series.Daily, s.Series.Points
	return v
}

// rangeViewOf returns what /stats?range= would answer now for rng, with
// the caches and the stored figures read afresh.
func rangeViewOf(t testing.TB, st *Stats, rng statsRange) rangedView {
	t.Helper()
	st.viewMu.Lock()
	st.cache, st.ranged = nil, [numRanges]cachedBody{}
	st.viewMu.Unlock()
	st.mu.Lock()
	st.baseAt = time.Time{}
	st.mu.Unlock()
	body, _ := st.view(context.Background(), rng, false)
	return decodeRanged(t, body)
}

// rangeWant is what recordWindows recorded, seen in one range.
type rangeWant struct {
	total, errors, clientClosed, prompt, completion int64
	a, a2xx, a5xx, b, bClosed                       int64
	models                                          map[string]modelView // of /a
	kA, kAErrors, kAPrompt, kB, kGone               int64
	points                                          int
}

// rangeWants are the figures of recordWindows in each range: 40 days ago
// (all only), 10 days ago (30d), 3 days ago (7d), 5 hours ago and now
// (24h).
var rangeWants = map[statsRange]rangeWant{
	range24h: {total: 10, errors: 2, clientClosed: 1, prompt: 13, completion: 9,
		a: 5, a2xx: 3, a5xx: 1, b: 5, bClosed: 1,
		models: map[string]modelView{
			"gpt-4o":   {Count: 1, Tokens: tokenCounts{tokPrompt: 10, tokCompletion: 5, tokTotal: 15}},
			"claude-x": {Count: 1, Tokens: tokenCounts{tokPrompt: 3, tokCompletion: 4, tokTotal: 7, tokCacheRead: 1}},
		},
		kA: 3, kAErrors: 2, kAPrompt: 10, kB: 3, kGone: 0, points: 24},
	range7d: {total: 13, errors: 2, clientClosed: 1, prompt: 13, completion: 9,
		a: 8, a2xx: 6, a5xx: 1, b: 5, bClosed: 1,
		kA: 3, kAErrors: 2, kAPrompt: 10, kB: 3, kGone: 1, points: 7},
	range30d: {total: 15, errors: 3, clientClosed: 1, prompt: 13, completion: 9,
		a: 10, a2xx: 7, a5xx: 2, b: 5, bClosed: 1,
		kA: 5, kAErrors: 3, kAPrompt: 10, kB: 3, kGone: 1, points: 30},
	rangeAll: {total: 16, errors: 3, clientClosed: 1, prompt: 13, completion: 9,
		a: 11, a2xx: 8, a5xx: 2, b: 5, bClosed: 1,
		kA: 6, kAErrors: 3, kAPrompt: 10, kB: 3, kGone: 1, points: 30},
}

// checkRange checks v, the answer for rng of what recordWindows recorded,
// its figures' scope being figures.
func checkRange(t testing.TB, v *rangedView, rng statsRange, figures string) {
	t.Helper()
	w := rangeWants[rng]
	a, b := v.Endpoints["/a"], v.Endpoints["/b"]
	if a == nil || b == nil {
		t.Fatalf("%s: endpoints = %v, want /a and /b", rangeNames[rng], v.Endpoints)
	}
	ka, kb, kg := v.Keys["k_a"], v.Keys["k_b"], v.Keys["k_gone"]
	if ka == nil || kb == nil || kg == nil {
		t.Fatalf("%s: keys = %v, want k_a, k_b and k_gone", rangeNames[rng], v.Keys)
	}
	n := rangeNames[rng] + " "
	checkCounts(t, []countCheck{
		{n + "total", v.Total, w.total},
		{n + "errors", v.Errors, w.errors},
		{n + "client_closed", v.ClientClosed, w.clientClosed},
		{n + "tokens.prompt", v.Tokens.Counts[tokPrompt], w.prompt},
		{n + "tokens.completion", v.Tokens.Counts[tokCompletion], w.completion},
		{n + "/a count", a.Count, w.a},
		{n + "/a 2xx", a.Status.S2xx, w.a2xx},
		{n + "/a 4xx", a.Status.S4xx, 1},
		{n + "/a 5xx", a.Status.S5xx, w.a5xx},
		{n + "/a bytes_in", a.BytesIn, 100 * w.a},
		{n + "/b count", b.Count, w.b},
		{n + "/b client_closed", b.ClientClosed, w.bClosed},
		{n + "/b 3xx", b.Status.S3xx, 1},
		{n + "k_a count", ka.Count, w.kA},
		{n + "k_a errors", ka.Errors, w.kAErrors},
		{n + "k_a tokens.prompt", ka.Tokens.Counts[tokPrompt], w.kAPrompt},
		{n + "k_b count", kb.Count, w.kB},
		{n + "k_gone count", kg.Count, w.kGone},
		// Windows and the last use stay what they are without a range.
		{n + "last_24h", v.Last24h, 10},
		{n + "last_7d", v.Last7d, 13},
		{n + "last_30d", v.Last30d, 15},
		{n + "k_a last_30d", ka.Last30d, 5},
		{n + "/a targets[0].count", a.Targets[0].Count, 11},
	})
	if ka.LastUsedAt == 0 || kg.LastUsedAt == 0 {
		t.Errorf("%s: last_used_at k_a %d, k_gone %d; want both set", n, ka.LastUsedAt, kg.LastUsedAt)
	}
	if w.models != nil {
		checkModels(t, n+"/a", a.Models, w.models)
	}
	if a.LatencyMS.P50 < 8 || a.LatencyMS.P50 > 12.5 || a.TTFBMS.P50 < 4 || a.TTFBMS.P50 > 6.5 {
		t.Errorf("%s: /a latency %+v, ttfb %+v; want p50 about 10 and 5 ms", n, a.LatencyMS, a.TTFBMS)
	}
	if v.Range != rangeNames[rng] || v.Scope == nil || v.Scope.Figures != figures || v.Scope.Performance != scopeInstance {
		t.Errorf("%s: range %q, scope %+v; want %q, %s figures, instance performance", n, v.Range, v.Scope, rangeNames[rng], figures)
	}
	if len(v.series.Points) != w.points {
		t.Fatalf("%s: %d series points, want %d", n, len(v.series.Points), w.points)
	}
	var sum int64
	for _, p := range v.series.Points {
		sum += p.Count
	}
	if rng != rangeAll && sum != w.total {
		t.Errorf("%s: series points count %d requests, want %d", n, sum, w.total)
	}
	if rng != rangeAll && v.RangeFrom != v.series.Points[0].T || rng == rangeAll && v.RangeFrom != 0 {
		t.Errorf("%s: range_from %d, first point %d", n, v.RangeFrom, v.series.Points[0].T)
	}
}

// TestStatsRange: with a range, every figure with a time dimension counts
// that range's requests, the endpoints', the keys' and the totals; the
// windows, last uses and targets do not change; on every store.
func TestStatsRange(t *testing.T) {
	fixed := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	// Redis expires buckets by their time: its data are recorded now.
	recent := time.Now().UTC().Truncate(time.Hour).Add(30 * time.Minute)
	for _, tt := range []struct {
		name    string
		now0    time.Time
		figures string
		open    func(t *testing.T) statsStore
	}{
		{"memory", fixed, scopeInstance, func(t *testing.T) statsStore { return &memStatsStore{} }},
		{"bolt", fixed, scopeInstance, func(t *testing.T) statsStore {
			s, err := openBoltStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"redis", recent, scopeFleet, func(t *testing.T) statsStore {
			addr := testRedisAddr(t)
			return openTestRedisStore(t, addr, testKeyPrefix(t, addr), "")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := tt.open(t)
			clock := &fakeClock{t: tt.now0.Add(-40 * 24 * time.Hour)}
			st := newTestStats(t, store, clock)
			st.proxyKeys = testKeyNames("k_a", "team-a", "k_b", "team-b")
			recordWindows(t, st, clock, tt.now0)
			clock.Set(tt.now0.Add(2 * time.Second))
			for _, rng := range []statsRange{range24h, range7d, range30d, rangeAll} {
				v := rangeViewOf(t, st, rng)
				checkRange(t, &v, rng, tt.figures)
			}
			// The answer without a range is unchanged by the ranged ones.
			v := viewOf(t, st)
			if v.Total != 16 || v.Range != "" || v.Scope != nil || v.Series.Points != nil {
				t.Errorf("no range: total %d, range %q, scope %v, points %v; want 16 and no range", v.Total, v.Range, v.Scope, v.Series.Points)
			}
		})
	}
}

// TestStatsRangeSeries checks the figures of series points: by outcome,
// tokens and time to first byte, in the hourly and daily series and in
// the range's points.
func TestStatsRangeSeries(t *testing.T) {
	now0 := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	clock := &fakeClock{t: now0.Add(-40 * 24 * time.Hour)}
	st := newTestStats(t, nil, clock)
	recordWindows(t, st, clock, now0)
	clock.Set(now0.Add(-time.Hour))
	limited := rec("/a", now0, 429, 20*time.Millisecond)
	limited.Start = now0.Add(-time.Hour - limited.Duration)
	st.record(limited)
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Set(now0.Add(2 * time.Second))

	hourStart, dayStart := now0.Truncate(time.Hour).Unix(), now0.Truncate(24*time.Hour).Unix()
	v := rangeViewOf(t, st, range24h)
	for i, want := range map[int]seriesPointJSON{
		// 200 gpt-4o 10/5, 200 claude-x 3/4 (1 cache read), 200, 404, 502
		// unreachable (no first byte): TTFB 5 ms (rec's half of 10 ms).
		23: {T: hourStart, Count: 5, Errors: 2, OK: 3, S4xx: 1, S5xx: 1, Prompt: 13, Completion: 9, Cache: 1},
		22: {T: hourStart - 3600, Count: 1, Errors: 1, S429: 1},
		18: {T: hourStart - 5*3600, Count: 5, OK: 4, ClientClosed: 1},
		0:  {T: hourStart - 23*3600},
	} {
		got := v.series.Points[i]
		ttfb := got.TTFBP50
		got.TTFBP50, got.TTFBP95 = 0, 0
		if got != want {
			t.Errorf("24h points[%d] = %+v, want %+v", i, got, want)
		}
		if want.Count > 0 && (ttfb < 4 || ttfb > 12.5) || want.Count == 0 && ttfb != 0 {
			t.Errorf("24h points[%d] ttfb_p50 = %v ms, want about 5 (10 for the 429), 0 without requests", i, ttfb)
		}
	}
	if v.series.Hourly[23] != v.series.Points[23] || len(v.series.Daily) != 30 {
		t.Errorf("hourly[23] = %+v, want points[23] %+v; %d daily points", v.series.Hourly[23], v.series.Points[23], len(v.series.Daily))
	}
	v = rangeViewOf(t, st, range7d)
	today, three := v.series.Points[6], v.series.Points[3]
	if today.T != dayStart || today.Count != 11 || today.OK != 7 || today.S4xx != 1 || today.S429 != 1 ||
		today.S5xx != 1 || today.ClientClosed != 1 || today.Prompt != 13 || today.TTFBP95 < today.TTFBP50 {
		t.Errorf("7d points[6] = %+v, want today: 11 requests, 7 ok, 1 4xx, 1 429, 1 5xx, 1 closed, 13 prompt", today)
	}
	if three.T != dayStart-3*86400 || three.Count != 3 || three.OK != 3 || three.TTFBP50 < 4 || three.TTFBP50 > 6.5 {
		t.Errorf("7d points[3] = %+v, want 3 days ago: 3 ok requests, TTFB about 5 ms", three)
	}
	if a := v.Endpoints["/a"]; a.Status.S4xx != 2 {
		t.Errorf("7d /a 4xx = %d, want the 404 and the 429", a.Status.S4xx)
	}
}

// TestStatsRangeOldData: buckets written before they held the range's
// figures (only count and errors, and latencies in hours) count those and
// read 0 for the rest; latency averages only the requests with one.
func TestStatsRangeOldData(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	store := &memStatsStore{}
	old := newStatsData()
	old.Total["/a|count"], old.Total["/a|errors"], old.Total["/a|s2xx"] = 9, 1, 8
	old.Total["/a|tok_prompt"], old.Total["/a|m|gpt-4o|count"] = 50, 8
	hb := bucket(old.Hours, h-2)
	hb["/a|count"], hb["/a|errors"], hb["/a|lat_us"] = 4, 1, 4*20000
	hb["/a|lat|"+strconv.Itoa(histIndex(20000))] = 4
	db := bucket(old.Days, day-3)
	db["/a|count"], db["/a|errors"] = 5, 0
	bucket(old.Days, day)["/a|count"] = 4
	if err := store.AddStats(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: now}
	st := newTestStats(t, store, clock)
	st.record(rec("/a", now.Add(-10*time.Millisecond), 200, 10*time.Millisecond))

	v := rangeViewOf(t, st, range24h)
	a := v.Endpoints["/a"]
	checkCounts(t, []countCheck{
		{"24h count", a.Count, 5},
		{"24h errors", a.ErrorCount, 1},
		{"24h 2xx", a.Status.S2xx, 1}, // the old requests have no status
		{"24h total", v.Total, 5},
		{"24h points[21] count", v.series.Points[21].Count, 4},
		{"24h points[21] ok", v.series.Points[21].OK, 0},
	})
	if got := a.LatencyMS.Avg; got != 18 {
		t.Errorf("24h latency avg = %v ms, want 18 (four of 20 ms, one of 10)", got)
	}
	v = rangeViewOf(t, st, range7d)
	a = v.Endpoints["/a"]
	if a.Count != 10 || len(a.Models) != 0 || a.LatencyMS.Avg != 10 {
		t.Errorf("7d /a count %d, models %v, latency avg %v; want 10, none, 10 ms (the only request with a latency in days)", a.Count, a.Models, a.LatencyMS.Avg)
	}
	v = rangeViewOf(t, st, rangeAll)
	if a = v.Endpoints["/a"]; a.Count != 10 || a.Models["gpt-4o"] == nil || a.Models["gpt-4o"].Count != 8 {
		t.Errorf("all /a count %d, models %v; want the totals' 10 and gpt-4o's 8", a.Count, a.Models)
	}
}

// TestStatsRangeThroughProxy: a request through the proxy shows in
// /stats?range=24h with its model, tokens and time to first byte, gzip or
// not; a bad range is a 400 envelope.
func TestStatsRangeThroughProxy(t *testing.T) {
	up := newProviderUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	client := front.Client()
	if code, _ := getStatus(t, client, front.URL+"/p/v1/chat"); code != 200 {
		t.Fatalf("GET /p/v1/chat = %d", code)
	}
	var v rangedView
	eventually(t, func() bool {
		res, err := client.Get(front.URL + "/stats?range=24h")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET /stats?range=24h = %d %s", res.StatusCode, body)
		}
		v = decodeRanged(t, body)
		return v.Endpoints["/p"] != nil && v.Endpoints["/p"].Count == 1
	}, "/stats?range=24h to count the request")
	p := v.Endpoints["/p"]
	m := p.Models["gpt-4o-2024-08-06"]
	if m == nil || m.Count != 1 || m.Tokens[tokPrompt] != 1117 || p.Tokens.Counts[tokCacheRead] != 1024 || p.TTFBMS.P50 <= 0 {
		t.Errorf("24h /p models %v, tokens %+v, ttfb %+v; want gpt-4o-2024-08-06 with 1117 prompt tokens, 1024 cache reads, a TTFB", p.Models, p.Tokens, p.TTFBMS)
	}
	pt := v.series.Points[len(v.series.Points)-1]
	if v.Range != "24h" || pt.Count != 1 || pt.OK != 1 || pt.Prompt != 1117 || pt.Cache != 1024 || pt.TTFBP50 <= 0 {
		t.Errorf("range %q, last point %+v; want 24h and the request with its tokens and TTFB", v.Range, pt)
	}

	for _, q := range []string{"range=1h", "range=", "range=ALL", "range=24h&range=7d"} {
		t.Run(q, func(t *testing.T) {
			res, err := client.Get(front.URL + "/stats?" + q)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var e errorBody
			if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
				t.Fatalf("decode: %v", err)
			}
			// Several values: the first counts.
			want := http.StatusBadRequest
			if q == "range=24h&range=7d" {
				want = http.StatusOK
			}
			if res.StatusCode != want || want == 400 && e.Error.Code != "invalid_query" {
				t.Errorf("GET /stats?%s = %d %+v, want %d invalid_query", q, res.StatusCode, e, want)
			}
		})
	}
}

// TestStatsRedisFleetRange: two instances flushing to one Redis each show
// the fleet's requests in range=24h, as fleet figures.
func TestStatsRedisFleetRange(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	now := time.Now()
	clock := &fakeClock{t: now}
	var sts []*Stats
	for i, n := range []int{3, 2} {
		st := newTestStats(t, openTestRedisStore(t, addr, prefix, ""), clock)
		for range n {
			r := rec("/a", now.Add(-time.Millisecond), 200, time.Millisecond)
			r.Usage = tokenUsage{Known: true, Model: []byte("m" + strconv.Itoa(i)), Tokens: tokenCounts{tokPrompt: 10, tokTotal: 10}}
			st.record(r)
		}
		if err := st.flush(context.Background()); err != nil {
			t.Fatalf("flush of instance %d: %v", i, err)
		}
		sts = append(sts, st)
	}
	for i, st := range sts {
		v := rangeViewOf(t, st, range24h)
		a := v.Endpoints["/a"]
		var points int64
		for _, p := range v.series.Points {
			points += p.Count
		}
		if v.Total != 5 || a.Count != 5 || a.Tokens.Counts[tokPrompt] != 50 || len(a.Models) != 2 || points != 5 ||
			v.Scope == nil || v.Scope.Figures != scopeFleet {
			t.Errorf("instance %d: total %d, /a %d requests, %d prompt tokens, models %v, points %d, scope %+v; want the fleet's 5, 50, m0 and m1",
				i, v.Total, a.Count, a.Tokens.Counts[tokPrompt], a.Models, points, v.Scope)
		}
	}
}

// BenchmarkStatsRenderRange measures /stats with each range for 50
// endpoints of 50 models each and 100 keys, with figures in every hourly
// and daily bucket (issue 19: at most 50 ms).
func BenchmarkStatsRenderRange(b *testing.B) {
	now := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	st := benchRangeStats(b, now)
	ctx := context.Background()
	for rng := range numRanges {
		name := rangeNames[rng]
		if name == "" {
			name = "none"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				st.renderRange(ctx, now, rng)
			}
		})
	}
}

// benchRangeStats returns a Stats whose store holds, in its totals and in
// each of the hours and days /stats reads, the figures of 50 prefixes of
// 50 models each and of 100 proxy keys.
func benchRangeStats(b *testing.B, now time.Time) *Stats {
	const prefixes, models, keys = 50, 50, 100
	bucketFields := map[string]int64{}
	var mappings []Mapping
	for p := range prefixes {
		prefix := fmt.Sprintf("/p%02d", p)
		mappings = append(mappings, newMapping(prefix, "https://p.example"))
		for _, f := range []string{fieldCount, fieldErrors, fieldLatencySum, "s2xx", "s4xx", fieldS429, "s5xx",
			fieldClientClosed, fieldBytesIn, fieldBytesOut, fieldUnknown, fieldRateLimited} {
			bucketFields[prefix+"|"+f] = 7
		}
		for _, k := range tokenKinds {
			bucketFields[prefix+"|"+fieldTokens+k] = 100
		}
		for i := 40; i < 56; i++ { // 1 ms to 16 ms
			bucketFields[prefix+"|"+fieldLatency+strconv.Itoa(i)] = 3
			bucketFields[prefix+"|"+fieldTTFB+strconv.Itoa(i-8)] = 3
		}
		for m := range models {
			for _, k := range []string{fieldCount, "prompt", "completion", "total", "cache_read"} {
				bucketFields[fmt.Sprintf("%s|%smodel-%02d|%s", prefix, fieldModel, m, k)] = 11
			}
		}
	}
	var keyIDs []string
	for k := range keys {
		id := fmt.Sprintf("k_bench%03d", k)
		keyIDs = append(keyIDs, id, "key "+id)
		for _, f := range []string{fieldCount, fieldErrors, fieldTokens + "prompt", fieldTokens + "completion", fieldTokens + "total", fieldUnknown} {
			bucketFields[keyStatsMark+id+"|"+f] = 5
		}
	}
	d := newStatsData()
	addFields(d.Total, bucketFields)
	for p := range prefixes {
		d.Total[fmt.Sprintf("/p%02d|t0|count", p)] = 1000
		d.Last[fmt.Sprintf("/p%02d", p)] = now.Unix()
	}
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	// Names read from a store are distinct strings in each bucket.
	clone := func(dst map[string]int64) {
		for f, n := range bucketFields {
			dst[strings.Clone(f)] = n
		}
	}
	for i := range int64(windowHours) {
		clone(bucket(d.Hours, h-i))
	}
	for i := range int64(windowDays) {
		clone(bucket(d.Days, day-i))
	}
	store := &memStatsStore{d: d}
	st := newTestStats(b, store, &fakeClock{t: now})
	st.routes = testRouteObjects(b, mappings...)
	st.proxyKeys = testKeyNames(keyIDs...)
	return st
}

// TestStatsViewGoldenRange pins the exact /stats?range=24h body for the
// data of TestStatsViewGolden: the range's fields and the series points'
// figures are a contract with the dashboard.
func TestStatsViewGoldenRange(t *testing.T) {
	st, now := goldenStats(t)
	checkGolden(t, "stats_view_24h.golden.json", st.renderRange(context.Background(), now, range24h))
}

func TestParseStatsField(t *testing.T) {
	tests := []struct {
		name   string
		kind   fieldKind
		i, fig int
		model  string
	}{
		{"count", fkCount, 0, 0, ""},
		{"s2xx", fkClass, 1, 0, ""},
		{"s429", fk429, 0, 0, ""},
		{"s6xx", fkNone, 0, 0, ""},
		{"tok_cache_write", fkToken, int(tokCacheWrite), 0, ""},
		{"tok_unknown", fkUnknown, 0, 0, ""},
		{"tok_other", fkNone, 0, 0, ""},
		{"m|gpt-4o|count", fkModelCount, 0, 0, "gpt-4o"},
		{"m|a|b|completion", fkModelToken, int(tokCompletion), 0, "a|b"},
		{"m||count", fkNone, 0, 0, ""},
		{"m|gpt-4o|bogus", fkNone, 0, 0, ""},
		{"lat|40", fkLatency, 40, 0, ""},
		{"ttfb|127", fkTTFB, 127, 0, ""},
		{"ttfb|128", fkNone, 0, 0, ""},
		{"lat_us", fkLatSum, 0, 0, ""},
		{"t1|failovers", fkTarget, 1, figFailovers, ""},
		{"t1|x", fkNone, 0, 0, ""},
		{"", fkNone, 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, i, fig, model := parseStatsField(tt.name)
			if kind != tt.kind || i != tt.i || fig != tt.fig || model != tt.model {
				t.Errorf("parseStatsField(%q) = %d, %d, %d, %q; want %d, %d, %d, %q", tt.name, kind, i, fig, model, tt.kind, tt.i, tt.fig, tt.model)
			}
		})
	}
}

// TestFieldNamesForget: past maxFieldNames an answer forgets the names
// parsed before, and still counts every field once.
func TestFieldNamesForget(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	st := newTestStats(t, nil, &fakeClock{t: now})
	st.record(rec("/a", now.Add(-time.Millisecond), 200, time.Millisecond))
	rangeViewOf(t, st, range24h)
	st.mu.Lock()
	for len(st.fieldNames.info) < maxFieldNames {
		st.fieldNames.info = append(st.fieldNames.info, fieldInfo{})
	}
	st.mu.Unlock()
	v := rangeViewOf(t, st, range24h)
	if a := v.Endpoints["/a"]; a.Count != 1 || a.Status.S2xx != 1 {
		t.Errorf("/a count %d, 2xx %d; want 1 and 1", a.Count, a.Status.S2xx)
	}
	st.mu.Lock()
	n := len(st.fieldNames.info)
	st.mu.Unlock()
	if n >= maxFieldNames {
		t.Errorf("%d names kept, want them forgotten", n)
	}
}
