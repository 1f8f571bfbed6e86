package main

// Per-key stats (SPEC §10, "Attribution"): what each proxy key's callers
// did, fleet-wide in /stats and per process in /metrics.
//
// A request a caller made with a proxy key (requestRecord.KeyID) is
// counted once more, apart from its prefix's figures, in the keyStats of
// its key. Drain writes those counts into the same statsData as the
// prefixes', under the pseudo-prefix "#<id>" (keyStatsMark): the fields
// "#<id>|count", "#<id>|errors", "#<id>|tok_<kind>", "#<id>|tok_unknown"
// and "#<id>|rate_limited" (Total, Hours, Days), and Last["#<id>"],
// the end of the key's latest request. drainKey also writes a key's
// refusals by a limit into "<prefix>|rate_limited", which the prefix's own
// counters leave to it. Mapping prefixes start with "/" (validatePrefix) and key
// ids ("k_" and base32, newKeySecret) hold no "|", so these fields meet no
// prefix's, and the stores, which add fields whatever their names, keep
// and sum them across the fleet unchanged. The view (statsview.go) takes them out of the
// endpoints, the totals and the series, which would otherwise count a
// keyed request twice, and shows them under "keys". Like a deleted
// prefix's, a deleted key's figures stay stored (its name is then "").
// /metrics (metrics.go, collectKeys) shows this process's counts.

import (
	"context"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
)

// keyStatsMark starts the statsData pseudo-prefix of a proxy key's
// figures: "#" and the key's id.
const keyStatsMark = "#"

// keyCode is a series of apiproxy_key_requests_total: the prefix a key
// called and the status code (statusOther for one outside 100-599; a
// client that left first counts as 499).
type keyCode struct {
	prefix string
	code   int
}

// keyLimit is a series of apiproxy_rate_limited_total of a key: the prefix
// the key called and the limit that refused it (an index in limitNames).
type keyLimit struct {
	prefix string
	limit  int
}

// keyLimited counts the refusals of one keyLimit.
type keyLimited struct {
	n atomic.Int64

	prefixField string // "<prefix>|rate_limited"
	drained     int64  // Stats.mu
}

// keySlot holds the windowed counters of one key for one hour.
type keySlot struct {
	count, errors atomic.Int64
	_             [48]byte // keep the two slots on separate cache lines
}

// keyStats holds the counters of one proxy key. record writes them
// without locks; drain reads them under Stats.mu. A key keeps its
// counters for the life of the process, deleted or not: there are as
// many as keys were used since it started.
type keyStats struct {
	id    string
	slots [2]keySlot   // by parity of the Unix hour the request ended in
	last  atomic.Int64 // Unix second the latest request ended

	// Cumulative since the process started.
	tokens  tokenCounters
	unknown atomic.Int64 // 2xx responses that carried no usage

	codes   atomic.Pointer[map[keyCode]*atomic.Int64] // requests by prefix and code; copy on write
	limits  atomic.Pointer[map[keyLimit]*keyLimited]  // refusals by prefix and limit; copy on write
	codesMu sync.Mutex                                // serialises adding a code or a limit

	// Owned by drain (Stats.mu).
	f struct {
		mark, count, errors, unknown, rateLimited string
		tokens                                    [numTokenKinds]string
	}
	drained struct {
		tokens        tokenCounts
		unknown, last int64
	}
}

func newKeyStats(id string) *keyStats {
	ks := &keyStats{id: id}
	ks.codes.Store(&map[keyCode]*atomic.Int64{})
	ks.limits.Store(&map[keyLimit]*keyLimited{})
	f := &ks.f
	f.mark = keyStatsMark + id
	p := f.mark + "|"
	f.count, f.errors, f.unknown, f.rateLimited = p+fieldCount, p+fieldErrors, p+fieldUnknown, p+fieldRateLimited
	for i, k := range tokenKinds {
		f.tokens[i] = p + fieldTokens + k
	}
	return ks
}

// code returns the counter of requests of prefix with code, added on
// first sight.
func (ks *keyStats) code(prefix string, code int) *atomic.Int64 {
	if c := (*ks.codes.Load())[keyCode{prefix, code}]; c != nil {
		return c
	}
	ks.codesMu.Lock()
	defer ks.codesMu.Unlock()
	old := *ks.codes.Load()
	if c := old[keyCode{prefix, code}]; c != nil {
		return c
	}
	c := new(atomic.Int64)
	next := maps.Clone(old)
	next[keyCode{prefix, code}] = c
	ks.codes.Store(&next)
	return c
}

// limited returns the counter of refusals of requests to prefix by the
// limit of index l (limitNames), added on first sight.
func (ks *keyStats) limited(prefix string, l int) *atomic.Int64 {
	if c := (*ks.limits.Load())[keyLimit{prefix, l}]; c != nil {
		return &c.n
	}
	ks.codesMu.Lock()
	defer ks.codesMu.Unlock()
	old := *ks.limits.Load()
	if c := old[keyLimit{prefix, l}]; c != nil {
		return &c.n
	}
	c := &keyLimited{prefixField: prefix + "|" + fieldRateLimited}
	next := maps.Clone(old)
	next[keyLimit{prefix, l}] = c
	ks.limits.Store(&next)
	return &c.n
}

// recordKey counts rec, a request made with the proxy key rec.KeyID, for
// that key: code is its status slot (as in record), failed whether it
// counts as an error, end the Unix second it ended. Lock-free, and
// allocation-free once the key, and the key's prefix and code, were seen.
func (st *Stats) recordKey(rec *requestRecord, code int, failed bool, end int64) {
	ks := (*st.keys.Load())[rec.KeyID]
	if ks == nil {
		ks = st.addKey(rec.KeyID)
	}
	sl := &ks.slots[(end/hourSeconds)&1]
	sl.count.Add(1)
	if failed {
		sl.errors.Add(1)
	}
	for l := ks.last.Load(); l < end && !ks.last.CompareAndSwap(l, end); l = ks.last.Load() {
	}
	if code == 0 {
		code = 499 // a client that left first, as apiproxy_requests_total labels it
	}
	ks.code(rec.Prefix, code).Add(1)
	if l, ok := refusedBy(rec); ok {
		ks.limited(rec.Prefix, l).Add(1)
	}
	if u := &rec.Usage; u.Known {
		ks.tokens.add(&u.Tokens)
	} else if code >= 200 && code < 300 {
		ks.unknown.Add(1)
	}
}

func (st *Stats) addKey(id string) *keyStats {
	return addCopyOnWrite(&st.addMu, &st.keys, id, newKeyStats)
}

// drainKey moves what the counters of ks gained into pending, as drainSlots
// and drainCumulative do for a prefix. st.mu must be held.
func (st *Stats) drainKey(ks *keyStats, hour int64) {
	d, f, dr := st.pending, &ks.f, &ks.drained
	for h := hour; h > hour-2; h-- {
		sl := &ks.slots[h&1]
		count, errs := sl.count.Swap(0), sl.errors.Swap(0)
		if count|errs == 0 {
			continue
		}
		hf, df := bucket(d.Hours, h), bucket(d.Days, h*hourSeconds/daySeconds)
		for _, m := range []map[string]int64{hf, df, d.Total} {
			addNonZero(m, f.count, count)
			addNonZero(m, f.errors, errs)
		}
	}
	if l := ks.last.Load(); l > dr.last {
		d.Last[f.mark] = max(d.Last[f.mark], l)
		dr.last = l
	}
	w := windowSink{d: d, hour: hour}
	for k, v := range ks.tokens.load() {
		w.add(f.tokens[k], v-dr.tokens[k])
		dr.tokens[k] = v
	}
	dr.unknown = w.drain(f.unknown, &ks.unknown, dr.unknown)
	// A key's refusals count for its prefix too, which does not count
	// them itself (prefixStats.rateLimited).
	var limited int64
	for _, c := range *ks.limits.Load() {
		v := c.n.Load()
		w.add(c.prefixField, v-c.drained)
		limited += v - c.drained
		c.drained = v
	}
	w.add(f.rateLimited, limited)
}

// keyLastUsed returns when the proxy key id was last used, fleet-wide:
// the Unix second the latest request made with it ended, on any instance
// whose counts reached the store, or on this one; 0 if never (or stats are
// off). It may read the store, at most once per statsCacheTTL for all
// callers and for at most statsLoadTimeout. Safe for concurrent use.
func (st *Stats) keyLastUsed(id string) int64 {
	var last int64
	if ks := (*st.keys.Load())[id]; ks != nil {
		last = ks.last.Load()
	}
	if st.enabled {
		st.refresh(context.Background(), st.now())
	}
	mark := keyStatsMark + id
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.base != nil {
		last = max(last, st.base.Last[mark])
	}
	for _, d := range st.unacked {
		last = max(last, d.Last[mark])
	}
	return max(last, st.pending.Last[mark])
}

// keyView is the figures of one proxy key in /stats, fleet-wide: counts
// are all-time, or the range's with one, but for the last_* windows and
// last_used_at.
type keyView struct {
	Name   string `json:"name"` // the key's name now; "" once it is deleted
	Count  int64  `json:"count"`
	Errors int64  `json:"errors"`
	// RateLimited counts the key's requests a limit refused (SPEC §11).
	RateLimited int64     `json:"rate_limited"`
	Last24h     int64     `json:"last_24h"`
	Last7d      int64     `json:"last_7d"`
	Last30d     int64     `json:"last_30d"`
	Tokens      tokenView `json:"tokens"`
	LastUsedAt  int64     `json:"last_used_at"` // Unix seconds; when its latest request ended
}

// keyOfView returns the key id of a prefix of the view's endpointSet, and
// whether it is one (keyStatsMark).
func keyOfView(prefix string) (id string, ok bool) {
	return strings.CutPrefix(prefix, keyStatsMark)
}

// newKeyView returns the view of a key whose figures were gathered as
// an endpoint's (endpointSet), named name.
func newKeyView(name string, e *endpointView) *keyView {
	return &keyView{Name: name, Count: e.Count, Errors: e.ErrorCount, RateLimited: e.RateLimited, Last24h: e.Last24h, Last7d: e.Last7d,
		Last30d: e.Last30d, Tokens: e.Tokens, LastUsedAt: e.LastRequest}
}

// keyName returns the name of the proxy key id in the live key table, ""
// if there is none (a deleted key, or no table).
func (st *Stats) keyName(id string) string {
	if st.proxyKeys == nil {
		return ""
	}
	if t := st.proxyKeys.Load(); t != nil {
		if k := t.byID[id]; k != nil {
			return k.Name
		}
	}
	return ""
}
