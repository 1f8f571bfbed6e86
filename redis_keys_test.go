package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// newKeysPair serves two instances A and B on one Redis (addr, a key
// prefix of the test's own) with a keys mapping /ai to a counting
// upstream, created through A and routed on B.
func newKeysPair(t testing.TB, addr string) (a, b *Server, frontA, frontB *httptest.Server) {
	t.Helper()
	prefix := testKeyPrefix(t, addr)
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	a, frontA = newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	b, frontB = newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	up := newUpstream(t, nil)
	body := `{"prefix":"/ai","auth":"keys","targets":[{"url":"` + up.URL + `","key":"sk-upstream-pair-0123","auth_style":"bearer"}]}`
	if res, b := adminRequest(t, frontA, "POST", "/api/mappings", body); res.StatusCode != http.StatusCreated {
		t.Fatalf("create /ai on A: %d %s", res.StatusCode, b)
	}
	eventually(t, func() bool { return routedURL(b, "/ai") == up.URL }, "B to route /ai")
	return a, b, frontA, frontB
}

// TestRedisKeysCrossInstance (SPEC §10): a key created on instance A is
// admitted on B, and a disable, a delete and an expiry made on A are
// refused on B, which shares only the Redis.
func TestRedisKeysCrossInstance(t *testing.T) {
	addr := testRedisAddr(t)
	_, _, frontA, frontB := newKeysPair(t, addr)
	onB := func(secret string) func() int {
		return func() int { return keyStatus(t, frontB, "/ai/v1/models", secret) }
	}
	waitStatus := func(get func() int, want int, what string) {
		t.Helper()
		eventually(t, func() bool { return get() == want }, what)
	}

	k := createKey(t, frontA, `{"name":"shared"}`)
	waitStatus(onB(k.Key), http.StatusOK, "B to admit a key created on A")

	if res, b := adminRequest(t, frontA, "PATCH", "/api/keys/"+k.ID, `{"disabled":true}`); res.StatusCode != http.StatusOK {
		t.Fatalf("disable on A: %d %s", res.StatusCode, b)
	}
	waitStatus(onB(k.Key), http.StatusUnauthorized, "B to refuse a key disabled on A")
	if res, b := adminRequest(t, frontA, "PATCH", "/api/keys/"+k.ID, `{"disabled":false}`); res.StatusCode != http.StatusOK {
		t.Fatalf("enable on A: %d %s", res.StatusCode, b)
	}
	waitStatus(onB(k.Key), http.StatusOK, "B to admit the key enabled again")

	if res, b := adminRequest(t, frontA, "PATCH", "/api/keys/"+k.ID, `{"prefixes":["/other"]}`); res.StatusCode != http.StatusOK {
		t.Fatalf("narrow on A: %d %s", res.StatusCode, b)
	}
	waitStatus(onB(k.Key), http.StatusForbidden, "B to refuse the key on a prefix it no longer allows")

	if res, b := adminRequest(t, frontA, "DELETE", "/api/keys/"+k.ID, ""); res.StatusCode != http.StatusOK {
		t.Fatalf("delete on A: %d %s", res.StatusCode, b)
	}
	waitStatus(onB(k.Key), http.StatusUnauthorized, "B to refuse a key deleted on A")

	// An expiry set on A: B refuses the key once it has passed, with no
	// further change to announce. A second ahead: A refuses an expiry
	// already past when the PATCH reaches it.
	exp := createKey(t, frontA, `{"name":"short"}`)
	waitStatus(onB(exp.Key), http.StatusOK, "B to admit the second key")
	at := time.Now().Add(time.Second).UTC()
	if res, b := adminRequest(t, frontA, "PATCH", "/api/keys/"+exp.ID, `{"expires_at":"`+at.Format(time.RFC3339Nano)+`"}`); res.StatusCode != http.StatusOK {
		t.Fatalf("set expiry on A: %d %s", res.StatusCode, b)
	}
	waitStatus(onB(exp.Key), http.StatusUnauthorized, "B to refuse a key whose expiry passed")
	if time.Now().Before(at) {
		t.Errorf("B refused the key before its expiry")
	}
	// A key created with an expiry expires on B too. Two seconds ahead:
	// the create and B's reload must both come before it, for B to admit
	// the key first.
	at = time.Now().Add(2 * time.Second).UTC()
	born := createKey(t, frontA, `{"name":"born-short","expires_at":"`+at.Format(time.RFC3339Nano)+`"}`)
	waitStatus(onB(born.Key), http.StatusOK, "B to admit a key created with an expiry")
	waitStatus(onB(born.Key), http.StatusUnauthorized, "B to refuse it once expired")
}

// TestRedisKeysRevokeDelay measures the time from an admin call on
// instance A that revokes a key (a disable or a delete, alternately) to
// instance B refusing it over HTTP, over 50 revocations, two Servers in
// this process on a redis-server of the test's own. It reports p50 and
// p99 (SPEC §10's target: 100 ms) without asserting them, so it runs only
// when asked:
//
//	APIPROXY_TEST_REVOKE_DELAY=1 go test -run TestRedisKeysRevokeDelay -v .
func TestRedisKeysRevokeDelay(t *testing.T) {
	if os.Getenv("APIPROXY_TEST_REVOKE_DELAY") != "1" {
		t.Skip("set APIPROXY_TEST_REVOKE_DELAY=1 to measure revoke-to-refused across two instances")
	}
	rs := startRedisServer(t)
	_, _, frontA, frontB := newKeysPair(t, rs.addr())
	const revocations = 50
	delays := make([]time.Duration, 0, revocations)
	for i := range revocations {
		k := createKey(t, frontA, fmt.Sprintf(`{"name":"r%d"}`, i))
		eventually(t, func() bool { return keyStatus(t, frontB, "/ai/x", k.Key) == http.StatusOK }, "B to admit the new key")
		method, path, body := "PATCH", "/api/keys/"+k.ID, `{"disabled":true}`
		if i%2 == 1 {
			method, body = "DELETE", ""
		}
		start := time.Now()
		if res, b := adminRequest(t, frontA, method, path, body); res.StatusCode != http.StatusOK {
			t.Fatalf("%s %s on A: %d %s", method, path, res.StatusCode, b)
		}
		deadline := start.Add(testTimeout)
		for keyStatus(t, frontB, "/ai/x", k.Key) != http.StatusUnauthorized {
			if time.Now().After(deadline) {
				t.Fatalf("B still admits key %d %v after its revocation", i, testTimeout)
			}
		}
		delays = append(delays, time.Since(start))
	}
	p50, p99 := percentile(delays, 50), percentile(delays, 99)
	msg := fmt.Sprintf("revoke-to-refused over %d revocations (admin call on A until B answers 401 over HTTP): p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		len(delays), ms(p50), ms(p99), ms(slices.Max(delays)))
	t.Log(msg)
	fmt.Println(msg)
}

// TestRedisKeysRestartDuringOutage (SPEC §10 fail closed, §7 outage): an
// instance that starts while Redis is down admits the keys of the
// snapshot file and no other; when Redis comes back empty it restores
// them.
func TestRedisKeysRestartDuringOutage(t *testing.T) {
	rs := startRedisServer(t)
	ctx := context.Background()
	s1, front1, cfg := newServerOnRedis(t, rs)
	up := newUpstream(t, nil)
	body := `{"prefix":"/ai","auth":"keys","targets":[{"url":"` + up.URL + `","key":"sk-upstream-outage-0123"}]}`
	if res, b := adminRequest(t, front1, "POST", "/api/mappings", body); res.StatusCode != http.StatusCreated {
		t.Fatalf("create /ai: %d %s", res.StatusCode, b)
	}
	k := createKey(t, front1, `{"name":"known"}`)
	gone := createKey(t, front1, `{"name":"revoked"}`)
	if res, b := adminRequest(t, front1, "DELETE", "/api/keys/"+gone.ID, ""); res.StatusCode != http.StatusOK {
		t.Fatalf("delete: %d %s", res.StatusCode, b)
	}
	snapshot := filepath.Join(cfg.DataDir, snapshotFileName)
	eventually(t, func() bool {
		f := readSnapshot(snapshot)
		return f.Keys[k.ID] != "" && f.Keys[gone.ID] == "" && f.Mappings["/ai"] != ""
	}, "the snapshot file to hold the key and the mapping")
	raw, err := os.ReadFile(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{k.Key, gone.Key} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the snapshot file holds a secret")
		}
	}
	front1.Close()
	s1.Close()
	rs.kill()

	store2, err := openStore(ctx, cfg, testLogger())
	if err != nil {
		t.Fatalf("openStore during the outage: %v", err)
	}
	_, front2 := newRedisTestServer(t, cfg, store2)
	if code := keyStatus(t, front2, "/ai/x", k.Key); code != http.StatusOK {
		t.Errorf("a known key after a restart during the outage = %d, want 200", code)
	}
	if code := keyStatus(t, front2, "/ai/x", gone.Key); code != http.StatusUnauthorized {
		t.Errorf("a key revoked before the outage = %d, want 401", code)
	}
	if code := keyStatus(t, front2, "/ai/x", ""); code != http.StatusUnauthorized {
		t.Errorf("no key during the outage = %d, want 401", code)
	}
	res, b := adminRequest(t, front2, "POST", "/api/keys", `{"name":"new"}`)
	wantProxyError(t, res, b, http.StatusServiceUnavailable, "store_unavailable")

	rs.start() // empty
	rc := rs.client()
	eventually(t, func() bool {
		return rc.HGet(ctx, redisKeyPrefix+redisKeysKey, k.ID).Val() != ""
	}, "the restarted instance to restore the key into the empty Redis")
	if n := rc.HLen(ctx, redisKeyPrefix+redisKeysKey).Val(); n != 1 {
		t.Errorf("restored %d keys, want the 1 known", n)
	}
	if code := keyStatus(t, front2, "/ai/x", k.Key); code != http.StatusOK {
		t.Errorf("the key after recovery = %d, want 200", code)
	}
}

// TestRedisSnapshotKeys: the snapshot file's keys read back as the keys
// that were stored; a file written before proxy keys existed knows none
// (fail closed: no key is admitted during an outage then).
func TestRedisSnapshotKeys(t *testing.T) {
	k, secret := contractKey(t, "snap")
	for _, tt := range []struct {
		name string
		keys string
		want []ProxyKey
		ok   bool
	}{
		{"with keys", `, "keys": {"` + k.ID + `": ` + strconv.Quote(k.encode()) + `}`, []ProxyKey{k}, true},
		{"empty keys", `, "keys": {}`, []ProxyKey{}, true},
		{"older file", ``, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), snapshotFileName)
			file := `{"source": "127.0.0.1:1/0 apiproxy:", "saved_at": "2026-01-02T03:04:05Z", "mappings": {"/openai": "https://api.openai.com"}` + tt.keys + `}`
			if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
				t.Fatal(err)
			}
			c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled here
			t.Cleanup(func() { c.Close() })
			s := newRedisStore(c, redisKeyPrefix, path, testLogger())
			s.loadSnapshot()
			ks, ok := s.offlineKeys()
			if ok != tt.ok || !reflect.DeepEqual(ks, tt.want) {
				t.Errorf("offlineKeys() = %+v, %v; want %+v, %v", ks, ok, tt.want, tt.ok)
			}
			if len(tt.want) > 0 && newKeyTable(ks).lookup(secret) == nil {
				t.Errorf("the key table of the snapshot does not admit the key")
			}
		})
	}
}
