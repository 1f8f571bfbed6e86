package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testKeyNames returns a live key table holding keys of the given id,
// name pairs.
func testKeyNames(idNames ...string) *atomic.Pointer[keyTable] {
	var keys []ProxyKey
	for i := 0; i+1 < len(idNames); i += 2 {
		keys = append(keys, ProxyKey{ID: idNames[i], Name: idNames[i+1], Hash: idNames[i]})
	}
	var p atomic.Pointer[keyTable]
	p.Store(newKeyTable(keys))
	return &p
}

// checkWindowKeys checks the per-key figures of what recordWindows
// recorded, seen at now0, "k_gone" being deleted.
func checkWindowKeys(t testing.TB, v *statsView, now0 time.Time) {
	t.Helper()
	if len(v.Keys) != 3 {
		t.Fatalf("keys = %v, want k_a, k_b and k_gone", v.Keys)
	}
	for _, id := range []string{"k_a", "k_b", "k_gone"} {
		if v.Keys[id] == nil {
			t.Fatalf("keys = %v, no %s", v.Keys, id)
		}
		if v.Endpoints[keyStatsMark+id] != nil {
			t.Errorf("endpoints list %s", keyStatsMark+id)
		}
	}
	a, b, gone := v.Keys["k_a"], v.Keys["k_b"], v.Keys["k_gone"]
	if a.Name != "team-a" || b.Name != "team-b" || gone.Name != "" {
		t.Errorf("names = %q, %q, %q; want team-a, team-b and none for a deleted key", a.Name, b.Name, gone.Name)
	}
	checkCounts(t, []countCheck{
		{"k_a count", a.Count, 6},
		{"k_a errors", a.Errors, 3}, // 500, 404, 502
		{"k_a last_24h", a.Last24h, 3},
		{"k_a last_7d", a.Last7d, 3},
		{"k_a last_30d", a.Last30d, 5},
		{"k_a tokens.prompt", a.Tokens.Counts[tokPrompt], 10},
		{"k_a tokens.completion", a.Tokens.Counts[tokCompletion], 5},
		{"k_a tokens.total", a.Tokens.Counts[tokTotal], 15},
		{"k_a tokens.unknown_responses", a.Tokens.UnknownResponses, 2},
		{"k_a last_used_at", a.LastUsedAt, now0.Unix()},
		{"k_b count", b.Count, 3}, // a client that left counts, but not as an error
		{"k_b errors", b.Errors, 0},
		{"k_b last_24h", b.Last24h, 3},
		{"k_b last_7d", b.Last7d, 3},
		{"k_b last_30d", b.Last30d, 3},
		{"k_b tokens.total", b.Tokens.Counts[tokTotal], 7},
		{"k_b tokens.cache_read", b.Tokens.Counts[tokCacheRead], 1},
		{"k_b tokens.unknown_responses", b.Tokens.UnknownResponses, 1},
		{"k_b last_used_at", b.LastUsedAt, now0.Unix()},
		{"k_gone count", gone.Count, 1},
		{"k_gone last_24h", gone.Last24h, 0},
		{"k_gone last_7d", gone.Last7d, 1},
		{"k_gone last_used_at", gone.LastUsedAt, now0.Add(-3 * 24 * time.Hour).Unix()},
	})
}

// TestStatsKeyLastUsed: keyLastUsed is the end of the key's latest
// request, counted, drained, flushed or stored; 0 for a key never used.
func TestStatsKeyLastUsed(t *testing.T) {
	now0 := time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)
	store := &memStatsStore{}
	clock := &fakeClock{t: now0}
	st := newTestStats(t, store, clock)
	if got := st.keyLastUsed("k_a"); got != 0 {
		t.Errorf("before any request: keyLastUsed = %d, want 0", got)
	}
	r := rec("/a", now0.Add(-time.Second), 200, time.Second)
	r.KeyID = "k_a"
	st.record(r)
	if got := st.keyLastUsed("k_a"); got != now0.Unix() {
		t.Errorf("recorded: keyLastUsed = %d, want %d", got, now0.Unix())
	}
	if err := st.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A new process on the same store knows it from the store only.
	later := newTestStats(t, store, &fakeClock{t: now0.Add(time.Hour)})
	if got := later.keyLastUsed("k_a"); got != now0.Unix() {
		t.Errorf("from the store: keyLastUsed = %d, want %d", got, now0.Unix())
	}
	if got := later.keyLastUsed("k_b"); got != 0 {
		t.Errorf("another key: keyLastUsed = %d, want 0", got)
	}
}

// keyedServer is a server with the keys mapping "/ai" (to an upstream
// answering an OpenAI chat completion on /chat, 429 elsewhere), its keys
// "team-a" (every prefix) and "team-b" (only "/other") and their secrets.
func keyedServer(t testing.TB) (s *Server, front *httptest.Server, a, b ProxyKey, secretA, secretB string) {
	t.Helper()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/chat" {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, openAIChatJSON)
	})
	s, front = newTestServer(t, nil)
	a, secretA = testKey("team-a")
	b, secretB = testKey("team-b", "/other")
	setKeys(t, s, a, b)
	setMapping(t, s, keysMapping("/ai", up.URL, "sk-up", "bearer"))
	return s, front, a, b, secretA, secretB
}

// keyedRequests makes, through front, 2 chats and one 429 with secretA,
// one request with secretB (403: not its prefix) and one without a key
// (401).
func keyedRequests(t testing.TB, front *httptest.Server, secretA, secretB string) {
	t.Helper()
	for _, c := range []struct {
		path, secret string
		want         int
	}{
		{"/ai/chat", secretA, 200},
		{"/ai/chat", secretA, 200},
		{"/ai/limited", secretA, 429},
		{"/ai/chat", secretB, 403},
		{"/ai/chat", "", 401},
	} {
		req, _ := http.NewRequest("POST", front.URL+c.path, nil)
		if c.secret != "" {
			req.Header.Set("Authorization", "Bearer "+c.secret)
		}
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != c.want {
			t.Fatalf("POST %s (a key: %v) = %d, want %d", c.path, c.secret != "", res.StatusCode, c.want)
		}
	}
}

// TestStatsKeysThroughProxy: requests made with a proxy key count under
// the key's id with its name; a refused key too; the endpoint and the
// totals count each request once; the secret appears nowhere.
func TestStatsKeysThroughProxy(t *testing.T) {
	s, front, a, b, secretA, secretB := keyedServer(t)
	keyedRequests(t, front, secretA, secretB)
	v := waitStats(t, front.Client(), front.URL, func(v statsView) bool { return v.Total == 5 }, "5 requests")
	if len(v.Endpoints) != 1 || v.Endpoints["/ai"] == nil || v.Endpoints["/ai"].Count != 5 || v.Last24h != 5 {
		t.Errorf("endpoints = %v, last_24h %d; want /ai only with 5 requests", v.Endpoints, v.Last24h)
	}
	if len(v.Keys) != 2 || v.Keys[a.ID] == nil || v.Keys[b.ID] == nil {
		t.Fatalf("keys = %v, want %s and %s", v.Keys, a.ID, b.ID)
	}
	ka, kb := v.Keys[a.ID], v.Keys[b.ID]
	checkCounts(t, []countCheck{
		{"team-a count", ka.Count, 3},
		{"team-a errors", ka.Errors, 1},
		{"team-a last_24h", ka.Last24h, 3},
		{"team-a last_30d", ka.Last30d, 3},
		{"team-a tokens.prompt", ka.Tokens.Counts[tokPrompt], 2 * 1117},
		{"team-a tokens.total", ka.Tokens.Counts[tokTotal], 2 * 1163},
		{"team-b count", kb.Count, 1},
		{"team-b errors", kb.Errors, 1},
	})
	if ka.Name != "team-a" || kb.Name != "team-b" {
		t.Errorf("names = %q, %q", ka.Name, kb.Name)
	}
	if now := time.Now().Unix(); ka.LastUsedAt < now-60 || ka.LastUsedAt > now+1 {
		t.Errorf("team-a last_used_at = %d, want about %d", ka.LastUsedAt, now)
	}
	if got := s.stats.keyLastUsed(a.ID); got != ka.LastUsedAt {
		t.Errorf("keyLastUsed = %d, want last_used_at %d", got, ka.LastUsedAt)
	}

	// A deleted key keeps its figures, without a name.
	s.keys.Store(newKeyTable([]ProxyKey{b}))
	s.stats.viewMu.Lock()
	s.stats.cache = nil
	s.stats.viewMu.Unlock()
	v = getStats(t, front.Client(), front.URL)
	if k := v.Keys[a.ID]; k == nil || k.Name != "" || k.Count != 3 {
		t.Errorf("deleted key = %+v, want its 3 requests and no name", k)
	}
	_, body := getStatus(t, front.Client(), front.URL+"/stats")
	for _, secret := range []string{secretA, secretB, a.Hash, b.Hash} {
		if strings.Contains(string(body), secret) {
			t.Errorf("/stats holds a key's secret or hash")
		}
	}
}

// TestStatsRedisFleetKeys: two instances on one Redis count the requests
// of one key each, and either shows the fleet's per-key figures and the
// latest use of the key on any instance.
func TestStatsRedisFleetKeys(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	now := time.Now().Truncate(time.Second) // Redis expires buckets by their time
	var fleet []*Stats
	for i, n := range []int{3, 2} {
		clock := &fakeClock{t: now}
		st := newTestStats(t, openTestRedisStore(t, addr, prefix, ""), clock)
		st.proxyKeys = testKeyNames("k_x", "shared")
		for j := range n {
			// Instance 1's requests end a second after instance 0's.
			r := rec("/a", now.Add(time.Duration(i-11)*time.Second), 200+300*(j&1), 10*time.Second)
			r.KeyID = "k_x"
			r.Usage = tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 10, tokCompletion: 1, tokTotal: 11}}
			st.record(r)
		}
		if err := st.flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		fleet = append(fleet, st)
	}
	for i, st := range fleet {
		t.Run(fmt.Sprintf("instance %d", i), func(t *testing.T) {
			v := viewOf(t, st)
			k := v.Keys["k_x"]
			if k == nil {
				t.Fatalf("keys = %v, want k_x", v.Keys)
			}
			checkCounts(t, []countCheck{
				{"total", v.Total, 5},
				{"/a count", v.Endpoints["/a"].Count, 5},
				{"k_x count", k.Count, 5},
				{"k_x errors", k.Errors, 2},
				{"k_x last_24h", k.Last24h, 5},
				{"k_x last_30d", k.Last30d, 5},
				{"k_x tokens.prompt", k.Tokens.Counts[tokPrompt], 50},
				{"k_x tokens.total", k.Tokens.Counts[tokTotal], 55},
				{"k_x last_used_at", k.LastUsedAt, now.Unix()},
				{"keyLastUsed", st.keyLastUsed("k_x"), now.Unix()},
			})
			if k.Name != "shared" {
				t.Errorf("name = %q, want shared", k.Name)
			}
		})
	}
}
