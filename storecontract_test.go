package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storeOpener opens a fresh store for one test, initialised as a first
// start would (defaults seeded), and returns it with reopen, which opens
// another handle on the same data the way a restarted process (or another
// instance) would. reopen may close s first (bbolt locks its file); the
// test must not use s afterwards. Cleanup closes everything.
type storeOpener func(t *testing.T) (s Store, reopen func(t *testing.T) Store)

// TestStoreContract runs the one Store contract against every store, as
// gatus's storage tests do for each backend.
func TestStoreContract(t *testing.T) {
	t.Run("bolt", func(t *testing.T) { testStoreContract(t, openContractBoltStore) })
	t.Run("redis", func(t *testing.T) {
		addr := testRedisAddr(t)
		testStoreContract(t, func(t *testing.T) (Store, func(t *testing.T) Store) {
			prefix := testKeyPrefix(t, addr)
			s := openTestRedisStore(t, addr, prefix, "")
			return s, func(t *testing.T) Store { return openTestRedisStore(t, addr, prefix, "") }
		})
	})
}

func openContractBoltStore(t *testing.T) (Store, func(t *testing.T) Store) {
	dir := t.TempDir()
	open := func(t *testing.T) *boltStore {
		t.Helper()
		s, err := openBoltStore(dir)
		if err != nil {
			t.Fatalf("openBoltStore: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	first := open(t)
	return first, func(t *testing.T) Store {
		first.Close()
		return open(t)
	}
}

func testStoreContract(t *testing.T, open storeOpener) {
	ctx := context.Background()
	mustList := func(t *testing.T, s Store) []Mapping {
		t.Helper()
		ms, err := s.Mappings(ctx)
		if err != nil {
			t.Fatalf("Mappings: %v", err)
		}
		return ms
	}
	// mustMappings is the listing as prefix → first target URL.
	mustMappings := func(t *testing.T, s Store) map[string]string {
		t.Helper()
		return mappingsMap(mustList(t, s))
	}

	t.Run("seeds the defaults", func(t *testing.T) {
		s, _ := open(t)
		if got, want := mustList(t, s), defaultMappings(); !reflect.DeepEqual(got, want) {
			t.Errorf("Mappings() = %v, want defaultMappings() %v", got, want)
		}
	})

	t.Run("Mappings returns the caller's copy", func(t *testing.T) {
		s, _ := open(t)
		ms := mustList(t, s)
		ms[0].Prefix = "/mutated"
		ms[1].Targets[0].URL = "https://example.com"
		_ = append(ms[:2], newMapping("/appended", "https://example.com"))
		if got, want := mustList(t, s), defaultMappings(); !reflect.DeepEqual(got, want) {
			t.Errorf("after changing the returned slice, Mappings() = %v, want the defaults", got)
		}
	})

	t.Run("Mappings is sorted by prefix", func(t *testing.T) {
		s, _ := open(t)
		for _, p := range []string{"/zz", "/a", "/openai/v2", "/A", "/a.b", "/a/b"} {
			if err := s.CreateMapping(ctx, newMapping(p, "https://x.example")); err != nil {
				t.Fatalf("CreateMapping(%s): %v", p, err)
			}
		}
		ms := mustList(t, s)
		if !slices.IsSortedFunc(ms, func(a, b Mapping) int { return strings.Compare(a.Prefix, b.Prefix) }) {
			var got []string
			for _, m := range ms {
				got = append(got, m.Prefix)
			}
			t.Errorf("Mappings() in the order %q, want sorted by prefix", got)
		}
	})

	t.Run("create", func(t *testing.T) {
		s, _ := open(t)
		if err := s.CreateMapping(ctx, newMapping("/new", "https://new.example")); err != nil {
			t.Fatalf("CreateMapping(/new): %v", err)
		}
		if got := mustMappings(t, s)["/new"]; got != "https://new.example" {
			t.Errorf("target of /new = %q, want https://new.example", got)
		}
		err := s.CreateMapping(ctx, newMapping("/new", "https://other.example"))
		if !errors.Is(err, errMappingExists) {
			t.Errorf("second CreateMapping(/new) = %v, want errMappingExists", err)
		}
		if got := mustMappings(t, s)["/new"]; got != "https://new.example" {
			t.Errorf("after a refused create, target of /new = %q, want it unchanged", got)
		}
	})

	t.Run("update", func(t *testing.T) {
		s, _ := open(t)
		if err := s.UpdateMapping(ctx, newMapping("/openai", "https://mirror.example/v1")); err != nil {
			t.Fatalf("UpdateMapping(/openai): %v", err)
		}
		if got := mustMappings(t, s)["/openai"]; got != "https://mirror.example/v1" {
			t.Errorf("target of /openai = %q, want https://mirror.example/v1", got)
		}
		err := s.UpdateMapping(ctx, newMapping("/missing", "https://x.example"))
		if !errors.Is(err, errMappingNotFound) {
			t.Errorf("UpdateMapping(/missing) = %v, want errMappingNotFound", err)
		}
		if _, ok := mustMappings(t, s)["/missing"]; ok {
			t.Errorf("UpdateMapping of a missing prefix created it")
		}
	})

	t.Run("delete", func(t *testing.T) {
		s, _ := open(t)
		if err := s.DeleteMapping(ctx, "/openai"); err != nil {
			t.Fatalf("DeleteMapping(/openai): %v", err)
		}
		if _, ok := mustMappings(t, s)["/openai"]; ok {
			t.Errorf("/openai still listed after DeleteMapping")
		}
		if err := s.DeleteMapping(ctx, "/openai"); !errors.Is(err, errMappingNotFound) {
			t.Errorf("second DeleteMapping(/openai) = %v, want errMappingNotFound", err)
		}
	})

	// SPEC §9: a mapping with several targets or any option is stored as
	// a JSON object and reads back equal, on this handle and after a
	// restart; a plain one keeps the original value, its URL.
	t.Run("object mappings are stored and read back equal", func(t *testing.T) {
		s, reopen := open(t)
		ms := []Mapping{
			newMapping("/plain", "https://plain.example/v1"),
			{Prefix: "/multi", Targets: []Target{{URL: "https://a.example", Weight: 3}, {URL: "http://127.0.0.1:11434/v1", Weight: 1}},
				Balance: balanceWeighted, RetryOn: []int{429, 503}, StreamIdleTimeout: 45 * time.Second},
			{Prefix: "/noretry", Targets: []Target{{URL: "https://a.example"}}, RetryOn: []int{}},
			{Prefix: "/keyed", Auth: authKeys, Targets: []Target{{URL: "https://a.example", Key: "sk-contract-0123456789", AuthStyle: "x-api-key"}}},
		}
		for _, m := range ms {
			if err := s.CreateMapping(ctx, m); err != nil {
				t.Fatalf("CreateMapping(%s): %v", m.Prefix, err)
			}
		}
		check := func(t *testing.T, s Store) {
			t.Helper()
			got := mustList(t, s)
			for _, want := range ms {
				i := slices.IndexFunc(got, func(m Mapping) bool { return m.Prefix == want.Prefix })
				if i < 0 {
					t.Errorf("%s is not listed", want.Prefix)
					continue
				}
				if g, w := storedForm(got[i]), storedForm(want); g != w {
					t.Errorf("%s reads back as %s, want %s", want.Prefix, g, w)
				}
			}
		}
		check(t, s)
		if v := rawStoredValue(t, s, "/plain"); v != "https://plain.example/v1" {
			t.Errorf("stored value of /plain = %q, want the URL alone", v)
		}
		for _, p := range []string{"/multi", "/noretry", "/keyed"} {
			if v := rawStoredValue(t, s, p); !strings.HasPrefix(v, "{") {
				t.Errorf("stored value of %s = %q, want a JSON object", p, v)
			}
		}
		// Replaced by the original form, the object becomes a URL again.
		if err := s.UpdateMapping(ctx, newMapping("/noretry", "https://b.example")); err != nil {
			t.Fatalf("UpdateMapping(/noretry): %v", err)
		}
		if v := rawStoredValue(t, s, "/noretry"); v != "https://b.example" {
			t.Errorf("stored value of /noretry after a plain update = %q, want the URL", v)
		}
		// And a plain mapping replaced by an object becomes one.
		ms[0] = Mapping{Prefix: "/plain", Targets: []Target{{URL: "https://plain.example/v1"}, {URL: "https://b.example"}}}
		if err := s.UpdateMapping(ctx, ms[0]); err != nil {
			t.Fatalf("UpdateMapping(/plain): %v", err)
		}
		if v := rawStoredValue(t, s, "/plain"); !strings.HasPrefix(v, "{") {
			t.Errorf("stored value of /plain after an object update = %q, want a JSON object", v)
		}
		ms[2] = newMapping("/noretry", "https://b.example")
		check(t, reopen(t))
	})

	t.Run("a deleted default stays deleted after a restart", func(t *testing.T) {
		s, reopen := open(t)
		if err := s.DeleteMapping(ctx, "/openai"); err != nil {
			t.Fatalf("DeleteMapping(/openai): %v", err)
		}
		if err := s.CreateMapping(ctx, newMapping("/kept", "https://kept.example")); err != nil {
			t.Fatalf("CreateMapping(/kept): %v", err)
		}
		got := mustMappings(t, reopen(t))
		if _, ok := got["/openai"]; ok {
			t.Errorf("after a restart /openai is back: %v", got)
		}
		if got["/kept"] != "https://kept.example" {
			t.Errorf("after a restart /kept = %q, want https://kept.example", got["/kept"])
		}
	})

	t.Run("concurrent creates of one prefix: exactly one wins", func(t *testing.T) {
		s, _ := open(t)
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = s.CreateMapping(ctx, newMapping("/race", fmt.Sprintf("https://t%d.example", i)))
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Errorf("creates %d and %d both succeeded", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, errMappingExists):
				t.Errorf("create %d: %v, want nil or errMappingExists", i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("no create succeeded: %v", errs)
		}
		if got, want := mustMappings(t, s)["/race"], fmt.Sprintf("https://t%d.example", winner); got != want {
			t.Errorf("stored target = %q, want the winner's %q", got, want)
		}
	})

	// A write's caller reloads, so the store must not ask for a second
	// reload (issue 13). The Pub/Sub half of this, a Redis store's own
	// message coming back, is TestRedisReloadOnce's.
	t.Run("a write through the store signals no Changes", func(t *testing.T) {
		s, _ := open(t)
		mustList(t, s) // a server's first reload: it initialises a fresh Redis, which signals
		drainSignals(s.Changes())
		writes := []struct {
			name string
			do   func() error
		}{
			{"create", func() error { return s.CreateMapping(ctx, newMapping("/sig", "https://a.example")) }},
			{"update", func() error { return s.UpdateMapping(ctx, newMapping("/sig", "https://b.example")) }},
			{"delete", func() error { return s.DeleteMapping(ctx, "/sig") }},
		}
		for _, w := range writes {
			if err := w.do(); err != nil {
				t.Fatalf("%s: %v", w.name, err)
			}
			select {
			case <-s.Changes():
				t.Errorf("%s signalled Changes, want no signal: its caller reloads", w.name)
			default:
			}
		}
	})

	t.Run("another instance's write signals Changes", func(t *testing.T) {
		s, reopen := open(t)
		w, ok := s.(watchingStore)
		if !ok {
			t.Skip("no other instance can write: the store's file lock keeps it out")
		}
		other := reopen(t)
		watchCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			w.watch(watchCtx)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
		waitClosed(t, s.Changes(), "the signal of the first subscription")
		for _, write := range []func() error{
			func() error { return other.CreateMapping(ctx, newMapping("/other", "https://a.example")) },
			func() error { return other.UpdateMapping(ctx, newMapping("/other", "https://b.example")) },
			func() error { return other.DeleteMapping(ctx, "/other") },
		} {
			if err := write(); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, s.Changes(), "a Changes signal for another instance's write")
		}
	})

	t.Run("admin token is generated once and shared", func(t *testing.T) {
		s, reopen := open(t)
		first, err := s.AdminToken(ctx, func() (string, error) { return "token-one-0123456789", nil })
		if err != nil || first != "token-one-0123456789" {
			t.Fatalf("AdminToken on a fresh store = %q, %v; want the generated token", first, err)
		}
		again, err := s.AdminToken(ctx, func() (string, error) {
			t.Error("generate called although a token is stored")
			return "token-two-0123456789", nil
		})
		if err != nil || again != first {
			t.Errorf("second AdminToken = %q, %v; want %q", again, err, first)
		}
		after, err := reopen(t).AdminToken(ctx, func() (string, error) { return "token-three-012345678", nil })
		if err != nil || after != first {
			t.Errorf("AdminToken after a restart = %q, %v; want %q", after, err, first)
		}
	})

	t.Run("concurrent first AdminToken calls agree on one token", func(t *testing.T) {
		s, reopen := open(t)
		other := s
		if _, ok := s.(*redisStore); ok {
			other = reopen(t) // a second instance on the same Redis
		}
		const n = 8
		tokens := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st := s
				if i%2 == 1 {
					st = other
				}
				tok, err := st.AdminToken(ctx, func() (string, error) { return fmt.Sprintf("token-%d-0123456789", i), nil })
				if err != nil {
					t.Errorf("AdminToken: %v", err)
				}
				tokens[i] = tok
			}()
		}
		wg.Wait()
		for i, tok := range tokens {
			if tok != tokens[0] {
				t.Errorf("token %d = %q, token 0 = %q: want one token", i, tok, tokens[0])
			}
		}
	})

	t.Run("a generate error is returned", func(t *testing.T) {
		s, _ := open(t)
		boom := errors.New("no entropy")
		if _, err := s.AdminToken(ctx, func() (string, error) { return "", boom }); !errors.Is(err, boom) {
			t.Errorf("AdminToken with a failing generate = %v, want it to wrap %v", err, boom)
		}
	})

	t.Run("ping", func(t *testing.T) {
		s, _ := open(t)
		if err := s.Ping(ctx); err != nil {
			t.Errorf("Ping: %v", err)
		}
	})

	t.Run("calls after Close return errStoreClosed", func(t *testing.T) {
		s, _ := open(t)
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := s.Mappings(ctx); !errors.Is(err, errStoreClosed) {
			t.Errorf("Mappings after Close = %v, want errStoreClosed", err)
		}
		if err := s.CreateMapping(ctx, newMapping("/x", "https://x.example")); !errors.Is(err, errStoreClosed) {
			t.Errorf("CreateMapping after Close = %v, want errStoreClosed", err)
		}
		if err := s.Ping(ctx); !errors.Is(err, errStoreClosed) {
			t.Errorf("Ping after Close = %v, want errStoreClosed", err)
		}
	})
}

// storedForm is m as JSON with every option and key shown, so that two
// mappings that mean the same compare equal (a Weight of 0 is 1, …).
func storedForm(m Mapping) string {
	b, _ := json.Marshal(m.object(true))
	return string(b)
}

// rawStoredValue is the value s keeps for prefix, as another program
// reading the store would see it: the bbolt bucket's value, or the field
// of the Redis hash apiproxy:mappings (under s's key prefix).
func rawStoredValue(t *testing.T, s Store, prefix string) string {
	t.Helper()
	var v string
	switch s := s.(type) {
	case *boltStore:
		err := s.db.View(func(tx *bolt.Tx) error {
			v = string(tx.Bucket(boltMappings).Get([]byte(prefix)))
			return nil
		})
		if err != nil {
			t.Fatalf("read %s from bolt: %v", prefix, err)
		}
	case *redisStore:
		var err error
		v, err = s.client.HGet(context.Background(), s.key(redisMappingsKey), prefix).Result()
		if err != nil {
			t.Fatalf("HGET %s %s: %v", s.key(redisMappingsKey), prefix, err)
		}
	default:
		t.Fatalf("rawStoredValue: no raw reader for %T", s)
	}
	return v
}

// drainSignals empties a coalescing signal channel.
func drainSignals(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
