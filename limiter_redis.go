package main

// The shared limiter (SPEC §11): limits that hold exactly across every
// instance on one Redis. One script per limited request (or, for rpm-only
// scopes far from their limit, per allowance of requests:
// limiter_lease.go) checks and counts all its scopes atomically, on
// Redis's clock (TIME), so clock skew between instances does not matter. Per scope, under the hash tag of the
// scope's id:
//
//	apiproxy:{k:k_abc}:rpm   ZSET: one member per admission, score = its time (ms); trimmed to 60 s;
//	                         also the permits of open allowances (limiter_lease.go), scored after their term
//	apiproxy:{k:k_abc}:rpml  ZSET: the scope's open allowances (limiter_lease.go)
//	apiproxy:{k:k_abc}:tpm   HASH: Unix second → tokens of the responses that ended in it; fields older than 60 s deleted
//	apiproxy:{k:k_abc}:conc  ZSET: one lease per request in flight, member = instance:request, score = lease expiry (ms)
//
// The keys of a scope share a tag, so one slot of a Redis Cluster
// holds them. A request limited both by its mapping and by its key touches
// two tags in one script: fine on one Redis (what we support), but on a
// Cluster the script would fail with CROSSSLOT; there the two scopes would
// need one tag (e.g. the key's, with the mapping's counts kept per key
// slot, which is no longer one limit) or two scripts with a compensating
// release, which gives up "a refused request consumes nothing".

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Key name suffixes of a scope's counts, after keyPrefix + "{" + id + "}".
const (
	redisLimitRPMKey  = ":rpm"
	redisLimitTPMKey  = ":tpm"
	redisLimitConcKey = ":conc"
)

const (
	// defaultLeaseDuration is how long a concurrency slot outlives its
	// last renewal. An instance killed with kill -9 frees its slots within
	// it (SPEC §11: within 60 s); live instances renew every third of it,
	// so two renewals can fail before a held slot is lost.
	defaultLeaseDuration = 55 * time.Second
	// limiterProbeInterval is how often a limiter that fell back to its own
	// counts asks Redis whether it is back.
	limiterProbeInterval = time.Second
	// limiterReleaseTimeout bounds the round trip of a release, which the
	// proxy makes after the response has ended.
	limiterReleaseTimeout = time.Second
	// maxPendingReleases bounds the releases kept while Redis is
	// unreachable, to replay when it is back; past it a slot is freed by
	// its lease expiring instead.
	maxPendingReleases = 10000
	// renewChunk is the most leases one renew script call takes; the calls
	// of one renewal go in one pipeline, so one round trip.
	renewChunk = 512
)

var (
	// KEYS: for each limited scope, its rpm, tpm, conc and rpml keys.
	// ARGV[1]: the request's member; ARGV[2]: the lease in ms; then for
	// each scope its rpm, tpm and concurrency limits (0 = none); last, the
	// grace of allowances (ms, limiter_lease.go). Answers {1} when
	// admitted and counted; else {0, limit, scope, wait, open}: limit 1
	// rpm, 2 tpm, 3 concurrency; scope the 1-based index of the scope;
	// wait the ms until the request would be admitted, the longest of the
	// limits that refused; open, when only rpm refused, the ms until the
	// term of the last allowance open in those scopes ends (0 if it ended
	// unsettled), else -1: the caller asks again once it is settled.
	// Numbers written are formatted with %.0f: Lua 5.1's tostring keeps 14
	// digits only. A member already counted answers {1} again: go-redis
	// retries a call whose answer was lost, and the retry must not count
	// the request twice nor refuse what was admitted.
	redisLimitAdmitScript = redis.NewScript(`
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local member = ARGV[1]
local lease = tonumber(ARGV[2])
local n = #KEYS / 4
local grace = tonumber(ARGV[#ARGV])
for i = 1, n do
  if redis.call('ZSCORE', KEYS[4*i-3], member) or redis.call('ZSCORE', KEYS[4*i-1], member) then return {1} end
end
local wait, limit, scope, open = -1, 0, 0, -1
local others = false
local function refuse(l, i, w)
  if w > wait then wait, limit, scope = w, l, i end
  if l ~= 1 then others = true end
end
for i = 1, n do
  local rk, tk, ck, lk = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local rpm, tpm, conc = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2])
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', string.format('%.0f', now - window))
    local c = redis.call('ZCARD', rk)
    if c >= rpm then
      local e = redis.call('ZRANGE', rk, string.format('%.0f', c - rpm), string.format('%.0f', c - rpm), 'WITHSCORES')
      refuse(1, i, tonumber(e[2]) + window - now)
      local o = redis.call('ZRANGE', lk, -1, -1, 'WITHSCORES')
      if #o > 0 and tonumber(o[2]) > now - grace then open = math.max(open, tonumber(o[2]) - now, 0) end
    end
  end
  if tpm > 0 then
    local h = redis.call('HGETALL', tk)
    local sum, secs, vals = 0, {}, {}
    for j = 1, #h, 2 do
      local s = tonumber(h[j])
      if s <= sec - 60 then
        redis.call('HDEL', tk, h[j])
      else
        local v = tonumber(h[j+1])
        sum = sum + v
        secs[#secs+1] = s
        vals[s] = v
      end
    end
    if sum >= tpm then
      table.sort(secs)
      for _, s in ipairs(secs) do
        sum = sum - vals[s]
        if sum < tpm then
          refuse(2, i, (s + 60) * 1000 - now)
          break
        end
      end
    end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', string.format('%.0f', now))
    if redis.call('ZCARD', ck) >= conc then refuse(3, i, 1000) end
  end
end
if limit > 0 then
  if others then open = -1 end
  return {0, limit, scope, wait, open}
end
for i = 1, n do
  if tonumber(ARGV[3*i]) > 0 then
    redis.call('ZADD', KEYS[4*i-3], string.format('%.0f', now), member)
    if redis.call('PTTL', KEYS[4*i-3]) < window then redis.call('PEXPIRE', KEYS[4*i-3], window) end
  end
  if tonumber(ARGV[3*i+2]) > 0 then
    redis.call('ZADD', KEYS[4*i-1], string.format('%.0f', now + lease), member)
    redis.call('PEXPIRE', KEYS[4*i-1], 2 * lease)
  end
end
return {1}`)

	// KEYS: the conc keys of the slots to free, then the tpm keys to count
	// tokens in. ARGV[1]: the member; ARGV[2]: the tokens; ARGV[3]: how
	// many of KEYS are conc keys. Sums saturate at 2^53.
	redisLimitReleaseScript = redis.NewScript(`
local k = tonumber(ARGV[3])
for i = 1, k do redis.call('ZREM', KEYS[i], ARGV[1]) end
local tokens = tonumber(ARGV[2])
if tokens > 0 and #KEYS > k then
  local sec = redis.call('TIME')[1]
  for i = k + 1, #KEYS do
    local v = tonumber(redis.call('HGET', KEYS[i], sec) or '0') + tokens
    if v > 9007199254740992 then v = 9007199254740992 end
    redis.call('HSET', KEYS[i], sec, string.format('%.0f', v))
    redis.call('PEXPIRE', KEYS[i], 61000)
  end
end
return 1`)

	// KEYS: conc keys; ARGV[1]: the lease in ms; ARGV[i+1]: the member
	// of KEYS[i]. Moves each lease's expiry to now + lease, if the lease is
	// still there (XX: a lease released meanwhile is not brought back).
	redisLimitRenewScript = redis.NewScript(`
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local exp = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', exp, ARGV[i+1])
  redis.call('PEXPIRE', KEYS[i], 2 * lease)
end
return 1`)
)

// redisLimiter is the limiter of instances that share a Redis: the counts
// of every scope live in Redis (see the key layout above), so the limits
// hold across the fleet. A limited request costs one script call to
// admit (rpm-only scopes far from their limit: one per allowance) and,
// with tpm or concurrency, one to release (which also counts its tokens);
// a request without limits costs nothing. Leases on concurrency slots are renewed by
// run; an instance that dies stops renewing and its slots free when the
// leases expire.
//
// While Redis cannot be reached, admit decides from a localLimiter (each
// instance then enforces every limit alone) and logs that once; run probes
// Redis every second and, once it answers, replays the releases made
// meanwhile and goes back to the shared counts, logging that once. Safe
// for concurrent use.
type redisLimiter struct {
	client    *redis.Client
	keyPrefix string // before every key; redisKeyPrefix in production
	// instance prefixes the members of this limiter's requests, so that
	// they differ from every other instance's.
	instance string
	logger   *slog.Logger
	// lease is how long a slot outlives its last renewal
	// (defaultLeaseDuration); tests shorten it. run renews every third.
	lease      time.Duration
	probeEvery time.Duration
	// leaseTerm is the term of an allowance (limiter_lease.go); 0 admits
	// every request with a call of its own.
	leaseTerm time.Duration

	local *localLimiter // the counts used while down
	seq   atomic.Uint64 // numbers this instance's requests
	down  atomic.Bool   // Redis unreachable: admit uses local

	mu      sync.Mutex
	held    map[*limitTicket]struct{}  // admitted through Redis, holding slots, not released
	pending []limitRelease             // releases that failed while down, to replay
	slots   map[limitScopes]*leaseSlot // allowances per set of rpm-only scopes
}

// limitRelease is a release script call, or with script set another
// call to replay the same way (an allowance's settling): the keys and
// arguments. Every such call must be harmless to run twice.
type limitRelease struct {
	script *redis.Script // nil: redisLimitReleaseScript
	keys   []string
	args   []any
}

// newRedisLimiter returns a limiter on client, keys under keyPrefix,
// naming its requests after instance (unique on this Redis). It logs to
// logger. run must be running for leases to be renewed and for the
// limiter to come back after an outage.
func newRedisLimiter(client *redis.Client, keyPrefix, instance string, logger *slog.Logger) *redisLimiter {
	return &redisLimiter{
		client:     client,
		keyPrefix:  keyPrefix,
		instance:   instance,
		logger:     logger,
		lease:      defaultLeaseDuration,
		probeEvery: limiterProbeInterval,
		leaseTerm:  leaseTerm,
		local:      newLocalLimiter(),
		held:       make(map[*limitTicket]struct{}),
		slots:      make(map[limitScopes]*leaseSlot),
	}
}

// scopeKey is the key of one of the counts of s (suffix redisLimit*Key).
func (l *redisLimiter) scopeKey(s limitScope, suffix string) string {
	return l.keyPrefix + "{" + s.id() + "}" + suffix
}

func (l *redisLimiter) admit(ctx context.Context, scopes limitScopes) limitResult {
	if !scopes.limited() {
		return limitResult{admitted: true}
	}
	if l.leaseTerm > 0 && scopes.rpmOnly() {
		return l.admitLeased(ctx, scopes)
	}
	var waited time.Duration
	for {
		if l.down.Load() {
			return l.local.admit(ctx, scopes)
		}
		res, open := l.admitOnce(ctx, scopes)
		if res.admitted || !waitOpen(ctx, open, &waited) {
			return res
		}
	}
}

// waitOpen waits, after a refusal by rpm alone while an allowance of the
// scope is open (open ≥ 0: the time until its term ends), until it should
// be settled, so that the caller can ask again: its unused permits may be
// what refused the request. It reports false, without waiting, when there
// is nothing to wait for or the waits so far (*waited) reached leaseGrace
// (no wait goes past it), and false when ctx is done.
func waitOpen(ctx context.Context, open time.Duration, waited *time.Duration) bool {
	if open < 0 || *waited >= leaseGrace {
		return false
	}
	d := min(open+leaseRecheck, leaseGrace-*waited)
	*waited += d
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// admitOnce is one admit script call: the result and, for a refusal by
// rpm alone, how long until the scopes' open allowances end (-1 if none).
func (l *redisLimiter) admitOnce(ctx context.Context, scopes limitScopes) (limitResult, time.Duration) {
	var (
		keys  = make([]string, 0, 8)
		args  = make([]any, 0, 9)
		index [2]int // script scope number - 1 → index in scopes
		n     int
	)
	member := l.instance + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	args = append(args, member, l.lease.Milliseconds())
	for i, s := range scopes {
		if !s.limited() {
			continue
		}
		tag := l.keyPrefix + "{" + s.id() + "}"
		keys = append(keys, tag+redisLimitRPMKey, tag+redisLimitTPMKey, tag+redisLimitConcKey, tag+redisLimitLeaseKey)
		args = append(args, s.limits.RPM, s.limits.TPM, s.limits.Concurrency)
		index[n] = i
		n++
	}
	args = append(args, leaseGrace.Milliseconds())
	// A client that leaves mid-admit does not abandon the script: its
	// answer (and the slot it may have taken) is handed to the caller,
	// who releases it.
	vals, err := redisLimitAdmitScript.Run(context.WithoutCancel(ctx), l.client, keys, args...).Int64Slice()
	if err != nil || len(vals) == 0 || (vals[0] == 0 && len(vals) < 5) {
		l.fallBack("admit", err)
		return l.local.admit(ctx, scopes), -1
	}
	if vals[0] == 1 {
		res := limitResult{admitted: true}
		if scopes.holdsSlots() || scopes.countsTokens() {
			t := &limitTicket{scopes: scopes, done: l.done, member: member}
			if scopes.holdsSlots() {
				l.mu.Lock()
				l.held[t] = struct{}{}
				l.mu.Unlock()
			}
			res.ticket = t
		}
		return res, -1
	}
	return scriptRefusal(vals, scopes, index, n)
}

// scriptRefusal reads an admit script's refusal, {0, limit, scope, wait,
// open} (redisLimitAdmitScript, redisLimitLeaseScript): the result, and
// open as a duration, -1 when no allowance is open. index maps a script
// scope number - 1 to its index in scopes, for the script's n scopes.
func scriptRefusal(vals []int64, scopes limitScopes, index [2]int, n int) (limitResult, time.Duration) {
	res := limitResult{retryAfter: retrySeconds(time.Duration(vals[3]) * time.Millisecond)}
	switch vals[1] {
	case 1:
		res.limit = limitRPM
	case 2:
		res.limit = limitTPM
	default:
		res.limit = limitConcurrency
	}
	if i := vals[2] - 1; i >= 0 && i < int64(n) {
		res.scope = scopes[index[i]]
	}
	open := time.Duration(-1)
	if vals[4] >= 0 {
		open = time.Duration(vals[4]) * time.Millisecond
	}
	return res, open
}

// done frees t's slots (if free) and counts tokens in its tpm scopes, in
// one round trip. When Redis cannot be reached the release is kept and
// replayed when it is back (see replay); its tokens then count in the
// bucket of that second, so for longer than their minute, never shorter.
func (l *redisLimiter) done(t *limitTicket, tokens int64, free bool) {
	free = free && t.scopes.holdsSlots()
	count := tokens > 0 && t.scopes.countsTokens()
	if !free && !count {
		return
	}
	if free {
		l.mu.Lock()
		delete(l.held, t)
		l.mu.Unlock()
	}
	var r limitRelease
	var conc int
	if free {
		for _, s := range t.scopes {
			if s.limits.Concurrency > 0 {
				r.keys = append(r.keys, l.scopeKey(s, redisLimitConcKey))
				conc++
			}
		}
	}
	if count {
		for _, s := range t.scopes {
			if s.limits.TPM > 0 {
				r.keys = append(r.keys, l.scopeKey(s, redisLimitTPMKey))
			}
		}
	} else {
		tokens = 0
	}
	r.args = []any{t.member, tokens, conc}
	if l.down.Load() {
		l.keep(r)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), limiterReleaseTimeout)
	defer cancel()
	if err := redisLimitReleaseScript.Run(ctx, l.client, r.keys, r.args...).Err(); err != nil {
		l.fallBack("release", err)
		l.keep(r)
	}
}

// keep queues r to replay when Redis is back, unless maxPendingReleases
// are queued already.
func (l *redisLimiter) keep(r limitRelease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) < maxPendingReleases {
		l.pending = append(l.pending, r)
	}
}

// fallBack switches admit to the local counts after op failed with err,
// logging it if this starts an outage.
func (l *redisLimiter) fallBack(op string, err error) {
	if l.down.CompareAndSwap(false, true) {
		l.logger.Warn("rate limits: redis unreachable, each instance enforces the limits from its own counts until it is back",
			"op", op, "err", err)
	}
}

// run renews the leases this instance holds, every third of the lease,
// and while down probes Redis every probeEvery, until ctx is done; then it
// settles the allowances still open.
func (l *redisLimiter) run(ctx context.Context) {
	renew := time.NewTicker(l.lease / 3)
	defer renew.Stop()
	probe := time.NewTicker(l.probeEvery)
	defer probe.Stop()
	sweep := time.NewTicker(limitWindow)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			l.settleAll()
			return
		case <-sweep.C:
			l.sweepSlots()
		case <-renew.C:
			if !l.down.Load() {
				if err := l.renew(ctx); err != nil && ctx.Err() == nil {
					l.fallBack("renew leases", err)
				}
			}
		case <-probe.C:
			if l.down.Load() {
				l.recover(ctx)
			}
		}
	}
}

// renew moves the expiry of every lease held here to now + lease, in one
// round trip.
func (l *redisLimiter) renew(ctx context.Context) error {
	l.mu.Lock()
	keys := make([]string, 0, len(l.held))
	members := make([]any, 0, len(l.held))
	for t := range l.held {
		for _, s := range t.scopes {
			if s.limits.Concurrency > 0 {
				keys = append(keys, l.scopeKey(s, redisLimitConcKey))
				members = append(members, t.member)
			}
		}
	}
	l.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	pipe := l.client.Pipeline()
	for i := 0; i < len(keys); i += renewChunk {
		j := min(i+renewChunk, len(keys))
		args := append([]any{l.lease.Milliseconds()}, members[i:j]...)
		redisLimitRenewScript.EvalSha(ctx, pipe, keys[i:j], args...)
	}
	_, err := pipe.Exec(ctx)
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A Redis that restarted has no scripts: load it and retry once.
		if err = redisLimitRenewScript.Load(ctx, l.client).Err(); err == nil {
			return l.renew(ctx)
		}
	}
	return err
}

// recover goes back to the shared counts if Redis answers: it replays the
// releases and settlings kept meanwhile, renews the leases still held, then logs.
func (l *redisLimiter) recover(ctx context.Context) {
	if err := l.client.Ping(ctx).Err(); err != nil {
		return
	}
	if err := l.replay(ctx); err != nil {
		return
	}
	if err := l.renew(ctx); err != nil {
		return
	}
	if l.down.CompareAndSwap(true, false) {
		l.logger.Info("rate limits: redis reachable again, the shared counts apply")
	}
}

// replay runs the releases kept while Redis was unreachable, in one
// pipeline; on failure they are kept again.
func (l *redisLimiter) replay(ctx context.Context) error {
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	err := redisLimitReleaseScript.Load(ctx, l.client).Err()
	if err == nil {
		err = redisLimitLeaseScript.Load(ctx, l.client).Err()
	}
	if err == nil {
		pipe := l.client.Pipeline()
		for _, r := range pending {
			script := r.script
			if script == nil {
				script = redisLimitReleaseScript
			}
			script.EvalSha(ctx, pipe, r.keys, r.args...)
		}
		_, err = pipe.Exec(ctx)
	}
	if err != nil {
		// Replaying one twice is harmless: ZREM of a member gone does
		// nothing, tokens counted twice only make tpm stricter, and a
		// settling moves a permit to the same score again (ZADD XX).
		l.mu.Lock()
		l.pending = append(pending, l.pending...)
		if len(l.pending) > maxPendingReleases {
			l.pending = l.pending[:maxPendingReleases]
		}
		l.mu.Unlock()
	}
	return err
}
