package main

// How a /stats answer is computed from stored figures (statsData): the
// time range it is scoped to (GET /stats?range=), the parsing of field
// names into the figures they add to, and the series points of the
// dashboard's charts. docs/stats.md describes the JSON.

import (
	"strconv"
	"strings"
)

// statsRange is the time range of a /stats answer, from its range
// parameter (SPEC §5: the dashboard's range selector).
type statsRange uint8

const (
	// rangeNone is the answer without a range, the original one: counts
	// all-time, latency and time to first byte over the last 24 hours.
	rangeNone statsRange = iota
	range24h             // the windowHours hourly buckets up to now's
	range7d              // the 7 daily (UTC) buckets up to today's
	range30d             // the windowDays daily buckets up to today's
	// rangeAll counts all-time; latency, time to first byte and
	// series.points cover the windowDays daily buckets, the most /stats
	// reads (stores keep keepDays).
	rangeAll
	numRanges
)

// rangeNames are the values of the range parameter, in statsRange order;
// rangeNone has none.
var rangeNames = [numRanges]string{"", "24h", "7d", "30d", "all"}

// parseStatsRange returns the range named s; false for "" or an unknown
// name.
func parseStatsRange(s string) (statsRange, bool) {
	for r, name := range rangeNames {
		if name != "" && name == s {
			return statsRange(r), true
		}
	}
	return rangeNone, false
}

// days returns how many daily buckets, today's included, r counts from;
// 0 when its counts come from hourly buckets or from the totals.
func (r statsRange) days() int {
	switch r {
	case range7d:
		return 7
	case range30d:
		return windowDays
	}
	return 0
}

// Scopes of /stats figures (statsView.Scope).
const (
	// scopeFleet: the figures of every instance writing to the same store.
	scopeFleet = "fleet"
	// scopeInstance: the figures of this process (and of the ones before
	// it on the same embedded store).
	scopeInstance = "instance"
)

// scopeView says whose requests the figures of a ranged /stats answer
// count: "fleet" or "instance".
type scopeView struct {
	// Figures covers everything but performance: the stored counts, which
	// every instance sharing a Redis store adds to. "instance" with the
	// embedded store or with stats disabled.
	Figures string `json:"figures"`
	// Performance is always "instance": the process figures of the
	// answering instance, over its last perfWindow seconds.
	Performance string `json:"performance"`
}

// fleetStatsStore is a statsStore that instances share (Redis), whose
// figures are the fleet's.
type fleetStatsStore interface {
	sharedByFleet() bool
}

// fieldKind is what a stored field name ("<prefix>|<name>") counts.
type fieldKind uint8

const (
	fkNone fieldKind = iota // unknown or not a prefix's: ignored
	fkCount
	fkErrors
	fkClass // i: index in statusClasses
	fk429
	fkClientClosed
	fkBytesIn
	fkBytesOut
	fkUnknown
	fkRateLimited
	fkToken      // i: token kind
	fkModelCount // model: the model
	fkModelToken // model; i: token kind
	fkLatSum
	fkLatency // i: histogram bucket
	fkTTFB    // i: histogram bucket
	fkTarget  // i: target index; fig: target figure
)

// latency reports whether k is one of the latency figures, which buckets
// hold and totals do not.
func (k fieldKind) latency() bool { return k == fkLatSum || k == fkLatency || k == fkTTFB }

// fieldRef is a stored field name parsed (fieldInfo), with the figures
// it adds to in the view being computed.
type fieldRef struct {
	e    *endpointView // the prefix's or key's figures; nil for a field ignored
	m    *modelSlot
	i    int16 // as in fieldInfo
	fig  uint8
	kind fieldKind
	key  bool // e is a proxy key's (keyStatsMark)
	done bool // set from its fieldInfo
}

// fieldInfo is a stored field name parsed: "<prefix>|<name>", name being
// of kind (fkNone for a name without a prefix, or unknown).
type fieldInfo struct {
	prefix, model string
	// modelID numbers the prefix's model (fieldNames.models), so that
	// the fields of one model share its figures.
	modelID int32
	i       int16 // class, token kind, histogram bucket or target index (fieldKind)
	fig     uint8 // target figure
	kind    fieldKind
}

// fieldNames parses the stored field names of /stats answers, each once
// for all answers: the same names come back in every bucket of every
// answer, and parsing them was most of the time an answer took. Not safe
// for concurrent use (Stats.mu).
type fieldNames struct {
	index  map[string]int32 // into info
	info   []fieldInfo
	models map[[2]string]int32 // prefix and model → modelID
	// scratch is the refs of the last answer, cleared, for the next.
	scratch []fieldRef
}

// maxFieldNames bounds fieldNames: an answer starts by forgetting every
// name when it holds more, as prefixes, models and keys come and go.
const maxFieldNames = 1 << 20

// reset forgets every name.
func (fn *fieldNames) reset() {
	fn.index, fn.info = make(map[string]int32, 1024), fn.info[:0]
	fn.models = map[[2]string]int32{}
}

// id returns the index of name in fn.info, parsing it on first sight.
func (fn *fieldNames) id(name string) int32 {
	if i, ok := fn.index[name]; ok {
		return i
	}
	var fi fieldInfo
	if prefix, rest, ok := strings.Cut(name, "|"); ok {
		var i, fig int
		fi.kind, i, fig, fi.model = parseStatsField(rest)
		fi.i, fi.fig = int16(i), uint8(fig)
		if fi.kind != fkNone {
			fi.prefix = prefix
		}
		if fi.model != "" {
			id, ok := fn.models[[2]string{prefix, fi.model}]
			if !ok {
				id = int32(len(fn.models))
				fn.models[[2]string{prefix, fi.model}] = id
			}
			fi.modelID = id
		}
	}
	i := int32(len(fn.info))
	fn.index[name] = i
	fn.info = append(fn.info, fi)
	return i
}

// modelSlot is a model's figures in an endpointView, listed in its
// Models once the range counts a request or token of it: a model seen
// only outside the range has no row.
type modelSlot struct {
	name   string
	v      modelView
	listed bool
}

// parseStatsField returns the kind of the field name (after
// "<prefix>|"), with its index, target figure or model name.
func parseStatsField(name string) (kind fieldKind, i, fig int, model string) {
	switch name {
	case fieldCount:
		return fkCount, 0, 0, ""
	case fieldErrors:
		return fkErrors, 0, 0, ""
	case fieldClientClosed:
		return fkClientClosed, 0, 0, ""
	case fieldBytesIn:
		return fkBytesIn, 0, 0, ""
	case fieldBytesOut:
		return fkBytesOut, 0, 0, ""
	case fieldUnknown:
		return fkUnknown, 0, 0, ""
	case fieldRateLimited:
		return fkRateLimited, 0, 0, ""
	case fieldS429:
		return fk429, 0, 0, ""
	case fieldLatencySum:
		return fkLatSum, 0, 0, ""
	}
	if c, ok := strings.CutPrefix(name, "s"); ok {
		for i, class := range statusClasses {
			if c == class {
				return fkClass, i, 0, ""
			}
		}
	}
	if kind, ok := strings.CutPrefix(name, fieldTokens); ok {
		if k, ok := tokenKindOf(kind); ok {
			return fkToken, int(k), 0, ""
		}
		return fkNone, 0, 0, ""
	}
	if rest, ok := strings.CutPrefix(name, fieldModel); ok {
		j := strings.LastIndexByte(rest, '|')
		if j <= 0 {
			return fkNone, 0, 0, ""
		}
		if rest[j+1:] == fieldCount {
			return fkModelCount, 0, 0, rest[:j]
		}
		if k, ok := tokenKindOf(rest[j+1:]); ok {
			return fkModelToken, int(k), 0, rest[:j]
		}
		return fkNone, 0, 0, ""
	}
	if i, ok := histField(name, fieldLatency); ok {
		return fkLatency, i, 0, ""
	}
	if i, ok := histField(name, fieldTTFB); ok {
		return fkTTFB, i, 0, ""
	}
	if i, f, ok := targetField(name); ok {
		return fkTarget, i, f, ""
	}
	return fkNone, 0, 0, ""
}

// viewBuilder computes one /stats answer from statsData, with the field
// names parsed by names, whose info refs follows.
type viewBuilder struct {
	v     *statsView
	rng   statsRange
	all   endpointSet // every prefix with stats, deleted ones too, and every key's
	names *fieldNames
	refs  []fieldRef // by id in names
	// models are the figures of each model (fieldInfo.modelID) seen.
	models []*modelSlot
}

func newViewBuilder(v *statsView, rng statsRange, names *fieldNames) *viewBuilder {
	if names.index == nil || len(names.info) >= maxFieldNames {
		names.reset()
	}
	refs := names.scratch[:0]
	names.scratch = nil
	refs = append(refs, make([]fieldRef, len(names.info))...)
	return &viewBuilder{v: v, rng: rng, all: endpointSet{}, names: names, refs: refs}
}

// release hands the builder's refs to the next answer, cleared: they
// hold pointers to this one's figures.
func (b *viewBuilder) release() {
	clear(b.refs)
	b.names.scratch = b.refs[:0]
	b.refs = nil
}

// ref returns the field f with the figures it adds to. The result is
// valid until the next call.
func (b *viewBuilder) ref(f string) *fieldRef {
	id := b.names.id(f)
	if int(id) >= len(b.refs) {
		b.refs = append(b.refs, make([]fieldRef, len(b.names.info)-len(b.refs))...)
	}
	r := &b.refs[id]
	if !r.done {
		fi := &b.names.info[id]
		r.done, r.kind, r.i, r.fig = true, fi.kind, fi.i, fi.fig
		if fi.kind != fkNone {
			_, r.key = keyOfView(fi.prefix)
			r.e = b.all.get(fi.prefix)
			if fi.model != "" {
				r.m = b.modelSlot(fi)
			}
		}
	}
	return r
}

// Kinds of fields an answer needs of a bucket, besides count and errors
// (always): a bucket outside the range adds to the series and the last_*
// windows only, which read neither models nor latencies, the bulk of its
// fields, and without a range the series read only count and errors.
const (
	needModels  = 1 << iota // fkModelCount, fkModelToken
	needLatency             // fkLatSum, fkLatency, fkTTFB: the endpoints' percentiles
	needFigures             // the others, fkTTFB included: the range's and the points' figures
	needAll     = needModels | needLatency | needFigures
)

// skip reports whether f, a field name of a bucket, can be passed over
// without parsing it, given the kinds of fields needed: a cheap look at
// the name.
func skip(f string, needs int) bool {
	i := strings.IndexByte(f, '|')
	if i < 0 {
		return true
	}
	switch rest := f[i+1:]; {
	case rest == fieldCount || rest == fieldErrors:
		return false
	case strings.HasPrefix(rest, fieldModel):
		return needs&needModels == 0
	case strings.HasPrefix(rest, fieldLatency) || rest == fieldLatencySum:
		return needs&needLatency == 0
	case strings.HasPrefix(rest, fieldTTFB):
		return needs&(needLatency|needFigures) == 0
	}
	return needs&needFigures == 0
}

// addData adds the figures of d: to each prefix's and key's figures those
// of the range (all-time ones for rangeNone and rangeAll, the range's
// buckets' otherwise, target tries all-time always), last requests, the
// last_* windows, and the series points. The series leave out the keys'
// figures: their requests are there under their prefixes already.
func (b *viewBuilder) addData(d *statsData) {
	fromTotal := b.rng == rangeNone || b.rng == rangeAll
	for f, n := range d.Total {
		if !fromTotal && skip(f, needFigures) { // the target tries only
			continue
		}
		if r := b.ref(f); r.e != nil && (fromTotal || r.kind == fkTarget) {
			r.e.addScoped(r, n)
		}
	}
	for p, t := range d.Last {
		e := b.all.get(p)
		e.LastRequest = max(e.LastRequest, t)
	}
	s := &b.v.Series
	hourNeeds := needFigures
	switch b.rng {
	case range24h:
		hourNeeds = needAll
	case rangeNone:
		hourNeeds = needLatency
	}
	for i := range s.Hourly {
		pt := &s.Hourly[i]
		for f, n := range d.Hours[pt.T/hourSeconds] {
			if hourNeeds != needAll && skip(f, hourNeeds) {
				continue
			}
			r := b.ref(f)
			if r.e == nil {
				continue
			}
			switch {
			case b.rng == range24h:
				r.e.addScoped(r, n)
			case b.rng == rangeNone && r.kind.latency():
				r.e.addScoped(r, n)
			}
			if r.kind == fkCount {
				r.e.Last24h += n
			}
			if !r.key {
				b.addPoint(pt, r, n)
			}
		}
	}
	for i := range s.Daily {
		pt := &s.Daily[i]
		age := windowDays - 1 - i // in days, today being 0
		inRange := age < b.rng.days() || b.rng == rangeAll
		needs := 0
		switch {
		case inRange && !fromTotal:
			needs = needAll
		case inRange:
			needs = needLatency | needFigures
		case b.rng != rangeNone:
			needs = needFigures
		}
		for f, n := range d.Days[pt.T/daySeconds] {
			if needs != needAll && skip(f, needs) {
				continue
			}
			r := b.ref(f)
			if r.e == nil {
				continue
			}
			if inRange && (!fromTotal || r.kind.latency()) {
				r.e.addScoped(r, n)
			}
			if r.kind == fkCount {
				r.e.addDay(age, n)
			}
			if !r.key {
				b.addPoint(pt, r, n)
			}
		}
	}
}

// addPoint adds n to the figure r counts of the series point pt: count
// and errors, and with a range its other figures too.
func (b *viewBuilder) addPoint(pt *seriesPoint, r *fieldRef, n int64) {
	switch {
	case b.rng != rangeNone:
		pt.add(r, n)
	case r.kind == fkCount:
		pt.Count += n
	case r.kind == fkErrors:
		pt.Errors += n
	}
}

// modelSlot returns the figures of the model of the field fi, made on
// first use.
func (b *viewBuilder) modelSlot(fi *fieldInfo) *modelSlot {
	if int(fi.modelID) >= len(b.models) {
		b.models = append(b.models, make([]*modelSlot, len(b.names.models)-len(b.models))...)
	}
	m := b.models[fi.modelID]
	if m == nil {
		m = &modelSlot{name: fi.model}
		b.models[fi.modelID] = m
	}
	return m
}

// addScoped adds n to the figure r counts, one of the range's.
func (e *endpointView) addScoped(r *fieldRef, n int64) {
	switch r.kind {
	case fkCount:
		e.Count += n
	case fkErrors:
		e.ErrorCount += n
	case fkClass:
		switch r.i {
		case 0:
			e.Status.S1xx += n
		case 1:
			e.Status.S2xx += n
		case 2:
			e.Status.S3xx += n
		case 3:
			e.Status.S4xx += n
		case 4:
			e.Status.S5xx += n
		}
	case fkClientClosed:
		e.ClientClosed += n
	case fkBytesIn:
		e.BytesIn += n
	case fkBytesOut:
		e.BytesOut += n
	case fkUnknown:
		e.Tokens.UnknownResponses += n
	case fkRateLimited:
		e.RateLimited += n
	case fkToken:
		e.Tokens.Counts[r.i] += n
	case fkModelCount, fkModelToken:
		m := r.m
		if !m.listed {
			m.listed = true
			e.Models[m.name] = &m.v
		}
		if r.kind == fkModelCount {
			m.v.Count += n
		} else {
			m.v.Tokens[r.i] += n
		}
	case fkLatSum:
		e.lat.sum += n
	case fkLatency:
		e.lat.latency[r.i] += n
	case fkTTFB:
		e.lat.ttfb[r.i] += n
	case fkTarget:
		e.tries[r.i][r.fig] += n
	}
}

// seriesFigures are the figures of a series point beyond t, count and
// errors: its requests by outcome, tokens and time to first byte.
type seriesFigures struct {
	ok, s4xx, s429, s5xx, clientClosed int64 // s4xx holds the 429s until finish
	prompt, completion, cache          int64
	ttfbP50, ttfbP95                   float64
	ttfb                               *[histBuckets]int64 // made on first use
}

// add adds n to the point's figure r counts, if it has one.
func (pt *seriesPoint) add(r *fieldRef, n int64) {
	f := &pt.fig
	switch r.kind {
	case fkCount:
		pt.Count += n
	case fkErrors:
		pt.Errors += n
	case fkClass:
		switch statusClasses[r.i] {
		case "1xx", "2xx", "3xx":
			f.ok += n
		case "4xx":
			f.s4xx += n
		case "5xx":
			f.s5xx += n
		}
	case fk429:
		f.s429 += n
	case fkClientClosed:
		f.clientClosed += n
	case fkToken:
		switch tokenKind(r.i) {
		case tokPrompt:
			f.prompt += n
		case tokCompletion:
			f.completion += n
		case tokCacheRead, tokCacheWrite:
			f.cache += n
		}
	case fkTTFB:
		if f.ttfb == nil {
			f.ttfb = new([histBuckets]int64)
		}
		f.ttfb[r.i] += n
	}
}

// finish computes the point's percentiles, and takes the 429s out of its
// 4xx.
func (pt *seriesPoint) finish() {
	f := &pt.fig
	f.s4xx = max(f.s4xx-f.s429, 0)
	if f.ttfb != nil {
		f.ttfbP50, f.ttfbP95, _ = percentilesMS(f.ttfb)
		f.ttfb = nil
	}
}

// MarshalJSON writes the series in one buffer: encoding/json copies and
// compacts what each Marshaler returns, which cost more, one call per
// point, than the points' figures (BenchmarkStatsRender). Points have
// their figures (docs/stats.md) in an answer with a range; without one
// they have t, count and errors only, as they always had. Decoding a
// point into a seriesPoint reads t, count and errors only;
// seriesPointJSON in the tests reads all.
func (s seriesView) MarshalJSON() ([]byte, error) {
	size := 40
	if s.figures {
		size = 200
	}
	b := make([]byte, 0, size*(len(s.Hourly)+len(s.Daily)+len(s.Points))+64)
	b = appendPoints(append(b, `{"hourly":`...), s.Hourly, s.figures)
	b = appendPoints(append(b, `,"daily":`...), s.Daily, s.figures)
	if s.Points != nil {
		b = appendPoints(append(b, `,"points":`...), s.Points, s.figures)
	}
	return append(b, '}'), nil
}

// appendPoints appends the JSON array of points, with their figures or
// not.
func appendPoints(b []byte, points []seriesPoint, figures bool) []byte {
	b = append(b, '[')
	for i := range points {
		if i > 0 {
			b = append(b, ',')
		}
		b = points[i].appendJSON(b, figures)
	}
	return append(b, ']')
}

// appendJSON appends the point's JSON object, with its figures or not.
func (pt *seriesPoint) appendJSON(b []byte, figures bool) []byte {
	f := &pt.fig
	field := func(name string, n int64) {
		b = append(b, ',', '"')
		b = append(b, name...)
		b = append(b, '"', ':')
		b = strconv.AppendInt(b, n, 10)
	}
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, pt.T, 10)
	field("count", pt.Count)
	field("errors", pt.Errors)
	if !figures {
		return append(b, '}')
	}
	field("ok", f.ok)
	field("s4xx", f.s4xx)
	field("s429", f.s429)
	field("s5xx", f.s5xx)
	field("client_closed", f.clientClosed)
	field("prompt", f.prompt)
	field("completion", f.completion)
	field("cache", f.cache)
	b = append(b, `,"ttfb_p50":`...)
	b = strconv.AppendFloat(b, f.ttfbP50, 'f', -1, 64)
	b = append(b, `,"ttfb_p95":`...)
	b = strconv.AppendFloat(b, f.ttfbP95, 'f', -1, 64)
	return append(b, '}')
}

// finishSeries finishes the series points and, for a range, sets what
// says which figures it covers: range, range_from, scope and
// series.points.
func (v *statsView) finishSeries(rng statsRange, figures string) {
	s := &v.Series
	for i := range s.Hourly {
		s.Hourly[i].finish()
	}
	for i := range s.Daily {
		s.Daily[i].finish()
	}
	if rng == rangeNone {
		return
	}
	v.Range = rangeNames[rng]
	v.Scope = &scopeView{Figures: figures, Performance: scopeInstance}
	s.figures = true
	switch rng {
	case range24h:
		s.Points = s.Hourly
	case range7d, range30d:
		s.Points = s.Daily[len(s.Daily)-rng.days():]
	default:
		s.Points = s.Daily
	}
	if rng != rangeAll {
		v.RangeFrom = s.Points[0].T
	}
}
