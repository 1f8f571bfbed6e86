package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// newTestRedisLimiter returns a limiter of its own instance (own client,
// own instance id) on addr under keyPrefix, with run started; cleanup stops
// run and closes the client.
func newTestRedisLimiter(t testing.TB, addr, keyPrefix string, lease time.Duration, logger *slog.Logger) *redisLimiter {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	l := newRedisLimiter(c, keyPrefix, rand.Text()[:10], logger)
	if lease > 0 {
		l.lease = lease
	}
	l.probeEvery = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		c.Close()
	})
	return l
}

// newTestRedisFleet returns three limiters of their own instances on addr
// under keyPrefix, as newTestRedisLimiter makes them.
func newTestRedisFleet(t testing.TB, addr, keyPrefix string) [3]*redisLimiter {
	t.Helper()
	var fleet [3]*redisLimiter
	for i := range fleet {
		fleet[i] = newTestRedisLimiter(t, addr, keyPrefix, 0, testLogger())
	}
	return fleet
}

func TestLimitRedisContract(t *testing.T) {
	addr := testRedisAddr(t)
	limiterContract(t, func(t *testing.T) limiter {
		return newTestRedisLimiter(t, addr, testKeyPrefix(t, addr), 0, testLogger())
	})
}

// TestLimitRedisFleet: three instances on one Redis, 30 near-simultaneous
// requests round-robin: exactly rpm of them are admitted; with concurrency
// 2 and held slots, exactly 2, and a release frees one for any instance.
func TestLimitRedisFleet(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	fleet := newTestRedisFleet(t, addr, prefix)
	burst := func(scopes limitScopes) []limitResult {
		out := make([]limitResult, 30)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range out {
			wg.Go(func() {
				<-start
				out[i] = fleet[i%3].admit(context.Background(), scopes)
			})
		}
		close(start)
		wg.Wait()
		return out
	}
	t.Run("rpm", func(t *testing.T) {
		rs := burst(limitScopes{mappingScope("/fleet", Limits{RPM: 10})})
		if got := countAdmitted(rs); got != 10 {
			t.Errorf("admitted %d of 30 at rpm 10 on 3 instances, want 10", got)
		}
		for _, r := range rs {
			if !r.admitted && (r.limit != limitRPM || r.retryAfter < 59 || r.retryAfter > 60) {
				t.Errorf("refusal = %s after %d s, want rpm after 59-60 s", r.limit, r.retryAfter)
			}
		}
	})
	t.Run("concurrency", func(t *testing.T) {
		scopes := limitScopes{keyScope("k_fleet", Limits{Concurrency: 2})}
		rs := burst(scopes)
		var held []*limitTicket
		for _, r := range rs {
			if r.admitted {
				held = append(held, r.ticket)
			}
		}
		if len(held) != 2 {
			t.Fatalf("admitted %d of 30 at concurrency 2 on 3 instances, want 2", len(held))
		}
		held[0].release()
		if got := countAdmitted(burst(scopes)); got != 1 {
			t.Errorf("after one release: admitted %d of 30, want 1", got)
		}
	})
}

// TestLimitRedisRollingWindow: the rpm log is Redis's clock, entries leave
// it exactly 60 s after their admission, and Retry-After is when the
// oldest that must leave does. Old admissions are written straight into
// the ZSET rather than waited for.
func TestLimitRedisRollingWindow(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	l := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	scope := keyScope("k_roll", Limits{RPM: 3})
	key := l.scopeKey(scope, redisLimitRPMKey)
	redisNow := func() int64 { return redisMillis(t, c) }

	// Three admitted 50 s, 30 s and 1 s ago: full; the first leaves 10 s
	// after now, so Retry-After is the whole seconds from the admit's own
	// Redis time (between now and done) to then: exact however long the
	// calls take, up to 10 s.
	now := redisNow()
	c.ZAdd(ctx, key, redis.Z{Score: float64(now - 50000), Member: "a"}, redis.Z{Score: float64(now - 30000), Member: "b"}, redis.Z{Score: float64(now - 1000), Member: "c"})
	r := l.admit(ctx, limitScopes{scope})
	done := redisNow()
	if lo := retryFloor(now+10000, done); r.admitted || r.limit != limitRPM || r.retryAfter < lo || r.retryAfter > 10 {
		t.Fatalf("3 in window: admitted = %v, %s after %d s; want refused by rpm after %d-10 s", r.admitted, r.limit, r.retryAfter, lo)
	}
	// Moved to exactly 60 s ago (or more), the first has left: admitted,
	// and the log holds the three in the window, the new one at Redis's now.
	before := redisNow()
	c.ZAdd(ctx, key, redis.Z{Score: float64(before - 60000), Member: "a"})
	if r := l.admit(ctx, limitScopes{scope}); !r.admitted {
		t.Fatalf("first left the window: refused by %s", r.limit)
	}
	after := redisNow()
	zs, err := c.ZRangeWithScores(ctx, key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(zs) != 3 || zs[0].Member != "b" || zs[1].Member != "c" {
		t.Fatalf("log = %v, want b, c and the new one", zs)
	}
	if s := int64(zs[2].Score); s < before || s > after || !strings.HasPrefix(zs[2].Member.(string), l.instance+":") {
		t.Errorf("new entry %v at %d, want this instance's member at Redis time in [%d, %d]", zs[2].Member, s, before, after)
	}
	// Retry-After is from the oldest that must leave: b, which leaves at
	// now+30 s, counted from the admit's Redis time (after .. again).
	r = l.admit(ctx, limitScopes{scope})
	again := redisNow()
	if lo := retryFloor(now+30000, again); r.admitted || r.retryAfter < lo || r.retryAfter > 30 {
		t.Errorf("full again: admitted = %v, retry after %d; want refused, %d-30 s", r.admitted, r.retryAfter, lo)
	}
	if ttl := c.PTTL(ctx, key).Val(); ttl <= 0 || ttl > limitWindow {
		t.Errorf("rpm key TTL = %v, want (0, 60 s]", ttl)
	}
}

// redisMillis is Redis's clock (TIME) in Unix milliseconds: the clock the
// limiter's script scores and refuses by.
func redisMillis(t testing.TB, c *redis.Client) int64 {
	tm, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return tm.UnixMilli()
}

// retryFloor is the least Retry-After (whole seconds) of a refusal for an
// entry that leaves the window at leaves, made no later than done (both
// Redis Unix ms): a bound that holds however long the calls took.
func retryFloor(leaves, done int64) int64 {
	return retrySeconds(time.Duration(leaves-done) * time.Millisecond)
}

// TestLimitRedisTPMBuckets: tokens land in the bucket of Redis's second,
// and buckets older than 60 s are dropped and no longer counted.
func TestLimitRedisTPMBuckets(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	l := newTestRedisLimiter(t, addr, prefix, 0, testLogger())
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	scope := mappingScope("/tpm", Limits{TPM: 1000})
	key := l.scopeKey(scope, redisLimitTPMKey)
	// A bucket 60 s old (dropped at any later time too) and one 50 s old,
	// which stays in the window for 10 s: room enough for slow calls.
	sec := c.Time(ctx).Val().Unix()
	c.HSet(ctx, key, fmt.Sprint(sec-60), 5000, fmt.Sprint(sec-50), 600)
	r := l.admit(ctx, limitScopes{scope})
	if !r.admitted {
		t.Fatalf("600 in window: refused by %s", r.limit)
	}
	if c.HExists(ctx, key, fmt.Sprint(sec-60)).Val() {
		t.Errorf("a bucket 60 s old was kept")
	}
	r.ticket.addTokens(400)
	r.ticket.release()
	h := c.HGetAll(ctx, key).Val()
	var sum int
	for _, v := range h {
		var n int
		fmt.Sscan(v, &n)
		sum += n
	}
	if sum != 1000 {
		t.Errorf("buckets %v sum to %d, want 1000", h, sum)
	}
	r = l.admit(ctx, limitScopes{scope})
	done := c.Time(ctx).Val()
	// The 600 of sec-50 leave at sec+10: the admit ran between sec and
	// done, so Retry-After lies between the seconds from done and 10.
	lo := retrySeconds(time.Unix(sec+10, 0).Sub(done))
	if r.admitted || r.limit != limitTPM || r.retryAfter < lo || r.retryAfter > 10 {
		t.Errorf("1000 in window: admitted = %v, %s after %d s; want refused by tpm after %d-10 s", r.admitted, r.limit, r.retryAfter, lo)
	}
}

// TestLimitRedisLeaseExpiry: an instance that dies holding slots (never
// releases, stops renewing) frees them once its leases expire, while a live
// instance that renews keeps its slot past the lease.
func TestLimitRedisLeaseExpiry(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	// Renewed every third of it: a live instance keeps its slot through a
	// stall of up to 1 s on a loaded machine.
	const lease = 1500 * time.Millisecond
	scopes := limitScopes{mappingScope("/lease", Limits{Concurrency: 2})}

	// The crashed instance: its run loop is never started.
	crashed := newRedisLimiter(redis.NewClient(&redis.Options{Addr: addr}), prefix, "crashed", testLogger())
	crashed.lease = lease
	defer crashed.client.Close()
	if r := crashed.admit(context.Background(), scopes); !r.admitted {
		t.Fatalf("crashed instance: refused by %s", r.limit)
	}
	live := newTestRedisLimiter(t, addr, prefix, lease, testLogger())
	held := live.admit(context.Background(), scopes)
	if !held.admitted {
		t.Fatalf("live instance: refused by %s", held.limit)
	}
	other := newTestRedisLimiter(t, addr, prefix, lease, testLogger())
	if r := other.admit(context.Background(), scopes); r.admitted {
		t.Fatalf("third slot admitted at concurrency 2")
	}
	start := time.Now()
	var got limitResult
	eventually(t, func() bool {
		got = other.admit(context.Background(), scopes)
		return got.admitted
	}, "the crashed instance's lease to expire")
	if d := time.Since(start); d < lease/2 {
		t.Errorf("slot freed after %v, before the lease (%v) could expire", d, lease)
	}
	defer got.ticket.release()
	// Both slots are held by live instances now; the live one's outlasts
	// several lease durations because run renews it.
	deadline := time.Now().Add(3 * lease)
	eventually(t, func() bool {
		if r := other.admit(context.Background(), scopes); r.admitted {
			r.ticket.release()
			t.Fatalf("a renewed slot expired: a third request was admitted at concurrency 2")
		}
		return time.Now().After(deadline)
	}, "three lease durations")
	held.ticket.release()
	if r := other.admit(context.Background(), scopes); !r.admitted {
		t.Errorf("after release: refused by %s", r.limit)
	} else {
		r.ticket.release()
	}
}

// TestLimitRedisOutage: with Redis down, admits fall back to the
// instance's own counts and never fail, the log says so once; releases made
// meanwhile are replayed, and once Redis is back the shared counts apply.
func TestLimitRedisOutage(t *testing.T) {
	rs := startRedisServerPersist(t, true)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	l := newOutageLimiter(t, rs, logger)

	conc := limitScopes{keyScope("k_out", Limits{Concurrency: 1})}
	rpm := limitScopes{mappingScope("/out", Limits{RPM: 3})}
	heldAcross := l.admit(context.Background(), conc)
	if !heldAcross.admitted || l.down.Load() {
		t.Fatalf("redis up: admitted = %v, down = %v", heldAcross.admitted, l.down.Load())
	}
	if got := countAdmitted(admitN(l, rpm, 2)); got != 2 {
		t.Fatalf("redis up: admitted %d of 2", got)
	}

	rs.kill()
	// Local counts: rpm 3 starts afresh on this instance alone.
	rsDown := admitN(l, rpm, 5)
	if got := countAdmitted(rsDown); got != 3 {
		t.Errorf("redis down: admitted %d of 5 at rpm 3, want 3 (local counts)", got)
	}
	if !l.down.Load() {
		t.Errorf("redis down: limiter not in fallback")
	}
	heldAcross.ticket.release() // kept for when Redis is back
	for _, r := range rsDown {
		r.ticket.release()
	}

	rs.start()
	eventually(t, func() bool { return !l.down.Load() }, "the limiter to see redis back")
	// The release made during the outage was replayed: the slot is free in
	// Redis, and the shared rpm log (2 of 3 used before the outage) applies.
	if n := rs.client().ZCard(context.Background(), l.scopeKey(conc[0], redisLimitConcKey)).Val(); n != 0 {
		t.Errorf("conc leases after recovery = %d, want 0 (release replayed)", n)
	}
	if got := countAdmitted(admitN(l, rpm, 3)); got != 1 {
		t.Errorf("redis back: admitted %d of 3, want 1 (shared count: 2 of 3 used)", got)
	}
	out := logs.String()
	if n := strings.Count(out, "redis unreachable"); n != 1 {
		t.Errorf("fallback logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "redis reachable again"); n != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", n, out)
	}
}

// newOutageLimiter returns a limiter on rs for tests that stop and start
// it: no go-redis retries, a short dial timeout, Redis probed every 10 ms,
// run started; cleanup stops run and closes the client.
func newOutageLimiter(t testing.TB, rs *redisServer, logger *slog.Logger) *redisLimiter {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: rs.addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	l := newRedisLimiter(c, redisKeyPrefix, "inst", logger)
	l.probeEvery = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); c.Close() })
	return l
}

// TestLimitRedisBurst: 10,000 requests against rpm 5 from three instances:
// 5 admitted, the rest refused at once, and the log holds 5 entries.
func TestLimitRedisBurst(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	fleet := newTestRedisFleet(t, addr, prefix)
	scopes := limitScopes{keyScope("k_burst", Limits{RPM: 5})}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range 40 {
		wg.Go(func() {
			for range 10000 / 40 {
				if fleet[g%3].admit(context.Background(), scopes).admitted {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := admitted.Load(); got != 5 {
		t.Errorf("admitted %d, want 5", got)
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if n := c.ZCard(context.Background(), fleet[0].scopeKey(scopes[0], redisLimitRPMKey)).Val(); n != 5 {
		t.Errorf("rpm log holds %d entries, want 5", n)
	}
	t.Logf("10,000 admits in %v", time.Since(start))
}

// TestLimitRedisUnlimitedAllocs: a request without limits makes no round
// trip and allocates nothing.
func TestLimitRedisUnlimitedAllocs(t *testing.T) {
	l := newRedisLimiter(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), redisKeyPrefix, "x", testLogger())
	defer l.client.Close()
	scopes := limitScopes{mappingScope("/o", Limits{}), keyScope("k_a", Limits{})}
	if n := testing.AllocsPerRun(100, func() { l.admit(context.Background(), scopes) }); n != 0 {
		t.Errorf("allocs per unlimited admit = %v, want 0", n)
	}
	if l.down.Load() {
		t.Errorf("an unlimited admit reached redis")
	}
}

// BenchmarkLimiterRedisAdmit: limited admits (rpm, tpm and concurrency on
// the mapping, rpm on the key) through the Redis of APIPROXY_TEST_REDIS_ADDR,
// each released (a second round trip that counts tokens). Serial: one
// request at a time, for the latency a request sees; parallel: 16
// goroutines per CPU of one instance, as concurrent requests would, for
// the admits one instance can make per second. Reports admits/s, the
// p50/p99 of one admit and this process's CPU per admit and release.
func BenchmarkLimiterRedisAdmit(b *testing.B) {
	big := int64(math.MaxInt64)
	benchLimiterRedis(b, limitScopes{mappingScope("/bench", Limits{RPM: big, TPM: big, Concurrency: big}), keyScope("k_bench", Limits{RPM: big})})
}

// BenchmarkLimiterRedisAdmitOnly: admits alone (rpm on the key: no ticket,
// nothing to release), the one round trip a limited request costs before
// it is forwarded.
func BenchmarkLimiterRedisAdmitOnly(b *testing.B) {
	benchLimiterRedis(b, limitScopes{keyScope("k_bench", Limits{RPM: math.MaxInt64})})
}

func benchLimiterRedis(b *testing.B, scopes limitScopes) {
	addr := testRedisAddr(b)
	for _, par := range []int{0, 16} {
		name := "serial"
		if par > 0 {
			name = "parallel"
		}
		b.Run(name, func(b *testing.B) {
			l := newTestRedisLimiter(b, addr, testKeyPrefix(b, addr), 0, testLogger())
			var mu sync.Mutex
			var lat []time.Duration
			one := func(mine *[]time.Duration) {
				t0 := time.Now()
				r := l.admit(context.Background(), scopes)
				*mine = append(*mine, time.Since(t0))
				if !r.admitted {
					b.Errorf("refused by %s", r.limit)
				}
				r.ticket.addTokens(10)
				r.ticket.release()
			}
			b.ReportAllocs()
			cpu0 := processCPU()
			start := time.Now()
			if par == 0 {
				for b.Loop() {
					one(&lat)
				}
			} else {
				b.SetParallelism(par)
				b.RunParallel(func(pb *testing.PB) {
					var mine []time.Duration
					for pb.Next() {
						one(&mine)
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admits/s")
			b.ReportMetric(float64(percentile(lat, 50))/float64(time.Microsecond), "p50-µs")
			b.ReportMetric(float64(percentile(lat, 99))/float64(time.Microsecond), "p99-µs")
		})
	}
}

// TestLimitRedisAdmitRetry: the admit script run again for the same
// request (go-redis retrying a call whose answer was lost) answers
// admitted again and counts nothing more.
func TestLimitRedisAdmitRetry(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	tag := prefix + "{k:k_retry}"
	keys := []string{tag + redisLimitRPMKey, tag + redisLimitTPMKey, tag + redisLimitConcKey, tag + redisLimitLeaseKey}
	for i, member := range []string{"a:1", "a:1", "a:2"} {
		got, err := redisLimitAdmitScript.Run(ctx, c, keys, member, 60000, 1, 0, 1, leaseGrace.Milliseconds()).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		if want := i < 2; (got[0] == 1) != want {
			t.Errorf("call %d (%s): answer %v, want admitted %v", i, member, got, want)
		}
	}
	if n := c.ZCard(ctx, keys[0]).Val(); n != 1 {
		t.Errorf("rpm log holds %d, want 1", n)
	}
	if n := c.ZCard(ctx, keys[2]).Val(); n != 1 {
		t.Errorf("leases = %d, want 1", n)
	}
}

// TestLimitRedisFleetChurn: three instances admit and release concurrently
// against concurrency 2: never more than 2 requests hold a slot at once,
// and slots keep being handed on.
func TestLimitRedisFleetChurn(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	fleet := newTestRedisFleet(t, addr, prefix)
	scopes := limitScopes{mappingScope("/churn", Limits{Concurrency: 2}), keyScope("k_churn", Limits{Concurrency: 5})}
	var inflight, most, admitted atomic.Int64
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			for range 200 {
				r := fleet[g%3].admit(context.Background(), scopes)
				if !r.admitted {
					continue
				}
				admitted.Add(1)
				n := inflight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				fleet[g%3].client.Ping(context.Background()) // hold it for a round trip
				inflight.Add(-1)
				r.ticket.release()
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > 2 {
		t.Errorf("%d requests held a slot at once, want at most 2", m)
	}
	if admitted.Load() < 10 {
		t.Errorf("only %d of 2400 admitted: slots are not handed on", admitted.Load())
	}
	t.Logf("%d of 2400 admitted, at most %d at once", admitted.Load(), most.Load())
}
