package main

import (
	"encoding/json"
	"errors"
	"maps"
	"math"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
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
		{"two targets", Mapping{Prefix: "/openai", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example"}}}, "", "", ""},
		{"second target bad", Mapping{Prefix: "/openai", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example?x=1"}}},
			"must not contain a query", "invalid_target", "targets[1].url "},
		{"17 targets", Mapping{Prefix: "/openai", Targets: make([]Target, 17)}, "1 to 16 targets", "invalid_target", "targets "},
		{"weight over 1000", Mapping{Prefix: "/openai", Targets: []Target{{URL: "https://a.example", Weight: 1001}}},
			"integer from 1 to 1000", "invalid_target", "targets[0].weight "},
		{"unknown balance", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}}, Balance: "random"},
			`"failover" or "weighted"`, "invalid_mapping", "balance "},
		{"retry_on outside 400-599", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}}, RetryOn: []int{503, 302}},
			"found 302", "invalid_mapping", "retry_on "},
		{"unknown auth", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}}, Auth: "open"},
			`"passthrough" or "keys"`, "invalid_mapping", "auth "},
		{"keys auth with a target key", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example", Key: "sk-upstream", AuthStyle: "x-api-key"}}, Auth: "keys"}, "", "", ""},
		{"key on passthrough", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example", Key: "sk-secret"}}},
			`only allowed with "auth": "keys"`, "invalid_target", "targets[1].key "},
		{"unknown auth_style", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example", AuthStyle: "cookie"}}},
			"must be one of bearer", "invalid_target", "targets[0].auth_style "},
		{"negative limit", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}}, Limits: Limits{TPM: -1}},
			"non-negative integer", "invalid_mapping", "limits.tpm "},
		{"idle timeout over 24h", Mapping{Prefix: "/o", Targets: []Target{{URL: "https://a.example"}}, StreamIdleTimeout: 25 * time.Hour},
			"from 0s to 24h", "invalid_mapping", "stream_idle_timeout "},
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

// TestMappingObjectRoundTrip: a mapping with several targets or any
// option is stored as a JSON object (a value starting with "{") and reads
// back equal; a plain one whose options are spelled out at their defaults
// is still stored as its URL.
func TestMappingObjectRoundTrip(t *testing.T) {
	ms := []Mapping{
		{Prefix: "/two", Targets: []Target{{URL: "https://a.example"}, {URL: "http://127.0.0.1:9/v1", Weight: 7}}, Balance: balanceWeighted},
		{Prefix: "/idle", Targets: []Target{{URL: "https://a.example"}}, StreamIdleTimeout: 90 * time.Second},
		{Prefix: "/noretry", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example"}}, RetryOn: []int{}},
		{Prefix: "/retry", Targets: []Target{{URL: "https://a.example"}}, RetryOn: []int{429}},
	}
	for _, m := range ms {
		v := m.encodeValue()
		if !strings.HasPrefix(v, "{") || strings.Contains(v, `"target"`) {
			t.Errorf("encodeValue(%s) = %s, want a JSON object without the answers' \"target\"", m.Prefix, v)
		}
		got, err := decodeMapping(m.Prefix, v)
		if err != nil || got.validate(selfAddrs{}) != nil {
			t.Fatalf("decodeMapping(%s) = %+v, %v", v, got, err)
		}
		if got.encodeValue() != v || !slices.Equal(got.retryOn(), m.retryOn()) || got.StreamIdleTimeout != m.StreamIdleTimeout ||
			got.balance() != m.balance() || len(got.Targets) != len(m.Targets) || got.Targets[len(got.Targets)-1].weight() != m.Targets[len(m.Targets)-1].weight() {
			t.Errorf("decodeMapping(%s) = %+v, want %+v", v, got, m)
		}
	}
	spelled := newMapping("/p", "https://a.example")
	spelled.Balance, spelled.Auth, spelled.RetryOn = balanceFailover, authPassthrough, []int{429, 500, 502, 503, 504}
	spelled.Targets[0].Weight = 1
	if v := spelled.encodeValue(); v != "https://a.example" {
		t.Errorf("encodeValue of a plain mapping with its defaults spelled out = %s, want the URL", v)
	}
}

// TestMappingObjectInput: the admin API's JSON form converts to the
// mapping it says, with 400s naming the field for what validate cannot
// see (an explicit weight of 0, a bad duration, target and targets both,
// but for target the first of targets, as answers show it).
func TestMappingObjectInput(t *testing.T) {
	var o mappingObject
	if err := json.Unmarshal([]byte(`{"prefix":"/x","targets":[{"url":"https://a.example","weight":2},{"url":"https://b.example"}],"stream_idle_timeout":"1m30s","retry_on":[503]}`), &o); err != nil {
		t.Fatal(err)
	}
	m, err := o.mapping()
	if err != nil || m.validate(selfAddrs{}) != nil || len(m.Targets) != 2 || m.Targets[0].Weight != 2 ||
		m.StreamIdleTimeout != 90*time.Second || !slices.Equal(m.RetryOn, []int{503}) {
		t.Errorf("mapping() = %+v, %v", m, err)
	}
	for _, tt := range []struct{ body, want, code, field string }{
		{`{"prefix":"/x","targets":[{"url":"https://a.example","weight":0}]}`, "integer from 1 to 1000", "invalid_target", "targets[0].weight "},
		{`{"prefix":"/x","targets":[{"url":"https://a.example"}],"stream_idle_timeout":"soon"}`, "must be a duration", "invalid_mapping", "stream_idle_timeout "},
		{`{"prefix":"/x","target":"https://b.example","targets":[{"url":"https://a.example"},{"url":"https://b.example"}]}`, "not both", "invalid_target", "give "},
		{`{"prefix":"/x","target":"https://a.example","targets":[]}`, "not both", "invalid_target", "give "},
		{`{"prefix":"/x","targets":[]}`, "1 to 16 targets, not 0", "invalid_target", "targets "},
		{`{"prefix":"/x"}`, "is required", "invalid_target", "target "},
	} {
		var o mappingObject
		if err := json.Unmarshal([]byte(tt.body), &o); err != nil {
			t.Fatal(err)
		}
		_, err := o.mapping()
		checkValidation(t, err, tt.want, tt.code, tt.field)
	}
}

// TestDecodeMappingObject: a stored object this version cannot read (an
// unknown field, as a newer version might write, or broken JSON) gives an
// error and a mapping that validate refuses (so routing skips it).
func TestDecodeMappingObject(t *testing.T) {
	for _, v := range []string{`{"targets":[{"url":"https://api.openai.com"}],"newer_rule":true}`, "{", "{broken",
		`{"prefix":"/other","targets":[{"url":"https://api.openai.com"}]}`} {
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

// TestMappingKeepKeys: a target that gave no key keeps the stored key of
// the target at its position when the URL there is unchanged; a given key
// (even "") wins, and a changed or new position keeps nothing.
func TestMappingKeepKeys(t *testing.T) {
	old := Mapping{Prefix: "/k", Auth: authKeys, Targets: []Target{
		{URL: "https://a.example", Key: "key-a"}, {URL: "https://b.example", Key: "key-b"}}}
	tests := []struct {
		name  string
		urls  []string
		keys  []string // "" and not given: see given
		given []bool
		want  []string
	}{
		{"same URLs, no keys given: both kept", []string{"https://a.example", "https://b.example"}, []string{"", ""}, []bool{false, false}, []string{"key-a", "key-b"}},
		{"a given key wins", []string{"https://a.example", "https://b.example"}, []string{"new", ""}, []bool{true, false}, []string{"new", "key-b"}},
		{`a given "" removes`, []string{"https://a.example", "https://b.example"}, []string{"", ""}, []bool{true, false}, []string{"", "key-b"}},
		{"changed URL: dropped", []string{"https://c.example", "https://b.example"}, []string{"", ""}, []bool{false, false}, []string{"", "key-b"}},
		{"swapped: keys follow positions, not URLs", []string{"https://b.example", "https://a.example"}, []string{"", ""}, []bool{false, false}, []string{"", ""}},
		{"a new third target keeps nothing", []string{"https://a.example", "https://b.example", "https://a.example"}, []string{"", "", ""}, []bool{false, false, false}, []string{"key-a", "key-b", ""}},
		{"fewer targets", []string{"https://a.example"}, []string{""}, []bool{false}, []string{"key-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Mapping{Prefix: "/k", Auth: authKeys}
			for i, u := range tt.urls {
				m.Targets = append(m.Targets, Target{URL: u, Key: tt.keys[i]})
			}
			m.keepKeys(old, tt.given)
			var got []string
			for _, tg := range m.Targets {
				got = append(got, tg.Key)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("keys = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestMappingValidateListsEveryProblem: validate's error is the first
// problem, as TestMappingValidate pins, and its Fields hold every
// problem of the mapping in the order of its fields, one a field.
func TestMappingValidateListsEveryProblem(t *testing.T) {
	m := Mapping{Prefix: "/o/", Targets: []Target{
		{URL: "https://a.example", Weight: -1, AuthStyle: "cookie"},
		{URL: "https://b.example?x=1", Key: "sk-upstream"},
	}, Balance: "random", RetryOn: []int{302, 700}, Limits: Limits{RPM: -1, Concurrency: -3}, StreamIdleTimeout: -time.Second}
	err := m.validate(selfAddrs{})
	checkValidation(t, err, `must not end with "/"`, "invalid_prefix", "prefix ")
	var got []string
	for _, f := range err.(*apiError).Fields {
		if !strings.HasPrefix(f.Message, f.Field+" ") {
			t.Errorf("problem %q does not start with its field %q", f.Message, f.Field)
		}
		got = append(got, f.Field+" "+f.code)
	}
	want := []string{
		"prefix invalid_prefix", "targets[0].weight invalid_target", "targets[0].auth_style invalid_target",
		"targets[1].url invalid_target", "targets[1].key invalid_target", "balance invalid_mapping", "retry_on invalid_mapping",
		"limits.rpm invalid_mapping", "limits.concurrency invalid_mapping", "stream_idle_timeout invalid_mapping",
	}
	if !slices.Equal(got, want) {
		t.Errorf("fields =\n%q\nwant\n%q", got, want)
	}
	for _, f := range want {
		if r := mappingFieldRank(strings.Fields(f)[0]); r == math.MaxInt {
			t.Errorf("mappingFieldRank(%s) does not know the field", f)
		}
	}
	if err := newMapping("/ok", "https://a.example").validate(selfAddrs{}); err != nil {
		t.Errorf("a valid mapping: %v", err)
	}
}
