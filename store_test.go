package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRouteTableMatch(t *testing.T) {
	long := "/" + strings.Repeat("x", 300)
	table, skipped := newRouteTable(map[string]string{
		"/a":            "http://a.example",
		"/a/b":          "http://ab.example",
		"/openai":       "https://api.openai.com",
		"/x.y":          "http://xy.example",
		"/deep/er/path": "http://deep.example",
	})
	if len(skipped) != 0 {
		t.Fatalf("skipped = %v, want none", skipped)
	}
	tests := []struct {
		path       string
		wantPrefix string // "" means no match
		wantRest   string
	}{
		{"/a", "/a", ""},
		{"/a/", "/a", "/"},
		{"/a/x/y", "/a", "/x/y"},
		{"/a/b", "/a/b", ""},
		{"/a/b/", "/a/b", "/"},
		{"/a/b/c", "/a/b", "/c"},
		{"/a/bc", "/a", "/bc"},
		{"/a/b%2Fc", "/a", "/b%2Fc"},
		{"/a//b", "/a", "//b"},
		{"/openai/v1/chat/completions", "/openai", "/v1/chat/completions"},
		{"/openai:x", "", ""},
		{"/openaix", "", ""},
		{"/openaix/v1", "", ""},
		{"/x.y/z", "/x.y", "/z"},
		{"/deep/er/path/x", "/deep/er/path", "/x"},
		{"/deep/er/pathx", "", ""},
		{"/deep/er", "", ""},
		{"/openai/" + long, "/openai", "/" + long},
		{long, "", ""},
		{"/ab", "", ""},
		{"/A", "", ""},
		{"/", "", ""},
		{"", "", ""},
		{"a", "", ""},
	}
	for _, tt := range tests {
		t.Run(truncate(tt.path, 40), func(t *testing.T) {
			r, rest := table.match(tt.path)
			got := ""
			if r != nil {
				got = r.prefix
			}
			if got != tt.wantPrefix || rest != tt.wantRest {
				t.Errorf("match(%q) = %q, %q; want %q, %q", tt.path, got, rest, tt.wantPrefix, tt.wantRest)
			}
		})
	}
	t.Run("empty table", func(t *testing.T) {
		empty, _ := newRouteTable(nil)
		if r, _ := empty.match("/openai/x"); r != nil {
			t.Errorf("match on an empty table = %q, want none", r.prefix)
		}
	})
}

func TestRouteTableSkipsInvalid(t *testing.T) {
	table, skipped := newRouteTable(map[string]string{
		"/ok":      "https://api.openai.com/v1/",
		"/api/x":   "https://api.openai.com",
		"/bad":     "ftp://x",
		"noslash":  "https://api.openai.com",
		"/a/../b":  "https://api.openai.com",
		"/userinf": "https://u:p@api.openai.com",
	})
	if got, want := strings.Join(skipped, " "), "/a/../b /api/x /bad /userinf noslash"; got != want {
		t.Errorf("skipped = %q, want %q", got, want)
	}
	r := table.byPrefix["/ok"]
	if r == nil || len(table.byPrefix) != 1 || len(table.sorted) != 1 {
		t.Fatalf("table holds %d routes, want only /ok", len(table.byPrefix))
	}
	if r.scheme != "https" || r.host != "api.openai.com" || r.path != "/v1" || r.rawPath != "/v1" {
		t.Errorf("route = %s %s %q %q, want https api.openai.com \"/v1\" \"/v1\"", r.scheme, r.host, r.path, r.rawPath)
	}
}

func TestHasDotSegment(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"", false},
		{"/", false},
		{"/x", false},
		{"/x/y.json", false},
		{"/.well-known/x", false},
		{"/...", false},
		{"/..x", false},
		{"/x..", false},
		{"/.x.", false},
		{"/a..b", false},
		{"/%2e%2e%2e", false},
		{"/%2ex", false},
		{"/x%2", false},
		{"/x%2e%2", false},
		{"/%252e%252e", false},
		{"/v1/models/gemini-1.5-pro:generateContent", false},
		{"/.", true},
		{"/..", true},
		{"/./x", true},
		{"/../x", true},
		{"/x/.", true},
		{"/x/..", true},
		{"/x/./", true},
		{"/x/../", true},
		{"/%2e", true},
		{"/%2E", true},
		{"/%2e%2e", true},
		{"/%2E%2e/x", true},
		{"/%2e./x", true},
		{"/.%2E/x", true},
		{"/..%2Fx", true},
		{"/..%2fx", true},
		{"/x%2F..", true},
		{"/x%2f.%2fy", true},
		{"/..\\x", true},
		{"/x\\..", true},
		{"\\..\\", true},
		{"/..%5Cx", true},
		{"/..%5cx", true},
		{"/%2e%2e%5cx", true},
		{"//..", true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if got := hasDotSegment(tt.path); got != tt.want {
				t.Errorf("hasDotSegment(%q) = %v, want %v", tt.path, got, tt.want)
			}
		})
	}
}

func TestValidatePrefix(t *testing.T) {
	tests := []struct {
		name    string
		prefix  string
		wantErr string // substring of the message; "" means valid
	}{
		{"simple", "/openai", ""},
		{"nested", "/a/b", ""},
		{"all allowed bytes", "/Az09._~-", ""},
		{"dots inside a segment", "/v1.5", ""},
		{"starts like a reserved prefix", "/apix", ""},
		{"reserved as a later segment", "/x/api", ""},
		{"128 bytes", "/" + strings.Repeat("a", 127), ""},
		{"empty", "", "is required"},
		{"no leading slash", "openai", `must start with "/"`},
		{"129 bytes", "/" + strings.Repeat("a", 128), "at most 128 bytes"},
		{"root", "/", `"/" is reserved`},
		{"trailing slash", "/openai/", `must not end with "/"`},
		{"double slash", "/a//b", `must not contain "//"`},
		{"leading double slash", "//a", `must not contain "//"`},
		{"dot segment", "/a/./b", `"." or ".." segments`},
		{"dot-dot segment", "/a/..", `"." or ".." segments`},
		{"only a dot", "/.", `"." or ".." segments`},
		{"space", "/a b", "may only hold"},
		{"percent", "/a%2Fb", "may only hold"},
		{"query", "/a?b", "may only hold"},
		{"colon", "/a:b", "may only hold"},
		{"at", "/a@b", "may only hold"},
		{"backslash", "/a\\b", "may only hold"},
		{"unicode", "/caf\u00e9", "may only hold"},
		{"invalid utf-8", "/\xff", "may only hold the letters"},
		{"reserved /api", "/api", "reserved"},
		{"under /api", "/api/x", "reserved"},
		{"reserved, other case", "/API/x", "reserved"},
		{"reserved /admin", "/admin", "reserved"},
		{"reserved /stats", "/stats", "reserved"},
		{"reserved /metrics", "/metrics", "reserved"},
		{"reserved /healthz", "/healthz", "reserved"},
		{"reserved /readyz", "/readyz", "reserved"},
		{"reserved /robots.txt", "/robots.txt", "reserved"},
		{"reserved /static", "/static/js", "reserved"},
		{"reserved /favicon.ico", "/favicon.ico", "reserved"},
		{"reserved /index.html", "/index.html", "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validatePrefix(tt.prefix)
			checkValidation(t, err, tt.wantErr, "invalid_prefix", "prefix ")
		})
	}
}

func TestValidateTarget(t *testing.T) {
	tests := []struct {
		name    string
		target  string
		wantErr string // substring of the message; "" means valid
	}{
		{"https", "https://api.openai.com", ""},
		{"http loopback with port", "http://127.0.0.1:11434", ""},
		{"private address", "http://10.0.0.5:8080", ""},
		{"ipv6 loopback", "http://[::1]:8080", ""},
		{"localhost", "http://localhost", ""},
		{"base path", "https://api.groq.com/openai", ""},
		{"base path with trailing slash", "https://openrouter.ai/api/", ""},
		{"lowest port", "https://h.example:1", ""},
		{"highest port", "https://h.example:65535", ""},
		{"empty", "", "is required"},
		{"too long", "https://h.example/" + strings.Repeat("a", 2048), "at most 2048 bytes"},
		{"ftp scheme", "ftp://h.example", "http or https scheme"},
		{"ws scheme", "ws://h.example", "http or https scheme"},
		{"no scheme", "api.openai.com", "http or https scheme"},
		{"scheme-relative", "//api.openai.com", "http or https scheme"},
		{"mailto", "mailto:a@b.example", "http or https scheme"},
		{"opaque", "https:api.openai.com", "with a host"},
		{"no host", "https://", "with a host"},
		{"empty host, path", "https:///v1", "with a host"},
		{"port only", "http://:8080", "with a host"},
		{"userinfo", "https://user:pass@api.openai.com", "user info"},
		{"user only", "https://user@api.openai.com", "user info"},
		{"query", "https://api.openai.com?x=1", "query"},
		{"empty query", "https://api.openai.com/?", "query"},
		{"fragment", "https://api.openai.com#x", "fragment"},
		{"empty fragment", "https://api.openai.com#", "fragment"},
		{"port 0", "https://h.example:0", "invalid port"},
		{"port too high", "https://h.example:65536", "invalid port"},
		{"port not a number", "https://h.example:abc", "absolute http or https URL"},
		{"space", "https://h.example/a b", "spaces, control characters or backslashes"},
		{"backslash", "https://h.example\\@evil.example", "spaces, control characters or backslashes"},
		{"control byte", "https://h.example/\x01", "spaces, control characters or backslashes"},
		{"DEL", "https://h.example/\x7f", "spaces, control characters or backslashes"},
		{"invalid utf-8", "https://h.example/\xff", "spaces, control characters or backslashes"},
		{"dot segment", "https://h.example/v1/../x", `"." or ".." path segments`},
		{"encoded dot segment", "https://h.example/%2e%2e/x", `"." or ".." path segments`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateTarget(tt.target)
			checkValidation(t, err, tt.wantErr, "invalid_target", "target ")
		})
	}
}

// checkValidation checks err is nil when wantErr is empty, else a 400
// *apiError with code whose message names the field and holds wantErr.
func checkValidation(t testing.TB, err error, wantErr, code, field string) {
	t.Helper()
	if wantErr == "" {
		if err != nil {
			t.Errorf("got error %q, want valid", err)
		}
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want an *apiError containing %q", err, wantErr)
	}
	if ae.Status != http.StatusBadRequest || ae.Code != code {
		t.Errorf("got %d %s, want 400 %s", ae.Status, ae.Code, code)
	}
	if !strings.HasPrefix(ae.Message, field) || !strings.Contains(ae.Message, wantErr) {
		t.Errorf("message = %q, want it to start with %q and contain %q", ae.Message, field, wantErr)
	}
}

// The Store contract (seeding once, sentinels, Changes, the admin token,
// restarts) runs against the bolt store in storecontract_test.go; the
// tests here cover what is particular to bolt.

func TestBoltStoreClosed(t *testing.T) {
	ctx := context.Background()
	s := openEmptyBoltStore(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"Ping", func() error { return s.Ping(ctx) }},
		{"Mappings", func() error { _, err := s.Mappings(ctx); return err }},
		{"CreateMapping", func() error { return s.CreateMapping(ctx, "/x", "https://x.example") }},
		{"UpdateMapping", func() error { return s.UpdateMapping(ctx, "/x", "https://x.example") }},
		{"DeleteMapping", func() error { return s.DeleteMapping(ctx, "/x") }},
		{"AdminToken", func() error {
			_, err := s.AdminToken(ctx, func() (string, error) { return "token-0123456789abcdef", nil })
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, errStoreClosed) {
				t.Errorf("%s after Close = %v, want errStoreClosed", tt.name, err)
			}
		})
	}
}

func TestBoltStoreAdminTokenGenerateErrorStoresNothing(t *testing.T) {
	ctx := context.Background()
	s := openEmptyBoltStore(t)
	boom := errors.New("no entropy")
	if _, err := s.AdminToken(ctx, func() (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("AdminToken = %v, want the generate error", err)
	}
	tok, err := s.AdminToken(ctx, func() (string, error) { return "token-after-0123456789", nil })
	if err != nil || tok != "token-after-0123456789" {
		t.Errorf("AdminToken after a failed generate = %q, %v; want the new token", tok, err)
	}
}

// drain empties a change channel of a signal left by earlier writes.
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// openEmptyBoltStore opens a bolt store in a fresh directory and removes
// the seeded defaults.
func openEmptyBoltStore(t testing.TB) Store {
	t.Helper()
	s, err := openBoltStore(t.TempDir())
	if err != nil {
		t.Fatalf("openBoltStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for prefix := range defaultMappings {
		if err := s.DeleteMapping(context.Background(), prefix); err != nil {
			t.Fatalf("delete default %s: %v", prefix, err)
		}
	}
	return s
}

func TestBoltStoreChangesCoalesce(t *testing.T) {
	s := openEmptyBoltStore(t)
	drain(s.Changes())
	ctx := context.Background()
	for _, p := range []string{"/a", "/b", "/c"} {
		if err := s.CreateMapping(ctx, p, "https://x.example"); err != nil {
			t.Fatal(err)
		}
	}
	waitClosed(t, s.Changes(), "a change signal")
	select {
	case <-s.Changes():
		t.Error("got a second signal for writes made before the first was read, want one")
	default:
	}
}

func TestBoltStoreLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type result struct {
		s   *boltStore
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		s2, err := openBoltStore(dir)
		done <- result{s2, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			r.s.Close()
			t.Fatal("second open of a locked data dir succeeded, want errStoreLocked")
		}
		if !errors.Is(r.err, errStoreLocked) {
			t.Errorf("second open: %v, want errStoreLocked", r.err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("second open failed after %v, want within 5s", d)
		}
	case <-time.After(testTimeout):
		t.Fatalf("second open still blocked after %v, want errStoreLocked", testTimeout)
	}
}

func BenchmarkRouteMatch(b *testing.B) {
	m := make(map[string]string, len(defaultMappings)+2)
	for k, v := range defaultMappings {
		m[k] = v
	}
	m["/local/ollama"] = "http://127.0.0.1:11434"
	m["/a/b/c"] = "http://127.0.0.1:8080"
	table, _ := newRouteTable(m)
	paths := []string{
		"/openai/v1/chat/completions",
		"/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent",
		"/local/ollama/api/chat",
		"/nomatch/v1/chat/completions",
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range paths {
			table.match(p)
		}
	}
}
