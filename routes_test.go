package main

import (
	"strings"
	"testing"
)

func TestRouteTableMatch(t *testing.T) {
	long := "/" + strings.Repeat("x", 300)
	table, skipped := newRouteTable(mappingsOf(map[string]string{
		"/a":            "http://a.example",
		"/a/b":          "http://ab.example",
		"/openai":       "https://api.openai.com",
		"/x.y":          "http://xy.example",
		"/deep/er/path": "http://deep.example",
	}), selfAddrs{}, nil)
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
		empty, _ := newRouteTable(nil, selfAddrs{}, nil)
		if r, _ := empty.match("/openai/x"); r != nil {
			t.Errorf("match on an empty table = %q, want none", r.prefix)
		}
	})
}

func TestRouteTableSkipsInvalid(t *testing.T) {
	stored := mappingsOf(map[string]string{
		"/ok":      "https://api.openai.com/v1/",
		"/api/x":   "https://api.openai.com",
		"/bad":     "ftp://x",
		"noslash":  "https://api.openai.com",
		"/a/../b":  "https://api.openai.com",
		"/userinf": "https://u:p@api.openai.com",
	})
	// A value this version cannot read (an unknown field) comes out of
	// the store without targets (decodeMapping).
	object, _ := decodeMapping("/object", `{"targets":[{"url":"https://api.openai.com"}],"newer":1}`)
	seventeen := Mapping{Prefix: "/seventeen"}
	for range maxTargets + 1 {
		seventeen.Targets = append(seventeen.Targets, Target{URL: "https://a.example"})
	}
	stored = append(stored, object, seventeen)
	table, skipped := newRouteTable(stored, selfAddrs{}, nil)
	if got, want := strings.Join(skipped, " "), "/a/../b /api/x /bad /object /seventeen /userinf noslash"; got != want {
		t.Errorf("skipped = %q, want %q", got, want)
	}
	r := table.byPrefix["/ok"]
	if r == nil || len(table.byPrefix) != 1 || len(table.sorted) != 1 {
		t.Fatalf("table holds %d routes, want only /ok", len(table.byPrefix))
	}
	if tg := r.targets[0]; r.prefix != "/ok" || len(r.targets) != 1 || r.multi || tg.url != "https://api.openai.com/v1/" || tg.scheme != "https" || tg.host != "api.openai.com" || tg.path != "/v1" || tg.rawPath != "/v1" || tg.state != nil {
		t.Errorf("route = %s %s %s %s %q %q (%d targets, multi %v), want /ok https://api.openai.com/v1/ https api.openai.com \"/v1\" \"/v1\" alone",
			r.prefix, tg.url, tg.scheme, tg.host, tg.path, tg.rawPath, len(r.targets), r.multi)
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

func BenchmarkRouteMatch(b *testing.B) {
	ms := append(defaultMappings(),
		newMapping("/local/ollama", "http://127.0.0.1:11434"),
		newMapping("/a/b/c", "http://127.0.0.1:8080"))
	table, _ := newRouteTable(ms, selfAddrs{}, nil)
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
