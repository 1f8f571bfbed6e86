package main

// Rate limits (SPEC §11): rpm, tpm and concurrency on mappings and on proxy
// keys. A request passes every limit that applies or none: admit checks the
// limits of all its scopes and, only if all admit, counts it in each, as one
// atomic step, so a refused request consumes nothing. The embedded store
// uses localLimiter alone; the Redis store uses redisLimiter
// (limiter_redis.go), which falls back to a localLimiter while Redis is
// unreachable.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The limit names of SPEC §11, as a refusal reports them (the `limit` label
// of apiproxy_rate_limited_total).
const (
	limitRPM         = "rpm"
	limitTPM         = "tpm"
	limitConcurrency = "concurrency"
)

// limitNames are the limit names, indexed by the counters of refusals per
// limit (stats.go, statskeys.go); limitIndex maps a name back.
var limitNames = [...]string{limitRPM, limitTPM, limitConcurrency}

// numLimits is the number of limit names.
const numLimits = len(limitNames)

// limitIndex returns the index in limitNames of the limit named name;
// false if there is none.
func limitIndex(name string) (int, bool) {
	for i, n := range limitNames {
		if n == name {
			return i, true
		}
	}
	return 0, false
}

const (
	// limitWindow is the rolling window of rpm and tpm.
	limitWindow = 60 * time.Second
	// tpmBuckets is the number of one-second buckets tpm counts tokens in:
	// a response's tokens leave the window between 59 and 60 s after it
	// ended, depending on where in its second it ended.
	tpmBuckets = 60
	// concurrencyRetryAfter is the Retry-After of a request refused for
	// concurrency: when a slot frees depends on responses still running,
	// so we cannot know it; one second is the smallest the header can say,
	// and SDKs back off further by themselves on a second 429.
	concurrencyRetryAfter = time.Second
	// maxCountedTokens caps a scope's token sum and one response's tokens,
	// so that sums never overflow (and stay exact as a Lua double in Redis).
	maxCountedTokens = 1 << 53
)

// limitScope is one set of limits that applies to a request: a mapping's
// or a proxy key's. The zero limitScope limits nothing.
type limitScope struct {
	kind   byte   // 'm' for a mapping, 'k' for a proxy key
	name   string // the mapping's prefix or the key's id
	limits Limits
}

// mappingScope is the scope of the limits of the mapping at prefix.
func mappingScope(prefix string, l Limits) limitScope {
	return limitScope{kind: 'm', name: prefix, limits: l}
}

// keyScope is the scope of the limits of the proxy key id.
func keyScope(id string, l Limits) limitScope {
	return limitScope{kind: 'k', name: id, limits: l}
}

// limited reports whether s has any limit.
func (s limitScope) limited() bool { return s.limits != (Limits{}) }

// id names the scope in logs and Redis keys: "m:/openai", "k:k_abc".
func (s limitScope) id() string { return string(s.kind) + ":" + s.name }

// scopeKey identifies a scope in a localLimiter's map without building
// its id string.
type scopeKey struct {
	kind byte
	name string
}

// limitScopes are the scopes of one request: its mapping's and its key's,
// either of which may be zero. Passed by value, so that an unlimited request
// allocates nothing.
type limitScopes [2]limitScope

// limited reports whether any scope has a limit; admit does nothing else
// for a request that has none.
func (ss *limitScopes) limited() bool { return ss[0].limited() || ss[1].limited() }

// countsTokens reports whether any scope has a tpm limit (only those count
// tokens).
func (ss *limitScopes) countsTokens() bool {
	return ss[0].limits.TPM > 0 || ss[1].limits.TPM > 0
}

// holdsSlots reports whether any scope has a concurrency limit (only those
// take a slot).
func (ss *limitScopes) holdsSlots() bool {
	return ss[0].limits.Concurrency > 0 || ss[1].limits.Concurrency > 0
}

// limitResult is admit's answer.
type limitResult struct {
	// admitted is true when every limit admitted the request (and when
	// none applied).
	admitted bool
	// ticket is the admitted request's hold on its scopes; nil when the
	// request was refused or holds nothing (no limit, or rpm only). Its
	// methods are safe on nil, so the caller need not check.
	ticket *limitTicket
	// For a refused request: which limit refused it (limitRPM, limitTPM,
	// limitConcurrency), in which scope, and after how many whole seconds
	// (≥ 1) it would be admitted, for Retry-After. When several limits
	// refuse, these are the one that frees last.
	limit      string
	scope      limitScope
	retryAfter int64
}

// limiter enforces the limits of SPEC §11. Safe for concurrent use.
type limiter interface {
	// admit checks every limit of scopes and, if all admit, counts the
	// request against rpm and takes a concurrency slot in each scope that
	// has a concurrency limit, atomically; a refused request consumes
	// nothing. A request whose scopes have no limit is admitted at no cost
	// and gets no ticket. admit never fails: when the shared counts cannot
	// be reached it decides from the instance's own. The caller must
	// release the ticket of an admitted request when its response ends,
	// the client leaves or the proxy gives up.
	admit(ctx context.Context, scopes limitScopes) limitResult
}

// retrySeconds is Retry-After for a wait of d: whole seconds, rounded up,
// at least 1.
func retrySeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// limitTicket is an admitted request's hold on its scopes: the concurrency
// slots it took and the tokens it will count. It belongs to one request;
// addTokens and release may be called from any goroutine, release any
// number of times.
type limitTicket struct {
	scopes limitScopes
	// done counts tokens for the ticket's scopes and, if free, frees its
	// slots; set by the limiter that admitted it. It is called with free
	// once, by release, and without for tokens added after that.
	done func(t *limitTicket, tokens int64, free bool)
	// member names the ticket in Redis (instance id + request number):
	// its entry in the rpm log and its lease in the concurrency set.
	member string

	// tokens are the tokens added and not yet counted, or ticketReleased
	// once release was called: one word, so that tokens added while
	// release runs are counted either by it or at once, never lost.
	tokens atomic.Int64
}

// ticketReleased marks a released limitTicket's tokens.
const ticketReleased = -1

// addTokens counts n more tokens of the response (SPEC §3.11 total) for
// the tpm limits of the ticket's scopes. They are counted when release is
// called; after release, at once. Safe on a nil ticket.
func (t *limitTicket) addTokens(n int64) {
	if t == nil || n <= 0 {
		return
	}
	n = min(n, maxCountedTokens)
	for {
		old := t.tokens.Load()
		if old == ticketReleased {
			t.done(t, n, false)
			return
		}
		if t.tokens.CompareAndSwap(old, min(old+n, maxCountedTokens)) {
			return
		}
	}
}

// release frees the ticket's concurrency slots and counts its tokens. Only
// the first call does anything; safe on a nil ticket.
func (t *limitTicket) release() {
	if t == nil {
		return
	}
	if tokens := t.tokens.Swap(ticketReleased); tokens != ticketReleased {
		t.done(t, tokens, true)
	}
}

// localLimiter enforces the limits from this instance's own counts: alone
// on the embedded store, and as redisLimiter's fallback while Redis is
// unreachable. Per scope it keeps the admission times of the last 60 s
// (at most rpm of them: an exact rolling log), 60 one-second token
// buckets and a count of requests in flight; scopes with nothing left to
// count are dropped once a minute. One mutex covers all scopes, so that a
// request's check and count over two scopes is one step. Safe for
// concurrent use.
type localLimiter struct {
	now func() time.Time // time.Now unless a test sets it

	mu      sync.Mutex
	scopes  map[scopeKey]*localScope
	sweptAt time.Time
}

// localScope is one scope's counts in a localLimiter.
type localScope struct {
	// admits are the admission times (UnixNano) within the window,
	// oldest first, from admits[head]. A request is only added when fewer
	// than rpm are there, so there are at most rpm of them (and at most as
	// many as were admitted in the last 60 s).
	admits []int64
	head   int
	// inflight counts the admitted requests holding a concurrency slot.
	inflight int64
	// tokens are the tokens counted per second, at index second % 60.
	tokens [tpmBuckets]tokenBucket
}

// tokenBucket is the tokens of the responses that ended within one second.
type tokenBucket struct {
	sec, tokens int64 // sec: Unix seconds; tokens ≤ maxCountedTokens
}

// newLocalLimiter returns an empty localLimiter on the wall clock.
func newLocalLimiter() *localLimiter {
	return &localLimiter{now: time.Now, scopes: make(map[scopeKey]*localScope)}
}

func (l *localLimiter) admit(_ context.Context, scopes limitScopes) limitResult {
	if !scopes.limited() {
		return limitResult{admitted: true}
	}
	// The clock is read under the lock, so that admits are appended in
	// time order and no refusal waits on an admit newer than its clock.
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	nano := now.UnixNano()
	l.sweep(now)
	var (
		ls   [2]*localScope
		wait time.Duration
		res  = limitResult{admitted: true}
	)
	refuse := func(limit string, s limitScope, d time.Duration) {
		if !res.admitted && d <= wait {
			return
		}
		res = limitResult{limit: limit, scope: s}
		wait = d
	}
	for i, s := range scopes {
		if !s.limited() {
			continue
		}
		sc := l.scope(s)
		ls[i] = sc
		if n := s.limits.RPM; n > 0 {
			sc.trim(nano)
			if c := int64(len(sc.admits) - sc.head); c >= n {
				// The request fits once c-n+1 of them have left the window.
				oldest := sc.admits[sc.head+int(c-n)]
				refuse(limitRPM, s, time.Duration(oldest+int64(limitWindow)-nano))
			}
		}
		if n := s.limits.TPM; n > 0 {
			if d, ok := sc.tokenWait(nano, n); !ok {
				refuse(limitTPM, s, d)
			}
		}
		if n := s.limits.Concurrency; n > 0 && sc.inflight >= n {
			refuse(limitConcurrency, s, concurrencyRetryAfter)
		}
	}
	if !res.admitted {
		res.retryAfter = retrySeconds(wait)
		return res
	}
	for i, s := range scopes {
		if ls[i] == nil {
			continue
		}
		if s.limits.RPM > 0 {
			ls[i].admits = append(ls[i].admits, nano)
		}
		if s.limits.Concurrency > 0 {
			ls[i].inflight++
		}
	}
	if scopes.holdsSlots() || scopes.countsTokens() {
		res.ticket = &limitTicket{scopes: scopes, done: l.done}
	}
	return res
}

// done counts tokens for t's tpm scopes as of now and, if free, frees
// its slots.
func (l *localLimiter) done(t *limitTicket, tokens int64, free bool) {
	free = free && t.scopes.holdsSlots()
	if !free && (tokens <= 0 || !t.scopes.countsTokens()) {
		return
	}
	sec := l.now().Unix()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range t.scopes {
		if !s.limited() {
			continue
		}
		sc := l.scope(s)
		if free && s.limits.Concurrency > 0 && sc.inflight > 0 {
			sc.inflight--
		}
		if s.limits.TPM > 0 && tokens > 0 {
			b := &sc.tokens[sec%tpmBuckets]
			if b.sec != sec {
				*b = tokenBucket{sec: sec}
			}
			b.tokens = min(b.tokens+tokens, maxCountedTokens)
		}
	}
}

// scope returns the counts of s, creating them. l.mu is held.
func (l *localLimiter) scope(s limitScope) *localScope {
	k := scopeKey{s.kind, s.name}
	sc := l.scopes[k]
	if sc == nil {
		sc = &localScope{}
		l.scopes[k] = sc
	}
	return sc
}

// sweep drops, at most once per window, the scopes that count nothing
// any more, so that memory follows the scopes in use. l.mu is held.
func (l *localLimiter) sweep(now time.Time) {
	if now.Sub(l.sweptAt) < limitWindow {
		return
	}
	l.sweptAt = now
	nano := now.UnixNano()
	for k, sc := range l.scopes {
		sc.trim(nano)
		if sc.inflight == 0 && sc.head == len(sc.admits) && sc.tokenSum(nano) == 0 {
			delete(l.scopes, k)
		}
	}
}

// trim drops the admissions that left the window ending at now: those at
// or before now-60s. It compacts the slice once half of it is dropped, so
// each admission is copied O(1) times.
func (sc *localScope) trim(now int64) {
	cut := now - int64(limitWindow)
	for sc.head < len(sc.admits) && sc.admits[sc.head] <= cut {
		sc.head++
	}
	switch {
	case sc.head == len(sc.admits):
		sc.admits, sc.head = sc.admits[:0], 0
		if cap(sc.admits) > 1024 {
			sc.admits = nil // a burst's backing array is not kept for ever
		}
	case sc.head > len(sc.admits)/2:
		n := copy(sc.admits, sc.admits[sc.head:])
		sc.admits, sc.head = sc.admits[:n], 0
	}
}

// tokenSum is the tokens counted in the 60 one-second buckets that end
// after now-60s.
func (sc *localScope) tokenSum(now int64) int64 {
	sec := now / int64(time.Second)
	var sum int64
	for _, b := range sc.tokens {
		if b.sec > sec-tpmBuckets {
			sum = min(sum+b.tokens, maxCountedTokens)
		}
	}
	return sum
}

// tokenWait reports whether the tokens in the window are below n, and if
// not how long until enough buckets leave it that they are. A bucket of
// second s leaves the window at s+60.
func (sc *localScope) tokenWait(now, n int64) (time.Duration, bool) {
	sum := sc.tokenSum(now)
	if sum < n {
		return 0, true
	}
	sec := now / int64(time.Second)
	for s := sec - tpmBuckets + 1; s <= sec; s++ {
		if b := sc.tokens[s%tpmBuckets]; b.sec == s {
			sum -= b.tokens
		}
		if sum < n {
			return time.Duration((s+tpmBuckets)*int64(time.Second) - now), false
		}
	}
	return limitWindow, false // unreachable: an empty window sums to 0
}
