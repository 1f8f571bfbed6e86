package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testAdminToken = "test-admin-token-0123456789"

// adminRequest sends an admin API call with the test token to front and
// returns the response and its body.
func adminRequest(t testing.TB, front *httptest.Server, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, front.URL+path, rd)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	return res, readAll(t, res)
}

// adminCall serves one admin API request on s directly, from client
// address remote, with the header Authorization: auth (none if "").
func adminCall(t testing.TB, s *Server, method, target, body, auth, remote string) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.RemoteAddr = remote
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	res := rec.Result()
	return res, readAll(t, res)
}

const bearer = "Bearer " + testAdminToken

// plainObjectJSON is the admin API's answer for the mapping of the
// original form prefix → url: the object with every option at its default,
// plus "target".
func plainObjectJSON(prefix, url string) string {
	return fmt.Sprintf(`{"prefix":%q,"target":%q,"targets":[{"url":%q,"weight":1}],"balance":"failover",`+
		`"retry_on":[429,500,502,503,504],"auth":"passthrough","limits":{"rpm":0,"tpm":0,"concurrency":0},"stream_idle_timeout":"0s"}`,
		prefix, url, url)
}

// mappingJSON is a mapping in the original form of the admin API's
// requests: a prefix and one target URL.
type mappingJSON struct {
	Prefix string `json:"prefix"`
	Target string `json:"target"`
}

// newAdminTestServer is a Server on the embedded store with ADMIN_TOKEN set
// and exactly mappings.
func newAdminTestServer(t *testing.T, mappings map[string]string) (*Server, *httptest.Server) {
	t.Helper()
	return newTestServerConfig(t, testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken}), mappings)
}

// storedMappings is what s's store holds, as prefix → first target URL.
func storedMappings(t testing.TB, s *Server) map[string]string {
	t.Helper()
	ms, err := s.store.Mappings(context.Background())
	if err != nil {
		t.Fatalf("Mappings: %v", err)
	}
	return mappingsMap(ms)
}

func TestAdminAuth(t *testing.T) {
	s, _ := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	tests := []struct {
		name string
		auth string
		want int
	}{
		{"no header", "", http.StatusUnauthorized},
		{"wrong token", "Bearer wrong-token-0123456789", http.StatusUnauthorized},
		{"token prefix", "Bearer " + testAdminToken[:10], http.StatusUnauthorized},
		{"token with more", bearer + "x", http.StatusUnauthorized},
		{"basic scheme", "Basic " + testAdminToken, http.StatusUnauthorized},
		{"bare token", testAdminToken, http.StatusUnauthorized},
		{"empty bearer", "Bearer ", http.StatusUnauthorized},
		{"right token", bearer, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + testAdminToken, http.StatusOK},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A client address per case, so the throttle stays out of it.
			res, body := adminCall(t, s, "GET", "/api/mappings", "", tt.auth, fmt.Sprintf("198.51.100.%d:4000", i+1))
			if tt.want == http.StatusOK {
				if res.StatusCode != http.StatusOK {
					t.Errorf("status = %d, want 200 (body %s)", res.StatusCode, body)
				}
				return
			}
			wantProxyError(t, res, body, http.StatusUnauthorized, "unauthorized")
			if got := res.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", got)
			}
			if strings.Contains(string(body), testAdminToken) {
				t.Errorf("401 body holds the token: %s", body)
			}
		})
	}
}

func TestAdminAuthThrottle(t *testing.T) {
	s, _ := newAdminTestServer(t, nil)
	now := time.Unix(1_700_000_000, 0)
	s.authFailures.local.now = func() time.Time { return now }
	const attacker, other = "203.0.113.7:5000", "203.0.113.8:5000"
	wrong := "Bearer guess-0123456789abcdef"

	for i := 1; i <= authMaxFailures; i++ {
		res, body := adminCall(t, s, "GET", "/api/mappings", "", wrong, attacker)
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401 (body %s)", i, res.StatusCode, body)
		}
	}
	res, body := adminCall(t, s, "GET", "/api/mappings", "", wrong, attacker)
	wantProxyError(t, res, body, http.StatusTooManyRequests, "too_many_auth_failures")
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After = %q, want 1..60 seconds", res.Header.Get("Retry-After"))
	}
	// Blocked means blocked: even the right token is refused, so guessing
	// cannot go on.
	if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, attacker); res.StatusCode != http.StatusTooManyRequests {
		t.Errorf("right token from the blocked address: status %d, want 429", res.StatusCode)
	}
	if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, other); res.StatusCode != http.StatusOK {
		t.Errorf("another address with the right token: status %d, want 200", res.StatusCode)
	}
	if res, _ := adminCall(t, s, "GET", "/api/mappings", "", wrong, other); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("another address with a wrong token: status %d, want 401", res.StatusCode)
	}

	now = now.Add(30 * time.Second)
	res, _ = adminCall(t, s, "GET", "/api/mappings", "", bearer, attacker)
	if ra, _ := strconv.Atoi(res.Header.Get("Retry-After")); res.StatusCode != http.StatusTooManyRequests || ra != 30 {
		t.Errorf("30 s into the block: status %d Retry-After %q, want 429 and 30", res.StatusCode, res.Header.Get("Retry-After"))
	}
	now = now.Add(31 * time.Second)
	if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, attacker); res.StatusCode != http.StatusOK {
		t.Errorf("after the block: status %d, want 200", res.StatusCode)
	}

	t.Run("failures older than the window do not count", func(t *testing.T) {
		const addr = "203.0.113.9:1"
		for i := 1; i < authMaxFailures; i++ {
			adminCall(t, s, "GET", "/api/mappings", "", wrong, addr)
		}
		now = now.Add(authWindow)
		for i := 1; i < authMaxFailures; i++ {
			if res, _ := adminCall(t, s, "GET", "/api/mappings", "", wrong, addr); res.StatusCode != http.StatusUnauthorized {
				t.Fatalf("failure %d of a new window: status %d, want 401", i, res.StatusCode)
			}
		}
	})
	t.Run("a success forgets the failures", func(t *testing.T) {
		const addr = "203.0.113.10:1"
		for i := 1; i < authMaxFailures; i++ {
			adminCall(t, s, "GET", "/api/mappings", "", wrong, addr)
		}
		adminCall(t, s, "GET", "/api/mappings", "", bearer, addr)
		for i := 1; i < authMaxFailures; i++ {
			if res, _ := adminCall(t, s, "GET", "/api/mappings", "", wrong, addr); res.StatusCode != http.StatusUnauthorized {
				t.Fatalf("failure %d after a success: status %d, want 401", i, res.StatusCode)
			}
		}
	})
	t.Run("IPv6 counts per /64", func(t *testing.T) {
		for i := 1; i <= authMaxFailures; i++ {
			adminCall(t, s, "GET", "/api/mappings", "", wrong, fmt.Sprintf("[2001:db8:1:2::%x]:443", i))
		}
		if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, "[2001:db8:1:2::ffff]:443"); res.StatusCode != http.StatusTooManyRequests {
			t.Errorf("same /64: status %d, want 429", res.StatusCode)
		}
		if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, "[2001:db8:1:3::1]:443"); res.StatusCode != http.StatusOK {
			t.Errorf("another /64: status %d, want 200", res.StatusCode)
		}
	})
}

func TestAdminListAndGet(t *testing.T) {
	m := map[string]string{"/a": "https://a.example", "/b/c": "https://b.example/v1"}
	s, _ := newAdminTestServer(t, m)
	for _, target := range []string{"/api/mappings", "/api/mappings/"} {
		res, body := adminCall(t, s, "GET", target, "", bearer, "192.0.2.1:1")
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", target, res.StatusCode, body)
		}
		var got struct {
			Mappings map[string]string `json:"mappings"`
			Count    int               `json:"count"`
		}
		if err := json.Unmarshal(body, &got); err != nil || !maps.Equal(got.Mappings, m) || got.Count != 2 {
			t.Errorf("GET %s = %s (%v), want mappings %v and count 2", target, body, err, m)
		}
		if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", cc)
		}
	}
	for _, target := range []string{"/api/mappings/b/c", "/api/mappings/b%2Fc", "/api/mappings/b%2fc"} {
		res, body := adminCall(t, s, "GET", target, "", bearer, "192.0.2.1:1")
		if res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != plainObjectJSON("/b/c", "https://b.example/v1") {
			t.Errorf("GET %s = %d %s, want the /b/c mapping", target, res.StatusCode, body)
		}
	}
	res, body := adminCall(t, s, "GET", "/api/mappings/nope", "", bearer, "192.0.2.1:1")
	wantProxyError(t, res, body, http.StatusNotFound, "not_found")
}

func TestAdminCreate(t *testing.T) {
	up := newUpstream(t, nil)
	s, front := newAdminTestServer(t, nil)

	res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/new","target":"`+up.URL+`"}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", res.StatusCode, body)
	}
	if want := plainObjectJSON("/new", up.URL); strings.TrimSpace(string(body)) != want {
		t.Errorf("create body = %s, want %s", body, want)
	}
	if loc := res.Header.Get("Location"); loc != "/api/mappings/new" {
		t.Errorf("Location = %q, want /api/mappings/new", loc)
	}
	// The very next request routes by it: no watch loop runs in this test.
	if code, body := getStatus(t, front.Client(), front.URL+"/new/v1/models"); code != http.StatusOK {
		t.Errorf("GET /new/v1/models right after the create = %d %s, want 200", code, body)
	}

	res, body = adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/new","target":"https://other.example"}`)
	wantProxyError(t, res, body, http.StatusConflict, "conflict")
	if got := storedMappings(t, s)["/new"]; got != up.URL {
		t.Errorf("after a 409, /new = %q, want it unchanged", got)
	}

	// The admin is trusted: local models and sidecars are valid targets.
	for i, target := range []string{"http://127.0.0.1:11434", "http://localhost:8080/v1", "http://10.0.0.5:8000", "http://192.168.1.20", "http://[::1]:9000/api", "https://api.groq.com/openai/"} {
		prefix := fmt.Sprintf("/local%d", i)
		res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"`+prefix+`","target":"`+target+`"}`)
		if res.StatusCode != http.StatusCreated {
			t.Errorf("create %s -> %s: %d %s, want 201", prefix, target, res.StatusCode, body)
		}
	}
	// Nested prefixes.
	if res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/team/a.b_c~d-e","target":"https://x.example"}`); res.StatusCode != http.StatusCreated {
		t.Errorf("create a nested prefix: %d %s", res.StatusCode, body)
	}
}

// TestAdminValidation: every rule of SPEC §6 has its own 400 naming the
// field and the rule, and nothing invalid is stored.
func TestAdminValidation(t *testing.T) {
	s, _ := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	before := storedMappings(t, s)
	const okTarget = "https://ok.example"
	tests := []struct {
		name, prefix, target string
		code, msg            string // msg: a part of the message
	}{
		{"prefix missing", "", okTarget, "invalid_prefix", "prefix is required"},
		{"prefix without leading slash", "openai2", okTarget, "invalid_prefix", `prefix must start with "/"`},
		{"prefix root", "/", okTarget, "invalid_prefix", "reserved"},
		{"prefix trailing slash", "/x/", okTarget, "invalid_prefix", `must not end with "/"`},
		{"prefix double slash", "/x//y", okTarget, "invalid_prefix", `must not contain "//"`},
		{"prefix space", "/x y", okTarget, "invalid_prefix", "may only hold"},
		{"prefix percent", "/x%20y", okTarget, "invalid_prefix", "may only hold"},
		{"prefix query", "/x?y", okTarget, "invalid_prefix", "may only hold"},
		{"prefix non-ascii", "/ü", okTarget, "invalid_prefix", "may only hold the letters A-Z a-z, digits and . _ ~ - between single slashes (found 'ü')"},
		{"prefix dot segment", "/x/../y", okTarget, "invalid_prefix", `"." or ".."`},
		{"prefix single dot", "/.", okTarget, "invalid_prefix", `"." or ".."`},
		{"prefix too long", "/" + strings.Repeat("a", 128), okTarget, "invalid_prefix", "at most 128 bytes"},
		{"prefix reserved api", "/api", okTarget, "invalid_prefix", `"/api" is reserved`},
		{"prefix under reserved", "/api/x", okTarget, "invalid_prefix", `"/api" is reserved`},
		{"prefix reserved stats", "/stats", okTarget, "invalid_prefix", "reserved"},
		{"prefix reserved admin any case", "/Admin", okTarget, "invalid_prefix", "reserved"},
		{"prefix reserved healthz", "/healthz", okTarget, "invalid_prefix", "reserved"},
		{"prefix reserved static", "/static/js", okTarget, "invalid_prefix", "reserved"},
		{"target missing", "/t", "", "invalid_target", "target is required"},
		{"target without scheme", "/t", "api.openai.com", "invalid_target", "http or https"},
		{"target ftp", "/t", "ftp://files.example", "invalid_target", "http or https"},
		{"target without host", "/t", "https://", "invalid_target", "with a host"},
		{"target path only", "/t", "https:///v1", "invalid_target", "with a host"},
		{"target user info", "/t", "https://user:pw@api.example", "invalid_target", "user info"},
		{"target query", "/t", "https://api.example/v1?key=1", "invalid_target", "query"},
		{"target empty query", "/t", "https://api.example/v1?", "invalid_target", "query"},
		{"target fragment", "/t", "https://api.example/#x", "invalid_target", "fragment"},
		{"target bad port", "/t", "https://api.example:99999", "invalid_target", "port"},
		{"target dot segment", "/t", "https://api.example/a/../b", "invalid_target", `"." or ".."`},
		{"target space", "/t", "https://api.example/a b", "invalid_target", "spaces"},
		{"target too long", "/t", "https://api.example/" + strings.Repeat("a", 2048), "invalid_target", "at most 2048 bytes"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]string{"prefix": tt.prefix, "target": tt.target})
			res, resBody := adminCall(t, s, "POST", "/api/mappings", string(body), bearer, fmt.Sprintf("192.0.2.%d:1", i+1))
			wantProxyError(t, res, resBody, http.StatusBadRequest, tt.code)
			var env errorBody
			json.Unmarshal(resBody, &env)
			if !strings.Contains(env.Error.Message, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", env.Error.Message, tt.msg)
			}
			field := strings.TrimPrefix(tt.code, "invalid_")
			if !strings.HasPrefix(env.Error.Message, field+" ") {
				t.Errorf("message = %q, want it to name the field %q first", env.Error.Message, field)
			}
		})
	}
	t.Run("update", func(t *testing.T) {
		res, body := adminCall(t, s, "PUT", "/api/mappings/a", `{"target":"https://user:pw@x.example"}`, bearer, "192.0.2.200:1")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_target")
		res, body = adminCall(t, s, "PUT", "/api/mappings/api", `{"target":"https://x.example"}`, bearer, "192.0.2.200:1")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_prefix")
		res, body = adminCall(t, s, "PUT", "/api/mappings/a%20b", `{"target":"https://x.example"}`, bearer, "192.0.2.200:1")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_prefix")
	})
	if got := storedMappings(t, s); !maps.Equal(got, before) {
		t.Errorf("after invalid requests the store holds %v, want %v", got, before)
	}
}

// TestAdminMalformedJSON: what is not one JSON object of the right fields
// and types is 400 invalid_json, naming the field where there is one.
func TestAdminMalformedJSON(t *testing.T) {
	s, _ := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	before := storedMappings(t, s)
	tests := []struct {
		name, method, target, body string
		msg                        string
	}{
		{"empty", "POST", "/api/mappings", ``, "empty"},
		{"not JSON", "POST", "/api/mappings", `prefix=/x&target=https://x.example`, "not valid JSON"},
		{"cut short", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.exa`, "not valid JSON"},
		{"trailing comma", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example",}`, "not valid JSON"},
		{"trailing data", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example"} x`, "more data after it"},
		{"two objects", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example"}{"prefix":"/y","target":"https://y.example"}`, "more data after it"},
		{"closing bracket after", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example"}]`, "more data after it"},
		{"prefix a number", "POST", "/api/mappings", `{"prefix":1,"target":"https://x.example"}`, `field "prefix" must be a JSON string, not a number`},
		{"target a boolean", "POST", "/api/mappings", `{"prefix":"/x","target":true}`, `field "target" must be a JSON string, not a boolean`},
		{"target an object", "POST", "/api/mappings", `{"prefix":"/x","target":{"url":"https://x.example"}}`, `field "target" must be a JSON string, not an object`},
		{"typo traget", "POST", "/api/mappings", `{"prefix":"/x","traget":"https://x.example"}`, `unknown field "traget"`},
		{"extra field", "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example","enabled":true}`, `unknown field "enabled"`},
		{"array", "POST", "/api/mappings", `[{"prefix":"/x","target":"https://x.example"}]`, "must be a JSON object"},
		{"string", "POST", "/api/mappings", `"/x"`, "must be a JSON object"},
		{"update typo", "PUT", "/api/mappings/a", `{"traget":"https://x.example"}`, `unknown field "traget"`},
		{"update target a number", "PUT", "/api/mappings/a", `{"target":42}`, `field "target" must be a JSON string, not a number`},
		{"update trailing data", "PUT", "/api/mappings/a", `{"target":"https://x.example"}{}`, "more data after it"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := adminCall(t, s, tt.method, tt.target, tt.body, bearer, fmt.Sprintf("192.0.2.%d:1", i+1))
			wantProxyError(t, res, body, http.StatusBadRequest, "invalid_json")
			var env errorBody
			json.Unmarshal(body, &env)
			if !strings.Contains(env.Error.Message, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", env.Error.Message, tt.msg)
			}
		})
	}
	if got := storedMappings(t, s); !maps.Equal(got, before) {
		t.Errorf("after malformed requests the store holds %v, want %v", got, before)
	}
}

func TestAdminBodyLimit(t *testing.T) {
	s, front := newAdminTestServer(t, nil)
	big := `{"prefix":"/big","target":"https://x.example/` + strings.Repeat("a", maxAdminBody) + `"}`

	res, body := adminRequest(t, front, "POST", "/api/mappings", big)
	wantProxyError(t, res, body, http.StatusRequestEntityTooLarge, "body_too_large")

	// Without a Content-Length the limit holds while reading.
	req := httptest.NewRequest("POST", "/api/mappings", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("Authorization", bearer)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	wantProxyError(t, rec.Result(), rec.Body.Bytes(), http.StatusRequestEntityTooLarge, "body_too_large")

	// Trailing whitespace past the limit is still past the limit.
	padded := `{"prefix":"/big","target":"https://x.example"}` + strings.Repeat(" ", maxAdminBody)
	res, body = adminRequest(t, front, "POST", "/api/mappings", padded)
	wantProxyError(t, res, body, http.StatusRequestEntityTooLarge, "body_too_large")

	// Exactly 64 KiB is allowed.
	exact := `{"prefix":"/big","target":"https://x.example"}`
	exact += strings.Repeat(" ", maxAdminBody-len(exact))
	if res, body := adminRequest(t, front, "POST", "/api/mappings", exact); res.StatusCode != http.StatusCreated {
		t.Errorf("a body of exactly 64 KiB: %d %s, want 201", res.StatusCode, body)
	}
}

func TestAdminUpdate(t *testing.T) {
	up1 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "one") })
	up2 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "two") })
	s, front := newAdminTestServer(t, map[string]string{"/a": up1.URL, "/b/c": up1.URL})

	res, body := adminRequest(t, front, "PUT", "/api/mappings/a", `{"target":"`+up2.URL+`"}`)
	if res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != plainObjectJSON("/a", up2.URL) {
		t.Fatalf("update /a: %d %s", res.StatusCode, body)
	}
	if code, body := getStatus(t, front.Client(), front.URL+"/a/x"); code != http.StatusOK || string(body) != "two" {
		t.Errorf("GET /a/x right after the update = %d %q, want 200 \"two\"", code, body)
	}

	for _, path := range []string{"/api/mappings/b/c", "/api/mappings/b%2Fc"} {
		if res, body := adminRequest(t, front, "PUT", path, `{"target":"`+up2.URL+`"}`); res.StatusCode != http.StatusOK {
			t.Errorf("PUT %s: %d %s, want 200", path, res.StatusCode, body)
		}
	}
	// The prefix may be repeated in the body, but must agree with the path.
	if res, body := adminRequest(t, front, "PUT", "/api/mappings/a", `{"prefix":"/a","target":"`+up1.URL+`"}`); res.StatusCode != http.StatusOK {
		t.Errorf("PUT with the same prefix in the body: %d %s, want 200", res.StatusCode, body)
	}
	res, body = adminRequest(t, front, "PUT", "/api/mappings/a", `{"prefix":"/z","target":"`+up1.URL+`"}`)
	wantProxyError(t, res, body, http.StatusBadRequest, "invalid_prefix")

	res, body = adminRequest(t, front, "PUT", "/api/mappings/missing", `{"target":"https://x.example"}`)
	wantProxyError(t, res, body, http.StatusNotFound, "not_found")
	if _, ok := storedMappings(t, s)["/missing"]; ok {
		t.Errorf("PUT of a missing prefix created it")
	}
	res, body = adminRequest(t, front, "PUT", "/api/mappings/", `{"target":"https://x.example"}`)
	wantProxyError(t, res, body, http.StatusBadRequest, "invalid_prefix")
}

func TestAdminDelete(t *testing.T) {
	up := newUpstream(t, nil)
	s, front := newAdminTestServer(t, map[string]string{"/a": up.URL, "/b/c": up.URL})

	res, body := adminRequest(t, front, "DELETE", "/api/mappings/a", "")
	if res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != `{"deleted":true,"prefix":"/a"}` {
		t.Fatalf("delete /a: %d %s", res.StatusCode, body)
	}
	code, body := getStatus(t, front.Client(), front.URL+"/a/x")
	if code != http.StatusNotFound {
		t.Errorf("GET /a/x right after the delete = %d %s, want 404", code, body)
	}
	res, body = adminRequest(t, front, "DELETE", "/api/mappings/a", "")
	wantProxyError(t, res, body, http.StatusNotFound, "not_found")

	if res, body := adminRequest(t, front, "DELETE", "/api/mappings/b%2Fc", ""); res.StatusCode != http.StatusOK {
		t.Errorf("DELETE /api/mappings/b%%2Fc: %d %s, want 200", res.StatusCode, body)
	}
	if got := storedMappings(t, s); len(got) != 0 {
		t.Errorf("after deleting both, the store holds %v", got)
	}
	res, body = adminRequest(t, front, "DELETE", "/api/mappings/", "")
	wantProxyError(t, res, body, http.StatusBadRequest, "invalid_prefix")
}

func TestAdminMethodNotAllowed(t *testing.T) {
	s, _ := newAdminTestServer(t, nil)
	tests := []struct{ method, target, allow string }{
		{"PATCH", "/api/mappings", "GET, POST"},
		{"PUT", "/api/mappings", "GET, POST"},
		{"DELETE", "/api/mappings", "GET, POST"},
		{"POST", "/api/mappings/x", "GET, PUT, DELETE"},
		{"PATCH", "/api/mappings/x", "GET, PUT, DELETE"},
	}
	for _, tt := range tests {
		res, body := adminCall(t, s, tt.method, tt.target, "", bearer, "192.0.2.1:1")
		wantProxyError(t, res, body, http.StatusMethodNotAllowed, "method_not_allowed")
		if got := res.Header.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tt.method, tt.target, got, tt.allow)
		}
	}
	res, body := adminCall(t, s, "PATCH", "/api/mappings", "", "", "192.0.2.2:1")
	wantProxyError(t, res, body, http.StatusUnauthorized, "unauthorized")
}

// TestAdminConcurrentCreates: simultaneous creates of one prefix through
// the API get exactly one 201 and 409 for the rest, on both stores.
func TestAdminConcurrentCreates(t *testing.T) {
	run := func(t *testing.T, front *httptest.Server) {
		const n = 20
		codes := make([]int, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("POST", front.URL+"/api/mappings", strings.NewReader(fmt.Sprintf(`{"prefix":"/race","target":"https://t%d.example"}`, i)))
				req.Header.Set("Authorization", bearer)
				<-start
				res, err := front.Client().Do(req)
				if err != nil {
					t.Errorf("create %d: %v", i, err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				codes[i] = res.StatusCode
			}()
		}
		close(start)
		wg.Wait()
		count := map[int]int{}
		for _, c := range codes {
			count[c]++
		}
		if count[http.StatusCreated] != 1 || count[http.StatusConflict] != n-1 {
			t.Errorf("statuses = %v, want one 201 and %d 409", count, n-1)
		}
	}
	t.Run("bolt", func(t *testing.T) {
		_, front := newAdminTestServer(t, nil)
		run(t, front)
	})
	t.Run("redis", func(t *testing.T) {
		addr := testRedisAddr(t)
		cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
		_, front := newRedisTestServer(t, cfg, openTestRedisStore(t, addr, testKeyPrefix(t, addr), ""))
		run(t, front)
	})
}

// TestAdminTokenGenerated: without ADMIN_TOKEN a token is generated once,
// kept in the store, printed alone as a word on its own log line at every
// start, whatever LOG_LEVEL, and nowhere else.
func TestAdminTokenGenerated(t *testing.T) {
	cfg := testConfig(t, nil)
	var logs syncBuffer
	start := func(level slog.Level) (*Server, string) {
		t.Helper()
		store, err := openBoltStore(cfg.DataDir)
		if err != nil {
			t.Fatalf("openBoltStore: %v", err)
		}
		var own syncBuffer
		h := slog.NewTextHandler(io.MultiWriter(&logs, &own), &slog.HandlerOptions{Level: level})
		s, err := newServer(cfg, slog.New(h), store, nil)
		if err != nil {
			t.Fatalf("newServer: %v", err)
		}
		m := tokenLine.FindStringSubmatch(own.String())
		if m == nil {
			t.Fatalf("no admin token line in the start log:\n%s", own.String())
		}
		return s, m[1]
	}

	s, token := start(slog.LevelDebug)
	if len(token) != 26 {
		t.Errorf("generated token %q has %d characters, want 26 (128 bits of base32)", token, len(token))
	}
	auth := "Bearer " + token
	if res, body := adminCall(t, s, "GET", "/api/mappings", "", auth, "192.0.2.1:1"); res.StatusCode != http.StatusOK {
		t.Fatalf("GET with the printed token: %d %s", res.StatusCode, body)
	}
	var responses []string
	for _, call := range []struct{ method, target, body, auth string }{
		{"POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example"}`, auth},
		{"PUT", "/api/mappings/x", `{"target":"https://y.example"}`, auth},
		{"GET", "/api/mappings/x", "", auth},
		{"DELETE", "/api/mappings/x", "", auth},
		{"GET", "/api/mappings", "", "Bearer " + token[:20]},
		{"GET", "/api/mappings", "", "Basic " + token},
	} {
		_, body := adminCall(t, s, call.method, call.target, call.body, call.auth, "192.0.2.1:1")
		responses = append(responses, string(body))
	}
	s.Close()

	s2, token2 := start(slog.LevelError) // a restart, logging errors only
	defer s2.Close()
	if token2 != token {
		t.Errorf("after a restart the log shows token %q, want the stored %q", token2, token)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, token[:12]) && !tokenLine.MatchString(line) {
			t.Errorf("the token appears in another log line: %s", line)
		}
		if m := tokenLine.FindStringSubmatch(line); m != nil && !strings.Contains(line, "ADMIN_TOKEN") {
			t.Errorf("the token line does not say how to set your own: %s", line)
		}
	}
	for _, body := range responses {
		if strings.Contains(body, token[:12]) {
			t.Errorf("a response holds the token: %s", body)
		}
	}
}

// TestAdminTokenFromEnv: with ADMIN_TOKEN set, nothing is generated or
// printed, and the token is never logged.
func TestAdminTokenFromEnv(t *testing.T) {
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	s, err := newServer(cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/x","target":"https://x.example"}`, bearer, "192.0.2.1:1")
	adminCall(t, s, "GET", "/api/mappings", "", "Bearer wrong-0123456789abcdef", "192.0.2.1:1")
	if strings.Contains(logs.String(), "admin token:") || strings.Contains(logs.String(), testAdminToken) {
		t.Errorf("the log shows an admin token although ADMIN_TOKEN is set:\n%s", logs.String())
	}
	generated := false
	tok, err := store.AdminToken(context.Background(), func() (string, error) { generated = true; return "fresh-0123456789abcdef", nil })
	if err != nil || !generated {
		t.Errorf("a token was stored although ADMIN_TOKEN is set: %q, %v", tok, err)
	}
}

// TestAdminWriteReloadsOnce: an admin write reloads the routes once, in
// the handler (so the next request routes by it), and the store asks for
// no second reload (issue 13): the embedded store leaves Changes silent,
// and a Redis store skips its own Pub/Sub message while another
// instance's still reloads.
func TestAdminWriteReloadsOnce(t *testing.T) {
	writes := []struct{ method, path, body string }{
		{"POST", "/api/mappings", `{"prefix":"/once","target":"https://a.example"}`},
		{"PUT", "/api/mappings/once", `{"target":"https://b.example"}`},
		{"DELETE", "/api/mappings/once", ""},
	}
	t.Run("bolt", func(t *testing.T) {
		// No loop runs: a signal the store sent would still be pending.
		s, _ := newAdminTestServer(t, nil)
		for _, w := range writes {
			before := s.reloads.Load()
			if res, body := adminCall(t, s, w.method, w.path, w.body, bearer, "192.0.2.1:1"); res.StatusCode >= 300 {
				t.Fatalf("%s %s: %d %s", w.method, w.path, res.StatusCode, body)
			}
			if got := s.reloads.Load() - before; got != 1 {
				t.Errorf("%s %s: %d reloads in the handler, want 1", w.method, w.path, got)
			}
			select {
			case <-s.store.Changes():
				t.Errorf("%s %s: the store signalled Changes, which would reload a second time", w.method, w.path)
			default:
			}
		}
	})
	t.Run("redis", func(t *testing.T) {
		ctx := context.Background()
		addr := testRedisAddr(t)
		prefix := testKeyPrefix(t, addr)
		store := openTestRedisStore(t, addr, prefix, "")
		// Initialise the Redis first: seeding signals Changes, which would
		// add a reload of its own.
		if _, err := store.Mappings(ctx); err != nil {
			t.Fatal(err)
		}
		drainSignals(store.Changes())
		cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
		s, _ := newRedisTestServer(t, cfg, store) // loops started: Pub/Sub is listened to
		// newServer's reload, then the one of the first subscription.
		eventually(t, func() bool { return s.reloads.Load() == 2 }, "the reload of the first subscription")
		for i, w := range writes {
			before := s.reloads.Load()
			if res, body := adminCall(t, s, w.method, w.path, w.body, bearer, "192.0.2.1:1"); res.StatusCode >= 300 {
				t.Fatalf("%s %s: %d %s", w.method, w.path, res.StatusCode, body)
			}
			if got := s.reloads.Load() - before; got != 1 {
				t.Errorf("%s %s: %d reloads in the handler, want 1", w.method, w.path, got)
			}
			// The write's own message comes back and is skipped, not
			// signalled.
			eventually(t, func() bool { return store.ownMessages.Load() == int64(i+1) }, "the write's own message to come back")
		}
		// Another instance's write still reloads, and after the messages of
		// the writes above (Pub/Sub keeps their order): exactly one more.
		before := s.reloads.Load()
		other := openTestRedisStore(t, addr, prefix, "")
		if err := other.CreateMapping(ctx, newMapping("/other", "https://other.example")); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() bool { return routedURL(s, "/other") != "" }, "the other instance's write to route")
		if got := s.reloads.Load() - before; got != 1 {
			t.Errorf("%d reloads for another instance's write, want 1", got)
		}
		if got := s.reloads.Load(); got != 2+int64(len(writes))+1 {
			t.Errorf("%d reloads in all, want %d: one at start, one for the subscription, one per write", got, 2+len(writes)+1)
		}
	})
}

// flakyStore is a bolt store whose next Mappings fails when failNext is
// set, as a Redis that went away between a write and its reload would.
type flakyStore struct {
	*boltStore
	failNext atomic.Bool
}

func (f *flakyStore) Mappings(ctx context.Context) ([]Mapping, error) {
	if f.failNext.CompareAndSwap(true, false) {
		return nil, fmt.Errorf("list mappings: %w", errStoreUnavailable)
	}
	return f.boltStore.Mappings(ctx)
}

// TestAdminWriteReloadRetried: when the reload after a write fails, the
// write stands (200) and watchMappings reloads soon after, since no store
// signal is coming for it.
func TestAdminWriteReloadRetried(t *testing.T) {
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	bs, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	store := &flakyStore{boltStore: bs}
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		bs.Close()
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	store.failNext.Store(true)
	res, body := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/late","target":"https://late.example"}`, bearer, "192.0.2.1:1")
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", res.StatusCode, body)
	}
	if store.failNext.Load() {
		t.Fatal("the handler did not reload")
	}
	eventually(t, func() bool { return routedURL(s, "/late") == "https://late.example" }, "the failed reload to be retried")
}

// TestAdminRefusesSelfLoop: the admin API refuses a target at the
// instance's own listen address in POST and PUT (issue 14: one request to
// such a mapping recursed until the file descriptors ran out), and routing
// skips such a mapping that is stored already (put there by hand, or by an
// instance listening elsewhere).
func TestAdminRefusesSelfLoop(t *testing.T) {
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	cfg.ListenAddr = ":18000" // what the server would listen on; httptest serves it elsewhere
	s, _ := newTestServerConfig(t, cfg, map[string]string{"/a": "https://a.example"})
	for _, target := range []string{"http://127.0.0.1:18000/loop", "http://localhost:18000", "http://[::1]:18000/v1", "http://127.1.2.3:18000"} {
		res, body := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/loop","target":"`+target+`"}`, bearer, "192.0.2.1:1")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_target")
		if !strings.Contains(string(body), "(a loop)") {
			t.Errorf("POST %s: message %s, want it to name the loop rule", target, body)
		}
		res, body = adminCall(t, s, "PUT", "/api/mappings/a", `{"target":"`+target+`"}`, bearer, "192.0.2.1:1")
		wantProxyError(t, res, body, http.StatusBadRequest, "invalid_target")
	}
	if res, body := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/next","target":"http://127.0.0.1:18001"}`, bearer, "192.0.2.1:1"); res.StatusCode != http.StatusCreated {
		t.Errorf("another local port: %d %s, want 201", res.StatusCode, body)
	}
	if got, want := storedMappings(t, s), map[string]string{"/a": "https://a.example", "/next": "http://127.0.0.1:18001"}; !maps.Equal(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}

	if err := s.store.CreateMapping(context.Background(), newMapping("/stored", "http://localhost:18000")); err != nil {
		t.Fatal(err)
	}
	if err := s.reloadRoutes(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := routedURL(s, "/stored"); got != "" {
		t.Errorf("a stored loop mapping routes to %q, want it skipped", got)
	}
	if got := routedURL(s, "/next"); got == "" {
		t.Errorf("/next does not route")
	}
}

// adminErrorMessage is the message of an admin API error answer.
func adminErrorMessage(t testing.TB, body []byte) string {
	t.Helper()
	var env errorBody
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("error answer %s: %v", body, err)
	}
	return env.Error.Message
}

// storedObjects is everything s's store holds, each mapping in its stored
// form (keys in), for comparing whole mappings before and after.
func storedObjects(t testing.TB, s *Server) string {
	t.Helper()
	ms, err := s.store.Mappings(context.Background())
	if err != nil {
		t.Fatalf("Mappings: %v", err)
	}
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s=%s\n", m.Prefix, m.encodeValue())
	}
	return b.String()
}

// TestAdminObjects: a mapping object of SPEC §9 goes through create, get,
// list, replace and delete; answers show every option, "target" is the
// first URL, and the mapping routes by its targets right away.
func TestAdminObjects(t *testing.T) {
	down := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "second") })
	s, front := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})

	create := `{"prefix":"/multi","targets":[{"url":"` + down.URL + `","weight":3},{"url":"` + up.URL + `"}],` +
		`"retry_on":[429,503],"stream_idle_timeout":"1m30s"}`
	want := `{"prefix":"/multi","target":"` + down.URL + `","targets":[{"url":"` + down.URL + `","weight":3},{"url":"` + up.URL + `","weight":1}],` +
		`"balance":"failover","retry_on":[429,503],"auth":"passthrough","limits":{"rpm":0,"tpm":0,"concurrency":0},"stream_idle_timeout":"1m30s"}`
	res, body := adminRequest(t, front, "POST", "/api/mappings", create)
	if res.StatusCode != http.StatusCreated || strings.TrimSpace(string(body)) != want {
		t.Fatalf("create = %d %s, want 201 %s", res.StatusCode, body, want)
	}
	if loc := res.Header.Get("Location"); loc != "/api/mappings/multi" {
		t.Errorf("Location = %q, want /api/mappings/multi", loc)
	}
	if res, body := adminRequest(t, front, "GET", "/api/mappings/multi", ""); res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != want {
		t.Errorf("GET /api/mappings/multi = %d %s, want %s", res.StatusCode, body, want)
	}
	// The first target answers 503, in retry_on: the second one's answer
	// reaches the client.
	if code, body := getStatus(t, front.Client(), front.URL+"/multi/v1/x"); code != http.StatusOK || string(body) != "second" {
		t.Errorf("GET /multi/v1/x right after the create = %d %q, want 200 \"second\"", code, body)
	}

	t.Run("list", func(t *testing.T) {
		res, body := adminRequest(t, front, "GET", "/api/mappings", "")
		var got struct {
			Mappings map[string]string `json:"mappings"`
			Count    int               `json:"count"`
			Items    []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(body, &got); err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/mappings = %d %s (%v)", res.StatusCode, body, err)
		}
		wantMappings := map[string]string{"/a": "https://a.example", "/multi": down.URL}
		if !maps.Equal(got.Mappings, wantMappings) || got.Count != 2 {
			t.Errorf("mappings = %v, count %d; want %v, count 2", got.Mappings, got.Count, wantMappings)
		}
		wantItems := []string{plainObjectJSON("/a", "https://a.example"), want}
		if len(got.Items) != len(wantItems) {
			t.Fatalf("items = %s, want %d items sorted by prefix", body, len(wantItems))
		}
		for i, item := range got.Items {
			if string(item) != wantItems[i] {
				t.Errorf("items[%d] = %s, want %s", i, item, wantItems[i])
			}
		}
	})

	t.Run("PUT replaces the whole object", func(t *testing.T) {
		res, body := adminRequest(t, front, "PUT", "/api/mappings/multi",
			`{"prefix":"/multi","targets":[{"url":"`+up.URL+`","weight":2},{"url":"`+down.URL+`"}],"balance":"weighted"}`)
		wantPut := `{"prefix":"/multi","target":"` + up.URL + `","targets":[{"url":"` + up.URL + `","weight":2},{"url":"` + down.URL + `","weight":1}],` +
			`"balance":"weighted","retry_on":[429,500,502,503,504],"auth":"passthrough","limits":{"rpm":0,"tpm":0,"concurrency":0},"stream_idle_timeout":"0s"}`
		if res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != wantPut {
			t.Errorf("PUT = %d %s, want 200 %s", res.StatusCode, body, wantPut)
		}
		if res, body := adminRequest(t, front, "GET", "/api/mappings/multi", ""); strings.TrimSpace(string(body)) != wantPut {
			t.Errorf("GET after the PUT = %d %s, want %s", res.StatusCode, body, wantPut)
		}
		// {"target": …} alone is one target and no options: the options
		// set before do not survive.
		res, body = adminRequest(t, front, "PUT", "/api/mappings/multi", `{"target":"`+up.URL+`"}`)
		if res.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != plainObjectJSON("/multi", up.URL) {
			t.Errorf("PUT of the original form = %d %s, want %s", res.StatusCode, body, plainObjectJSON("/multi", up.URL))
		}
		ms, _ := s.store.Mappings(context.Background())
		if i := slices.IndexFunc(ms, func(m Mapping) bool { return m.Prefix == "/multi" }); i < 0 || ms[i].encodeValue() != up.URL {
			t.Errorf("after the PUT of the original form the stored mapping is not plain: %+v", ms)
		}
	})

	t.Run("the original form creates a plain mapping", func(t *testing.T) {
		res, body := adminRequest(t, front, "POST", "/api/mappings", `{"prefix":"/orig","target":"`+up.URL+`"}`)
		if res.StatusCode != http.StatusCreated || strings.TrimSpace(string(body)) != plainObjectJSON("/orig", up.URL) {
			t.Errorf("create = %d %s", res.StatusCode, body)
		}
		// An answer can be sent back as it is (key_set and target are
		// accepted on input): here, target and targets agree.
		res, body = adminRequest(t, front, "PUT", "/api/mappings/orig", `{"target":"`+up.URL+`","targets":[{"url":"`+up.URL+`","key_set":false}]}`)
		if res.StatusCode != http.StatusOK {
			t.Errorf("PUT of targets with key_set = %d %s, want 200", res.StatusCode, body)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if res, body := adminRequest(t, front, "DELETE", "/api/mappings/multi", ""); res.StatusCode != http.StatusOK {
			t.Fatalf("DELETE = %d %s", res.StatusCode, body)
		}
		res, body := adminRequest(t, front, "GET", "/api/mappings/multi", "")
		wantProxyError(t, res, body, http.StatusNotFound, "not_found")
		if code, _ := getStatus(t, front.Client(), front.URL+"/multi/v1/x"); code != http.StatusNotFound {
			t.Errorf("GET /multi/v1/x after the delete = %d, want 404", code)
		}
	})
}

// TestAdminObjectValidation: each rule of SPEC §9's validation list is a
// 400 through the API whose message names the field, for POST and PUT,
// and nothing is stored after any of them.
func TestAdminObjectValidation(t *testing.T) {
	s, _ := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	before := storedObjects(t, s)
	targets := func(n int) string {
		var ts []string
		for i := range n {
			ts = append(ts, fmt.Sprintf(`{"url":"https://t%d.example"}`, i))
		}
		return "[" + strings.Join(ts, ",") + "]"
	}
	const two = `[{"url":"https://a.example"},{"url":"https://b.example"}]`
	tests := []struct {
		name string
		body string // without the prefix, which POST adds
		code string
		msg  string // a part of the message, naming the field
	}{
		{"no targets", `"targets":[]`, "invalid_target", "targets must hold 1 to 16 targets, not 0"},
		{"neither target nor targets", `"balance":"failover"`, "invalid_target", "target is required"},
		{"targets null", `"targets":null`, "invalid_target", "target is required"},
		{"17 targets", `"targets":` + targets(17), "invalid_target", "targets must hold 1 to 16 targets, not 17"},
		{"target and targets that differ", `"target":"https://b.example","targets":[{"url":"https://a.example"}]`, "invalid_target", `either "target"`},
		{"weight 0", `"targets":[{"url":"https://a.example","weight":0}]`, "invalid_target", "targets[0].weight must be an integer from 1 to 1000"},
		{"weight 1001", `"targets":[{"url":"https://a.example"},{"url":"https://b.example","weight":1001}]`, "invalid_target", "targets[1].weight must be an integer from 1 to 1000"},
		{"weight negative", `"targets":[{"url":"https://a.example","weight":-1}]`, "invalid_target", "targets[0].weight"},
		{"weight not an integer", `"targets":[{"url":"https://a.example","weight":1.5}]`, "invalid_json", `field "targets.weight" must be a JSON integer`},
		{"weight a string", `"targets":[{"url":"https://a.example","weight":"2"}]`, "invalid_json", `field "targets.weight" must be a JSON integer, not a string`},
		{"second URL bad", `"targets":[{"url":"https://a.example"},{"url":"https://b.example/?k=1"}]`, "invalid_target", "targets[1].url must not contain a query"},
		{"target URL missing", `"targets":[{"url":"https://a.example"},{"weight":2}]`, "invalid_target", "targets[1].url is required"},
		{"unknown balance", `"targets":` + two + `,"balance":"random"`, "invalid_mapping", `balance must be "failover" or "weighted"`},
		{"bad duration", `"targets":` + two + `,"stream_idle_timeout":"soon"`, "invalid_mapping", "stream_idle_timeout must be a duration"},
		{"duration without unit", `"targets":` + two + `,"stream_idle_timeout":"30"`, "invalid_mapping", "stream_idle_timeout must be a duration"},
		{"negative duration", `"targets":` + two + `,"stream_idle_timeout":"-1s"`, "invalid_mapping", "stream_idle_timeout must be a duration from 0s to 24h"},
		{"duration over 24h", `"targets":` + two + `,"stream_idle_timeout":"24h0m1s"`, "invalid_mapping", "stream_idle_timeout must be a duration from 0s to 24h"},
		{"retry_on 302", `"targets":` + two + `,"retry_on":[503,302]`, "invalid_mapping", "retry_on must hold statuses from 400 to 599 (found 302)"},
		{"retry_on 600", `"targets":` + two + `,"retry_on":[600]`, "invalid_mapping", "retry_on must hold statuses from 400 to 599 (found 600)"},
		{"key on passthrough", `"targets":[{"url":"https://a.example","key":"sk-never-echoed-1234"}]`, "invalid_target", `targets[0].key is only allowed with "auth": "keys"`},
		{"auth_style unknown", `"targets":[{"url":"https://a.example","auth_style":"cookie"}]`, "invalid_target", "targets[0].auth_style must be one of bearer, x-api-key, x-goog-api-key, api-key, query-key"},
		{"auth unknown", `"targets":` + two + `,"auth":"open"`, "invalid_mapping", `auth must be "passthrough" or "keys"`},
		{"limit negative", `"targets":` + two + `,"limits":{"rpm":-1}`, "invalid_mapping", "limits.rpm must be a non-negative integer"},
		{"negative limit", `"targets":` + two + `,"limits":{"concurrency":-2}`, "invalid_mapping", "limits.concurrency must be a non-negative integer"},
		{"unknown target field", `"targets":[{"url":"https://a.example","wieght":2}]`, "invalid_json", `unknown field "wieght"`},
		{"unknown option", `"targets":` + two + `,"balancing":"weighted"`, "invalid_json", `unknown field "balancing"`},
		{"retry_on not a list", `"targets":` + two + `,"retry_on":503`, "invalid_json", `field "retry_on"`},
	}
	for i, tt := range tests {
		for _, method := range []string{"POST", "PUT"} {
			t.Run(method+" "+tt.name, func(t *testing.T) {
				path, body := "/api/mappings/a", "{"+tt.body+"}"
				if method == "POST" {
					path, body = "/api/mappings", `{"prefix":"/new",`+tt.body+"}"
				}
				res, resBody := adminCall(t, s, method, path, body, bearer, fmt.Sprintf("192.0.2.%d:1", i+1))
				wantProxyError(t, res, resBody, http.StatusBadRequest, tt.code)
				if msg := adminErrorMessage(t, resBody); !strings.Contains(msg, tt.msg) {
					t.Errorf("message = %q, want it to contain %q", msg, tt.msg)
				}
				if strings.Contains(string(resBody), "sk-never-echoed") {
					t.Errorf("the answer holds the key: %s", resBody)
				}
			})
		}
	}
	t.Run("PUT prefix in the body differs from the path", func(t *testing.T) {
		for _, body := range []string{`{"prefix":"/b","targets":` + two + `}`, `{"prefix":"","target":"https://a.example"}`} {
			res, resBody := adminCall(t, s, "PUT", "/api/mappings/a", body, bearer, "192.0.2.250:1")
			wantProxyError(t, res, resBody, http.StatusBadRequest, "invalid_prefix")
			if msg := adminErrorMessage(t, resBody); !strings.HasPrefix(msg, "prefix in the body") {
				t.Errorf("message = %q, want it to name the prefix in the body", msg)
			}
		}
	})
	if got := storedObjects(t, s); got != before {
		t.Errorf("after invalid requests the store holds\n%s\nwant\n%s", got, before)
	}
}

// TestAdminTargetKeys: a stored upstream key is never answered, only
// key_set and key_hint; a PUT that leaves key out of a target whose URL
// is unchanged keeps it, "key": "" removes it, a changed URL drops it;
// and the log lines of a write name URLs, never a key. The mapping with a
// key is put into the store directly.
func TestAdminTargetKeys(t *testing.T) {
	const key = "sk-stored-secret-abcdwxyz"
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken})
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	s, err := newServer(cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keyed := Mapping{Prefix: "/k", Auth: authKeys, Targets: []Target{
		{URL: "https://a.example", Key: key, AuthStyle: "x-api-key"}, {URL: "https://b.example"}}}
	if err := store.CreateMapping(context.Background(), keyed); err != nil {
		t.Fatal(err)
	}
	noKeyLeft := func(t *testing.T, what string, body []byte) {
		t.Helper()
		if strings.Contains(string(body), "secret") || strings.Contains(string(body), `"key":`) {
			t.Errorf("%s holds the key: %s", what, body)
		}
	}

	wantTargets := `"targets":[{"url":"https://a.example","weight":1,"auth_style":"x-api-key","key_set":true,"key_hint":"…wxyz"},{"url":"https://b.example","weight":1}]`
	res, body := adminCall(t, s, "GET", "/api/mappings/k", "", bearer, "192.0.2.1:1")
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), wantTargets) {
		t.Errorf("GET /api/mappings/k = %d %s, want it to hold %s", res.StatusCode, body, wantTargets)
	}
	noKeyLeft(t, "GET", body)
	_, body = adminCall(t, s, "GET", "/api/mappings", "", bearer, "192.0.2.1:1")
	if !strings.Contains(string(body), wantTargets) {
		t.Errorf("GET /api/mappings = %s, want its items to hold %s", body, wantTargets)
	}
	noKeyLeft(t, "the list", body)

	// What GET answers, "target" and the key's hint included, can be sent
	// back with PUT as it is: the same mapping, its key kept.
	stored := storedObjects(t, s)
	_, one := adminCall(t, s, "GET", "/api/mappings/k", "", bearer, "192.0.2.1:1")
	if res, body := adminCall(t, s, "PUT", "/api/mappings/k", string(one), bearer, "192.0.2.1:1"); res.StatusCode != http.StatusOK {
		t.Errorf("PUT of what GET answered = %d %s, want 200", res.StatusCode, body)
	}
	if got := storedObjects(t, s); got != stored {
		t.Errorf("PUT of what GET answered changed the store:\n%s\nwant\n%s", got, stored)
	}

	// The key is kept: with "auth": "passthrough" the mapping it makes is
	// refused, and the message says how to remove the key.
	before := storedObjects(t, s)
	res, body = adminCall(t, s, "PUT", "/api/mappings/k", `{"targets":[{"url":"https://a.example"},{"url":"https://b.example"}]}`, bearer, "192.0.2.1:1")
	wantProxyError(t, res, body, http.StatusBadRequest, "invalid_target")
	if msg := adminErrorMessage(t, body); !strings.Contains(msg, "targets[0].key") || !strings.Contains(msg, `send "key": ""`) {
		t.Errorf("PUT leaving the key out: message %q, want it to name targets[0].key and how to remove it", msg)
	}
	noKeyLeft(t, "the 400", body)
	if got := storedObjects(t, s); got != before {
		t.Errorf("a refused PUT changed the store:\n%s\nwant\n%s", got, before)
	}

	tests := []struct {
		name, body string
	}{
		{`"key": "" removes the key`, `{"targets":[{"url":"https://a.example","key":""},{"url":"https://b.example"}]}`},
		{"a changed URL drops the key", `{"targets":[{"url":"https://c.example"},{"url":"https://b.example"}]}`},
		{"a key moves with its position, not its URL", `{"targets":[{"url":"https://b.example"},{"url":"https://a.example"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := store.UpdateMapping(context.Background(), keyed); err != nil {
				t.Fatal(err)
			}
			res, body := adminCall(t, s, "PUT", "/api/mappings/k", tt.body, bearer, "192.0.2.1:1")
			if res.StatusCode != http.StatusOK || strings.Contains(string(body), "key_set") {
				t.Errorf("PUT = %d %s, want 200 and no key", res.StatusCode, body)
			}
			ms, _ := store.Mappings(context.Background())
			for _, m := range ms {
				for _, tg := range m.Targets {
					if tg.Key != "" {
						t.Errorf("the store still holds a key: %+v", m)
					}
				}
			}
		})
	}
	if !strings.Contains(logs.String(), "mapping updated") || !strings.Contains(logs.String(), "https://c.example") {
		t.Errorf("the log lacks the update and its URLs:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "secret") {
		t.Errorf("the log holds the key:\n%s", logs.String())
	}
}

// TestAdminValidationListsEveryProblem: a mapping object with several
// fields at fault is one 400 whose "errors" name every one of them, in
// the order of the object's fields, each with the message it gets alone;
// "message" and "code" are the first's, as when it was the only one
// (issue 19). Nothing is stored.
func TestAdminValidationListsEveryProblem(t *testing.T) {
	s, _ := newAdminTestServer(t, map[string]string{"/a": "https://a.example"})
	before := storedObjects(t, s)
	// The fields in the body are not in the answer's order: the answer
	// follows the object's fields, whichever pass found the problem.
	const body = `{"stream_idle_timeout":"soon","retry_on":[503,302],
		"targets":[{"url":"https://a.example"},{"url":"ftp://b.example","weight":-1}],"prefix":"/api/x"}`
	want := []fieldError{
		{Field: "prefix", Message: `prefix "/api" is reserved for the server's own routes`},
		{Field: "targets[1].url", Message: "targets[1].url must use the http or https scheme"},
		{Field: "targets[1].weight", Message: "targets[1].weight must be an integer from 1 to 1000"},
		{Field: "retry_on", Message: "retry_on must hold statuses from 400 to 599 (found 302)"},
		{Field: "stream_idle_timeout", Message: `stream_idle_timeout must be a duration such as "30s" or "2m" (got "soon")`},
	}
	for i, method := range []string{"POST", "PUT"} {
		t.Run(method, func(t *testing.T) {
			path, b := "/api/mappings", body
			if method == "PUT" {
				// The path names a valid prefix; the body's prefix is
				// left out, so the list starts with the first target.
				path, b = "/api/mappings/a", strings.Replace(body, `,"prefix":"/api/x"`, "", 1)
			}
			res, resBody := adminCall(t, s, method, path, b, bearer, fmt.Sprintf("192.0.2.%d:1", i+1))
			w := want
			if method == "PUT" {
				w = want[1:]
			}
			wantProxyError(t, res, resBody, http.StatusBadRequest, map[bool]string{true: "invalid_prefix", false: "invalid_target"}[method == "POST"])
			var env errorBody
			if err := json.Unmarshal(resBody, &env); err != nil {
				t.Fatal(err)
			}
			if env.Error.Message != w[0].Message {
				t.Errorf("message = %q, want the first problem's %q", env.Error.Message, w[0].Message)
			}
			if !reflect.DeepEqual(env.Error.Errors, w) {
				t.Errorf("errors =\n%v\nwant\n%v", env.Error.Errors, w)
			}
		})
	}
	t.Run("one problem: the same message and code as before, listed alone", func(t *testing.T) {
		res, resBody := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/one","target":"ftp://x.example"}`, bearer, "192.0.2.10:1")
		wantProxyError(t, res, resBody, http.StatusBadRequest, "invalid_target")
		var env errorBody
		json.Unmarshal(resBody, &env)
		want := []fieldError{{Field: "target", Message: "target must use the http or https scheme"}}
		if env.Error.Message != want[0].Message || !reflect.DeepEqual(env.Error.Errors, want) {
			t.Errorf("error = %+v, want message and errors %v", env.Error, want)
		}
	})
	t.Run("valid input is stored as before", func(t *testing.T) {
		res, resBody := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/fine","targets":[{"url":"https://a.example"},{"url":"https://b.example","weight":2}],"retry_on":[503]}`, bearer, "192.0.2.11:1")
		if res.StatusCode != http.StatusCreated || strings.Contains(string(resBody), `"errors"`) {
			t.Errorf("POST a valid object: %d %s, want 201", res.StatusCode, resBody)
		}
		adminCall(t, s, "DELETE", "/api/mappings/fine", "", bearer, "192.0.2.11:1")
	})
	if got := storedObjects(t, s); got != before {
		t.Errorf("after invalid requests the store holds\n%s\nwant\n%s", got, before)
	}
	// Errors that are not about an object's fields have no list.
	res, resBody := adminCall(t, s, "POST", "/api/mappings", `{"prefix":"/x","traget":"https://x.example"}`, bearer, "192.0.2.12:1")
	wantProxyError(t, res, resBody, http.StatusBadRequest, "invalid_json")
	if strings.Contains(string(resBody), `"errors"`) {
		t.Errorf("an invalid_json answer lists field errors: %s", resBody)
	}
}
