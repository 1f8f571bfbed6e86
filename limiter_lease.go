package main

// Allowances: how the shared limiter admits requests whose only limits are
// rpm without a Redis round trip each, and stays exact (SPEC §11).
//
// One round trip per request costs about as much CPU as the rest of a small
// request (docs/performance.md, "keys + rpm"). So, while a scope is far from
// its limit, the call that admits a request also reserves up to
// leaseMaxPermits more permits for this instance, for leaseTerm: members
// <id>.1 … <id>.k of the scope's rpm log, scored at the term's end plus
// leaseGrace. Requests of the next leaseTerm take a permit here, without a
// round trip. When the term ends, or the permits run out, one call settles
// the allowance: each used permit is scored at (no earlier than) the time
// it was used and the unused ones are deleted. The rpm log then holds what
// it would have held with a call per request.
//
// Why both halves of rpm still hold exactly:
//   - at most N in any rolling 60 s: every permit was counted before it
//     was used, with a score no earlier than its use, so each grant saw
//     every admission of the window it could share;
//   - a caller under N is never refused: a permit reserved and not yet
//     settled may turn out unused, so a request refused while some
//     allowance of the scope is open waits until it is settled and asks
//     again (for at most leaseGrace in all). Only such a request costs more
//     than one round trip. Allowances are granted only while the log holds
//     under half the limit, so near the limit there are none left open
//     within a term.
//
// An instance that dies holding an allowance leaves its reserved permits
// counted, for at most leaseTerm + leaseGrace + 60 s: like a dead
// instance's concurrency slots, the loss is on the side of refusing.
// Scopes with tpm or concurrency limits keep the call per request
// (redisLimitAdmitScript): their counts change when responses end, which an
// allowance cannot see.

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Key name suffix of a scope's open allowances, after keyPrefix + "{" + id + "}":
//
//	apiproxy:{k:k_abc}:rpml  ZSET: member <id>#<permits>, score = end of its term (ms)
const redisLimitLeaseKey = ":rpml"

const (
	// leaseTerm is how long an allowance's permits may be used; a request
	// refused while one is open waits about this long at most.
	leaseTerm = 100 * time.Millisecond
	// leaseGrace is how long after its term an allowance may stay
	// unsettled (a slow instance, a lost call) before refusals stop waiting
	// for it; its reserved permits count until then.
	leaseGrace = 2 * time.Second
	// leaseRecheck is the wait past an open allowance's term before a
	// refused request asks again, for the holder's settling call.
	leaseRecheck = 20 * time.Millisecond
	// leaseMinPermits is the fewest permits worth reserving; a scope whose
	// log has room for fewer than that under half its limit gets a call
	// per request.
	leaseMinPermits = 8
	// leaseMaxPermits bounds one allowance, and so the arguments of the
	// call that settles it.
	leaseMaxPermits = 1024
)

// redisLimitLeaseScript admits a request of rpm-only scopes, reserves an
// allowance and settles the previous one, in one call.
//
// KEYS: for each scope, its rpm key then its lease key. ARGV[1]: the id of
// the new allowance (empty when the call only settles); the request is its
// member <id>.0. ARGV[2]: the permits wanted beyond the request's own;
// ARGV[3]: the fewest worth reserving; ARGV[4], ARGV[5]: the term and the
// grace (ms). ARGV[6]: the id of the allowance to settle (empty for none);
// ARGV[7]: its permits; ARGV[8]: its grant time (ms, Redis clock);
// ARGV[9]: u, how many of its permits were used. Then each scope's rpm,
// then u offsets (ms after the grant) at which permits 1…u were used.
//
// Answers {1, permits reserved, grant time} when admitted; else {0, 1,
// scope, wait, open}: scope the 1-based index of the refusing scope, wait
// the ms until the request would be admitted, open the ms until the term
// of the last allowance open in the scopes that refused ends (0 if it
// ended unsettled), or -1 when none is open. A call retried by go-redis
// after its answer was lost finds its request counted and answers as the
// first time did.
var redisLimitLeaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local term, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local function f(x) return string.format('%.0f', x) end
local old = ARGV[6]
if old ~= '' then
  local k, g, u = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  for i = 1, n do
    local rk = KEYS[2*i-1]
    for j = 1, u do redis.call('ZADD', rk, 'XX', f(g + tonumber(ARGV[9+n+j])), old .. '.' .. j) end
    for j = u + 1, k do redis.call('ZREM', rk, old .. '.' .. j) end
    redis.call('ZREM', KEYS[2*i], old .. '#' .. k)
  end
end
local id = ARGV[1]
if id == '' then return {1, 0, now} end
local first = redis.call('ZSCORE', KEYS[1], id .. '.0')
if first then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local p, k = string.match(m, '^(.*)#(%d+)$')
    if p == id then return {1, tonumber(k), tonumber(first)} end
  end
  return {1, 0, tonumber(first)}
end
local grant = tonumber(ARGV[2])
local wait, scope = -1, 0
local full = {}
for i = 1, n do
  local rk, lk = KEYS[2*i-1], KEYS[2*i]
  local rpm = tonumber(ARGV[9+i])
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', f(now - 60000))
  redis.call('ZREMRANGEBYSCORE', lk, '-inf', f(now - grace))
  local c = redis.call('ZCARD', rk)
  if c >= rpm then
    local e = redis.call('ZRANGE', rk, f(c - rpm), f(c - rpm), 'WITHSCORES')
    local w = tonumber(e[2]) + 60000 - now
    if w > wait then wait, scope = w, i end
    full[i] = true
  end
  grant = math.min(grant, math.floor(rpm / 2) - c - 1)
end
if scope > 0 then
  local open = -1
  for i = 1, n do
    if full[i] then
      local e = redis.call('ZRANGE', KEYS[2*i], -1, -1, 'WITHSCORES')
      if #e > 0 then open = math.max(open, tonumber(e[2]) - now, 0) end
    end
  end
  return {0, 1, scope, wait, open}
end
if grant < tonumber(ARGV[3]) then grant = 0 end
local reserved = f(now + term + grace)
for i = 1, n do
  local rk, lk = KEYS[2*i-1], KEYS[2*i]
  redis.call('ZADD', rk, f(now), id .. '.0')
  local args = {}
  for j = 1, grant do
    args[#args+1] = reserved
    args[#args+1] = id .. '.' .. j
    if #args == 400 or j == grant then
      redis.call('ZADD', rk, unpack(args))
      args = {}
    end
  end
  if grant > 0 then
    redis.call('ZADD', lk, f(now + term), id .. '#' .. grant)
    redis.call('PEXPIRE', lk, term + grace + 60000)
  end
  local keep = 60000
  if grant > 0 then keep = term + grace + 60000 end
  if redis.call('PTTL', rk) < keep then redis.call('PEXPIRE', rk, keep) end
end
return {1, grant, now}`)

// rpmLease is one allowance: permits reserved for this instance for
// leaseTerm from sent.
type rpmLease struct {
	id      string
	sent    time.Time // when the call that granted it was sent
	granted int64     // Redis's time of the grant, in ms
	permits int
	// used holds, per permit used, its offset from sent in ms rounded
	// up: its score is granted + offset, which is no earlier than its use
	// on Redis's clock since the grant ran after sent.
	used []int64
}

// nextWant is how many permits the allowance after a asks for: twice what
// a used, within leaseMinPermits and leaseMaxPermits.
func (a *rpmLease) nextWant() int {
	return min(max(2*len(a.used), leaseMinPermits), leaseMaxPermits)
}

// leaseSlot is the allowance of one set of scopes on this instance, and
// the call in flight for it. Safe for concurrent use.
type leaseSlot struct {
	scopes limitScopes
	keys   []string // for each limited scope, its rpm key then its lease key
	rpms   []any    // each limited scope's rpm
	// index maps a script scope number - 1 to its index in the scopes.
	index [2]int

	mu    sync.Mutex
	swept bool      // dropped from the limiter's slots: get the slot again
	open  *rpmLease // nil when none
	// calling is closed when the call in flight for this slot returns;
	// nil when none is in flight.
	calling chan struct{}
	// want is how many permits the next call asks for: twice what the
	// last allowance used, so that it grows with the request rate.
	want int
	// bare is set until when this slot asks no allowance (the last grant
	// reserved none): requests make their own calls, concurrently.
	bare time.Time
}

// rpmOnly reports whether every limit of scopes is an rpm limit (and some
// scope has one): those are admitted through allowances.
func (ss *limitScopes) rpmOnly() bool {
	for _, s := range ss {
		if s.limits.TPM > 0 || s.limits.Concurrency > 0 {
			return false
		}
	}
	return ss[0].limits.RPM > 0 || ss[1].limits.RPM > 0
}

// leaseSlot returns the slot of scopes, creating it. Scopes with other
// limits (a mapping edited) get another slot; the old one's allowance is
// settled by its timer.
func (l *redisLimiter) leaseSlot(scopes limitScopes) *leaseSlot {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.slots[scopes]; s != nil {
		return s
	}
	s := &leaseSlot{scopes: scopes, want: leaseMinPermits}
	n := 0
	for i, sc := range scopes {
		if !sc.limited() {
			continue
		}
		s.keys = append(s.keys, l.scopeKey(sc, redisLimitRPMKey), l.scopeKey(sc, redisLimitLeaseKey))
		s.rpms = append(s.rpms, sc.limits.RPM)
		s.index[n] = i
		n++
	}
	l.slots[scopes] = s
	return s
}

// admitLeased is admit for rpm-only scopes: from the slot's allowance
// when it has a permit left, else by a call that also asks for the next
// allowance (requests arriving meanwhile wait for that call rather than
// make their own).
func (l *redisLimiter) admitLeased(ctx context.Context, scopes limitScopes) limitResult {
	s := l.leaseSlot(scopes)
	var waited time.Duration
	for {
		if l.down.Load() {
			return l.local.admit(ctx, scopes)
		}
		s.mu.Lock()
		if s.swept {
			s.mu.Unlock()
			s = l.leaseSlot(scopes)
			continue
		}
		now := time.Now()
		if a := s.open; a != nil && len(a.used) < a.permits {
			if since := now.Sub(a.sent); since < l.leaseTerm {
				a.used = append(a.used, int64((since+time.Millisecond-1)/time.Millisecond))
				s.mu.Unlock()
				return limitResult{admitted: true}
			}
		}
		bare := now.Before(s.bare)
		if ch := s.calling; ch != nil && !bare {
			s.mu.Unlock()
			<-ch
			continue
		}
		// Unless the slot is bare, this call settles the allowance in
		// hand and asks for the next; requests meanwhile wait for it.
		var (
			settle *rpmLease
			want   int
			ch     chan struct{}
		)
		if !bare {
			settle, s.open = s.open, nil
			want = s.want
			ch = make(chan struct{})
			s.calling = ch
		}
		s.mu.Unlock()

		res, a, open := l.leaseCall(ctx, s, settle, want)
		if ch != nil {
			s.mu.Lock()
			s.open, s.calling = a, nil
			if settle != nil {
				s.want = settle.nextWant()
			}
			if a == nil {
				// None granted (near the limit, or refused): for a
				// term, requests call on their own, concurrently.
				s.bare = time.Now().Add(l.leaseTerm)
			}
			s.mu.Unlock()
			close(ch)
			if a != nil {
				time.AfterFunc(l.leaseTerm, func() { l.settleIdle(s, a) })
			}
		}
		if res.admitted || !waitOpen(ctx, open, &waited) {
			return res
		}
	}
}

// leaseCall makes the script call of admitLeased: it settles settle (if
// not nil) and admits the request, with an allowance of up to want
// permits (none if want is 0). It answers the result, the allowance
// (nil if none) and, for a refusal, the ms until the scope's open
// allowances' terms end (-1 if none is open). When Redis cannot be reached
// it falls back to the local counts.
func (l *redisLimiter) leaseCall(ctx context.Context, s *leaseSlot, settle *rpmLease, want int) (limitResult, *rpmLease, time.Duration) {
	id := l.instance + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	args := l.leaseArgs(s, settle, id, want)
	sent := time.Now()
	vals, err := redisLimitLeaseScript.Run(context.WithoutCancel(ctx), l.client, s.keys, args...).Int64Slice()
	if err != nil || len(vals) < 3 || (vals[0] == 0 && len(vals) < 5) {
		l.fallBack("admit", err)
		if settle != nil {
			l.keepSettle(s, settle)
		}
		return l.local.admit(ctx, s.scopes), nil, -1
	}
	if vals[0] == 1 {
		var a *rpmLease
		if vals[1] > 0 {
			a = &rpmLease{id: id, sent: sent, granted: vals[2], permits: int(vals[1])}
		}
		return limitResult{admitted: true}, a, -1
	}
	res, open := scriptRefusal(vals, s.scopes, s.index, len(s.rpms))
	return res, nil, open
}

// leaseArgs are the script's arguments (see redisLimitLeaseScript).
func (l *redisLimiter) leaseArgs(s *leaseSlot, settle *rpmLease, id string, want int) []any {
	args := make([]any, 0, 9+len(s.rpms)+leaseUsed(settle))
	args = append(args, id, want, leaseMinPermits, l.leaseTerm.Milliseconds(), leaseGrace.Milliseconds())
	if settle == nil {
		args = append(args, "", 0, 0, 0)
	} else {
		args = append(args, settle.id, settle.permits, settle.granted, len(settle.used))
	}
	args = append(args, s.rpms...)
	if settle != nil {
		for _, off := range settle.used {
			args = append(args, off)
		}
	}
	return args
}

// leaseUsed is how many permits of a were used (0 for nil).
func leaseUsed(a *rpmLease) int {
	if a == nil {
		return 0
	}
	return len(a.used)
}

// settleIdle settles a when its term has ended and no request has done it:
// its unused permits must not keep counting. It runs from a's timer.
func (l *redisLimiter) settleIdle(s *leaseSlot, a *rpmLease) {
	s.mu.Lock()
	if s.open != a || s.calling != nil {
		s.mu.Unlock()
		return // settled by a request's call, or about to be
	}
	s.open = nil
	s.want = a.nextWant()
	s.mu.Unlock()
	l.settle(s, a)
}

// settle settles a alone. While Redis cannot be reached the settling is
// kept and replayed when it is back (redisLimiter.replay), like a release:
// until then a's unused permits count, so callers under the limit could
// be refused.
func (l *redisLimiter) settle(s *leaseSlot, a *rpmLease) {
	if l.down.Load() {
		l.keepSettle(s, a)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), limiterReleaseTimeout)
	defer cancel()
	if err := redisLimitLeaseScript.Run(ctx, l.client, s.keys, l.leaseArgs(s, a, "", 0)...).Err(); err != nil {
		l.fallBack("settle allowance", err)
		l.keepSettle(s, a)
	}
}

// keepSettle queues the settling of a, to replay when Redis is back.
func (l *redisLimiter) keepSettle(s *leaseSlot, a *rpmLease) {
	l.keep(limitRelease{script: redisLimitLeaseScript, keys: s.keys, args: l.leaseArgs(s, a, "", 0)})
}

// settleAll settles every open allowance, when the instance stops: the
// next instance (or the rest of the fleet) must not count permits nobody
// will use.
func (l *redisLimiter) settleAll() {
	l.mu.Lock()
	slots := make([]*leaseSlot, 0, len(l.slots))
	for _, s := range l.slots {
		slots = append(slots, s)
	}
	l.mu.Unlock()
	for _, s := range slots {
		s.mu.Lock()
		a := s.open
		s.open = nil
		s.mu.Unlock()
		if a != nil {
			l.settle(s, a)
		}
	}
}

// sweepSlots drops the slots with no allowance open and no call in
// flight, so that memory follows the scopes in use. Called once a window.
func (l *redisLimiter) sweepSlots() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, s := range l.slots {
		s.mu.Lock()
		if s.open == nil && s.calling == nil {
			s.swept = true
			delete(l.slots, k)
		}
		s.mu.Unlock()
	}
}
