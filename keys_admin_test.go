package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// createdKeyAnswer is the answer of POST /api/keys.
type createdKeyAnswer struct {
	ID        string       `json:"id"`
	Key       string       `json:"key"`
	Name      string       `json:"name"`
	Prefixes  []string     `json:"prefixes"`
	Limits    limitsObject `json:"limits"`
	CreatedAt time.Time    `json:"created_at"`
	ExpiresAt *time.Time   `json:"expires_at"`
	Disabled  bool         `json:"disabled"`
	Hint      string       `json:"hint"`
}

// createKey creates a key through the keys API of front and returns the
// answer; the test fails unless it is 201.
func createKey(t testing.TB, front *httptest.Server, body string) createdKeyAnswer {
	t.Helper()
	res, b := adminRequest(t, front, "POST", "/api/keys", body)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/keys %s: %d %s", body, res.StatusCode, b)
	}
	var k createdKeyAnswer
	if err := json.Unmarshal(b, &k); err != nil {
		t.Fatalf("create answer %s: %v", b, err)
	}
	return k
}

// jsonFields returns the field names of the JSON object b, sorted.
func jsonFields(t testing.TB, b []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s is not a JSON object: %v", b, err)
	}
	var names []string
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// keyStatus sends GET path to front with secret as a bearer key ("" for
// none) and returns the status.
func keyStatus(t testing.TB, front *httptest.Server, path, secret string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", front.URL+path, nil)
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	readAll(t, res)
	res.Body.Close()
	return res.StatusCode
}

// newKeysAPITestServer is an admin test server with a keys mapping /ai
// to a counting upstream.
func newKeysAPITestServer(t *testing.T) (*Server, *httptest.Server, *upstream) {
	t.Helper()
	up := newUpstream(t, nil)
	s, front := newAdminTestServer(t, nil)
	setMapping(t, s, keysMapping("/ai", up.URL, "sk-upstream-test-0123", "bearer"))
	return s, front, up
}

func TestKeysAPICreate(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	before := time.Now().Add(-time.Second)
	res, b := adminRequest(t, front, "POST", "/api/keys", `{"name":"team-a","prefixes":["/ai"],"expires_at":"2099-01-01T00:00:00Z"}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", res.StatusCode, b)
	}
	want := []string{"created_at", "disabled", "expires_at", "hint", "id", "key", "limits", "name", "prefixes"}
	if got := jsonFields(t, b); !slices.Equal(got, want) {
		t.Errorf("create answer fields = %v, want %v", got, want)
	}
	var k createdKeyAnswer
	json.Unmarshal(b, &k)
	if !strings.HasPrefix(k.ID, "k_") || !strings.HasPrefix(k.Key, "apx-") || len(k.Key) < len("apx-")+26 {
		t.Errorf("id %q, key of %d characters; want k_… and apx- with at least 128 random bits", k.ID, len(k.Key))
	}
	if want := "apx-…" + k.Key[len(k.Key)-4:]; k.Hint != want {
		t.Errorf("hint = %q, want %q", k.Hint, want)
	}
	if k.Name != "team-a" || !slices.Equal(k.Prefixes, []string{"/ai"}) || k.Disabled || k.Limits != (limitsObject{}) {
		t.Errorf("answer = %+v, want the request's fields", k)
	}
	if k.ExpiresAt == nil || !k.ExpiresAt.Equal(time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("expires_at = %v, want 2099-01-01", k.ExpiresAt)
	}
	if k.CreatedAt.Before(before) || k.CreatedAt.After(time.Now()) {
		t.Errorf("created_at = %v, want now", k.CreatedAt)
	}
	if loc := res.Header.Get("Location"); loc != "/api/keys/"+k.ID {
		t.Errorf("Location = %q, want /api/keys/%s", loc, k.ID)
	}
	if strings.Contains(string(b), keyHash(k.Key)) {
		t.Errorf("the create answer holds the hash: %s", b)
	}
	// Only the hash is stored.
	ks, err := s.store.Keys(context.Background())
	if err != nil || len(ks) != 1 || ks[0].Hash != keyHash(k.Key) {
		t.Fatalf("stored keys = %+v, %v; want one with the secret's hash", ks, err)
	}
	if raw := rawStoredKey(t, s.store, k.ID); strings.Contains(raw, k.Key) {
		t.Errorf("the store holds the secret: %s", raw)
	}
	// This instance admits it at once (no watch loop runs here).
	if code := keyStatus(t, front, "/ai/v1/models", k.Key); code != http.StatusOK {
		t.Errorf("a request with the new key = %d, want 200", code)
	}

	// Defaults: no prefixes (every keys mapping), no expiry; disabled may
	// be given.
	res, b = adminRequest(t, front, "POST", "/api/keys", `{"name":"off","disabled":true}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", res.StatusCode, b)
	}
	if !strings.Contains(string(b), `"prefixes":[]`) || !strings.Contains(string(b), `"expires_at":null`) || !strings.Contains(string(b), `"disabled":true`) {
		t.Errorf("create answer = %s, want prefixes [], expires_at null, disabled true", b)
	}
	var off createdKeyAnswer
	json.Unmarshal(b, &off)
	if code := keyStatus(t, front, "/ai/v1/models", off.Key); code != http.StatusUnauthorized {
		t.Errorf("a request with a key created disabled = %d, want 401", code)
	}
	if off.Key == k.Key || off.ID == k.ID {
		t.Errorf("two creates gave the same id or secret")
	}
}

func TestKeysAPIListAndGet(t *testing.T) {
	_, front, _ := newKeysAPITestServer(t)
	res, b := adminRequest(t, front, "GET", "/api/keys", "")
	if res.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != `{"count":0,"keys":[]}` {
		t.Errorf("GET /api/keys with none = %d %s, want an empty list", res.StatusCode, b)
	}
	a := createKey(t, front, `{"name":"a"}`)
	bk := createKey(t, front, `{"name":"b","prefixes":["/ai"]}`)

	res, b = adminRequest(t, front, "GET", "/api/keys", "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/keys: %d %s", res.StatusCode, b)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var list struct {
		Keys  []json.RawMessage `json:"keys"`
		Count int               `json:"count"`
	}
	if err := json.Unmarshal(b, &list); err != nil || list.Count != 2 || len(list.Keys) != 2 {
		t.Fatalf("GET /api/keys = %s, want 2 keys", b)
	}
	want := []string{"created_at", "disabled", "expires_at", "hint", "id", "last_used_at", "limits", "name", "prefixes"}
	for _, raw := range list.Keys {
		if got := jsonFields(t, raw); !slices.Equal(got, want) {
			t.Errorf("listed key fields = %v, want %v", got, want)
		}
		if !strings.Contains(string(raw), `"last_used_at":null`) {
			t.Errorf("listed key %s: want last_used_at null for a key never used", raw)
		}
	}
	for _, k := range []createdKeyAnswer{a, bk} {
		if strings.Contains(string(b), k.Key) || strings.Contains(string(b), keyHash(k.Key)) {
			t.Errorf("the list holds a secret or a hash: %s", b)
		}
		res, one := adminRequest(t, front, "GET", "/api/keys/"+k.ID, "")
		if res.StatusCode != http.StatusOK || !strings.Contains(string(one), `"id":"`+k.ID+`"`) || !strings.Contains(string(one), `"name":"`+k.Name+`"`) {
			t.Errorf("GET /api/keys/%s = %d %s", k.ID, res.StatusCode, one)
		}
		if got := jsonFields(t, one); !slices.Equal(got, want) {
			t.Errorf("GET one: fields = %v, want %v", got, want)
		}
		if strings.Contains(string(one), k.Key) || strings.Contains(string(one), keyHash(k.Key)) {
			t.Errorf("GET one holds a secret or a hash: %s", one)
		}
	}
	res, b = adminRequest(t, front, "GET", "/api/keys/k_nope", "")
	wantProxyError(t, res, b, http.StatusNotFound, "not_found")
}

func TestKeysAPIUpdate(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	k := createKey(t, front, `{"name":"before","prefixes":["/ai"],"expires_at":"2099-01-01T00:00:00Z"}`)
	patch := func(body string) (*http.Response, []byte) {
		t.Helper()
		return adminRequest(t, front, "PATCH", "/api/keys/"+k.ID, body)
	}
	stored := func() ProxyKey {
		t.Helper()
		ks, err := s.store.Keys(context.Background())
		if err != nil || len(ks) != 1 {
			t.Fatalf("stored keys = %v, %v", ks, err)
		}
		return ks[0]
	}

	res, b := patch(`{"name":"after"}`)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(b), `"name":"after"`) || !strings.Contains(string(b), `"prefixes":["/ai"]`) {
		t.Errorf("PATCH name = %d %s, want the new name and the rest unchanged", res.StatusCode, b)
	}
	if strings.Contains(string(b), k.Key) || strings.Contains(string(b), keyHash(k.Key)) || strings.Contains(string(b), `"key"`) {
		t.Errorf("the PATCH answer holds the secret or its hash: %s", b)
	}
	if got := stored(); got.Name != "after" || got.Hash != keyHash(k.Key) || got.ExpiresAt.IsZero() {
		t.Errorf("stored after PATCH = %+v", got)
	}

	// Disabled: refused at once on this instance; enabled again: admitted.
	if res, b := patch(`{"disabled":true}`); res.StatusCode != http.StatusOK {
		t.Fatalf("disable: %d %s", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusUnauthorized {
		t.Errorf("a request right after the disable = %d, want 401", code)
	}
	if res, b := patch(`{"disabled":false}`); res.StatusCode != http.StatusOK {
		t.Fatalf("enable: %d %s", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusOK {
		t.Errorf("a request after enabling again = %d, want 200", code)
	}

	// Prefixes: another mapping only → 403 here; [] → every keys mapping.
	if res, b := patch(`{"prefixes":["/elsewhere"]}`); res.StatusCode != http.StatusOK {
		t.Fatalf("prefixes: %d %s", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusForbidden {
		t.Errorf("a request on a prefix the key no longer allows = %d, want 403", code)
	}
	if res, b := patch(`{"prefixes":[]}`); res.StatusCode != http.StatusOK || !strings.Contains(string(b), `"prefixes":[]`) {
		t.Fatalf("prefixes []: %d %s", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusOK {
		t.Errorf("a request with prefixes [] = %d, want 200", code)
	}

	// expires_at: null clears it; a new one in the future is set.
	if res, b := patch(`{"expires_at":null}`); res.StatusCode != http.StatusOK || !strings.Contains(string(b), `"expires_at":null`) {
		t.Errorf("expires_at null: %d %s", res.StatusCode, b)
	}
	if got := stored(); !got.ExpiresAt.IsZero() {
		t.Errorf("stored expiry after null = %v, want none", got.ExpiresAt)
	}
	if res, b := patch(`{"expires_at":"2098-06-01T12:00:00+02:00"}`); res.StatusCode != http.StatusOK || !strings.Contains(string(b), `"expires_at":"2098-06-01T10:00:00Z"`) {
		t.Errorf("expires_at set: %d %s, want it in UTC", res.StatusCode, b)
	}
	// Limits merge: each one given replaces the key's, the others stay;
	// 0 removes one.
	for _, tt := range []struct {
		body string
		want Limits
	}{
		{`{"limits":{"rpm":60,"concurrency":4}}`, Limits{RPM: 60, Concurrency: 4}},
		{`{"limits":{"tpm":1000}}`, Limits{RPM: 60, TPM: 1000, Concurrency: 4}},
		{`{"limits":{}}`, Limits{RPM: 60, TPM: 1000, Concurrency: 4}},
		{`{"limits":{"rpm":0}}`, Limits{TPM: 1000, Concurrency: 4}},
		{`{"limits":{"rpm":0,"tpm":0,"concurrency":0}}`, Limits{}},
	} {
		if res, b := patch(tt.body); res.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", tt.body, res.StatusCode, b)
		}
		if got := stored().Limits; got != tt.want {
			t.Errorf("%s: stored limits %+v, want %+v", tt.body, got, tt.want)
		}
	}
	if res, b := patch(`{}`); res.StatusCode != http.StatusOK {
		t.Errorf("an empty PATCH: %d %s, want 200 and nothing changed", res.StatusCode, b)
	}

	// Failures: nothing changes.
	before := stored()
	for _, tt := range []struct {
		body, code, msg string
	}{
		{`{"naem":"x"}`, "invalid_json", `unknown field "naem"`},
		{`{"key":"apx-mine"}`, "invalid_json", `unknown field "key"`},
		{`{"hash":"00"}`, "invalid_json", `unknown field "hash"`},
		{`{"id":"k_other"}`, "invalid_json", `unknown field "id"`},
		{`{"name":""}`, "invalid_key", "name"},
		{`{"name":5}`, "invalid_json", `field "name"`},
		{`{"disabled":"yes"}`, "invalid_json", `field "disabled"`},
		{`{"prefixes":["nope"]}`, "invalid_key", "prefixes[0]"},
		{`{"limits":{"tpm":-10}}`, "invalid_key", "limits.tpm"},
		{`{"limits":{"rpm":-1}}`, "invalid_key", "limits.rpm"},
		{`{"limits":{"rmp":1}}`, "invalid_json", `unknown field "rmp"`},
		{`{"expires_at":"2000-01-01T00:00:00Z"}`, "invalid_key", "expires_at"},
		{`{"expires_at":"tomorrow"}`, "invalid_key", "expires_at"},
		{`{"expires_at":1893456000}`, "invalid_key", "expires_at"},
		{`{"name":"x"} {}`, "invalid_json", "more data"},
	} {
		res, b := patch(tt.body)
		wantProxyError(t, res, b, http.StatusBadRequest, tt.code)
		if msg := adminErrorMessage(t, b); !strings.Contains(msg, tt.msg) {
			t.Errorf("PATCH %s: message %q, want it to name %q", tt.body, msg, tt.msg)
		}
	}
	if got := stored(); !got.ExpiresAt.Equal(before.ExpiresAt) || got.Name != before.Name || got.Disabled != before.Disabled || !slices.Equal(got.Prefixes, before.Prefixes) {
		t.Errorf("after refused PATCHes the key is %+v, want %+v", got, before)
	}
	res, b = adminRequest(t, front, "PATCH", "/api/keys/k_nope", `{"name":"x"}`)
	wantProxyError(t, res, b, http.StatusNotFound, "not_found")
}

// TestKeysAPIUpdateExpired: a key that has expired can still be renamed
// or disabled (its stored expiry is not refused), and given a new expiry.
func TestKeysAPIUpdateExpired(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	k, secret := testKey("old")
	k.ExpiresAt = time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	setKeys(t, s, k)
	if code := keyStatus(t, front, "/ai/x", secret); code != http.StatusUnauthorized {
		t.Fatalf("an expired key = %d, want 401", code)
	}
	if res, b := adminRequest(t, front, "PATCH", "/api/keys/"+k.ID, `{"name":"renamed"}`); res.StatusCode != http.StatusOK {
		t.Errorf("rename an expired key: %d %s, want 200", res.StatusCode, b)
	}
	if res, b := adminRequest(t, front, "PATCH", "/api/keys/"+k.ID, `{"expires_at":"2099-01-01T00:00:00Z"}`); res.StatusCode != http.StatusOK {
		t.Errorf("extend an expired key: %d %s, want 200", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", secret); code != http.StatusOK {
		t.Errorf("an extended key = %d, want 200", code)
	}
}

func TestKeysAPIDelete(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	k := createKey(t, front, `{"name":"doomed"}`)
	kept := createKey(t, front, `{"name":"kept"}`)
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusOK {
		t.Fatalf("before the delete: %d, want 200", code)
	}
	res, b := adminRequest(t, front, "DELETE", "/api/keys/"+k.ID, "")
	if res.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != `{"deleted":true,"id":"`+k.ID+`"}` {
		t.Errorf("DELETE = %d %s", res.StatusCode, b)
	}
	if code := keyStatus(t, front, "/ai/x", k.Key); code != http.StatusUnauthorized {
		t.Errorf("a request right after the delete = %d, want 401", code)
	}
	if code := keyStatus(t, front, "/ai/x", kept.Key); code != http.StatusOK {
		t.Errorf("the other key after the delete = %d, want 200", code)
	}
	res, b = adminRequest(t, front, "DELETE", "/api/keys/"+k.ID, "")
	wantProxyError(t, res, b, http.StatusNotFound, "not_found")
	res, b = adminRequest(t, front, "GET", "/api/keys/"+k.ID, "")
	wantProxyError(t, res, b, http.StatusNotFound, "not_found")
	if ks, _ := s.store.Keys(context.Background()); len(ks) != 1 || ks[0].ID != kept.ID {
		t.Errorf("stored keys after the delete = %+v, want the kept one", ks)
	}
}

// TestKeysAPIValidation: a create that breaks a rule is a 400 naming the
// field, and stores nothing.
func TestKeysAPIValidation(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	tests := []struct {
		name, body, code, msg string
	}{
		{"no name", `{"prefixes":["/ai"]}`, "invalid_key", "name is required"},
		{"blank name", `{"name":"   "}`, "invalid_key", "name is required"},
		{"long name", `{"name":"` + strings.Repeat("é", 65) + `"}`, "invalid_key", "name must be 1 to 64"},
		{"control in name", `{"name":"a\u0007b"}`, "invalid_key", "control characters"},
		{"bad prefix", `{"name":"a","prefixes":["/ai","ai"]}`, "invalid_key", "prefixes[1]"},
		{"trailing slash", `{"name":"a","prefixes":["/ai/"]}`, "invalid_key", "prefixes[0]"},
		{"negative limit", `{"name":"a","limits":{"concurrency":-1}}`, "invalid_key", "limits.concurrency"},
		{"negative limit", `{"name":"a","limits":{"concurrency":-1}}`, "invalid_key", "limits.concurrency"},
		{"past expiry", `{"name":"a","expires_at":"2020-01-01T00:00:00Z"}`, "invalid_key", "expires_at must be in the future"},
		{"bad expiry", `{"name":"a","expires_at":"2027-01-01"}`, "invalid_key", "expires_at must be an RFC 3339 time"},
		{"expiry a number", `{"name":"a","expires_at":1}`, "invalid_key", "expires_at"},
		{"own secret", `{"name":"a","key":"apx-chosen"}`, "invalid_json", `unknown field "key"`},
		{"own id", `{"name":"a","id":"k_chosen"}`, "invalid_json", `unknown field "id"`},
		{"typo", `{"nmae":"a"}`, "invalid_json", `unknown field "nmae"`},
		{"name a number", `{"name":1}`, "invalid_json", `field "name" must be a JSON string`},
		{"prefixes a string", `{"name":"a","prefixes":"/ai"}`, "invalid_json", `field "prefixes" must be a JSON array`},
		{"disabled a string", `{"name":"a","disabled":"no"}`, "invalid_json", `field "disabled" must be a JSON boolean`},
		{"trailing data", `{"name":"a"}x`, "invalid_json", "more data after it"},
		{"empty", ``, "invalid_json", "empty"},
		{"array", `[]`, "invalid_json", "must be a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, b := adminRequest(t, front, "POST", "/api/keys", tt.body)
			wantProxyError(t, res, b, http.StatusBadRequest, tt.code)
			if msg := adminErrorMessage(t, b); !strings.Contains(msg, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", msg, tt.msg)
			}
		})
	}
	if ks, err := s.store.Keys(context.Background()); err != nil || len(ks) != 0 {
		t.Errorf("after refused creates the store holds %v, %v; want no key", ks, err)
	}
	big := `{"name":"` + strings.Repeat("a", maxAdminBody) + `"}`
	res, b := adminRequest(t, front, "POST", "/api/keys", big)
	wantProxyError(t, res, b, http.StatusRequestEntityTooLarge, "body_too_large")
}

// TestKeysAPIGuards: the keys API sits behind the admin token, the
// lockout and the cross-origin refusal, like /api/mappings, and answers
// 405 with Allow for methods it has not.
func TestKeysAPIGuards(t *testing.T) {
	s, _ := newAdminTestServer(t, nil)
	for _, tt := range []struct{ method, target, auth string }{
		{"GET", "/api/keys", ""},
		{"POST", "/api/keys", "Bearer wrong"},
		{"GET", "/api/keys/k_x", ""},
		{"PATCH", "/api/keys/k_x", "Bearer wrong"},
		{"DELETE", "/api/keys/k_x", ""},
	} {
		res, b := adminCall(t, s, tt.method, tt.target, `{"name":"x"}`, tt.auth, "192.0.2.50:1")
		wantProxyError(t, res, b, http.StatusUnauthorized, "unauthorized")
	}
	req := httptest.NewRequest("POST", "/api/keys", strings.NewReader(`{"name":"x"}`))
	req.Header.Set("Authorization", bearer)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	wantProxyError(t, rec.Result(), rec.Body.Bytes(), http.StatusForbidden, "cross_origin_refused")

	for _, tt := range []struct{ method, target, allow string }{
		{"PUT", "/api/keys", "GET, POST"},
		{"DELETE", "/api/keys", "GET, POST"},
		{"PATCH", "/api/keys", "GET, POST"},
		{"POST", "/api/keys/k_x", "GET, PATCH, DELETE"},
		{"PUT", "/api/keys/k_x", "GET, PATCH, DELETE"},
	} {
		res, b := adminCall(t, s, tt.method, tt.target, "", bearer, "192.0.2.51:1")
		wantProxyError(t, res, b, http.StatusMethodNotAllowed, "method_not_allowed")
		if got := res.Header.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tt.method, tt.target, got, tt.allow)
		}
	}
	if ks, _ := s.store.Keys(context.Background()); len(ks) != 0 {
		t.Errorf("refused calls stored %d keys", len(ks))
	}
}

// TestKeysNeverInTheOpen (SPEC §10): with LOG_LEVEL=debug, in text and
// JSON, no log line, no answer but the create's, and neither /stats nor
// /metrics holds a key's secret, its hash or a target's upstream key,
// whatever is sent: allowed and refused requests (the secret in each
// place an SDK puts it), a failing upstream, admin errors.
func TestKeysNeverInTheOpen(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var logs syncBuffer
			cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "LOG_LEVEL": "debug", "LOG_FORMAT": format})
			store, err := openBoltStore(cfg.DataDir)
			if err != nil {
				t.Fatal(err)
			}
			s, err := newServer(cfg, newLogger(cfg, &logs), store, nil)
			if err != nil {
				store.Close()
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			front := newFront(t, s)
			up := newUpstream(t, nil)
			const upstreamKey = "sk-upstream-never-in-the-open-0123456789"
			const deadKey = "sk-upstream-dead-target-0123456789"

			type answer struct{ request, text string }
			var answers []answer
			call := func(method, path, body string, header map[string]string) (int, string) {
				t.Helper()
				var rd *strings.Reader
				if body != "" {
					rd = strings.NewReader(body)
				} else {
					rd = strings.NewReader("")
				}
				req, _ := http.NewRequest(method, front.URL+path, rd)
				for k, v := range header {
					req.Header.Set(k, v)
				}
				res, err := front.Client().Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", method, path, err)
				}
				b := readAll(t, res)
				res.Body.Close()
				var hdr strings.Builder
				res.Header.Write(&hdr)
				// The request line is not part of the answer: it may hold a
				// secret that the caller sent in its query.
				answers = append(answers, answer{method + " " + path, fmt.Sprintf("%d\n%s\n%s", res.StatusCode, hdr.String(), b)})
				return res.StatusCode, string(b)
			}
			admin := map[string]string{"Authorization": bearer, "Content-Type": "application/json"}

			for _, m := range []string{
				`{"prefix":"/ai","auth":"keys","targets":[{"url":"` + up.URL + `","key":"` + upstreamKey + `","auth_style":"bearer"}]}`,
				`{"prefix":"/dead","auth":"keys","targets":[{"url":"` + refusedURL(t) + `","key":"` + deadKey + `","auth_style":"x-api-key"}],"retry_on":[]}`,
			} {
				if code, b := call("POST", "/api/mappings", m, admin); code != http.StatusCreated {
					t.Fatalf("create mapping: %d %s", code, b)
				}
			}
			// The create answer is the one place the secret may be: keep
			// it out of the answers searched below.
			res, b := adminRequest(t, front, "POST", "/api/keys", `{"name":"team-a","prefixes":["/ai","/dead"]}`)
			if res.StatusCode != http.StatusCreated {
				t.Fatalf("create key: %d %s", res.StatusCode, b)
			}
			var k createdKeyAnswer
			json.Unmarshal(b, &k)
			if strings.Contains(string(b), keyHash(k.Key)) || strings.Contains(string(b), upstreamKey) {
				t.Errorf("the create answer holds the hash or the upstream key: %s", b)
			}
			res, b = adminRequest(t, front, "POST", "/api/keys", `{"name":"narrow","prefixes":["/elsewhere"]}`)
			if res.StatusCode != http.StatusCreated {
				t.Fatalf("create key: %d %s", res.StatusCode, b)
			}
			var narrow createdKeyAnswer
			json.Unmarshal(b, &narrow)

			for _, tt := range []struct {
				path   string
				header map[string]string
				want   int
			}{
				{"/ai/v1/models", map[string]string{"Authorization": "Bearer " + k.Key}, 200},
				{"/ai/v1/models", map[string]string{"X-Api-Key": k.Key}, 200},
				{"/ai/v1/models?key=" + k.Key + "&alt=sse", nil, 200},
				{"/ai/v1/models", map[string]string{"Authorization": "Bearer " + k.Key, "X-Api-Key": narrow.Key}, 401},
				{"/ai/v1/models", map[string]string{"Authorization": "Bearer " + narrow.Key}, 403},
				{"/ai/v1/models?key=" + narrow.Key, nil, 403},
				{"/ai/v1/models", map[string]string{"Authorization": "Bearer " + k.Key + "x"}, 401},
				{"/ai/v1/models", map[string]string{"Authorization": "Basic " + k.Key}, 401},
				{"/ai/v1/models", nil, 401},
				{"/dead/v1/chat", map[string]string{"Authorization": "Bearer " + k.Key}, 502},
				{"/dead/v1/chat?key=" + k.Key, nil, 502},
			} {
				if code, b := call("GET", tt.path, "", tt.header); code != tt.want {
					t.Errorf("GET %s: %d %s, want %d", tt.path, code, b, tt.want)
				}
			}
			if res, b := adminRequest(t, front, "PATCH", "/api/keys/"+narrow.ID, `{"disabled":true}`); res.StatusCode != 200 {
				t.Fatalf("disable: %d %s", res.StatusCode, b)
			}
			call("GET", "/ai/v1/models", "", map[string]string{"Authorization": "Bearer " + narrow.Key})
			call("PATCH", "/api/keys/"+k.ID, `{"name":"team-a2"}`, admin)
			call("PATCH", "/api/keys/"+k.ID, `{"name":""}`, admin)
			call("PATCH", "/api/keys/"+k.ID, `{"key":"`+k.Key+`"}`, admin)
			call("POST", "/api/keys", `{"name":"x","hash":"`+keyHash(k.Key)+`"}`, admin)
			call("GET", "/api/keys", "", admin)
			call("GET", "/api/keys/"+k.ID, "", admin)
			call("GET", "/api/keys/k_nope", "", admin)
			call("GET", "/api/mappings", "", admin)
			call("GET", "/api/mappings/ai", "", admin)
			call("GET", "/api/keys", "", map[string]string{"Authorization": "Bearer " + k.Key})
			s.stats.flush(context.Background()) // so that /stats shows the requests
			call("GET", "/stats", "", nil)
			call("GET", "/metrics", "", nil)
			call("DELETE", "/api/keys/"+narrow.ID, "", admin)
			call("GET", "/ai/v1/models", "", map[string]string{"Authorization": "Bearer " + narrow.Key})

			if !strings.Contains(logs.String(), "key created") || !strings.Contains(logs.String(), k.ID) {
				t.Errorf("the log does not show the key creation by id:\n%s", logs.String())
			}
			secrets := map[string]string{
				"a key's secret":      k.Key,
				"another secret":      narrow.Key,
				"a key's hash":        keyHash(k.Key),
				"another hash":        keyHash(narrow.Key),
				"an upstream key":     upstreamKey,
				"a dead target's key": deadKey,
			}
			for what, v := range secrets {
				for _, line := range strings.Split(logs.String(), "\n") {
					if strings.Contains(line, v) {
						t.Errorf("%s appears in a log line: %s", what, line)
					}
				}
				for _, a := range answers {
					if strings.Contains(a.text, v) {
						t.Errorf("%s appears in the answer to %s: %s", what, a.request, a.text)
					}
				}
			}
		})
	}
}

// TestKeysAPIValidationListsEveryProblem: a key with several fields at
// fault is one 400 whose "errors" name each, in the order of the fields,
// on create and on PATCH; "message" is the first's. Nothing is stored.
func TestKeysAPIValidationListsEveryProblem(t *testing.T) {
	s, front, _ := newKeysAPITestServer(t)
	check := func(t *testing.T, res *http.Response, b []byte, want []fieldError) {
		t.Helper()
		wantProxyError(t, res, b, http.StatusBadRequest, "invalid_key")
		var env errorBody
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		if env.Error.Message != want[0].Message || !reflect.DeepEqual(env.Error.Errors, want) {
			t.Errorf("error = %+v,\nwant message %q and errors %v", env.Error, want[0].Message, want)
		}
	}
	t.Run("create", func(t *testing.T) {
		res, b := adminRequest(t, front, "POST", "/api/keys", `{"name":" ","prefixes":["/ai","ai"],"limits":{"rpm":-1,"tpm":5,"concurrency":-2},"expires_at":"soon"}`)
		check(t, res, b, []fieldError{
			{Field: "name", Message: "name is required (1 to 64 characters)"},
			{Field: "prefixes[1]", Message: `prefixes[1] must start with "/"`},
			{Field: "limits.rpm", Message: "limits.rpm must be a non-negative integer (0 means no limit)"},
			{Field: "limits.concurrency", Message: "limits.concurrency must be a non-negative integer (0 means no limit)"},
			{Field: "expires_at", Message: `expires_at must be an RFC 3339 time such as "2027-01-01T00:00:00Z", or null for never`},
		})
		res, b = adminRequest(t, front, "POST", "/api/keys", `{"name":"a\u0007b","limits":{"tpm":-1}}`)
		check(t, res, b, []fieldError{
			{Field: "name", Message: "name must not contain control characters"},
			{Field: "limits.tpm", Message: "limits.tpm must be a non-negative integer (0 means no limit)"},
		})
		if ks, err := s.store.Keys(context.Background()); err != nil || len(ks) != 0 {
			t.Errorf("after refused creates the store holds %v, %v; want no key", ks, err)
		}
	})
	t.Run("update", func(t *testing.T) {
		k := createKey(t, front, `{"name":"before"}`)
		res, b := adminRequest(t, front, "PATCH", "/api/keys/"+k.ID, `{"name":"","limits":{"rpm":-1},"expires_at":"2000-01-01T00:00:00Z"}`)
		check(t, res, b, []fieldError{
			{Field: "name", Message: "name is required (1 to 64 characters)"},
			{Field: "limits.rpm", Message: "limits.rpm must be a non-negative integer (0 means no limit)"},
			{Field: "expires_at", Message: "expires_at must be in the future"},
		})
		ks, err := s.store.Keys(context.Background())
		if err != nil || len(ks) != 1 || ks[0].Name != "before" || ks[0].Limits != (Limits{}) || !ks[0].ExpiresAt.IsZero() {
			t.Errorf("after a refused PATCH the store holds %+v, %v; want the key unchanged", ks, err)
		}
	})
}
