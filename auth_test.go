package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// testKey makes a proxy key with a fresh secret, as the keys API would.
func testKey(name string, prefixes ...string) (ProxyKey, string) {
	id, secret := newKeySecret()
	return ProxyKey{ID: id, Name: name, Hash: keyHash(secret), Hint: secretHint(secret), Prefixes: prefixes,
		CreatedAt: time.Now()}, secret
}

// setKeys stores keys in s's store and reloads, as the keys API does.
func setKeys(t testing.TB, s *Server, keys ...ProxyKey) {
	t.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if err := s.store.CreateKey(ctx, k); err != nil {
			t.Fatalf("CreateKey(%s): %v", k.ID, err)
		}
	}
	if err := s.reloadRoutes(ctx); err != nil {
		t.Fatalf("reloadRoutes: %v", err)
	}
}

// keysMapping is a keys mapping of prefix to targets, each with its key
// and auth style given as url, key, style triples.
func keysMapping(prefix string, targets ...string) Mapping {
	m := Mapping{Prefix: prefix, Auth: authKeys}
	for i := 0; i+2 < len(targets); i += 3 {
		m.Targets = append(m.Targets, Target{URL: targets[i], Key: targets[i+1], AuthStyle: targets[i+2]})
	}
	return m
}

// credentialsSeen is what an upstream received of every credential place.
type credentialsSeen struct {
	auth, xAPIKey, goog, apiKey, query, protocol string
}

func credentialUpstream(t testing.TB, status int) (*upstream, chan credentialsSeen) {
	seen := make(chan credentialsSeen, 16)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- credentialsSeen{r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"), r.Header.Get("X-Goog-Api-Key"),
			r.Header.Get("Api-Key"), r.URL.RawQuery, r.Header.Get("Sec-Websocket-Protocol")}
		w.WriteHeader(status)
	})
	return up, seen
}

// TestKeysCheck: a keys mapping admits only a caller with a valid proxy
// key, wherever its SDK puts it; a refused request reaches no upstream.
func TestKeysCheck(t *testing.T) {
	up, seen := credentialUpstream(t, http.StatusOK)
	s, front := newTestServer(t, nil)
	good, secret := testKey("team-a", "/ai")
	other, otherSecret := testKey("team-b", "/elsewhere")
	disabled, disabledSecret := testKey("off")
	disabled.Disabled = true
	expired, expiredSecret := testKey("old")
	expired.ExpiresAt = time.Now().Add(-time.Second)
	setKeys(t, s, good, other, disabled, expired)
	setMapping(t, s, keysMapping("/ai", up.URL, "sk-upstream-1", "bearer"))
	rec := recordRequests(s)

	tests := []struct {
		name   string
		header map[string]string
		query  string
		status int
		code   string
	}{
		{"bearer", map[string]string{"Authorization": "Bearer " + secret}, "", 200, ""},
		{"x-api-key", map[string]string{"X-Api-Key": secret}, "", 200, ""},
		{"x-goog-api-key", map[string]string{"X-Goog-Api-Key": secret}, "", 200, ""},
		{"api-key", map[string]string{"Api-Key": secret}, "", 200, ""},
		{"query", nil, "?alt=sse&key=" + secret + "&z=1", 200, ""},
		{"same key twice", map[string]string{"Authorization": "Bearer " + secret, "X-Api-Key": secret}, "", 200, ""},
		{"none", nil, "", 401, "invalid_api_key"},
		{"unknown", map[string]string{"Authorization": "Bearer apx-NOTAKEY"}, "", 401, "invalid_api_key"},
		{"a provider key", map[string]string{"Authorization": "Bearer sk-proj-abc"}, "", 401, "invalid_api_key"},
		{"two different keys", map[string]string{"Authorization": "Bearer " + secret, "X-Api-Key": otherSecret}, "", 401, "invalid_api_key"},
		{"not bearer", map[string]string{"Authorization": "Basic " + secret}, "", 401, "invalid_api_key"},
		{"disabled", map[string]string{"Authorization": "Bearer " + disabledSecret}, "", 401, "invalid_api_key"},
		{"expired", map[string]string{"X-Api-Key": expiredSecret}, "", 401, "invalid_api_key"},
		{"other prefix", map[string]string{"Authorization": "Bearer " + otherSecret}, "", 403, "key_not_allowed"},
		{"empty bearer", map[string]string{"Authorization": "Bearer "}, "", 401, "invalid_api_key"},
		{"bearer alone", map[string]string{"Authorization": "Bearer"}, "", 401, "invalid_api_key"},
		{"key and a list", map[string]string{"Authorization": "Bearer " + secret + ", " + otherSecret}, "", 401, "invalid_api_key"},
		{"empty query key", nil, "?key=", 401, "invalid_api_key"},
		{"bad escape in query key", nil, "?key=%zz", 401, "invalid_api_key"},
		{"query key and another header", map[string]string{"X-Goog-Api-Key": otherSecret}, "?key=" + secret, 401, "invalid_api_key"},
		{"valid header, empty other", map[string]string{"Authorization": "Bearer " + secret, "Api-Key": ""}, "", 401, "invalid_api_key"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", front.URL+"/ai/v1/models"+tt.query, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			hits := up.Hits()
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, res)
			res.Body.Close()
			r := rec.wait(t, i+1)
			if tt.status != 200 {
				wantProxyError(t, res, body, tt.status, tt.code)
				if up.Hits() != hits || len(r.Tries) != 0 {
					t.Errorf("a refused request reached the upstream (%d tries)", len(r.Tries))
				}
				if strings.Contains(string(body), secret) || strings.Contains(string(body), otherSecret) {
					t.Errorf("the refusal repeats a key: %s", body)
				}
				return
			}
			if res.StatusCode != 200 || r.KeyID != good.ID {
				t.Fatalf("status %d, key %q; want 200 for %s", res.StatusCode, r.KeyID, good.ID)
			}
			got := <-seen
			want := credentialsSeen{auth: "Bearer sk-upstream-1"}
			if tt.query != "" {
				want.query = "alt=sse&z=1"
			}
			if got != want {
				t.Errorf("upstream saw %+v, want %+v", got, want)
			}
		})
	}
}

// TestKeysAuthStyles: each target gets its own key in its auth style, on
// the first try and on a retry to the next target.
func TestKeysAuthStyles(t *testing.T) {
	for _, tt := range []struct {
		style string
		want  credentialsSeen
	}{
		{"bearer", credentialsSeen{auth: "Bearer up-key", query: "a=1"}},
		{"x-api-key", credentialsSeen{xAPIKey: "up-key", query: "a=1"}},
		{"x-goog-api-key", credentialsSeen{goog: "up-key", query: "a=1"}},
		{"api-key", credentialsSeen{apiKey: "up-key", query: "a=1"}},
		{"query-key", credentialsSeen{query: "a=1&key=up-key"}},
	} {
		t.Run(tt.style, func(t *testing.T) {
			busy, busySeen := credentialUpstream(t, http.StatusServiceUnavailable)
			up, seen := credentialUpstream(t, http.StatusOK)
			s, front := newTestServer(t, nil)
			k, secret := testKey("k")
			setKeys(t, s, k)
			setMapping(t, s, keysMapping("/ai", busy.URL, "busy-key", "x-api-key", up.URL, "up-key", tt.style))
			req, _ := http.NewRequest("POST", front.URL+"/ai/x?a=1", strings.NewReader(`{}`))
			req.Header.Set("Authorization", "Bearer "+secret)
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if got := <-busySeen; got != (credentialsSeen{xAPIKey: "busy-key", query: "a=1"}) {
				t.Errorf("first target saw %+v, want only its own x-api-key", got)
			}
			if got := <-seen; got != tt.want {
				t.Errorf("second target saw %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestKeysWebSocket: a browser's key in the subprotocol admits the
// upgrade and is removed; the other subprotocols pass.
func TestKeysWebSocket(t *testing.T) {
	var got credentialsSeen
	echo := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		got = credentialsSeen{auth: r.Header.Get("Authorization"), protocol: r.Header.Get("Sec-Websocket-Protocol")}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"realtime"}})
		if err != nil {
			return
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
	s, front := newTestServer(t, nil)
	k, secret := testKey("browser")
	setKeys(t, s, k)
	setMapping(t, s, keysMapping("/rt", echo.URL, "sk-upstream", "bearer"))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	url := "ws" + strings.TrimPrefix(front.URL, "http") + "/rt/v1/realtime"
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"realtime", keyProtocolPrefix + secret}})
	if err != nil {
		t.Fatalf("dial with the key: %v", err)
	}
	c.CloseNow()
	if got.protocol != "realtime" || got.auth != "Bearer sk-upstream" {
		t.Errorf("upstream saw protocols %q, auth %q; want realtime and the upstream key", got.protocol, got.auth)
	}
	_, res, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"realtime"}})
	if err == nil || res == nil || res.StatusCode != http.StatusUnauthorized {
		t.Errorf("dial without a key: %v, want 401", err)
	}
}

// TestKeysPreflightAndPassthrough: a CORS preflight on a keys mapping is
// answered locally (nothing forwarded), and on a passthrough mapping a
// proxy key is just a credential like any other.
func TestKeysPreflightAndPassthrough(t *testing.T) {
	up, seen := credentialUpstream(t, http.StatusOK)
	s, front := newTestServer(t, nil)
	k, secret := testKey("k")
	setKeys(t, s, k)
	setMapping(t, s, keysMapping("/ai", up.URL, "sk-upstream", "bearer"))
	setMapping(t, s, targetsOf("/open", up.URL))
	req, _ := http.NewRequest("OPTIONS", front.URL+"/ai/v1/chat", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization")
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent || up.Hits() != 0 {
		t.Errorf("preflight: %d with %d upstream hits, want 204 and none", res.StatusCode, up.Hits())
	}
	req, _ = http.NewRequest("GET", front.URL+"/open/x", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	res, err = front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got := <-seen; got.auth != "Bearer "+secret {
		t.Errorf("passthrough mapping sent %q, want the caller's credential as it came", got.auth)
	}
}

func TestWithoutQueryParam(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", ""}, {"a=1", "a=1"}, {"key=x", ""}, {"a=1&key=x&b=%2F&c", "a=1&b=%2F&c"},
		{"k%65y=x&a=1", "a=1"}, {"keys=1&key", "keys=1"}, {"a=%zz&key=1", "a=%zz"},
	} {
		if got := withoutQueryParam(tt.in, "key"); got != tt.want {
			t.Errorf("withoutQueryParam(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestKeysPanicFailsClosed: a panic while a keys-mapping request is
// handled sends nothing upstream and leaves no state behind: the next
// request is checked afresh.
func TestKeysPanicFailsClosed(t *testing.T) {
	up, seen := credentialUpstream(t, http.StatusOK)
	var calls atomic.Int64
	real := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(real.CloseIdleConnections)
	transport := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if calls.Add(1) == 1 {
			panic("injected fault")
		}
		return real.RoundTrip(req)
	})
	cfg := testConfig(t, nil)
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(cfg, testLogger(), store, transport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	front := newFront(t, s)
	k, secret := testKey("k")
	setKeys(t, s, k)
	setMapping(t, s, keysMapping("/ai", up.URL, "sk-upstream", "bearer"))
	get := func(key string) (int, error) {
		req, _ := http.NewRequest("GET", front.URL+"/ai/x", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		res, err := front.Client().Do(req)
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
	if code, err := get(secret); err == nil && code == http.StatusOK {
		t.Fatalf("the request whose handling panicked got 200")
	}
	if up.Hits() != 0 {
		t.Fatalf("the upstream was reached %d times during the panic", up.Hits())
	}
	if code, err := get(""); err != nil || code != http.StatusUnauthorized {
		t.Errorf("after the panic, a request without a key: %d, %v; want 401", code, err)
	}
	if code, err := get(secret); err != nil || code != http.StatusOK {
		t.Errorf("after the panic, a request with the key: %d, %v; want 200", code, err)
	}
	if got := <-seen; got.auth != "Bearer sk-upstream" {
		t.Errorf("upstream saw %q, want the upstream key", got.auth)
	}
}
