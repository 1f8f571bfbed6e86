package main

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestRedisSharedCooldown: a cooldown that instance A begins (a 429 with
// Retry-After) is honoured by B, which shares only the Redis, and by an
// instance C started afterwards, which reads it from its key.
func TestRedisSharedCooldown(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	a, frontA := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	b, frontB := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	limited := statusUpstream(t, http.StatusTooManyRequests, "later", "Retry-After", "120")
	ok := statusUpstream(t, http.StatusOK, "ok")
	m := targetsOf("/ai", limited.URL, ok.URL)
	if err := a.store.CreateMapping(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Server{a, b} {
		s.reloadRoutes(context.Background())
	}
	get := func(front string) {
		t.Helper()
		res, err := http.Get(front + "/ai/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200 from the second target", res.StatusCode)
		}
	}
	get(frontA.URL)
	if limited.Hits() != 1 {
		t.Fatalf("limited target hits = %d, want 1", limited.Hits())
	}
	cooling := func(s *Server) bool {
		r := s.routes.Load().byPrefix["/ai"]
		return r != nil && r.targets[0].state.cooldownUntil(time.Now()) > time.Now().Add(100*time.Second).Unix()
	}
	eventually(t, func() bool { return cooling(b) }, "B to learn A's cooldown")
	get(frontB.URL)
	if limited.Hits() != 1 || ok.Hits() != 2 {
		t.Errorf("after B's request: hits %d, %d; want 1, 2 (B skipped the cooling target)", limited.Hits(), ok.Hits())
	}
	c, frontC := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, prefix, ""))
	eventually(t, func() bool { return cooling(c) }, "C, started later, to read the cooldown")
	get(frontC.URL)
	if limited.Hits() != 1 {
		t.Errorf("after C's request: limited target hits %d, want 1", limited.Hits())
	}
}
