package main

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newTestLocalLimiter returns a localLimiter on clock.
func newTestLocalLimiter(clock *fakeClock) *localLimiter {
	l := newLocalLimiter()
	l.now = clock.Now
	return l
}

// admitN admits scopes n times and returns the results.
func admitN(l limiter, scopes limitScopes, n int) []limitResult {
	out := make([]limitResult, n)
	for i := range out {
		out[i] = l.admit(context.Background(), scopes)
	}
	return out
}

// countAdmitted counts the admitted results.
func countAdmitted(rs []limitResult) int {
	n := 0
	for _, r := range rs {
		if r.admitted {
			n++
		}
	}
	return n
}

// TestLimitLocalRollingRPM: rpm is a rolling 60 s, checked against an
// exact log. Each schedule is a list of (seconds since start, want
// admitted); a caller at exactly N in every rolling 60 s is never refused,
// and Retry-After says when the refused one would pass.
func TestLimitLocalRollingRPM(t *testing.T) {
	type step struct {
		at        float64
		admitted  bool
		retryWant int64 // when refused
	}
	tests := []struct {
		name  string
		rpm   int64
		steps []step
	}{
		{"burst then wait", 3, []step{
			{0, true, 0}, {0, true, 0}, {0, true, 0},
			{0, false, 60}, {59.999, false, 1},
			{60, true, 0}, {60, true, 0}, {60, true, 0}, {60.5, false, 60},
		}},
		{"spread: never more than N in any 60 s", 3, []step{
			{0, true, 0}, {20, true, 0}, {40, true, 0},
			{59, false, 1}, {60, true, 0}, {79.5, false, 1}, {80, true, 0}, {100, true, 0},
			{119, false, 1}, {120, true, 0},
		}},
		{"the refused one is not counted", 2, []step{
			{0, true, 0}, {30, true, 0}, {45, false, 15}, {45, false, 15},
			{60, true, 0}, {89, false, 1}, {90, true, 0},
		}},
		{"partial window: retry names the n-th newest", 3, []step{
			{0, true, 0}, {10, true, 0}, {20, true, 0}, {25, false, 35},
			{60, true, 0}, {61, false, 9},
		}},
		{"rpm 1", 1, []step{{0, true, 0}, {1, false, 59}, {60, true, 0}, {119.9, false, 1}, {120, true, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Unix(1_800_000_000, 0)
			clock := &fakeClock{t: t0}
			l := newTestLocalLimiter(clock)
			scopes := limitScopes{mappingScope("/o", Limits{RPM: tt.rpm})}
			for i, s := range tt.steps {
				clock.Set(t0.Add(time.Duration(s.at * float64(time.Second))))
				r := l.admit(context.Background(), scopes)
				if r.admitted != s.admitted {
					t.Fatalf("step %d at %vs: admitted = %v, want %v", i, s.at, r.admitted, s.admitted)
				}
				if !r.admitted && (r.limit != limitRPM || r.retryAfter != s.retryWant || r.scope.name != "/o") {
					t.Errorf("step %d at %vs: refused by %s of %q after %d s, want rpm of /o after %d s", i, s.at, r.limit, r.scope.name, r.retryAfter, s.retryWant)
				}
			}
		})
	}
}

// TestLimitLocalSteadyCaller: a caller sending exactly N per 60 s, evenly
// or in one burst per minute, for ten minutes, is never refused; one more
// request in any window is.
func TestLimitLocalSteadyCaller(t *testing.T) {
	const n = 7
	t0 := time.Unix(1_800_000_000, 0)
	clock := &fakeClock{t: t0}
	l := newTestLocalLimiter(clock)
	scopes := limitScopes{keyScope("k_a", Limits{RPM: n})}
	for _, burst := range []bool{false, true} {
		start := clock.Now()
		for minute := range 10 {
			for i := range n {
				at := time.Duration(minute) * limitWindow
				if !burst {
					at += time.Duration(i) * limitWindow / n
				}
				clock.Set(start.Add(at))
				if r := l.admit(context.Background(), scopes); !r.admitted {
					t.Fatalf("burst %v minute %d request %d: refused (%s, %d s), want admitted", burst, minute, i, r.limit, r.retryAfter)
				}
			}
			if r := l.admit(context.Background(), scopes); r.admitted {
				t.Fatalf("burst %v minute %d: request n+1 admitted, want refused", burst, minute)
			}
		}
		clock.Set(start.Add(11 * limitWindow))
	}
}

// TestLimitLocalRollingModel compares admit with the definition, over
// random schedules: a request at t is admitted iff fewer than N were
// admitted in (t-60s, t], and Retry-After is when that becomes true.
func TestLimitLocalRollingModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		n := int64(1 + rng.IntN(12))
		t0 := time.Unix(1_800_000_000, 0)
		clock := &fakeClock{t: t0}
		l := newTestLocalLimiter(clock)
		scopes := limitScopes{mappingScope("/m", Limits{RPM: n})}
		var admitted []time.Time
		now := t0
		for step := range 2000 {
			switch rng.IntN(4) {
			case 0: // same instant
			case 1:
				now = now.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
			case 2:
				now = now.Add(time.Duration(rng.IntN(30)) * time.Second)
			case 3: // exactly when an admitted one leaves the window
				if len(admitted) > 0 {
					if e := admitted[rng.IntN(len(admitted))].Add(limitWindow); e.After(now) {
						now = e
					}
				}
			}
			clock.Set(now)
			var in []time.Time
			for _, a := range admitted {
				if a.After(now.Add(-limitWindow)) {
					in = append(in, a)
				}
			}
			want := int64(len(in)) < n
			r := l.admit(context.Background(), scopes)
			if r.admitted != want {
				t.Fatalf("round %d (rpm %d) step %d: admitted = %v, want %v (%d in window)", round, n, step, r.admitted, want, len(in))
			}
			if want {
				admitted = append(admitted, now)
				continue
			}
			if wantRetry := retrySeconds(in[int64(len(in))-n].Add(limitWindow).Sub(now)); r.retryAfter != wantRetry {
				t.Fatalf("round %d step %d: retry after %d, want %d", round, step, r.retryAfter, wantRetry)
			}
		}
	}
}

// TestLimitLocalTPM: tokens count when the response ends, a request is
// admitted while the sum of the last 60 s is below N, and Retry-After says
// when enough buckets leave the window.
func TestLimitLocalTPM(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	clock := &fakeClock{t: t0}
	l := newTestLocalLimiter(clock)
	scopes := limitScopes{mappingScope("/o", Limits{TPM: 100})}
	end := func(at time.Duration, tokens int64) {
		t.Helper()
		clock.Set(t0.Add(at))
		r := l.admit(context.Background(), scopes)
		if !r.admitted {
			t.Fatalf("at %v: refused (%s, %d s), want admitted", at, r.limit, r.retryAfter)
		}
		r.ticket.addTokens(tokens / 2)
		r.ticket.addTokens(tokens - tokens/2)
		r.ticket.release()
		r.ticket.release()
	}
	end(0, 60)
	end(10*time.Second+500*time.Millisecond, 39) // 99: still below 100
	end(20*time.Second, 1)                       // 100 now
	clock.Set(t0.Add(30 * time.Second))
	r := l.admit(context.Background(), scopes)
	if r.admitted || r.limit != limitTPM {
		t.Fatalf("at 100 tokens: admitted = %v (%s), want refused by tpm", r.admitted, r.limit)
	}
	// The 60 of second 0 leave at 60 s: 30 s from now.
	if r.retryAfter != 30 {
		t.Errorf("retry after = %d, want 30", r.retryAfter)
	}
	clock.Set(t0.Add(60*time.Second - time.Millisecond))
	if r := l.admit(context.Background(), scopes); r.admitted || r.retryAfter != 1 {
		t.Errorf("at 59.999 s: admitted = %v, retry after %d; want refused, 1", r.admitted, r.retryAfter)
	}
	clock.Set(t0.Add(60 * time.Second))
	if r := l.admit(context.Background(), scopes); !r.admitted {
		t.Errorf("at 60 s: refused, want admitted (40 tokens left)")
	}
	// Tokens added after release count at once.
	clock.Set(t0.Add(61 * time.Second))
	r = l.admit(context.Background(), scopes)
	r.ticket.release()
	r.ticket.addTokens(70)
	if r := l.admit(context.Background(), scopes); r.admitted {
		t.Errorf("after 110 tokens: admitted, want refused")
	}
}

// TestLimitLocalSweep: scopes that count nothing any more are dropped.
func TestLimitLocalSweep(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	clock := &fakeClock{t: t0}
	l := newTestLocalLimiter(clock)
	for i := range 100 {
		r := l.admit(context.Background(), limitScopes{keyScope("k_"+string(rune('a'+i%26))+string(rune('a'+i/26)), Limits{RPM: 5, Concurrency: 1})})
		if i != 0 {
			r.ticket.release()
		}
	}
	clock.Set(t0.Add(2 * limitWindow))
	l.admit(context.Background(), limitScopes{keyScope("k_new", Limits{RPM: 1})})
	l.mu.Lock()
	n := len(l.scopes)
	l.mu.Unlock()
	if n != 2 { // k_aa still holds a slot, and k_new
		t.Errorf("scopes after sweep = %d, want 2", n)
	}
}

// limiterContract runs the behaviour every limiter shares, on limiters
// made by open (each call a new instance on the same counts, for Redis).
func limiterContract(t *testing.T, open func(t *testing.T) limiter) {
	t.Run("unlimited", func(t *testing.T) {
		l := open(t)
		r := l.admit(context.Background(), limitScopes{mappingScope("/o", Limits{}), keyScope("k_a", Limits{})})
		if !r.admitted || r.ticket != nil {
			t.Errorf("unlimited: admitted = %v, ticket = %v; want true, nil", r.admitted, r.ticket)
		}
		r.ticket.release()
		r.ticket.addTokens(5)
	})
	t.Run("concurrency", func(t *testing.T) {
		l := open(t)
		scopes := limitScopes{mappingScope("/o", Limits{Concurrency: 2})}
		rs := admitN(l, scopes, 5)
		if got := countAdmitted(rs); got != 2 {
			t.Fatalf("admitted %d of 5 at concurrency 2, want 2", got)
		}
		last := rs[4]
		if last.limit != limitConcurrency || last.retryAfter != 1 || last.scope.name != "/o" {
			t.Errorf("refusal = %s of %q after %d s, want concurrency of /o after 1 s", last.limit, last.scope.name, last.retryAfter)
		}
		rs[0].ticket.release()
		rs[0].ticket.release() // idempotent: frees one slot only
		if got := countAdmitted(admitN(l, scopes, 3)); got != 1 {
			t.Errorf("after one release: admitted %d of 3, want 1", got)
		}
	})
	t.Run("refused consumes nothing", func(t *testing.T) {
		l := open(t)
		key := keyScope("k_a", Limits{RPM: 3, Concurrency: 10})
		mapping := mappingScope("/o", Limits{Concurrency: 1})
		first := l.admit(context.Background(), limitScopes{mapping, key})
		if !first.admitted {
			t.Fatalf("first: refused by %s", first.limit)
		}
		// The mapping is full: the key's rpm and slots must not move.
		for range 5 {
			if r := l.admit(context.Background(), limitScopes{mapping, key}); r.admitted || r.limit != limitConcurrency || r.scope.kind != 'm' {
				t.Fatalf("mapping full: admitted = %v by %s of %c, want refused by the mapping's concurrency", r.admitted, r.limit, r.scope.kind)
			}
		}
		if got := countAdmitted(admitN(l, limitScopes{key}, 5)); got != 2 {
			t.Errorf("key alone after refusals: admitted %d, want 2 (rpm 3, one used)", got)
		}
		first.ticket.release()
	})
	t.Run("longest wait wins", func(t *testing.T) {
		l := open(t)
		key := keyScope("k_b", Limits{RPM: 1})
		mapping := mappingScope("/p", Limits{Concurrency: 1})
		r := l.admit(context.Background(), limitScopes{mapping, key})
		defer r.ticket.release()
		r = l.admit(context.Background(), limitScopes{mapping, key})
		if r.admitted || r.limit != limitRPM || r.scope.kind != 'k' || r.retryAfter < 59 || r.retryAfter > 60 {
			t.Errorf("refusal = %s of %c after %d s, want rpm of the key after 59-60 s", r.limit, r.scope.kind, r.retryAfter)
		}
	})
	t.Run("burst against rpm 5", func(t *testing.T) {
		l := open(t)
		scopes := limitScopes{keyScope("k_burst", Limits{RPM: 5})}
		var admitted atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range 20 {
			wg.Go(func() {
				for range 500 {
					r := l.admit(context.Background(), scopes)
					if r.admitted {
						admitted.Add(1)
					} else if r.limit != limitRPM || r.retryAfter < 1 || r.retryAfter > 60 {
						t.Errorf("refusal = %s after %d s, want rpm after 1-60 s", r.limit, r.retryAfter)
					}
				}
			})
		}
		wg.Wait()
		if got := admitted.Load(); got != 5 {
			t.Errorf("admitted %d of 10,000, want 5", got)
		}
		t.Logf("10,000 admits in %v", time.Since(start))
	})
	t.Run("huge limits", func(t *testing.T) {
		l := open(t)
		start := time.Now()
		big := Limits{RPM: math.MaxInt64, TPM: math.MaxInt64, Concurrency: math.MaxInt64}
		scopes := limitScopes{mappingScope("/big", big), keyScope("k_big", big)}
		for i := range 3 {
			r := l.admit(context.Background(), scopes)
			if !r.admitted {
				t.Fatalf("admit %d under huge limits: refused by %s", i, r.limit)
			}
			r.ticket.addTokens(math.MaxInt64)
			r.ticket.addTokens(math.MaxInt64)
			r.ticket.release()
		}
		// Token sums saturate at 2^53: a tpm at or above it is reached.
		small := limitScopes{mappingScope("/big", Limits{TPM: maxCountedTokens})}
		r := l.admit(context.Background(), small)
		if lo := tokensRetryFloor(start); r.admitted {
			t.Errorf("after saturated token sums, tpm 2^53: admitted, want refused")
		} else if r.limit != limitTPM || r.retryAfter < lo || r.retryAfter > 60 {
			t.Errorf("refusal = %s after %d s, want tpm after %d-60 s", r.limit, r.retryAfter, lo)
		}
	})
	t.Run("tpm", func(t *testing.T) {
		l := open(t)
		scopes := limitScopes{mappingScope("/t", Limits{TPM: 100}), keyScope("k_t", Limits{Concurrency: 5})}
		start := time.Now()
		r := l.admit(context.Background(), scopes)
		r.ticket.addTokens(99)
		r.ticket.release()
		r = l.admit(context.Background(), scopes)
		if !r.admitted {
			t.Fatalf("at 99 tokens: refused by %s", r.limit)
		}
		r.ticket.addTokens(1)
		r.ticket.release()
		r = l.admit(context.Background(), scopes)
		if lo := tokensRetryFloor(start); r.admitted || r.limit != limitTPM || r.scope.kind != 'm' || r.retryAfter < lo || r.retryAfter > 60 {
			t.Errorf("at 100 tokens: admitted = %v, refusal = %s of %c after %d s; want tpm of the mapping after %d-60 s", r.admitted, r.limit, r.scope.kind, r.retryAfter, lo)
		}
	})
}

// tokensRetryFloor is the least Retry-After of a tpm refusal made now for
// tokens counted since start, on the limiter's clock whatever it is (the
// instance's or Redis's): their bucket is the second they were counted in,
// which began less than 1 s before start, and leaves the window 60 s after
// it began. That is 59 s from start, less the time the calls took since:
// a bound that holds at any second boundary however slow the calls.
func tokensRetryFloor(start time.Time) int64 {
	return retrySeconds(59*time.Second - time.Since(start))
}

func TestLimitLocalContract(t *testing.T) {
	limiterContract(t, func(t *testing.T) limiter { return newLocalLimiter() })
}

// TestLimitLocalBurstMemory: 10,000 admits against rpm 5 keep 5 entries.
func TestLimitLocalBurstMemory(t *testing.T) {
	l := newLocalLimiter()
	scopes := limitScopes{keyScope("k_a", Limits{RPM: 5})}
	if got := countAdmitted(admitN(l, scopes, 10000)); got != 5 {
		t.Fatalf("admitted %d, want 5", got)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := l.scopes[scopeKey{'k', "k_a"}]
	if n := len(sc.admits) - sc.head; n != 5 || cap(sc.admits) > 8 {
		t.Errorf("log holds %d entries (cap %d), want 5 (cap ≤ 8)", n, cap(sc.admits))
	}
}

// TestLimitUnlimitedAllocs: a request without limits allocates nothing.
func TestLimitUnlimitedAllocs(t *testing.T) {
	l := newLocalLimiter()
	scopes := limitScopes{mappingScope("/o", Limits{}), keyScope("k_a", Limits{})}
	if n := testing.AllocsPerRun(100, func() { l.admit(context.Background(), scopes) }); n != 0 {
		t.Errorf("allocs per unlimited admit = %v, want 0", n)
	}
}

func BenchmarkLimiterLocalAdmit(b *testing.B) {
	l := newLocalLimiter()
	scopes := limitScopes{mappingScope("/o", Limits{RPM: math.MaxInt64, Concurrency: 1 << 40}), keyScope("k_a", Limits{TPM: 1 << 60})}
	b.ReportAllocs()
	for b.Loop() {
		r := l.admit(context.Background(), scopes)
		r.ticket.addTokens(10)
		r.ticket.release()
	}
}
