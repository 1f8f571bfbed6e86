package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// callCounter is a go-redis hook that counts the commands a client sends.
type callCounter struct{ n atomic.Int64 }

func (h *callCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *callCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *callCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// rpmLog returns the scores of the rpm log of scope, and how many
// allowances of it are open.
func rpmLog(t testing.TB, c *redis.Client, l *redisLimiter, scope limitScope) (scores []int64, open int64) {
	t.Helper()
	ctx := context.Background()
	zs, err := c.ZRangeWithScores(ctx, l.scopeKey(scope, redisLimitRPMKey), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range zs {
		scores = append(scores, int64(z.Score))
	}
	return scores, c.ZCard(ctx, l.scopeKey(scope, redisLimitLeaseKey)).Val()
}

// TestLimitRedisAllowance: requests of an rpm-only scope far from its
// limit are admitted from allowances, with far fewer round trips than
// requests; once the allowance is settled the rpm log holds exactly the
// requests admitted, each at a time no later than now and no earlier than
// the first request.
func TestLimitRedisAllowance(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	l := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
	calls := &callCounter{}
	l.client.AddHook(calls)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	redisNow := func() int64 { return redisMillis(t, c) }

	scope := keyScope("k_allow", Limits{RPM: 1000})
	start := redisNow()
	if got := countAdmitted(admitN(l, limitScopes{scope}, 200)); got != 200 {
		t.Fatalf("admitted %d of 200 at rpm 1000", got)
	}
	// A call per allowance, each twice the last: 8, 16, 32, 64, 128.
	if n := calls.n.Load(); n > 20 {
		t.Errorf("200 admits made %d round trips, want at most 20 (allowances)", n)
	}
	eventually(t, func() bool { _, open := rpmLog(t, c, l, scope); return open == 0 }, "the last allowance to be settled")
	end := redisNow()
	scores, _ := rpmLog(t, c, l, scope)
	if len(scores) != 200 {
		t.Fatalf("rpm log holds %d entries after settling, want the 200 admitted", len(scores))
	}
	for _, s := range scores {
		if s < start || s > end {
			t.Fatalf("entry at %d, outside the test's [%d, %d]: a permit not settled to its use", s, start, end)
		}
	}
}

// TestLimitRedisAllowanceFleet: three instances, rpm 100, 600
// near-simultaneous requests: exactly 100 admitted, every refusal says rpm
// after up to 60 s (59-60 s unless the burst was slow), and the log holds
// the 100 once settled.
func TestLimitRedisAllowanceFleet(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	fleet := newTestRedisFleet(t, addr, prefix)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	scopes := limitScopes{mappingScope("/allow", Limits{RPM: 100})}
	out := make([]limitResult, 600)
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for g := range 30 {
		wg.Go(func() {
			<-begin
			for i := g; i < len(out); i += 30 {
				out[i] = fleet[i%3].admit(context.Background(), scopes)
			}
		})
	}
	start := redisMillis(t, c)
	close(begin)
	wg.Wait()
	end := redisMillis(t, c)
	if got := countAdmitted(out); got != 100 {
		t.Errorf("admitted %d of 600 at rpm 100 on 3 instances, want 100", got)
	}
	// Every admission is scored at or after start and every refusal was
	// made by end: the oldest leaves the window no sooner than the whole
	// seconds from end to start+60 s, however long the burst took.
	lo := retryFloor(start+60000, end)
	for _, r := range out {
		if !r.admitted && (r.limit != limitRPM || r.retryAfter < lo || r.retryAfter > 60) {
			t.Fatalf("refusal = %s after %d s, want rpm after %d-60 s", r.limit, r.retryAfter, lo)
		}
	}
	eventually(t, func() bool { _, open := rpmLog(t, c, fleet[0], scopes[0]); return open == 0 }, "every allowance to be settled")
	if scores, _ := rpmLog(t, c, fleet[0], scopes[0]); len(scores) != 100 {
		t.Errorf("rpm log holds %d entries, want 100", len(scores))
	}
}

// TestLimitRedisAllowanceNeverRefusedUnder: permits another instance
// reserved and will not use do not refuse a caller under the limit: the
// request that finds the log full while that allowance is open waits for
// it to be settled, and is admitted.
func TestLimitRedisAllowanceNeverRefusedUnder(t *testing.T) {
	addr := testRedisAddr(t)
	key := keyScope("k_under", Limits{RPM: 40})
	for _, tc := range []struct {
		name string
		b    limitScopes // the scopes of b's requests
	}{
		{"allowances", limitScopes{key}},
		// Through a mapping with a concurrency limit, b's requests make
		// a call each (the admit script), which waits the same way.
		{"call per request", limitScopes{mappingScope("/under", Limits{Concurrency: 1000}), key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := testKeyPrefix(t, addr)
			a := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
			// A long term, so that the allowance is certainly open when b
			// fills the log (well under leaseGrace, which bounds a
			// refusal's wait).
			a.leaseTerm = 1500 * time.Millisecond
			b := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
			c := redis.NewClient(&redis.Options{Addr: addr})
			defer c.Close()

			// a admits one request and reserves 8 more permits it will
			// not use.
			aStart := time.Now()
			first := redisMillis(t, c)
			if r := a.admit(context.Background(), limitScopes{key}); !r.admitted {
				t.Fatalf("first request refused by %s", r.limit)
			}
			scores, open := rpmLog(t, c, a, key)
			if open != 1 || len(scores) != 1+leaseMinPermits {
				t.Fatalf("after a's request: %d entries, %d allowances open; want %d and 1", len(scores), open, 1+leaseMinPermits)
			}
			// b sends the other 39 of the 40: the log fills with a's
			// reserved permits counted, yet none of b's is refused.
			sawFull := false // b asked while the log was full and a's allowance open
			for i := range 39 {
				if scores, open := rpmLog(t, c, a, key); len(scores) == 40 && open == 1 {
					sawFull = true
				}
				began := time.Now()
				r := b.admit(context.Background(), tc.b)
				if !r.admitted {
					t.Fatalf("request %d of 40 refused by %s after %d s", i+2, r.limit, r.retryAfter)
				}
				r.ticket.release()
				if d := time.Since(began); d > 100*time.Millisecond {
					t.Logf("request %d of 40 waited %v for a's allowance", i+2, d)
				}
			}
			if _, open := rpmLog(t, c, a, key); open != 0 {
				t.Errorf("%d allowances open after the log filled, want a's settled", open)
			}
			if !sawFull && time.Since(aStart) < a.leaseTerm {
				t.Errorf("b never found the log full while a's allowance was open: the wait was not exercised")
			}
			// The 41st is over the limit: refused once nothing is open.
			// The oldest entry, a's request, was scored at or after first
			// and leaves 60 s later. b waited for a's allowance (a 1.5 s
			// term), so the refusal comes 1.5 s or more after first:
			// Retry-After is bounded by the Redis time read after it.
			r := b.admit(context.Background(), tc.b)
			if lo := retryFloor(first+60000, redisMillis(t, c)); r.admitted || r.limit != limitRPM || r.retryAfter < lo || r.retryAfter > 60 {
				t.Errorf("41st: admitted = %v, %s after %d s; want refused by rpm after %d-60 s", r.admitted, r.limit, r.retryAfter, lo)
			}
			if scores, _ := rpmLog(t, c, a, key); len(scores) != 40 {
				t.Errorf("rpm log holds %d entries, want 40", len(scores))
			}
		})
	}
}

// TestLimitRedisAllowanceSettledOnStop: an instance that stops settles
// the allowance it holds at once, rather than leave its unused permits
// counted.
func TestLimitRedisAllowanceSettledOnStop(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	l := newRedisLimiter(client, prefix, "stopping", testLogger())
	l.leaseTerm = time.Minute // its timer would not settle it within the test
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.run(ctx) })

	scopes := limitScopes{mappingScope("/stop", Limits{RPM: 1000})}
	redisNow := func() int64 { return redisMillis(t, client) }
	granted := redisNow()
	if !l.admit(context.Background(), scopes).admitted {
		t.Fatal("first request refused")
	}
	// The other two take permits of the allowance later: once settled,
	// their scores are when they were used, not when it was granted.
	time.Sleep(200 * time.Millisecond)
	later := redisNow()
	if got := countAdmitted(admitN(l, scopes, 2)); got != 2 {
		t.Fatalf("admitted %d of 2 more", got)
	}
	if scores, open := rpmLog(t, client, l, scopes[0]); open != 1 || len(scores) != 1+leaseMinPermits {
		t.Fatalf("before stop: %d entries, %d open; want %d and 1", len(scores), open, 1+leaseMinPermits)
	}
	cancel()
	wg.Wait()
	stopped := redisNow()
	scores, open := rpmLog(t, client, l, scopes[0])
	if open != 0 || len(scores) != 3 {
		t.Fatalf("after stop: %d entries, %d open; want the 3 used and none", len(scores), open)
	}
	if scores[0] < granted || scores[0] >= later {
		t.Errorf("first request at %d, want its own time in [%d, %d)", scores[0], granted, later)
	}
	for _, sc := range scores[1:] {
		// A use is scored at its offset from the grant rounded up to the
		// next millisecond (never earlier than the use): up to 1 ms past
		// the Redis time read after it.
		if sc < later || sc > stopped+1 {
			t.Errorf("permit used after %d scored %d: want its use time, in [%d, %d]", later, sc, later, stopped+1)
		}
	}
	members := client.ZRange(context.Background(), l.scopeKey(scopes[0], redisLimitRPMKey), 0, -1).Val()
	for _, m := range members {
		if !strings.HasPrefix(m, "stopping:") {
			t.Errorf("member %q is not this instance's", m)
		}
	}
}

// TestLimitRedisLeaseRetry: the lease script run again for the same
// request and allowance (go-redis retrying a call whose answer was lost)
// answers as the first run did and reserves nothing more.
func TestLimitRedisLeaseRetry(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	tag := prefix + "{k:k_lretry}"
	keys := []string{tag + redisLimitRPMKey, tag + redisLimitLeaseKey}
	args := []any{"a:1", 16, leaseMinPermits, leaseTerm.Milliseconds(), leaseGrace.Milliseconds(), "", 0, 0, 0, 1000}
	var first []int64
	for i := range 2 {
		got, err := redisLimitLeaseScript.Run(ctx, c, keys, args...).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = got
			if len(got) != 3 || got[0] != 1 || got[1] != 16 {
				t.Fatalf("first run: %v, want admitted with 16 permits", got)
			}
		} else if fmt.Sprint(got) != fmt.Sprint(first) {
			t.Errorf("retry answered %v, want %v as the first run", got, first)
		}
	}
	if n := c.ZCard(ctx, keys[0]).Val(); n != 17 {
		t.Errorf("rpm log holds %d, want 17 (the request and 16 reserved)", n)
	}
	if n := c.ZCard(ctx, keys[1]).Val(); n != 1 {
		t.Errorf("open allowances = %d, want 1", n)
	}
	// At rpm 1 the log is full after the first run: only the replay
	// branch answers the retry as admitted.
	one := []string{tag + ":one" + redisLimitRPMKey, tag + ":one" + redisLimitLeaseKey}
	args = []any{"b:1", 16, leaseMinPermits, leaseTerm.Milliseconds(), leaseGrace.Milliseconds(), "", 0, 0, 0, 1}
	for i := range 2 {
		got, err := redisLimitLeaseScript.Run(ctx, c, one, args...).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		if got[0] != 1 || got[1] != 0 {
			t.Errorf("run %d at rpm 1: %v, want admitted with no permits", i+1, got)
		}
	}
	if n := c.ZCard(ctx, one[0]).Val(); n != 1 {
		t.Errorf("rpm 1 log holds %d, want 1", n)
	}
}

// TestLimitRedisAllowanceOtherScope: a request its key's rpm refuses does
// not wait for the allowances open on its busy mapping, which did not
// refuse it: one round trip, refused at once.
func TestLimitRedisAllowanceOtherScope(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	busy := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
	busy.leaseTerm = time.Minute // its allowance stays open through the test
	l := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
	calls := &callCounter{}
	l.client.AddHook(calls)
	mapping := mappingScope("/busy", Limits{RPM: 100000})
	if !busy.admit(context.Background(), limitScopes{mapping}).admitted {
		t.Fatal("mapping's first request refused")
	}
	scopes := limitScopes{mapping, keyScope("k_small", Limits{RPM: 2})}
	if got := countAdmitted(admitN(l, scopes, 2)); got != 2 {
		t.Fatalf("admitted %d of the key's 2", got)
	}
	before := calls.n.Load()
	r := l.admit(context.Background(), scopes)
	if r.admitted || r.limit != limitRPM || r.scope.kind != 'k' {
		t.Fatalf("third: admitted = %v, %s in %q; want refused by the key's rpm", r.admitted, r.limit, r.scope.id())
	}
	if n := calls.n.Load() - before; n != 1 {
		t.Errorf("the refusal took %d round trips, want 1 (no wait for the mapping's allowance)", n)
	}
}

// TestLimitRedisAllowanceOutage: an allowance whose settling fails because
// Redis is unreachable is settled once Redis is back, so its permits count
// as used, not for the next minute as reserved.
func TestLimitRedisAllowanceOutage(t *testing.T) {
	rs := startRedisServerPersist(t, true)
	l := newOutageLimiter(t, rs, testLogger())
	l.leaseTerm = time.Minute // settled by the next call, not by its timer

	// The first request's call reserves 8 permits, which the next 8 use.
	scopes := limitScopes{keyScope("k_gone", Limits{RPM: 1000})}
	if got := countAdmitted(admitN(l, scopes, 1+leaseMinPermits)); got != 1+leaseMinPermits {
		t.Fatalf("admitted %d of %d", got, 1+leaseMinPermits)
	}
	rs.kill()
	// The next request's call, which settles the allowance, fails: the
	// request is admitted from the local counts and the settling is kept.
	if !l.admit(context.Background(), scopes).admitted || !l.down.Load() {
		t.Fatalf("redis down: want admitted from the local counts, down = %v", l.down.Load())
	}
	rs.start()
	eventually(t, func() bool { return !l.down.Load() }, "the limiter to see redis back")
	scores, open := rpmLog(t, rs.client(), l, scopes[0])
	if open != 0 || len(scores) != 1+leaseMinPermits {
		t.Errorf("after recovery: %d entries, %d allowances open; want the %d used and none (settling replayed)", len(scores), open, 1+leaseMinPermits)
	}
	now := rs.client().Time(context.Background()).Val().UnixMilli()
	for _, sc := range scores {
		if sc > now {
			t.Errorf("entry at %d, after now (%d): a reserved permit left unsettled", sc, now)
		}
	}
}
