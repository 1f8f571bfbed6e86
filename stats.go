package main

import (
	"context"
	"crypto/rand"
	"log/slog"
	"maps"
	"math"
	"math/bits"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Stats figures (SPEC §4) are kept in three layers:
//
//   - record, called once per finished request, adds to preallocated atomic
//     counters of the request's prefix: no lock, no allocation, O(1).
//     Counters of time windows sit in two hour slots per prefix (the hour
//     the request ended in, by parity); the rest are cumulative.
//   - drain, run by the stats loop every second (and before /stats and
//     /metrics answer), moves what the counters gained into pending: a
//     statsData of per-hour, per-day and all-time deltas.
//   - flush hands pending to the store (AddStats) as a batch with an id,
//     which the store adds to what every instance wrote: bbolt, or Redis
//     hashes (HINCRBY) shared by the fleet. A batch whose write failed may
//     still have been applied (Redis applied it, its reply was lost), so
//     it is kept as it is and given again with the same id, which the
//     store applies at most once, before newer counts go as a new batch.
//
// The stored form, statsData, is in store.go. /stats (statsview.go) shows
// what the store holds (read at most once per statsCacheTTL) plus this
// instance's deltas not yet written. Memory stays constant: 2 hour slots
// per prefix, 24 hourly and 30 daily buckets in the view.

const (
	// histBuckets is the size of a latency histogram: 4 buckets per
	// power of two of microseconds (at most 25 % wide), from 1 µs to 2^33
	// µs (2.4 h); see histIndex.
	histBuckets = 128
	// statusSlots counts requests by status: index 0 is a client that left
	// first (499), 100-599 the status, statusOther anything else.
	statusSlots = 601
	statusOther = 600

	hourSeconds = 3600
	daySeconds  = 86400
	windowHours = 24 // last_24h and series.hourly
	windowDays  = 30 // last_30d and series.daily
	// keepHours and keepDays are how long stores keep time buckets.
	keepHours = 48
	keepDays  = 35

	// maxModels bounds the model names kept per prefix; responses of
	// further models count under "other".
	maxModels = 50

	statsInterval     = time.Second // drain, performance figures, flush
	statsCacheTTL     = time.Second // /stats answer and store reads
	statsFlushTimeout = 5 * time.Second
	statsLoadTimeout  = 2 * time.Second
	maxFlushBackoff   = 30 * time.Second
	// perfWindow is how many statsInterval samples the performance
	// figures (requests per second, average response time, error rate)
	// cover.
	perfWindow = 60

	// statsSpillFile holds, under DATA_DIR, the deltas a final flush could
	// not write (the store was down at shutdown): a JSON array of
	// statsData, the unacknowledged batches with their ids and then the
	// counts never handed to the store, without one. The next start writes
	// them. A file of one statsData object is read too (the older form).
	statsSpillFile = "stats-unflushed.json"
)

// tokenKind indexes a count of tokens by kind (tokenCounts,
// tokenCounters); tokenKinds names each kind.
type tokenKind int

const (
	tokPrompt tokenKind = iota
	tokCompletion
	tokTotal
	tokCacheRead
	tokCacheWrite
	numTokenKinds
)

// tokenKinds names the token kinds, in tokenKind order. It is the one
// spelling of the kinds: the JSON fields of token figures in /stats (in
// this order), the stored fields "tok_<kind>" and "m|<model>|<kind>", and
// the kind label of apiproxy_tokens_total. Stored data, dashboards and
// alerts depend on these names: add kinds, never rename one.
var tokenKinds = [...]string{"prompt", "completion", "total", "cache_read", "cache_write"}

// A name for each kind, and a kind for each name: a mismatch fails to
// compile.
var _ [numTokenKinds]string = tokenKinds

// tokenKindOf returns the kind named name; false if there is none.
func tokenKindOf(name string) (tokenKind, bool) {
	for k, n := range tokenKinds {
		if n == name {
			return tokenKind(k), true
		}
	}
	return 0, false
}

// tokenCounts is a count of tokens per kind, indexed by tokenKind.
type tokenCounts [numTokenKinds]int64

// add adds o to c.
func (c *tokenCounts) add(o *tokenCounts) {
	for k := range c {
		c[k] += o[k]
	}
}

// Status classes, the fields "s1xx".."s5xx".
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// Per-target figures (SPEC §9), in targetFigures order: the tries of a
// target, those that failed (they count in its errors) and those followed
// by a try of another target. Each is the Total field
// "t<index>|<figure>" of a prefix, index being the target's position in
// its mapping; stored data and users' scripts depend on these names.
const (
	figTries = iota
	figErrors
	figFailovers
	numTargetFigures
)

var targetFigures = [numTargetFigures]string{fieldCount, fieldErrors, "failovers"}

// targetTries counts the tries of one target of a prefix by outcome
// (tryOutcome), since the process started.
type targetTries [numTryOutcomes]atomic.Int64

// figuresOf returns the target figures (targetFigures order) of tries
// counted by outcome.
func figuresOf(byOutcome *[numTryOutcomes]int64) [numTargetFigures]int64 {
	var f [numTargetFigures]int64
	for o, n := range byOutcome {
		f[figTries] += n
		if (targetTry{Outcome: tryOutcome(o)}).failed() {
			f[figErrors] += n
		}
	}
	f[figFailovers] = byOutcome[tryRetried]
	return f
}

// histIndex returns the histogram bucket of a duration of us microseconds:
// exact below 4 µs, then 4 buckets per power of two, the last one open.
func histIndex(us int64) int {
	if us < 4 {
		return int(max(us, 0))
	}
	e := bits.Len64(uint64(us)) - 1 // 2 <= e
	if e > 32 {
		return histBuckets - 1
	}
	return (e-1)*4 + int(us>>(e-2)&3)
}

// histBounds returns the range [lo, hi) of microseconds of bucket i.
func histBounds(i int) (lo, hi float64) {
	if i < 4 {
		return float64(i), float64(i + 1)
	}
	e, m := i/4+1, i%4
	w := math.Ldexp(1, e-2)
	lo = math.Ldexp(1, e) + float64(m)*w
	return lo, lo + w
}

// histQuantile estimates the q-quantile (0 < q <= 1) of the histogram h
// holding n values, interpolating linearly inside the bucket it falls in.
// The result is in microseconds, 0 for an empty histogram.
func histQuantile(h *[histBuckets]int64, n int64, q float64) float64 {
	if n <= 0 {
		return 0
	}
	rank := max(math.Ceil(q*float64(n)), 1)
	var cum int64
	for i, c := range h {
		if c == 0 {
			continue
		}
		if float64(cum+c) >= rank {
			lo, hi := histBounds(i)
			return lo + (hi-lo)*(rank-float64(cum)-0.5)/float64(c)
		}
		cum += c
	}
	lo, _ := histBounds(histBuckets - 1)
	return lo
}

// hourSlot holds the windowed counters of one prefix for one hour.
type hourSlot struct {
	count, errors   atomic.Int64
	latSum, ttfbSum atomic.Int64 // µs
	latency, ttfb   [histBuckets]atomic.Int64
	_               [64]byte // keep the two slots' hot counters on separate cache lines
}

// tokenCounters counts tokens by kind, indexed by tokenKind, but for the
// total: it is almost always prompt + completion, so only what a response
// reported beyond that is counted, and one atomic add is saved per
// request. Read it with load.
type tokenCounters [numTokenKinds]atomic.Int64

// add counts the tokens of one response.
func (t *tokenCounters) add(c *tokenCounts) {
	v := *c
	v[tokTotal] -= v[tokPrompt] + v[tokCompletion]
	for k, n := range v {
		if n != 0 {
			t[k].Add(n)
		}
	}
}

// load returns the counts by kind, the total included.
func (t *tokenCounters) load() tokenCounts {
	var v tokenCounts
	for k := range t {
		v[k] = t[k].Load()
	}
	v[tokTotal] += v[tokPrompt] + v[tokCompletion]
	return v
}

// modelStats counts the responses of one model under one prefix.
type modelStats struct {
	name   string // sanitised; "other" collects models past maxModels
	count  atomic.Int64
	tokens tokenCounters

	fields  [1 + numTokenKinds]string // Total field names: count, then token kinds
	drained [1 + numTokenKinds]int64  // values already drained; Stats.mu
}

// prefixStats holds the counters of one prefix. record writes them
// without locks; drain reads them under Stats.mu.
type prefixStats struct {
	prefix string
	slots  [2]hourSlot // by parity of the Unix hour the request ended in

	// Cumulative since the process started.
	codes             [statusSlots]atomic.Int64
	bytesIn, bytesOut atomic.Int64
	noModel           tokenCounters // tokens of responses that named no model; the rest are per model
	unknown           atomic.Int64
	targets           [maxTargets]targetTries // by the target's index in the mapping
	// rateLimited counts the requests without a proxy key that a limit
	// refused, by limit (limitNames); a keyed request's refusal is its
	// key's (keyStats.limits), so that /metrics labels each once.
	rateLimited [numLimits]atomic.Int64

	models    atomic.Pointer[map[string]*modelStats] // by raw name as received; copy on write
	modelList atomic.Pointer[[]*modelStats]          // each model once
	modelsMu  sync.Mutex                             // serialises adding a model
	byName    map[string]*modelStats                 // by sanitised name; modelsMu

	// Owned by drain (Stats.mu).
	f       prefixFields
	drained struct {
		codes             [statusSlots]int64
		bytesIn, bytesOut int64
		noModel           tokenCounts
		unknown           int64
		targets           [maxTargets][numTryOutcomes]int64
		rateLimited       int64 // over all limits
	}
	// Process-lifetime histograms for /metrics.
	procLatency, procTTFB       [histBuckets]int64
	procLatencySum, procTTFBSum int64 // µs
}

// prefixFields are the statsData field names of one prefix, built once.
type prefixFields struct {
	count, errors, latSum, clientClosed, bytesIn, bytesOut, unknown, rateLimited, s429 string
	classes                                                                            [len(statusClasses)]string
	tokens                                                                             [numTokenKinds]string
	latency, ttfb                                                                      [histBuckets]string
	targets                                                                            [maxTargets][numTargetFigures]string
}

func newPrefixStats(prefix string) *prefixStats {
	ps := &prefixStats{prefix: prefix, byName: map[string]*modelStats{}}
	ps.models.Store(&map[string]*modelStats{})
	ps.modelList.Store(&[]*modelStats{})
	p := prefix + "|"
	f := &ps.f
	f.count, f.errors, f.latSum = p+fieldCount, p+fieldErrors, p+fieldLatencySum
	f.clientClosed, f.bytesIn, f.bytesOut, f.unknown = p+fieldClientClosed, p+fieldBytesIn, p+fieldBytesOut, p+fieldUnknown
	f.rateLimited, f.s429 = p+fieldRateLimited, p+fieldS429
	for i, c := range statusClasses {
		f.classes[i] = p + "s" + c
	}
	for i, k := range tokenKinds {
		f.tokens[i] = p + fieldTokens + k
	}
	for i := range histBuckets {
		f.latency[i] = p + fieldLatency + strconv.Itoa(i)
		f.ttfb[i] = p + fieldTTFB + strconv.Itoa(i)
	}
	for i := range maxTargets {
		for k, name := range targetFigures {
			f.targets[i][k] = p + fieldTarget + strconv.Itoa(i) + "|" + name
		}
	}
	return ps
}

// model returns the counters of the model named name (as the response
// spelled it), adding it on first sight.
func (ps *prefixStats) model(name []byte) *modelStats {
	if m := (*ps.models.Load())[string(name)]; m != nil {
		return m
	}
	return ps.addModel(name)
}

func (ps *prefixStats) addModel(raw []byte) *modelStats {
	ps.modelsMu.Lock()
	defer ps.modelsMu.Unlock()
	old := *ps.models.Load()
	if m := old[string(raw)]; m != nil {
		return m
	}
	name := sanitizeModel(raw)
	m := ps.byName[name]
	if m == nil {
		if len(ps.byName) >= maxModels {
			name = "other"
			m = ps.byName[name]
		}
		if m == nil {
			m = &modelStats{name: name}
			p := ps.prefix + "|" + fieldModel + name + "|"
			m.fields[0] = p + fieldCount
			for i, k := range tokenKinds {
				m.fields[1+i] = p + k
			}
			ps.byName[name] = m
			list := append(append([]*modelStats(nil), *ps.modelList.Load()...), m)
			ps.modelList.Store(&list)
		}
	}
	// Raw spellings are remembered up to a bound, so that a model past it
	// still finds its entry without the lock most of the time.
	if len(old) < 4*maxModels {
		next := maps.Clone(old)
		next[string(raw)] = m
		ps.models.Store(&next)
	}
	return m
}

// sanitizeModel makes a model name safe as a field and label value:
// printable ASCII without '|', '"' or '\', others replaced by '_'.
func sanitizeModel(raw []byte) string {
	b := make([]byte, len(raw))
	for i, c := range raw {
		if c <= ' ' || c >= 0x7f || c == '|' || c == '"' || c == '\\' {
			c = '_'
		}
		b[i] = c
	}
	return string(b)
}

// clientClosed reports whether rec is a client that left before the
// response was complete: counted apart, never as an upstream error.
func clientClosed(rec *requestRecord) bool {
	return rec.Status == 499 && (rec.ProxyErr == "client_closed" || rec.ProxyErr == "aborted")
}

// refusedBy returns the index in limitNames of the limit that refused rec
// (SPEC §11), and whether one did.
func refusedBy(rec *requestRecord) (int, bool) {
	if rec.ProxyErr != "rate_limited" {
		return 0, false
	}
	return limitIndex(rec.Limit)
}

// Stats collects per-prefix stats for /stats and /metrics. record is its
// hot path; run is its background loop; close makes the final flush.
// Safe for concurrent use.
type Stats struct {
	enabled bool
	store   statsStore
	logger  *slog.Logger
	now     func() time.Time
	started time.Time
	active  func() int64 // requests in flight now
	routes  *atomic.Pointer[routeTable]
	spill   string // path of the spill file; "" for none
	// figuresScope is whose requests /stats counts: scopeFleet or
	// scopeInstance (scopeView).
	figuresScope string
	// recentErrors reads the request log's newest errors for a ranged
	// /stats (Server.recentErrors); nil (none) when the store keeps no
	// log, or in tests. Set before the Server serves.
	recentErrors func(context.Context) *[]recentError

	prefixes atomic.Pointer[map[string]*prefixStats] // copy on write
	keys     atomic.Pointer[map[string]*keyStats]    // by proxy key id (statskeys.go); copy on write
	addMu    sync.Mutex                              // serialises adding a prefix or a key
	// proxyKeys is the live key table, for the names of keys in /stats;
	// nil for none.
	proxyKeys *atomic.Pointer[keyTable]

	// mu guards the aggregates below and the drained parts of
	// prefixStats. Never taken by record.
	mu      sync.Mutex
	pending *statsData // drained, not yet handed to the store; no Batch
	// unacked are the batches handed to the store (the first one may be
	// being written now) whose write was not acknowledged, oldest first,
	// each with its Batch id. The store may hold them already, so they
	// are given again as they are, never merged with newer counts. flush
	// cuts a new batch only when none is left: at most one, but for those
	// read from the spill file.
	unacked []*statsData
	base    *statsData // last LoadStats; flushes made since are added to it
	baseAt  time.Time
	baseErr bool       // the last load failed (logged once per outage)
	perfAcc perfSample // drained since the last performance sample
	// fieldNames are the stored field names /stats answers parsed.
	fieldNames fieldNames
	unspill    bool // remove the spill file after the next successful flush
	// batchPrefix, random, and batchSeq make the ids of this Stats'
	// batches, unique across instances and restarts; batchSeq is owned by
	// flush (ioMu).
	batchPrefix string
	batchSeq    uint64

	// ioMu serialises store reads and writes, so that base never misses
	// nor double counts a flush.
	ioMu sync.Mutex

	viewMu  sync.Mutex // one /stats answer computed at a time
	cache   []byte
	cacheAt time.Time
	cacheGz []byte // cache gzip-compressed, made on demand; nil until then
	// ranged holds the bodies of /stats with a range, by range; the one
	// without (rangeNone) is cache.
	ranged [numRanges]cachedBody

	perf atomic.Pointer[perfFigures]
	// Owned by the loop.
	ring        [perfWindow]perfSample
	ringN       int
	lastTick    time.Time
	nextFlush   time.Time
	backoff     time.Duration
	flushFailed bool
	memSamples  []metrics.Sample
}

// statsConfig is what newStats needs. Zero now means time.Now.
type statsConfig struct {
	enabled bool
	store   statsStore // the server's Store
	logger  *slog.Logger
	now     func() time.Time
	active  func() int64
	routes  *atomic.Pointer[routeTable]
	keys    *atomic.Pointer[keyTable] // for the names of keys; nil for none
	dataDir string                    // for the spill file; "" keeps none
}

// newStats builds the Stats of a server. Deltas a previous process could
// not flush (the spill file) are taken into pending.
func newStats(c statsConfig) *Stats {
	if c.now == nil {
		c.now = time.Now
	}
	st := &Stats{
		enabled:   c.enabled,
		store:     c.store,
		logger:    c.logger,
		now:       c.now,
		active:    c.active,
		routes:    c.routes,
		proxyKeys: c.keys,
		pending:   newStatsData(),
		// Figures are this process's but on a store the fleet shares.
		figuresScope: scopeInstance,
		// 130 random bits: no two processes ever share a batch id.
		batchPrefix: rand.Text() + "-",
		memSamples: []metrics.Sample{
			{Name: "/memory/classes/total:bytes"},
			{Name: "/memory/classes/heap/released:bytes"},
		},
	}
	if f, ok := c.store.(fleetStatsStore); ok && c.enabled && f.sharedByFleet() {
		st.figuresScope = scopeFleet
	}
	st.started = st.now()
	st.lastTick = st.started
	st.prefixes.Store(&map[string]*prefixStats{})
	st.keys.Store(&map[string]*keyStats{})
	st.updatePerf(st.started, perfSample{})
	if c.enabled && c.dataDir != "" {
		st.spill = filepath.Join(c.dataDir, statsSpillFile)
		st.loadSpill()
	}
	return st
}

// record counts one finished request. It is the proxy's observer: called
// once per request on the request's goroutine, lock-free and without
// allocating (but the first time a prefix, a model, or a proxy key and
// its prefix and code are seen). A request made with a proxy key is
// counted for that key too (recordKey); one without costs nothing more.
func (st *Stats) record(rec *requestRecord) {
	ps := (*st.prefixes.Load())[rec.Prefix]
	if ps == nil {
		ps = st.addPrefix(rec.Prefix)
	}
	end := rec.Start.Add(rec.Duration).Unix()
	sl := &ps.slots[(end/hourSeconds)&1]
	sl.count.Add(1)
	us := rec.Duration.Microseconds()
	sl.latSum.Add(us)
	sl.latency[histIndex(us)].Add(1)
	if rec.TTFB > 0 {
		t := rec.TTFB.Microseconds()
		sl.ttfbSum.Add(t)
		sl.ttfb[histIndex(t)].Add(1)
	}
	code, failed := rec.Status, false
	switch {
	case clientClosed(rec):
		code = 0
	case code < 100 || code > 599:
		code = statusOther
		fallthrough
	default:
		if rec.Status >= 400 || rec.ProxyErr != "" {
			sl.errors.Add(1)
			failed = true
		}
	}
	if rec.KeyID != "" {
		st.recordKey(rec, code, failed, end)
	} else if l, ok := refusedBy(rec); ok {
		ps.rateLimited[l].Add(1)
	}
	ps.codes[code].Add(1)
	for _, t := range rec.Tries {
		if int(t.Index) < maxTargets && t.Outcome < numTryOutcomes {
			ps.targets[t.Index][t.Outcome].Add(1)
		}
	}
	if rec.BytesIn != 0 {
		ps.bytesIn.Add(rec.BytesIn)
	}
	if rec.BytesOut != 0 {
		ps.bytesOut.Add(rec.BytesOut)
	}
	u := &rec.Usage
	if !u.Known && code >= 200 && code < 300 {
		ps.unknown.Add(1)
	}
	// The prefix's token totals are the sum of its models' (and noModel),
	// summed by drain: counting them twice here would cost as much again.
	if len(u.Model) > 0 {
		m := ps.model(u.Model)
		m.count.Add(1)
		if u.Known {
			m.tokens.add(&u.Tokens)
		}
	} else if u.Known {
		ps.noModel.add(&u.Tokens)
	}
}

func (st *Stats) addPrefix(prefix string) *prefixStats {
	return addCopyOnWrite(&st.addMu, &st.prefixes, prefix, newPrefixStats)
}

// addCopyOnWrite returns m's value for k, adding newV(k) first if there is
// none: under mu, into a copy of the map that then replaces it, so that
// record reads the map without a lock (prefixes, keys).
func addCopyOnWrite[V comparable](mu *sync.Mutex, m *atomic.Pointer[map[string]V], k string, newV func(string) V) V {
	mu.Lock()
	defer mu.Unlock()
	old := *m.Load()
	var zero V
	if v := old[k]; v != zero {
		return v
	}
	v := newV(k)
	next := maps.Clone(old)
	next[k] = v
	m.Store(&next)
	return v
}

// perfSample is what one drain interval added, over all prefixes.
type perfSample struct {
	from                  time.Time // the sample covers from..the tick that took it
	count, errors, latSum int64
}

// drainLocked moves what record counted since the last drain into
// pending. st.mu must be held.
func (st *Stats) drainLocked(now time.Time) {
	nowUnix := now.Unix()
	h := nowUnix / hourSeconds
	for _, ps := range *st.prefixes.Load() {
		st.drainPrefix(ps, h, nowUnix)
	}
	for _, ks := range *st.keys.Load() {
		st.drainKey(ks, h)
	}
}

// drainPrefix moves what the counters of ps gained into pending; a
// prefix that served requests gets nowUnix as its last request.
func (st *Stats) drainPrefix(ps *prefixStats, hour, nowUnix int64) {
	if st.drainSlots(ps, hour) > 0 {
		d := st.pending
		d.Last[ps.prefix] = max(d.Last[ps.prefix], nowUnix)
	}
	st.drainCumulative(ps, hour)
}

// drainSlots empties the hour slots of ps into pending's buckets and
// totals, the process-lifetime histograms and the performance sample, and
// returns the number of requests they held.
func (st *Stats) drainSlots(ps *prefixStats, hour int64) (requests int64) {
	d, f := st.pending, &ps.f
	var lat, ttfb [histBuckets]int64
	// The slot of the current hour, then the one of the hour before; a
	// slot is drained every second, so it holds nothing older.
	for h := hour; h > hour-2; h-- {
		sl := &ps.slots[h&1]
		count, errs := sl.count.Swap(0), sl.errors.Swap(0)
		latSum, ttfbSum := sl.latSum.Swap(0), sl.ttfbSum.Swap(0)
		some := count|errs|latSum|ttfbSum != 0
		for i := range histBuckets {
			lat[i], ttfb[i] = sl.latency[i].Swap(0), sl.ttfb[i].Swap(0)
			some = some || lat[i]|ttfb[i] != 0
		}
		if !some {
			continue
		}
		requests += count
		hf, df := bucket(d.Hours, h), bucket(d.Days, h*hourSeconds/daySeconds)
		addNonZero(hf, f.count, count)
		addNonZero(hf, f.errors, errs)
		addNonZero(hf, f.latSum, latSum)
		addNonZero(df, f.count, count)
		addNonZero(df, f.errors, errs)
		addNonZero(df, f.latSum, latSum)
		addNonZero(d.Total, f.count, count)
		addNonZero(d.Total, f.errors, errs)
		// Days hold the histograms too, for the percentiles of /stats'
		// 7d, 30d and all ranges; only non-zero buckets are stored.
		for i := range histBuckets {
			addNonZero(hf, f.latency[i], lat[i])
			addNonZero(hf, f.ttfb[i], ttfb[i])
			addNonZero(df, f.latency[i], lat[i])
			addNonZero(df, f.ttfb[i], ttfb[i])
			ps.procLatency[i] += lat[i]
			ps.procTTFB[i] += ttfb[i]
		}
		ps.procLatencySum += latSum
		ps.procTTFBSum += ttfbSum
		st.perfAcc.count += count
		st.perfAcc.errors += errs
		st.perfAcc.latSum += latSum
	}
	return requests
}

// drainCumulative adds to pending what the cumulative counters of ps
// (status codes, bytes, tokens, models, target tries) gained since the
// last drain: to the totals, and but for target tries to the buckets of
// hour, the Unix hour of the drain (windowSink).
func (st *Stats) drainCumulative(ps *prefixStats, hour int64) {
	d, f, dr := st.pending, &ps.f, &ps.drained
	w := windowSink{d: d, hour: hour}
	for code := range statusSlots {
		v := ps.codes[code].Load()
		delta := v - dr.codes[code]
		if delta == 0 {
			continue
		}
		dr.codes[code] = v
		switch {
		case code == 0:
			w.add(f.clientClosed, delta)
		case code < statusOther:
			w.add(f.classes[code/100-1], delta)
			if code == 429 {
				w.add(f.s429, delta)
			}
		}
	}
	dr.bytesIn = w.drain(f.bytesIn, &ps.bytesIn, dr.bytesIn)
	dr.bytesOut = w.drain(f.bytesOut, &ps.bytesOut, dr.bytesOut)
	dr.unknown = w.drain(f.unknown, &ps.unknown, dr.unknown)
	var limited int64
	for l := range ps.rateLimited {
		limited += ps.rateLimited[l].Load()
	}
	w.add(f.rateLimited, limited-dr.rateLimited)
	dr.rateLimited = limited
	for i := range ps.targets {
		var delta [numTryOutcomes]int64
		for o := range delta {
			v := ps.targets[i][o].Load()
			delta[o] = v - dr.targets[i][o]
			dr.targets[i][o] = v
		}
		for k, n := range figuresOf(&delta) {
			addNonZero(d.Total, f.targets[i][k], n)
		}
	}
	// The prefix's tokens are those of responses without a model plus
	// those of every model.
	var tokens tokenCounts
	for k, v := range ps.noModel.load() {
		tokens[k] += v - dr.noModel[k]
		dr.noModel[k] = v
	}
	for _, m := range *ps.modelList.Load() {
		m.drained[0] = w.drain(m.fields[0], &m.count, m.drained[0])
		for k, v := range m.tokens.load() {
			tokens[k] += v - m.drained[1+k]
			w.add(m.fields[1+k], v-m.drained[1+k])
			m.drained[1+k] = v
		}
	}
	for k := range tokenKinds {
		w.add(f.tokens[k], tokens[k])
	}
}

// windowSink adds the deltas of cumulative counters to a statsData: to its
// totals and to the buckets of one Unix hour and of that hour's day. The
// counters are cumulative, not slotted by the hour a request ended in as
// count and errors are, so their deltas go to the hour of the drain that
// read them: the same hour but for a request that ended in the second
// before an hour began. Buckets are made on the first non-zero delta.
type windowSink struct {
	d      *statsData
	hour   int64
	hf, df map[string]int64
}

// add adds n to field; nothing when n is 0.
func (w *windowSink) add(field string, n int64) {
	if n == 0 {
		return
	}
	if w.hf == nil {
		w.hf, w.df = bucket(w.d.Hours, w.hour), bucket(w.d.Days, w.hour*hourSeconds/daySeconds)
	}
	w.d.Total[field] += n
	w.hf[field] += n
	w.df[field] += n
}

// drain adds to field what the cumulative counter c gained since it read
// drained, and returns its value now.
func (w *windowSink) drain(field string, c *atomic.Int64, drained int64) int64 {
	v := c.Load()
	w.add(field, v-drained)
	return v
}

func addNonZero(m map[string]int64, k string, v int64) {
	if v != 0 {
		m[k] += v
	}
}
