package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// statsView is the JSON of GET /stats (SPEC §4). The field names are a
// contract with the dashboard and users' scripts.
type statsView struct {
	StatsEnabled bool      `json:"stats_enabled"`
	Total        int64     `json:"total"`
	Errors       int64     `json:"errors"`
	ClientClosed int64     `json:"client_closed"`
	Failovers    int64     `json:"failovers"`    // tries followed by a try of another target
	RateLimited  int64     `json:"rate_limited"` // requests a limit refused (SPEC §11)
	Last24h      int64     `json:"last_24h"`
	Last7d       int64     `json:"last_7d"`
	Last30d      int64     `json:"last_30d"`
	Tokens       tokenView `json:"tokens"`
	// LatencyMS and TTFBMS are those of all requests together, over the
	// same window as each endpoint's (the last 24 hours, or the range):
	// from the endpoints' histograms added up, since their percentiles
	// do not add up.
	LatencyMS latencyView              `json:"latency_ms"`
	TTFBMS    ttfbView                 `json:"ttfb_ms"`
	Endpoints map[string]*endpointView `json:"endpoints"`
	// Keys are the figures of each proxy key used (statskeys.go), by id;
	// their requests are in the figures above too.
	Keys        map[string]*keyView `json:"keys"`
	Series      seriesView          `json:"series"`
	Performance perfFigures         `json:"performance"`
	GeneratedAt int64               `json:"generated_at"`

	// With a range (GET /stats?range=, statsRange): its name; the Unix
	// time its first hour or day starts (none for "all"); and whose
	// requests the figures count. Absent without a range.
	Range     string     `json:"range,omitempty"`
	RangeFrom int64      `json:"range_from,omitempty"`
	Scope     *scopeView `json:"scope,omitempty"`
	// RecentErrors are the newest non-2xx records of the request log
	// (requestlog_server.go), with a range and a store that keeps the
	// log; absent otherwise.
	RecentErrors *[]recentError `json:"recent_errors,omitempty"`

	lat latencyHist // the endpoints' added up, for LatencyMS and TTFBMS
}

// tokenView is the token figures of a prefix or of all of them. Its JSON
// holds a field per token kind, named and ordered by tokenKinds, then
// "unknown_responses".
type tokenView struct {
	Counts           tokenCounts
	UnknownResponses int64 // 2xx responses that carried no usage
}

func (t *tokenView) add(o *tokenView) {
	t.Counts.add(&o.Counts)
	t.UnknownResponses += o.UnknownResponses
}

func (t tokenView) MarshalJSON() ([]byte, error) {
	b := append(make([]byte, 0, 128), '{')
	b = appendTokenFields(b, &t.Counts)
	b = append(b, `,"unknown_responses":`...)
	b = strconv.AppendInt(b, t.UnknownResponses, 10)
	return append(b, '}'), nil
}

// UnmarshalJSON reads what MarshalJSON writes, so that a /stats body
// decodes back into a statsView.
func (t *tokenView) UnmarshalJSON(data []byte) error {
	var m map[string]int64
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	*t = tokenView{Counts: tokenCountsOf(m), UnknownResponses: m["unknown_responses"]}
	return nil
}

// modelView is the figures of one model under one prefix. Its JSON holds
// "count", the responses that named the model, then a field per token
// kind as in tokenView.
type modelView struct {
	Count  int64
	Tokens tokenCounts
}

func (m modelView) MarshalJSON() ([]byte, error) {
	b := append(make([]byte, 0, 128), `{"count":`...)
	b = strconv.AppendInt(b, m.Count, 10)
	b = append(b, ',')
	b = appendTokenFields(b, &m.Tokens)
	return append(b, '}'), nil
}

// UnmarshalJSON reads what MarshalJSON writes.
func (m *modelView) UnmarshalJSON(data []byte) error {
	var f map[string]int64
	if err := json.Unmarshal(data, &f); err != nil {
		return err
	}
	*m = modelView{Count: f[fieldCount], Tokens: tokenCountsOf(f)}
	return nil
}

// appendTokenFields appends the JSON members "<kind>":<count> of c, in
// tokenKinds order, separated by commas.
func appendTokenFields(b []byte, c *tokenCounts) []byte {
	for k, name := range tokenKinds {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		b = strconv.AppendInt(b, c[k], 10)
	}
	return b
}

// tokenCountsOf takes the count of each token kind from the JSON members
// of an object decoded into m.
func tokenCountsOf(m map[string]int64) tokenCounts {
	var c tokenCounts
	for k, name := range tokenKinds {
		c[k] = m[name]
	}
	return c
}

// endpointView is the figures of one prefix. Without a range, counts are
// all-time but for the last_* windows, and latency and TTFB cover the
// last 24 hours. With one, counts, latency and TTFB are the range's but
// for the last_* windows, last_request and targets.
type endpointView struct {
	Target       string                `json:"target"`
	Count        int64                 `json:"count"`
	ErrorCount   int64                 `json:"error_count"`
	LastRequest  int64                 `json:"last_request"`
	Last24h      int64                 `json:"last_24h"`
	Last7d       int64                 `json:"last_7d"`
	Last30d      int64                 `json:"last_30d"`
	Status       statusView            `json:"status"`
	ClientClosed int64                 `json:"client_closed"`
	RateLimited  int64                 `json:"rate_limited"` // requests a limit refused (SPEC §11)
	BytesIn      int64                 `json:"bytes_in"`
	BytesOut     int64                 `json:"bytes_out"`
	LatencyMS    latencyView           `json:"latency_ms"`
	TTFBMS       ttfbView              `json:"ttfb_ms"`
	Tokens       tokenView             `json:"tokens"`
	Models       map[string]*modelView `json:"models"`
	// Targets are the figures of the current mapping's targets, in its
	// order: those counted under each position, whatever URL it had then.
	Targets []targetView `json:"targets"`

	// Last 24 hours (or the range), for the latency figures.
	lat latencyHist
	// tries holds the target figures by position (targetFigures order),
	// of every position stored, mapped now or not.
	tries [maxTargets][numTargetFigures]int64
}

// targetView is the figures of one target of a mapping (SPEC §9), all-time
// but for its cooldown, which is now's.
type targetView struct {
	URL       string `json:"url"`
	Count     int64  `json:"count"`     // tries
	Errors    int64  `json:"errors"`    // tries that failed, failovers included
	Failovers int64  `json:"failovers"` // failed tries followed by a try of another target
	// CooldownUntil is when the target's cooldown ends, Unix seconds; 0
	// when it is not cooling down (always, for a mapping with one target).
	CooldownUntil int64 `json:"cooldown_until"`
}

// statusView counts requests by status class: all-time, or the range's.
type statusView struct {
	S1xx int64 `json:"1xx"`
	S2xx int64 `json:"2xx"`
	S3xx int64 `json:"3xx"`
	S4xx int64 `json:"4xx"`
	S5xx int64 `json:"5xx"`
}

// latencyView is the durations of requests, in milliseconds.
type latencyView struct {
	Avg float64 `json:"avg"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// ttfbView is the times to first byte, in milliseconds.
type ttfbView struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// seriesView counts requests and errors per hour (the last windowHours)
// and per UTC day (the last windowDays), oldest first. With a range,
// points have their other figures too (seriesFigures), and Points are
// the range's: Hourly for 24h, the last 7 of Daily for 7d, Daily for 30d
// and all.
type seriesView struct {
	Hourly []seriesPoint `json:"hourly"`
	Daily  []seriesPoint `json:"daily"`
	Points []seriesPoint `json:"points,omitempty"`

	figures bool // the answer has a range: points are written with their figures
}

// seriesPoint is the figures of one hour or day, over every prefix; its
// JSON (seriesView.MarshalJSON, statsrange.go) holds the figures in fig
// too.
type seriesPoint struct {
	T      int64 `json:"t"` // Unix time the hour or (UTC) day starts
	Count  int64 `json:"count"`
	Errors int64 `json:"errors"`

	fig seriesFigures
}

// viewLocked computes /stats at now for rng from the stored figures, the
// batches not acknowledged yet (one may be being written) and pending:
// each count is in exactly one of them. st.mu must be held.
func (st *Stats) viewLocked(now time.Time, rng statsRange) *statsView {
	v := newStatsView(st.enabled, now)
	b := newViewBuilder(v, rng, &st.fieldNames)
	if st.base != nil {
		b.addData(st.base)
	}
	for _, d := range st.unacked {
		b.addData(d)
	}
	b.addData(st.pending)
	b.release()
	all := b.all
	for p, e := range all {
		// A key's requests are its prefixes' too: they have no row of
		// their own, and the totals have them once.
		if id, ok := keyOfView(p); ok {
			v.Keys[id] = newKeyView(st.keyName(id), e)
			delete(all, p)
			continue
		}
		e.finish(rng != rangeNone)
		v.addEndpoint(e)
	}
	v.LatencyMS, v.TTFBMS = v.lat.views()
	v.finishSeries(rng, st.figuresScope)
	// Endpoints are the current mappings; a deleted prefix's requests stay
	// in the totals above but it has no row.
	for _, r := range st.routes.Load().sorted {
		e := all.get(r.prefix)
		e.Target = r.targets[0].url
		e.Targets = make([]targetView, len(r.targets))
		for i, t := range r.targets {
			f := &e.tries[t.index]
			e.Targets[i] = targetView{URL: t.url, Count: f[figTries], Errors: f[figErrors],
				Failovers: f[figFailovers], CooldownUntil: t.state.cooldownUntil(now)}
		}
		v.Endpoints[r.prefix] = e
	}
	v.Performance = st.perfAt(now)
	return v
}

// newStatsView returns an empty view at now, its series points dated:
// the windowHours hours and the windowDays (UTC) days up to now's.
func newStatsView(enabled bool, now time.Time) *statsView {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	v := &statsView{StatsEnabled: enabled, Endpoints: map[string]*endpointView{}, Keys: map[string]*keyView{},
		GeneratedAt: now.Unix()}
	v.Series.Hourly = make([]seriesPoint, windowHours)
	v.Series.Daily = make([]seriesPoint, windowDays)
	for i := range v.Series.Hourly {
		v.Series.Hourly[i].T = (h - windowHours + 1 + int64(i)) * hourSeconds
	}
	for i := range v.Series.Daily {
		v.Series.Daily[i].T = (day - windowDays + 1 + int64(i)) * daySeconds
	}
	return v
}

// endpointSet holds the figures of each prefix while a view is computed.
type endpointSet map[string]*endpointView

// get returns the figures of prefix, added empty on first use.
func (es endpointSet) get(prefix string) *endpointView {
	e := es[prefix]
	if e == nil {
		e = &endpointView{Models: map[string]*modelView{}}
		es[prefix] = e
	}
	return e
}

// addEndpoint adds the figures of one prefix to the view's totals.
func (v *statsView) addEndpoint(e *endpointView) {
	v.Total += e.Count
	v.Errors += e.ErrorCount
	v.ClientClosed += e.ClientClosed
	v.RateLimited += e.RateLimited
	for i := range e.tries {
		v.Failovers += e.tries[i][figFailovers]
	}
	v.Last24h += e.Last24h
	v.Last7d += e.Last7d
	v.Last30d += e.Last30d
	v.Tokens.add(&e.Tokens)
	v.lat.add(&e.lat)
}

// targetField parses "t<index>|<figure>" (fieldTarget), index below
// maxTargets and figure one of targetFigures.
func targetField(name string) (index, figure int, ok bool) {
	rest, ok := strings.CutPrefix(name, fieldTarget)
	if !ok {
		return 0, 0, false
	}
	num, fig, ok := strings.Cut(rest, "|")
	if !ok || num == "" || num[0] < '0' || num[0] > '9' {
		return 0, 0, false
	}
	i, err := strconv.Atoi(num)
	if err != nil || i >= maxTargets {
		return 0, 0, false
	}
	for k, f := range targetFigures {
		if f == fig {
			return i, k, true
		}
	}
	return 0, 0, false
}

// addDay adds the n requests of the day age days before today.
func (e *endpointView) addDay(age int, n int64) {
	e.Last30d += n
	if age < 7 {
		e.Last7d += n
	}
}

// histField parses "<kind><bucket>".
func histField(name, kind string) (int, bool) {
	s, ok := strings.CutPrefix(name, kind)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0 && i < histBuckets
}

// percentilesMS returns the p50, p95 and p99 of a histogram of
// microseconds, in milliseconds.
func percentilesMS(h *[histBuckets]int64) (p50, p95, p99 float64) {
	var n int64
	for _, c := range h {
		n += c
	}
	q := func(p float64) float64 { return round2(histQuantile(h, n, p) / 1e3) }
	return q(0.50), q(0.95), q(0.99)
}

// latencyHist is the latency figures of some requests, in microseconds:
// their sum, how many requests it adds up (n, set by finish) and the
// histograms of latency and time to first byte.
type latencyHist struct {
	sum, n        int64
	latency, ttfb [histBuckets]int64
}

// add adds o's figures to h's.
func (h *latencyHist) add(o *latencyHist) {
	h.sum += o.sum
	h.n += o.n
	for i := range h.latency {
		h.latency[i] += o.latency[i]
		h.ttfb[i] += o.ttfb[i]
	}
}

// views returns h's average and percentiles in milliseconds.
func (h *latencyHist) views() (lat latencyView, ttfb ttfbView) {
	if h.n > 0 {
		lat.Avg = round2(float64(h.sum) / float64(h.n) / 1e3)
	}
	lat.P50, lat.P95, lat.P99 = percentilesMS(&h.latency)
	ttfb.P50, ttfb.P95, ttfb.P99 = percentilesMS(&h.ttfb)
	return lat, ttfb
}

// finish computes the latency figures and folds models past maxModels
// (possible when instances saw different ones) into "other". ranged: the
// latency figures are a range's rather than the last 24 hours'.
func (e *endpointView) finish(ranged bool) {
	// lat.sum adds up the latencies of the requests of the last 24 hours,
	// or, ranged, of those in the latency histogram: buckets written
	// before days held latencies count requests without any.
	e.lat.n = e.Last24h
	if ranged {
		e.lat.n = 0
		for _, c := range e.lat.latency {
			e.lat.n += c
		}
	}
	e.LatencyMS, e.TTFBMS = e.lat.views()
	if len(e.Models) <= maxModels {
		return
	}
	names := make([]string, 0, len(e.Models))
	for name := range e.Models {
		if name != "other" {
			names = append(names, name)
		}
	}
	if len(names) <= maxModels {
		return
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := e.Models[names[i]], e.Models[names[j]]
		return a.Count > b.Count || a.Count == b.Count && names[i] < names[j]
	})
	other := e.Models["other"]
	if other == nil {
		other = &modelView{}
	}
	for _, name := range names[maxModels:] {
		m := e.Models[name]
		other.Count += m.Count
		other.Tokens.add(&m.Tokens)
		delete(e.Models, name)
	}
	e.Models["other"] = other
}

// json returns the /stats body without a range, computed at most once per
// statsCacheTTL.
func (st *Stats) json(ctx context.Context) []byte {
	body, _ := st.view(ctx, rangeNone, false)
	return body
}

// view returns the /stats body of rng, and also its gzip-compressed form
// when wantGzip. Each range's body is computed at most once per
// statsCacheTTL; the compressed form is made once per cached body, since a
// dashboard fetches the same large body every few seconds.
func (st *Stats) view(ctx context.Context, rng statsRange, wantGzip bool) (body, gz []byte) {
	st.viewMu.Lock()
	defer st.viewMu.Unlock()
	now := st.now()
	// rangeNone's body is in cache, cacheAt and cacheGz, the others'
	// in ranged.
	c := &st.ranged[rng]
	if rng == rangeNone {
		c = &cachedBody{body: st.cache, gz: st.cacheGz, at: st.cacheAt}
		defer func() { st.cache, st.cacheGz, st.cacheAt = c.body, c.gz, c.at }()
	}
	if c.body == nil || now.Sub(c.at) >= statsCacheTTL || now.Before(c.at) {
		c.body, c.gz = st.renderRange(ctx, now, rng), nil
		c.at = now
	}
	if wantGzip && c.gz == nil {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		zw.Write(c.body)
		zw.Close()
		c.gz = buf.Bytes()
	}
	if wantGzip {
		return c.body, c.gz
	}
	return c.body, nil
}

// cachedBody is a /stats body computed at some time, and its gzip form
// once made (nil until then).
type cachedBody struct {
	body, gz []byte
	at       time.Time
}

// render builds the /stats body without a range from the store and this
// instance's unflushed counts. viewMu is held.
func (st *Stats) render(ctx context.Context, now time.Time) []byte {
	return st.renderRange(ctx, now, rangeNone)
}

// renderRange builds the /stats body of rng. viewMu is held.
func (st *Stats) renderRange(ctx context.Context, now time.Time, rng statsRange) []byte {
	if st.enabled {
		st.refresh(ctx, now)
	}
	var recent *[]recentError
	if rng != rangeNone && st.recentErrors != nil {
		recent = st.recentErrors(ctx)
	}
	st.mu.Lock()
	st.drainLocked(now)
	v := st.viewLocked(now, rng)
	st.mu.Unlock()
	v.RecentErrors = recent
	body, err := json.Marshal(v)
	if err != nil {
		// Only plain numbers and strings: cannot happen.
		panic(err)
	}
	return body
}

// refresh reads the stored figures into base when they are older than
// statsCacheTTL. A flush in progress keeps the old base: a batch is added
// to base when the store acknowledged it, and shown as unacked until then.
func (st *Stats) refresh(ctx context.Context, now time.Time) {
	st.mu.Lock()
	fresh := st.base != nil && now.Sub(st.baseAt) < statsCacheTTL && !now.Before(st.baseAt)
	st.mu.Unlock()
	if fresh || !st.ioMu.TryLock() {
		return
	}
	defer st.ioMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, statsLoadTimeout)
	defer cancel()
	d, err := st.store.LoadStats(ctx, now)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.baseAt = now
	if err != nil {
		if !st.baseErr {
			st.logger.Warn("reading stats from the store failed; /stats shows the last figures read plus this instance's new counts", "error", err)
		}
		st.baseErr = true
		return
	}
	st.base, st.baseErr = d, false
}

// handleStats answers GET /stats, scoped to the range parameter when
// there is one (statsRange): 400 invalid_query for a value other than
// 24h, 7d, 30d or all.
func (s *Server) handleStats(c *gin.Context) {
	rng := rangeNone
	if q, ok := c.GetQuery("range"); ok {
		if rng, ok = parseStatsRange(q); !ok {
			writeError(c.Writer, http.StatusBadRequest, "invalid_query", "range: must be one of 24h, 7d, 30d, all")
			return
		}
	}
	c.Header("Cache-Control", "no-store")
	c.Header("Vary", "Accept-Encoding")
	if acceptsGzip(c.GetHeader("Accept-Encoding")) {
		_, gz := s.stats.view(c.Request.Context(), rng, true)
		c.Header("Content-Encoding", "gzip")
		c.Data(http.StatusOK, "application/json; charset=utf-8", gz)
		return
	}
	body, _ := s.stats.view(c.Request.Context(), rng, false)
	c.Data(http.StatusOK, "application/json; charset=utf-8", body)
}
