package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	t.Run("redis", func(t *testing.T) { testStoreContract(t, openContractRedisStore(testRedisAddr(t))) })
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

// openContractRedisStore returns the storeOpener of a Redis store on addr:
// each test its own key prefix, reopen another instance on the same keys.
func openContractRedisStore(addr string) storeOpener {
	return func(t *testing.T) (Store, func(t *testing.T) Store) {
		prefix := testKeyPrefix(t, addr)
		s := openTestRedisStore(t, addr, prefix, "")
		return s, func(t *testing.T) Store { return openTestRedisStore(t, addr, prefix, "") }
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

	t.Run("keys", func(t *testing.T) { testKeyStoreContract(t, open) })

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

// contractKey is a proxy key with every field set, as the keys API would
// store it.
func contractKey(t testing.TB, name string) (ProxyKey, string) {
	t.Helper()
	k, secret := testKey(name, "/openai", "/anthropic")
	k.CreatedAt = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	k.ExpiresAt = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	return k, secret
}

// testKeyStoreContract is the keyStore part of the Store contract.
func testKeyStoreContract(t *testing.T, open storeOpener) {
	ctx := context.Background()
	mustKeys := func(t *testing.T, s Store) []ProxyKey {
		t.Helper()
		ks, err := s.Keys(ctx)
		if err != nil {
			t.Fatalf("Keys: %v", err)
		}
		return ks
	}
	find := func(ks []ProxyKey, id string) (ProxyKey, bool) {
		i := slices.IndexFunc(ks, func(k ProxyKey) bool { return k.ID == id })
		if i < 0 {
			return ProxyKey{}, false
		}
		return ks[i], true
	}

	t.Run("none at first", func(t *testing.T) {
		s, _ := open(t)
		if ks := mustKeys(t, s); len(ks) != 0 {
			t.Errorf("Keys() on a fresh store = %v, want none", ks)
		}
	})

	t.Run("create, read back equal, also after a restart", func(t *testing.T) {
		s, reopen := open(t)
		full, secret := contractKey(t, "team-a")
		plain, _ := testKey("plain") // no prefixes, no expiry
		plain.CreatedAt = time.Date(2026, 12, 1, 10, 0, 1, 0, time.UTC)
		plain.Disabled = true
		for _, k := range []ProxyKey{full, plain} {
			if err := s.CreateKey(ctx, k); err != nil {
				t.Fatalf("CreateKey(%s): %v", k.ID, err)
			}
		}
		check := func(t *testing.T, s Store) {
			t.Helper()
			ks := mustKeys(t, s)
			for _, want := range []ProxyKey{full, plain} {
				got, ok := find(ks, want.ID)
				if !ok {
					t.Errorf("key %s not listed", want.ID)
					continue
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("key reads back as %+v, want %+v", got, want)
				}
			}
		}
		check(t, s)
		raw := rawStoredKey(t, s, full.ID)
		if strings.Contains(raw, secret) {
			t.Errorf("the stored value holds the secret: %s", raw)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(raw), &fields); err != nil {
			t.Fatalf("stored value %q is not JSON: %v", raw, err)
		}
		want := []string{"created_at", "disabled", "expires_at", "hash", "hint", "id", "limits", "name", "prefixes"}
		if got := slices.Sorted(maps.Keys(fields)); !slices.Equal(got, want) {
			t.Errorf("stored fields = %v, want %v", got, want)
		}
		if fields["hash"] != keyHash(secret) || fields["expires_at"] != "2027-01-01T00:00:00Z" {
			t.Errorf("stored hash, expires_at = %v, %v; want the secret's hash and the expiry", fields["hash"], fields["expires_at"])
		}
		if raw := rawStoredKey(t, s, plain.ID); !strings.Contains(raw, `"expires_at":null`) || !strings.Contains(raw, `"prefixes":[]`) {
			t.Errorf("stored value of a key without expiry or prefixes = %s, want expires_at null and prefixes []", raw)
		}
		check(t, reopen(t))
	})

	t.Run("create refuses a taken id", func(t *testing.T) {
		s, _ := open(t)
		k, _ := contractKey(t, "first")
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		other := k
		other.Name, other.Hash = "second", keyHash("apx-other")
		if err := s.CreateKey(ctx, other); !errors.Is(err, errKeyExists) {
			t.Errorf("second CreateKey(%s) = %v, want errKeyExists", k.ID, err)
		}
		if got, _ := find(mustKeys(t, s), k.ID); got.Name != "first" {
			t.Errorf("after a refused create the key is named %q, want it unchanged", got.Name)
		}
	})

	t.Run("update", func(t *testing.T) {
		s, _ := open(t)
		k, _ := contractKey(t, "before")
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		k.Name, k.Disabled, k.Prefixes, k.ExpiresAt = "after", true, nil, time.Time{}
		if err := s.UpdateKey(ctx, k); err != nil {
			t.Fatalf("UpdateKey: %v", err)
		}
		if got, _ := find(mustKeys(t, s), k.ID); !reflect.DeepEqual(got, k) {
			t.Errorf("after UpdateKey the key is %+v, want %+v", got, k)
		}
		missing, _ := testKey("missing")
		if err := s.UpdateKey(ctx, missing); !errors.Is(err, errKeyNotFound) {
			t.Errorf("UpdateKey of a missing id = %v, want errKeyNotFound", err)
		}
		if _, ok := find(mustKeys(t, s), missing.ID); ok {
			t.Errorf("UpdateKey of a missing id created it")
		}
	})

	t.Run("delete", func(t *testing.T) {
		s, reopen := open(t)
		k, _ := contractKey(t, "doomed")
		kept, _ := contractKey(t, "kept")
		for _, k := range []ProxyKey{k, kept} {
			if err := s.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.DeleteKey(ctx, k.ID); err != nil {
			t.Fatalf("DeleteKey: %v", err)
		}
		if _, ok := find(mustKeys(t, s), k.ID); ok {
			t.Errorf("key still listed after DeleteKey")
		}
		if err := s.DeleteKey(ctx, k.ID); !errors.Is(err, errKeyNotFound) {
			t.Errorf("second DeleteKey = %v, want errKeyNotFound", err)
		}
		ks := mustKeys(t, reopen(t))
		if _, ok := find(ks, k.ID); ok {
			t.Errorf("a deleted key is back after a restart")
		}
		if _, ok := find(ks, kept.ID); !ok {
			t.Errorf("the other key is gone after a restart")
		}
	})

	t.Run("Keys is sorted by id and returns the caller's copy", func(t *testing.T) {
		s, _ := open(t)
		for i := range 6 {
			k, _ := contractKey(t, fmt.Sprintf("k%d", i))
			if err := s.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		ks := mustKeys(t, s)
		if len(ks) != 6 || !slices.IsSortedFunc(ks, func(a, b ProxyKey) int { return strings.Compare(a.ID, b.ID) }) {
			t.Fatalf("Keys() = %d keys, sorted %v; want 6 sorted by id", len(ks), false)
		}
		want := mustKeys(t, s)
		ks[0].Name = "mutated"
		ks[1].Prefixes[0] = "/mutated"
		if got := mustKeys(t, s); !reflect.DeepEqual(got, want) {
			t.Errorf("changing the returned slice changed the store")
		}
	})

	t.Run("concurrent creates of one id: exactly one wins", func(t *testing.T) {
		s, _ := open(t)
		base, _ := contractKey(t, "race")
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				k := base
				k.Name = fmt.Sprintf("race%d", i)
				errs[i] = s.CreateKey(ctx, k)
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
			case !errors.Is(err, errKeyExists):
				t.Errorf("create %d: %v, want nil or errKeyExists", i, err)
			}
		}
		if got, _ := find(mustKeys(t, s), base.ID); winner < 0 || got.Name != fmt.Sprintf("race%d", winner) {
			t.Errorf("stored name %q, winner %d", got.Name, winner)
		}
	})

	t.Run("an unreadable stored key is listed disabled and admits nobody", func(t *testing.T) {
		s, _ := open(t)
		putRawKey(t, s, "k_broken", "{not json")
		ks := mustKeys(t, s)
		got, ok := find(ks, "k_broken")
		if !ok || !got.Disabled || got.Hash != "" {
			t.Fatalf("Keys() holds %+v (listed %v), want a disabled key without a hash", got, ok)
		}
		if k := newKeyTable(ks).lookup("apx-"); k != nil {
			t.Errorf("the key table admits a secret through the broken key")
		}
		if err := s.DeleteKey(ctx, "k_broken"); err != nil {
			t.Errorf("DeleteKey of the broken key: %v", err)
		}
	})

	t.Run("a key write through the store signals no Changes", func(t *testing.T) {
		s, _ := open(t)
		mustList := func() {
			if _, err := s.Mappings(ctx); err != nil {
				t.Fatal(err)
			}
		}
		mustList()
		drainSignals(s.Changes())
		k, _ := contractKey(t, "sig")
		writes := []struct {
			name string
			do   func() error
		}{
			{"create", func() error { return s.CreateKey(ctx, k) }},
			{"update", func() error { k.Name = "sig2"; return s.UpdateKey(ctx, k) }},
			{"delete", func() error { return s.DeleteKey(ctx, k.ID) }},
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

	t.Run("another instance's key write signals Changes", func(t *testing.T) {
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
		k, _ := contractKey(t, "remote")
		for _, write := range []func() error{
			func() error { return other.CreateKey(ctx, k) },
			func() error { k.Disabled = true; return other.UpdateKey(ctx, k) },
			func() error { return other.DeleteKey(ctx, k.ID) },
		} {
			if err := write(); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, s.Changes(), "a Changes signal for another instance's key write")
		}
	})

	t.Run("key calls after Close return errStoreClosed", func(t *testing.T) {
		s, _ := open(t)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Keys(ctx); !errors.Is(err, errStoreClosed) {
			t.Errorf("Keys after Close = %v, want errStoreClosed", err)
		}
		k, _ := contractKey(t, "late")
		if err := s.CreateKey(ctx, k); !errors.Is(err, errStoreClosed) {
			t.Errorf("CreateKey after Close = %v, want errStoreClosed", err)
		}
	})
}

// rawStoredKey is the value s keeps for the key id, as another program
// reading the store would see it.
func rawStoredKey(t *testing.T, s Store, id string) string {
	t.Helper()
	var v string
	switch s := s.(type) {
	case *boltStore:
		err := s.db.View(func(tx *bolt.Tx) error {
			v = string(tx.Bucket(boltKeys).Get([]byte(id)))
			return nil
		})
		if err != nil {
			t.Fatalf("read key %s from bolt: %v", id, err)
		}
	case *redisStore:
		var err error
		v, err = s.client.HGet(context.Background(), s.key(redisKeysKey), id).Result()
		if err != nil {
			t.Fatalf("HGET %s %s: %v", s.key(redisKeysKey), id, err)
		}
	default:
		t.Fatalf("rawStoredKey: no raw reader for %T", s)
	}
	return v
}

// putRawKey stores value for the key id by hand, as a broken or foreign
// writer would.
func putRawKey(t *testing.T, s Store, id, value string) {
	t.Helper()
	switch s := s.(type) {
	case *boltStore:
		err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(boltKeys).Put([]byte(id), []byte(value)) })
		if err != nil {
			t.Fatal(err)
		}
	case *redisStore:
		if _, err := s.Mappings(context.Background()); err != nil { // initialise it first
			t.Fatal(err)
		}
		if err := s.client.HSet(context.Background(), s.key(redisKeysKey), id, value).Err(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("putRawKey: no raw writer for %T", s)
	}
}
