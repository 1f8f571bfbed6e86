package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"math"
	"math/bits"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
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
//   - flush hands pending to the store (AddStats), which adds it to what
//     every instance wrote: bbolt, or Redis hashes (HINCRBY) shared by the
//     fleet. A failed flush keeps the delta for the next try.
//
// /stats shows what the store holds (read at most once per statsCacheTTL)
// plus this instance's deltas not yet written. Memory stays constant: 2
// hour slots per prefix, 24 hourly and 30 daily buckets in the view.

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
	// not write (the store was down at shutdown); the next start writes
	// them.
	statsSpillFile = "stats-unflushed.json"
)

// statsStore is implemented by stores that keep stats: boltStore and
// redisStore. Implementations are safe for concurrent use.
type statsStore interface {
	// AddStats adds d to the stored figures, atomically: all or nothing.
	// Counters add; Last keeps the larger value.
	AddStats(ctx context.Context, d *statsData) error
	// LoadStats returns the stored all-time figures, the hourly buckets of
	// the windowHours hours up to now's and the daily buckets of the
	// windowDays days up to now's (UTC). The caller owns the result.
	LoadStats(ctx context.Context, now time.Time) (*statsData, error)
}

// statsData is a set of stats counters, stored or to be added. Fields are
// named "<prefix>|<name>" (prefixes never hold '|'); see the field*
// constants. Hours and Days are keyed by Unix hour and Unix day (UTC).
type statsData struct {
	Total map[string]int64           `json:"total"`
	Hours map[int64]map[string]int64 `json:"hours"`
	Days  map[int64]map[string]int64 `json:"days"`
	Last  map[string]int64           `json:"last"` // prefix → Unix time of the last request; the larger wins
}

// Field names after "<prefix>|".
const (
	fieldCount        = "count"  // Total, Hours, Days
	fieldErrors       = "errors" // Total, Hours, Days
	fieldLatencySum   = "lat_us" // Hours: sum of durations in µs
	fieldLatency      = "lat|"   // Hours: "lat|<bucket>" histogram of durations
	fieldTTFB         = "ttfb|"  // Hours: "ttfb|<bucket>" histogram of times to first byte
	fieldClientClosed = "client_closed"
	fieldBytesIn      = "bytes_in"
	fieldBytesOut     = "bytes_out"
	fieldUnknown      = "tok_unknown" // 2xx responses that carried no usage
	fieldModel        = "m|"          // "m|<model>|<kind>" with kind count or a token kind
)

// Token kinds, in tokenCounters order: the Total fields "tok_<kind>", the
// model fields "m|<model>|<kind>" and the kind label of
// apiproxy_tokens_total.
var tokenKinds = [...]string{"prompt", "completion", "total", "cache_read", "cache_write"}

// Status classes, the Total fields "s1xx".."s5xx".
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func newStatsData() *statsData {
	return &statsData{
		Total: map[string]int64{},
		Hours: map[int64]map[string]int64{},
		Days:  map[int64]map[string]int64{},
		Last:  map[string]int64{},
	}
}

func (d *statsData) empty() bool {
	return len(d.Total) == 0 && len(d.Hours) == 0 && len(d.Days) == 0 && len(d.Last) == 0
}

// bucket returns m[k], created if missing.
func bucket(m map[int64]map[string]int64, k int64) map[string]int64 {
	b := m[k]
	if b == nil {
		b = map[string]int64{}
		m[k] = b
	}
	return b
}

// add adds o to d. o is not modified nor retained.
func (d *statsData) add(o *statsData) {
	if o == nil {
		return
	}
	addFields(d.Total, o.Total)
	for h, f := range o.Hours {
		addFields(bucket(d.Hours, h), f)
	}
	for day, f := range o.Days {
		addFields(bucket(d.Days, day), f)
	}
	for p, t := range o.Last {
		d.Last[p] = max(d.Last[p], t)
	}
}

func addFields(dst, src map[string]int64) {
	for k, v := range src {
		if v != 0 {
			dst[k] += v
		}
	}
}

// prune drops hourly and daily buckets that stores no longer keep, so a
// long store outage cannot grow pending without bound.
func (d *statsData) prune(now time.Time) {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := range d.Hours {
		if k <= h-keepHours {
			delete(d.Hours, k)
		}
	}
	for k := range d.Days {
		if k <= day-keepDays {
			delete(d.Days, k)
		}
	}
}

// window returns a copy of d with only the buckets LoadStats returns for
// now.
func (d *statsData) window(now time.Time) *statsData {
	out := newStatsData()
	addFields(out.Total, d.Total)
	for p, t := range d.Last {
		out.Last[p] = t
	}
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := h - windowHours + 1; k <= h; k++ {
		if f := d.Hours[k]; len(f) > 0 {
			addFields(bucket(out.Hours, k), f)
		}
	}
	for k := day - windowDays + 1; k <= day; k++ {
		if f := d.Days[k]; len(f) > 0 {
			addFields(bucket(out.Days, k), f)
		}
	}
	return out
}

// memStatsStore keeps stats in memory, for stores that keep none. Safe for
// concurrent use.
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

// tokenCounters counts tokens by kind, in tokenKinds order, but for the
// total: it is almost always prompt + completion, so only what a response
// reported beyond that is counted, and one atomic add is saved per
// request. Read it with load.
type tokenCounters [len(tokenKinds)]atomic.Int64

func (t *tokenCounters) add(u *tokenUsage) {
	for i, v := range [len(tokenKinds)]int64{u.Prompt, u.Completion, u.Total - u.Prompt - u.Completion, u.CacheRead, u.CacheWrite} {
		if v != 0 {
			t[i].Add(v)
		}
	}
}

// load returns the counts by kind, the total included.
func (t *tokenCounters) load() [len(tokenKinds)]int64 {
	var v [len(tokenKinds)]int64
	for i := range t {
		v[i] = t[i].Load()
	}
	v[2] += v[0] + v[1]
	return v
}

// modelStats counts the responses of one model under one prefix.
type modelStats struct {
	name   string // sanitised; "other" collects models past maxModels
	count  atomic.Int64
	tokens tokenCounters

	fields  [1 + len(tokenKinds)]string // Total field names: count, then token kinds
	drained [1 + len(tokenKinds)]int64  // values already drained; Stats.mu
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

	models    atomic.Pointer[map[string]*modelStats] // by raw name as received; copy on write
	modelList atomic.Pointer[[]*modelStats]          // each model once
	modelsMu  sync.Mutex                             // serialises adding a model
	byName    map[string]*modelStats                 // by sanitised name; modelsMu

	// Owned by drain (Stats.mu).
	f       prefixFields
	drained struct {
		codes             [statusSlots]int64
		bytesIn, bytesOut int64
		noModel           [len(tokenKinds)]int64
		unknown           int64
	}
	// Process-lifetime histograms for /metrics.
	procLatency, procTTFB       [histBuckets]int64
	procLatencySum, procTTFBSum int64 // µs
}

// prefixFields are the statsData field names of one prefix, built once.
type prefixFields struct {
	count, errors, latSum, clientClosed, bytesIn, bytesOut, unknown string
	classes                                                         [len(statusClasses)]string
	tokens                                                          [len(tokenKinds)]string
	latency, ttfb                                                   [histBuckets]string
}

func newPrefixStats(prefix string) *prefixStats {
	ps := &prefixStats{prefix: prefix, byName: map[string]*modelStats{}}
	ps.models.Store(&map[string]*modelStats{})
	ps.modelList.Store(&[]*modelStats{})
	p := prefix + "|"
	f := &ps.f
	f.count, f.errors, f.latSum = p+fieldCount, p+fieldErrors, p+fieldLatencySum
	f.clientClosed, f.bytesIn, f.bytesOut, f.unknown = p+fieldClientClosed, p+fieldBytesIn, p+fieldBytesOut, p+fieldUnknown
	for i, c := range statusClasses {
		f.classes[i] = p + "s" + c
	}
	for i, k := range tokenKinds {
		f.tokens[i] = p + "tok_" + k
	}
	for i := range histBuckets {
		f.latency[i] = p + fieldLatency + strconv.Itoa(i)
		f.ttfb[i] = p + fieldTTFB + strconv.Itoa(i)
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

	prefixes atomic.Pointer[map[string]*prefixStats] // copy on write
	addMu    sync.Mutex                              // serialises adding a prefix

	// mu guards the aggregates below and the drained parts of
	// prefixStats. Never taken by record.
	mu       sync.Mutex
	pending  *statsData // drained, not yet handed to the store
	inflight *statsData // being written by flush; nil otherwise
	base     *statsData // last LoadStats; flushes made since are added to it
	baseAt   time.Time
	baseErr  bool       // the last load failed (logged once per outage)
	perfAcc  perfSample // drained since the last performance sample
	unspill  bool       // remove the spill file after the next successful flush

	// ioMu serialises store reads and writes, so that base never misses
	// nor double counts a flush.
	ioMu sync.Mutex

	viewMu  sync.Mutex // one /stats answer computed at a time
	cache   []byte
	cacheAt time.Time
	cacheGz []byte // cache gzip-compressed, made on demand; nil until then

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
	store   Store
	logger  *slog.Logger
	now     func() time.Time
	active  func() int64
	routes  *atomic.Pointer[routeTable]
	dataDir string // for the spill file; "" keeps none
}

// newStats builds the Stats of a server. If the store keeps no stats they
// are kept in memory. Deltas a previous process could not flush (the spill
// file) are taken into pending.
func newStats(c statsConfig) *Stats {
	if c.now == nil {
		c.now = time.Now
	}
	st := &Stats{
		enabled: c.enabled,
		logger:  c.logger,
		now:     c.now,
		active:  c.active,
		routes:  c.routes,
		pending: newStatsData(),
		memSamples: []metrics.Sample{
			{Name: "/memory/classes/total:bytes"},
			{Name: "/memory/classes/heap/released:bytes"},
		},
	}
	st.started = st.now()
	st.lastTick = st.started
	st.prefixes.Store(&map[string]*prefixStats{})
	if ss, ok := c.store.(statsStore); ok {
		st.store = ss
	} else {
		st.store = &memStatsStore{}
	}
	st.updatePerf(st.started, perfSample{})
	if c.enabled && c.dataDir != "" {
		st.spill = filepath.Join(c.dataDir, statsSpillFile)
		st.loadSpill()
	}
	return st
}

// record counts one finished request. It is the proxy's observer: called
// once per request on the request's goroutine, lock-free and without
// allocating (but the first time a prefix or a model is seen).
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
	code := rec.Status
	switch {
	case clientClosed(rec):
		code = 0
	case code < 100 || code > 599:
		code = statusOther
		fallthrough
	default:
		if rec.Status >= 400 || rec.ProxyErr != "" {
			sl.errors.Add(1)
		}
	}
	ps.codes[code].Add(1)
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
			m.tokens.add(u)
		}
	} else if u.Known {
		ps.noModel.add(u)
	}
}

func (st *Stats) addPrefix(prefix string) *prefixStats {
	st.addMu.Lock()
	defer st.addMu.Unlock()
	old := *st.prefixes.Load()
	if ps := old[prefix]; ps != nil {
		return ps
	}
	ps := newPrefixStats(prefix)
	next := maps.Clone(old)
	next[prefix] = ps
	st.prefixes.Store(&next)
	return ps
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
}

func (st *Stats) drainPrefix(ps *prefixStats, hour, nowUnix int64) {
	d, f := st.pending, &ps.f
	var requests int64
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
		addNonZero(d.Total, f.count, count)
		addNonZero(d.Total, f.errors, errs)
		for i := range histBuckets {
			addNonZero(hf, f.latency[i], lat[i])
			addNonZero(hf, f.ttfb[i], ttfb[i])
			ps.procLatency[i] += lat[i]
			ps.procTTFB[i] += ttfb[i]
		}
		ps.procLatencySum += latSum
		ps.procTTFBSum += ttfbSum
		st.perfAcc.count += count
		st.perfAcc.errors += errs
		st.perfAcc.latSum += latSum
	}
	if requests > 0 {
		d.Last[ps.prefix] = max(d.Last[ps.prefix], nowUnix)
	}

	dr := &ps.drained
	for code := range statusSlots {
		v := ps.codes[code].Load()
		delta := v - dr.codes[code]
		if delta == 0 {
			continue
		}
		dr.codes[code] = v
		switch {
		case code == 0:
			addNonZero(d.Total, f.clientClosed, delta)
		case code < statusOther:
			addNonZero(d.Total, f.classes[code/100-1], delta)
		}
	}
	dr.bytesIn = drainCounter(d.Total, f.bytesIn, &ps.bytesIn, dr.bytesIn)
	dr.bytesOut = drainCounter(d.Total, f.bytesOut, &ps.bytesOut, dr.bytesOut)
	dr.unknown = drainCounter(d.Total, f.unknown, &ps.unknown, dr.unknown)
	var tokens [len(tokenKinds)]int64
	for i, v := range ps.noModel.load() {
		tokens[i] += v - dr.noModel[i]
		dr.noModel[i] = v
	}
	for _, m := range *ps.modelList.Load() {
		m.drained[0] = drainCounter(d.Total, m.fields[0], &m.count, m.drained[0])
		for i, v := range m.tokens.load() {
			tokens[i] += v - m.drained[1+i]
			addNonZero(d.Total, m.fields[1+i], v-m.drained[1+i])
			m.drained[1+i] = v
		}
	}
	for i := range tokenKinds {
		addNonZero(d.Total, f.tokens[i], tokens[i])
	}
}

// drainCounter adds to field what the cumulative counter c gained since
// it read drained, and returns its value now.
func drainCounter(dst map[string]int64, field string, c *atomic.Int64, drained int64) int64 {
	v := c.Load()
	addNonZero(dst, field, v-drained)
	return v
}

func addNonZero(m map[string]int64, k string, v int64) {
	if v != 0 {
		m[k] += v
	}
}

// run is the stats loop: every statsInterval it drains, refreshes the
// performance figures and flushes to the store, until ctx is done. Server
// starts it; close makes the last flush after it returned.
func (st *Stats) run(ctx context.Context) {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st.tick(ctx)
		}
	}
}

// tick is one turn of the loop at st.now().
func (st *Stats) tick(ctx context.Context) {
	now := st.now()
	st.mu.Lock()
	st.drainLocked(now)
	s := st.perfAcc
	st.perfAcc = perfSample{}
	st.mu.Unlock()
	st.updatePerf(now, s)
	if !st.enabled || now.Before(st.nextFlush) {
		return
	}
	st.mu.Lock()
	noBase := st.base == nil
	st.mu.Unlock()
	if noBase {
		// Read the stored figures once early, so that /stats has them
		// even if the store goes down before anyone asked.
		st.refresh(ctx, now)
	}
	fctx, cancel := context.WithTimeout(ctx, statsFlushTimeout)
	err := st.flush(fctx)
	cancel()
	switch {
	case err != nil && ctx.Err() == nil:
		st.backoff = min(max(2*st.backoff, statsInterval), maxFlushBackoff)
		st.nextFlush = now.Add(st.backoff)
		if !st.flushFailed {
			st.logger.Warn("writing stats to the store failed; keeping them in memory and retrying", "error", err)
		}
		st.flushFailed = true
	case err == nil:
		if st.flushFailed {
			st.logger.Info("stats written to the store again")
		}
		st.flushFailed, st.backoff = false, 0
	}
}

// flush hands pending to the store. On failure it stays pending, to be
// retried.
func (st *Stats) flush(ctx context.Context) error {
	st.ioMu.Lock()
	defer st.ioMu.Unlock()
	now := st.now()
	st.mu.Lock()
	st.drainLocked(now)
	d := st.pending
	if d.empty() {
		st.mu.Unlock()
		return nil
	}
	st.pending, st.inflight = newStatsData(), d
	st.mu.Unlock()

	err := st.store.AddStats(ctx, d)

	st.mu.Lock()
	defer st.mu.Unlock()
	st.inflight = nil
	if err != nil {
		d.add(st.pending)
		d.prune(now)
		st.pending = d
		return err
	}
	if st.base != nil {
		st.base.add(d)
		st.base.prune(now)
	}
	if st.unspill {
		st.unspill = false
		if err := os.Remove(st.spill); err != nil && !errors.Is(err, os.ErrNotExist) {
			st.logger.Warn("removing the stats spill file failed; its counts may be added again at the next start", "path", st.spill, "error", err)
		}
	}
	return nil
}

// close makes the final flush, after the loop stopped and the HTTP server
// drained. If the store cannot take it, the deltas go to the spill file,
// which the next start picks up.
func (st *Stats) close() {
	if !st.enabled {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), statsFlushTimeout)
	defer cancel()
	err := st.flush(ctx)
	if err == nil {
		return
	}
	st.mu.Lock()
	d := st.pending
	st.mu.Unlock()
	if st.spill == "" {
		st.logger.Error("final stats flush failed; these counts are lost", "error", err)
		return
	}
	b, merr := json.Marshal(d)
	if merr == nil {
		merr = writeFileAtomic(st.spill, b)
	}
	if merr != nil {
		st.logger.Error("final stats flush failed and the spill file could not be written; these counts are lost", "error", err, "spill_error", merr)
		return
	}
	st.logger.Warn("final stats flush failed; counts saved for the next start", "path", st.spill, "error", err)
}

// loadSpill takes the deltas a previous process could not write into
// pending. The file is removed once they are flushed.
func (st *Stats) loadSpill() {
	b, err := os.ReadFile(st.spill)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	d := newStatsData()
	if err == nil {
		err = json.Unmarshal(b, d)
	}
	if err != nil {
		st.logger.Warn("ignoring unreadable stats spill file", "path", st.spill, "error", err)
		return
	}
	st.pending.add(d)
	st.pending.prune(st.now())
	st.unspill = true
	st.logger.Info("stats of the previous run that were not flushed will be written now", "path", st.spill)
}

// perfFigures are the process figures of /stats, computed by the loop.
type perfFigures struct {
	RequestsPerSec    float64 `json:"requests_per_sec"`
	AvgResponseTimeMS float64 `json:"avg_response_time_ms"`
	ErrorRate         float64 `json:"error_rate"` // percent
	MemoryUsageMB     float64 `json:"memory_usage_mb"`
	GoroutineCount    int     `json:"goroutine_count"`
	ActiveRequests    int64   `json:"active_requests"`
	UptimeSeconds     int64   `json:"uptime_seconds"`
}

// updatePerf adds sample s (drained from the last tick to now) to the
// ring and publishes new figures. Only the loop calls it.
func (st *Stats) updatePerf(now time.Time, s perfSample) {
	s.from = st.lastTick
	st.lastTick = now
	st.ring[st.ringN%perfWindow] = s
	st.ringN++
	var sum perfSample
	from := now
	for i := range min(st.ringN, perfWindow) {
		r := &st.ring[i]
		sum.count += r.count
		sum.errors += r.errors
		sum.latSum += r.latSum
		if r.from.Before(from) {
			from = r.from
		}
	}
	p := &perfFigures{GoroutineCount: runtime.NumGoroutine()}
	if secs := now.Sub(from).Seconds(); secs > 0 {
		p.RequestsPerSec = round2(float64(sum.count) / secs)
	}
	if sum.count > 0 {
		p.AvgResponseTimeMS = round2(float64(sum.latSum) / float64(sum.count) / 1e3)
		p.ErrorRate = round2(100 * float64(sum.errors) / float64(sum.count))
	}
	metrics.Read(st.memSamples)
	if st.memSamples[0].Value.Kind() == metrics.KindUint64 && st.memSamples[1].Value.Kind() == metrics.KindUint64 {
		// What the runtime holds from the OS: roughly the resident set.
		held := st.memSamples[0].Value.Uint64() - st.memSamples[1].Value.Uint64()
		p.MemoryUsageMB = round2(float64(held) / (1 << 20))
	}
	st.perf.Store(p)
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }

// statsView is the JSON of GET /stats (SPEC §4). The field names are a
// contract with the dashboard and users' scripts.
type statsView struct {
	StatsEnabled bool                     `json:"stats_enabled"`
	Total        int64                    `json:"total"`
	Errors       int64                    `json:"errors"`
	ClientClosed int64                    `json:"client_closed"`
	Last24h      int64                    `json:"last_24h"`
	Last7d       int64                    `json:"last_7d"`
	Last30d      int64                    `json:"last_30d"`
	Tokens       tokenView                `json:"tokens"`
	Endpoints    map[string]*endpointView `json:"endpoints"`
	Series       seriesView               `json:"series"`
	Performance  perfFigures              `json:"performance"`
	GeneratedAt  int64                    `json:"generated_at"`
}

type tokenView struct {
	Prompt           int64 `json:"prompt"`
	Completion       int64 `json:"completion"`
	Total            int64 `json:"total"`
	CacheRead        int64 `json:"cache_read"`
	CacheWrite       int64 `json:"cache_write"`
	UnknownResponses int64 `json:"unknown_responses"`
}

func (t *tokenView) add(o *tokenView) {
	t.Prompt += o.Prompt
	t.Completion += o.Completion
	t.Total += o.Total
	t.CacheRead += o.CacheRead
	t.CacheWrite += o.CacheWrite
	t.UnknownResponses += o.UnknownResponses
}

// addKind adds v to the token kind k (an index into tokenKinds).
func (t *tokenView) addKind(k int, v int64) {
	switch k {
	case 0:
		t.Prompt += v
	case 1:
		t.Completion += v
	case 2:
		t.Total += v
	case 3:
		t.CacheRead += v
	case 4:
		t.CacheWrite += v
	}
}

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
	BytesIn      int64                 `json:"bytes_in"`
	BytesOut     int64                 `json:"bytes_out"`
	LatencyMS    latencyView           `json:"latency_ms"`
	TTFBMS       ttfbView              `json:"ttfb_ms"`
	Tokens       tokenView             `json:"tokens"`
	Models       map[string]*modelView `json:"models"`

	// Last 24 hours, for the latency figures.
	latSum        int64
	latency, ttfb [histBuckets]int64
}

type statusView struct {
	S1xx int64 `json:"1xx"`
	S2xx int64 `json:"2xx"`
	S3xx int64 `json:"3xx"`
	S4xx int64 `json:"4xx"`
	S5xx int64 `json:"5xx"`
}

type latencyView struct {
	Avg float64 `json:"avg"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

type ttfbView struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

type modelView struct {
	Count      int64 `json:"count"`
	Prompt     int64 `json:"prompt"`
	Completion int64 `json:"completion"`
	Total      int64 `json:"total"`
	CacheRead  int64 `json:"cache_read"`
	CacheWrite int64 `json:"cache_write"`
}

type seriesView struct {
	Hourly []seriesPoint `json:"hourly"`
	Daily  []seriesPoint `json:"daily"`
}

type seriesPoint struct {
	T      int64 `json:"t"` // Unix time the hour or (UTC) day starts
	Count  int64 `json:"count"`
	Errors int64 `json:"errors"`
}

// view computes /stats at now from the stored figures, the flush in
// progress and pending. st.mu must be held.
func (st *Stats) viewLocked(now time.Time) *statsView {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	v := &statsView{StatsEnabled: st.enabled, Endpoints: map[string]*endpointView{}, GeneratedAt: now.Unix()}
	v.Series.Hourly = make([]seriesPoint, windowHours)
	v.Series.Daily = make([]seriesPoint, windowDays)
	for i := range v.Series.Hourly {
		v.Series.Hourly[i].T = (h - windowHours + 1 + int64(i)) * hourSeconds
	}
	for i := range v.Series.Daily {
		v.Series.Daily[i].T = (day - windowDays + 1 + int64(i)) * daySeconds
	}
	all := map[string]*endpointView{} // every prefix with stats, deleted ones too
	get := func(prefix string) *endpointView {
		e := all[prefix]
		if e == nil {
			e = &endpointView{Models: map[string]*modelView{}}
			all[prefix] = e
		}
		return e
	}
	for _, d := range []*statsData{st.base, st.inflight, st.pending} {
		if d == nil {
			continue
		}
		for f, n := range d.Total {
			prefix, name, ok := strings.Cut(f, "|")
			if ok {
				get(prefix).addTotal(name, n)
			}
		}
		for p, t := range d.Last {
			e := get(p)
			e.LastRequest = max(e.LastRequest, t)
		}
		for i := range windowHours {
			for f, n := range d.Hours[h-windowHours+1+int64(i)] {
				prefix, name, ok := strings.Cut(f, "|")
				if !ok {
					continue
				}
				e := get(prefix)
				e.addHour(name, n)
				switch name {
				case fieldCount:
					v.Series.Hourly[i].Count += n
				case fieldErrors:
					v.Series.Hourly[i].Errors += n
				}
			}
		}
		for i := range windowDays {
			age := windowDays - 1 - i
			for f, n := range d.Days[day-int64(age)] {
				prefix, name, ok := strings.Cut(f, "|")
				if !ok {
					continue
				}
				switch name {
				case fieldCount:
					v.Series.Daily[i].Count += n
					e := get(prefix)
					e.Last30d += n
					if age < 7 {
						e.Last7d += n
					}
				case fieldErrors:
					v.Series.Daily[i].Errors += n
				}
			}
		}
	}
	for _, e := range all {
		e.finish()
		v.Total += e.Count
		v.Errors += e.ErrorCount
		v.ClientClosed += e.ClientClosed
		v.Last24h += e.Last24h
		v.Last7d += e.Last7d
		v.Last30d += e.Last30d
		v.Tokens.add(&e.Tokens)
	}
	// Endpoints are the current mappings; a deleted prefix's requests stay
	// in the totals above but it has no row.
	for _, r := range st.routes.Load().sorted {
		e := get(r.prefix)
		e.Target = r.target
		v.Endpoints[r.prefix] = e
	}
	if p := st.perf.Load(); p != nil {
		v.Performance = *p
	}
	if st.active != nil {
		v.Performance.ActiveRequests = st.active()
	}
	v.Performance.UptimeSeconds = int64(now.Sub(st.started).Seconds())
	return v
}

func (e *endpointView) addTotal(name string, n int64) {
	switch name {
	case fieldCount:
		e.Count += n
	case fieldErrors:
		e.ErrorCount += n
	case fieldClientClosed:
		e.ClientClosed += n
	case fieldBytesIn:
		e.BytesIn += n
	case fieldBytesOut:
		e.BytesOut += n
	case fieldUnknown:
		e.Tokens.UnknownResponses += n
	case "s1xx":
		e.Status.S1xx += n
	case "s2xx":
		e.Status.S2xx += n
	case "s3xx":
		e.Status.S3xx += n
	case "s4xx":
		e.Status.S4xx += n
	case "s5xx":
		e.Status.S5xx += n
	default:
		if k, ok := strings.CutPrefix(name, "tok_"); ok {
			e.Tokens.addKind(tokenKindIndex(k), n)
		} else if rest, ok := strings.CutPrefix(name, fieldModel); ok {
			i := strings.LastIndexByte(rest, '|')
			if i <= 0 {
				return
			}
			m := e.Models[rest[:i]]
			if m == nil {
				m = &modelView{}
				e.Models[rest[:i]] = m
			}
			m.add(rest[i+1:], n)
		}
	}
}

func tokenKindIndex(k string) int {
	for i, name := range tokenKinds {
		if name == k {
			return i
		}
	}
	return -1
}

func (m *modelView) add(kind string, n int64) {
	switch kind {
	case fieldCount:
		m.Count += n
	case "prompt":
		m.Prompt += n
	case "completion":
		m.Completion += n
	case "total":
		m.Total += n
	case "cache_read":
		m.CacheRead += n
	case "cache_write":
		m.CacheWrite += n
	}
}

func (e *endpointView) addHour(name string, n int64) {
	switch name {
	case fieldCount:
		e.Last24h += n
	case fieldLatencySum:
		e.latSum += n
	default:
		if i, ok := histField(name, fieldLatency); ok {
			e.latency[i] += n
		} else if i, ok := histField(name, fieldTTFB); ok {
			e.ttfb[i] += n
		}
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

// finish computes the latency figures and folds models past maxModels
// (possible when instances saw different ones) into "other".
func (e *endpointView) finish() {
	if e.Last24h > 0 { // the requests whose latencies latSum adds up
		e.LatencyMS.Avg = round2(float64(e.latSum) / float64(e.Last24h) / 1e3)
	}
	e.LatencyMS.P50, e.LatencyMS.P95, e.LatencyMS.P99 = percentilesMS(&e.latency)
	e.TTFBMS.P50, e.TTFBMS.P95, e.TTFBMS.P99 = percentilesMS(&e.ttfb)
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
		other.Prompt += m.Prompt
		other.Completion += m.Completion
		other.Total += m.Total
		other.CacheRead += m.CacheRead
		other.CacheWrite += m.CacheWrite
		delete(e.Models, name)
	}
	e.Models["other"] = other
}

// json returns the /stats body, computed at most once per statsCacheTTL.
func (st *Stats) json(ctx context.Context) []byte {
	body, _ := st.view(ctx, false)
	return body
}

// view returns the /stats body, and also its gzip-compressed form when
// wantGzip (compressed once per cached body: with 200 mappings the body is
// about 120 KB, which a dashboard would fetch every few seconds).
func (st *Stats) view(ctx context.Context, wantGzip bool) (body, gz []byte) {
	st.viewMu.Lock()
	defer st.viewMu.Unlock()
	now := st.now()
	if st.cache == nil || now.Sub(st.cacheAt) >= statsCacheTTL || now.Before(st.cacheAt) {
		st.cache, st.cacheGz = st.render(ctx, now), nil
		st.cacheAt = now
	}
	if wantGzip && st.cacheGz == nil {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		zw.Write(st.cache)
		zw.Close()
		st.cacheGz = buf.Bytes()
	}
	if wantGzip {
		return st.cache, st.cacheGz
	}
	return st.cache, nil
}

// render builds the /stats body from the store and this instance's
// unflushed counts. viewMu is held.
func (st *Stats) render(ctx context.Context, now time.Time) []byte {
	if st.enabled {
		st.refresh(ctx, now)
	}
	st.mu.Lock()
	st.drainLocked(now)
	v := st.viewLocked(now)
	st.mu.Unlock()
	body, err := json.Marshal(v)
	if err != nil {
		// Only plain numbers and strings: cannot happen.
		panic(err)
	}
	return body
}

// refresh reads the stored figures into base when they are older than
// statsCacheTTL. A flush in progress keeps the old base: it is added to
// base when done, and shown as inflight until then.
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

// handleStats answers GET /stats.
func (s *Server) handleStats(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	c.Header("Vary", "Accept-Encoding")
	if acceptsGzip(c.GetHeader("Accept-Encoding")) {
		_, gz := s.stats.view(c.Request.Context(), true)
		c.Header("Content-Encoding", "gzip")
		c.Data(http.StatusOK, "application/json; charset=utf-8", gz)
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", s.stats.json(c.Request.Context()))
}
