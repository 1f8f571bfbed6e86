package main

import (
	"errors"
	"maps"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// mappingsOf turns prefix → target URL pairs into plain mappings, sorted
// by prefix, the way a store returns them.
func mappingsOf(m map[string]string) []Mapping {
	ms := make([]Mapping, 0, len(m))
	for p, u := range m {
		ms = append(ms, newMapping(p, u))
	}
	sortMappings(ms)
	return ms
}

// mappingsMap is ms as prefix → first target URL, the admin API's listing.
func mappingsMap(ms []Mapping) map[string]string {
	m := make(map[string]string, len(ms))
	for _, x := range ms {
		m[x.Prefix] = x.firstURL()
	}
	return m
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

// TestValidatePrefixNamesTheCharacter: the message names the character
// that is not allowed as the user typed it, not the first byte of its
// UTF-8 encoding ("/ü" once said 'Ã').
func TestValidatePrefixNamesTheCharacter(t *testing.T) {
	tests := []struct {
		prefix, found string
	}{
		{"/ü", `'ü'`},
		{"/caf\u00e9", `'é'`},
		{"/a/日本", `'日'`},
		{"/a\u200bb", `'\u200b'`}, // invisible: named by its code point
		{"/\xff", `'\xff'`},       // not UTF-8: named as the byte
		{"/a\xc3", `'\xc3'`},      // a UTF-8 sequence cut short
		{"/a b", `' '`},
		{"/a\x01", `'\x01'`},
		{"/a%2Fb", `'%'`},
		{"/a:b", `':'`},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			err := validatePrefix(tt.prefix)
			want := "prefix may only hold the letters A-Z a-z, digits and . _ ~ - between single slashes (found " + tt.found + ")"
			var ae *apiError
			if !errors.As(err, &ae) || ae.Message != want {
				t.Errorf("validatePrefix(%q) = %v, want %q", tt.prefix, err, want)
			}
		})
	}
}

func TestMappingValidate(t *testing.T) {
	tests := []struct {
		name    string
		m       Mapping
		wantErr string // substring of the message; "" means valid
		code    string
		field   string // the message's first word
	}{
		{"plain", newMapping("/openai", "https://api.openai.com"), "", "", ""},
		{"bad prefix", newMapping("openai", "https://api.openai.com"), `must start with "/"`, "invalid_prefix", "prefix "},
		{"bad target", newMapping("/openai", "ftp://x"), "http or https scheme", "invalid_target", "target "},
		{"both bad: the prefix is named", newMapping("/api", "ftp://x"), "reserved", "invalid_prefix", "prefix "},
		{"no targets", Mapping{Prefix: "/openai"}, "is required", "invalid_target", "target "},
		{"two targets", Mapping{Prefix: "/openai", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example"}}},
			"exactly one target", "invalid_target", "targets "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkValidation(t, tt.m.validate(selfAddrs{}), tt.wantErr, tt.code, tt.field)
		})
	}
}

// TestMappingEncodeDecode: a plain mapping is stored as its target URL,
// byte for byte the original design's value, and reads back equal.
func TestMappingEncodeDecode(t *testing.T) {
	ms := append(defaultMappings(),
		newMapping("/local", "http://127.0.0.1:11434"),
		newMapping("/v6", "http://[fe80::1%25eth0]:8080/v1/"),
		newMapping("/enc", "https://x.example/a%2Fb/base%20path"),
		newMapping("/idn", "https://bücher.example"),
	)
	for _, m := range ms {
		t.Run(m.Prefix, func(t *testing.T) {
			v := m.encodeValue()
			if v != m.Targets[0].URL {
				t.Errorf("encodeValue() = %q, want the target URL %q", v, m.Targets[0].URL)
			}
			got, err := decodeMapping(m.Prefix, v)
			if err != nil || !reflect.DeepEqual(got, m) {
				t.Errorf("decodeMapping(%q, %q) = %+v, %v; want %+v", m.Prefix, v, got, err, m)
			}
		})
	}
	t.Run("any other string decodes as a plain value, for validate to judge", func(t *testing.T) {
		for _, v := range []string{"", "not a url", "ftp://x", " {"} {
			got, err := decodeMapping("/x", v)
			if err != nil || !reflect.DeepEqual(got, newMapping("/x", v)) {
				t.Errorf("decodeMapping(/x, %q) = %+v, %v; want the plain mapping", v, got, err)
			}
		}
	})
}

// TestDecodeMappingObject: a value starting with "{" is the object form of
// SPEC §9, which this version cannot read: an error, and a mapping that
// validate refuses (so routing skips it).
func TestDecodeMappingObject(t *testing.T) {
	for _, v := range []string{`{"targets":[{"url":"https://api.openai.com"}]}`, "{", "{broken"} {
		got, err := decodeMapping("/obj", v)
		if !errors.Is(err, errObjectMapping) {
			t.Errorf("decodeMapping(%q) error = %v, want errObjectMapping", v, err)
		}
		if got.Prefix != "/obj" || len(got.Targets) != 0 {
			t.Errorf("decodeMapping(%q) = %+v, want prefix /obj and no targets", v, got)
		}
		if got.validate(selfAddrs{}) == nil {
			t.Errorf("the mapping of an object value passes validate")
		}
	}
}

// TestDefaultMappings: the list of SPEC §1, valid, sorted by prefix, and a
// fresh slice on every call.
func TestDefaultMappings(t *testing.T) {
	want := map[string]string{
		"/openai": "https://api.openai.com", "/claude": "https://api.anthropic.com",
		"/gemini": "https://generativelanguage.googleapis.com", "/xai": "https://api.x.ai",
		"/groq": "https://api.groq.com/openai", "/openrouter": "https://openrouter.ai/api",
		"/mistral": "https://api.mistral.ai", "/deepseek": "https://api.deepseek.com",
		"/together": "https://api.together.xyz", "/fireworks": "https://api.fireworks.ai",
		"/cerebras": "https://api.cerebras.ai", "/cohere": "https://api.cohere.ai",
	}
	ms := defaultMappings()
	if got := mappingsMap(ms); !maps.Equal(got, want) || len(ms) != len(want) {
		t.Errorf("defaultMappings() = %v, want %v", got, want)
	}
	if !slices.IsSortedFunc(ms, func(a, b Mapping) int { return strings.Compare(a.Prefix, b.Prefix) }) {
		t.Errorf("defaultMappings() is not sorted by prefix")
	}
	for _, m := range ms {
		if err := m.validate(selfAddrs{}); err != nil {
			t.Errorf("default %s: %v", m.Prefix, err)
		}
	}
	ms[0].Targets[0].URL = "https://changed.example"
	if defaultMappings()[0].Targets[0].URL == "https://changed.example" {
		t.Errorf("changing a returned default changed the next call's")
	}
}

// TestSelfAddrs: a target at the instance's own listen address is a loop
// and refused, by every name the machine answers to on that port (issue
// 14); the same host on another port, or another host, is fine.
func TestSelfAddrs(t *testing.T) {
	ifaces := func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.ParseIP("192.0.2.10"), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("2001:db8::10"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	tests := []struct {
		listen string
		loops  []string
		fine   []string
	}{
		{":8000", []string{
			"http://127.0.0.1:8000/loop", "http://localhost:8000", "http://LOCALHOST.:8000/x",
			"http://api.localhost:8000", "http://127.9.8.7:8000", "http://[::1]:8000",
			"http://0.0.0.0:8000", "http://[::]:8000", "http://[::ffff:127.0.0.1]:8000",
			"http://192.0.2.10:8000", "http://[2001:db8::10]:8000", "https://127.0.0.1:8000",
		}, []string{
			"http://127.0.0.1:8001", "http://localhost", "http://192.0.2.11:8000",
			"http://example.com:8000", "https://api.openai.com",
		}},
		{"0.0.0.0:80", []string{"http://localhost", "http://localhost:80/v1", "http://192.0.2.10"}, []string{"https://localhost"}},
		{"[::]:443", []string{"https://localhost", "https://[::1]"}, []string{"http://localhost"}},
		{"127.0.0.1:8000", []string{"http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"},
			[]string{"http://192.0.2.10:8000", "http://127.0.0.1:9000"}},
		{"192.0.2.10:8000", []string{"http://192.0.2.10:8000"}, []string{"http://127.0.0.1:8000", "http://localhost:8000"}},
		{"localhost:8000", []string{"http://localhost:8000", "http://127.0.0.1:8000"}, []string{"http://192.0.2.10:8000"}},
		{"proxy.internal:8000", []string{"http://Proxy.Internal:8000"}, []string{"http://127.0.0.1:8000"}},
		{"127.0.0.1:0", nil, []string{"http://127.0.0.1:8000", "http://localhost:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.listen, func(t *testing.T) {
			self := newSelfAddrs(tt.listen, ifaces)
			for _, target := range tt.loops {
				err := newMapping("/loop", target).validate(self)
				checkValidation(t, err, "must not be this proxy's own address", "invalid_target", "target")
			}
			for _, target := range tt.fine {
				if err := newMapping("/ok", target).validate(self); err != nil {
					t.Errorf("listen %s, target %s: %v, want valid", tt.listen, target, err)
				}
			}
		})
	}
}
