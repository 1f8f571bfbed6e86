package main

// Fuzz tests (issue 6). `go test` runs their seeds and the committed
// corpus under testdata/fuzz as normal tests; to fuzz:
//
//	go test -run '^$' -fuzz '^FuzzRouteUpstream$' -fuzztime 60s .
//	go test -run '^$' -fuzz '^FuzzMappingValidation$' -fuzztime 60s .

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// capturingTransport answers every upstream request with an empty 200 and
// keeps the last one, written out as the Transport would send it.
type capturingTransport struct {
	mu   sync.Mutex
	last *http.Request // a copy of the outgoing request; nil if none
	wire []byte        // the same, serialised by Request.Write
}

func (c *capturingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var wire bytes.Buffer
	out := req.Clone(req.Context())
	out.Body = nil
	out.ContentLength = 0
	out.Write(&wire)
	c.mu.Lock()
	c.last, c.wire = out, wire.Bytes()
	c.mu.Unlock()
	if req.Body != nil {
		req.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, ContentLength: 0, Request: req,
	}, nil
}

// take returns the captured request and its wire form, and forgets them.
func (c *capturingTransport) take() (*http.Request, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, w := c.last, c.wire
	c.last, c.wire = nil, nil
	return r, w
}

// newFuzzServer is a Server on a fresh embedded store with exactly
// mappings, whose upstream transport is a capturingTransport.
func newFuzzServer(tb testing.TB, env map[string]string, mappings map[string]string) (*Server, *capturingTransport) {
	tb.Helper()
	cfg := testConfig(tb, env)
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		tb.Fatal(err)
	}
	ct := &capturingTransport{}
	s, err := newServer(cfg, testLogger(), store, ct)
	if err != nil {
		store.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	setMappings(tb, s, mappings)
	return s, ct
}

// dotSegmentFree reports whether an escaped path holds no "." or ".."
// segment however an upstream reads it: after decoding it once, with "\"
// as a separator too, and with ";" parameters stripped from each segment.
// It is written apart from hasDotSegment on purpose.
func dotSegmentFree(p string) bool {
	dec, err := url.PathUnescape(p)
	if err != nil {
		dec = p
	}
	for _, s := range []string{p, dec} {
		s = strings.ReplaceAll(s, `\`, "/")
		for _, seg := range strings.Split(s, "/") {
			seg, _, _ = strings.Cut(seg, ";")
			if seg == "." || seg == ".." {
				return false
			}
		}
	}
	return true
}

// fuzzMappings are the mappings FuzzRouteUpstream routes with: nested
// prefixes, base paths with and without a trailing slash, ports, IPv6.
var fuzzMappings = map[string]string{
	"/a":      "http://a.example",
	"/a/b":    "https://ab.example:8443/base",
	"/a/b/c":  "http://[::1]:9/v1beta",
	"/g":      "https://g.example/openai/",
	"/x.y~z_": "http://127.0.0.1:9/p%20q",
}

// FuzzRouteUpstream feeds arbitrary request targets to the proxy and
// checks, for every one net/http would accept: the request reaches the
// upstream exactly when the longest matching prefix exists, the path has
// no dot segment and the target is within the limit; the upstream host is
// then always that mapping's host, in origin form; the upstream path is
// the base path plus the rest exactly as received, with no dot segment;
// the query is unchanged. Anything refused under a prefix is a 4xx.
func FuzzRouteUpstream(f *testing.F) {
	for _, seed := range []string{
		"/a", "/a/", "/a/x", "/a/b", "/a/b/c/d", "/a/bc", "/ab", "/A/x", "/g", "/g/v1/chat/completions?stream=true",
		"/x.y~z_/models/m:generateContent?alt=sse&key=k", "/a//evil.example/x", "/a/%2F%2Fevil.example",
		"/a/../b", "/a/%2e%2e/b", "/a/.%2E/b", "/a/..;/b", "/a/x%2f..%2fy", "/a/x\\..\\y", "/a/x%5c..", "/a/x#y",
		"/a/%00", "/a/caf\xc3\xa9", "http://evil.example/a/x", "http://u@evil.example//a/x", "//a/x", "/a?", "/a/b%2Fc",
		"*", "/a/" + strings.Repeat("x", maxRequestTarget), "/a/%252e%252e/x", "/a/x;y=..", "/a/.well-known/x",
	} {
		f.Add(seed)
	}
	s, ct := newFuzzServer(f, nil, fuzzMappings)
	f.Fuzz(func(t *testing.T, target string) {
		raw := "GET " + target + " HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || strings.ContainsAny(target, "\r\n") {
			return // net/http answers 400 before any handler runs
		}
		req.RemoteAddr = "192.0.2.1:1234"
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		out, wire := ct.take()

		path := requestPath(req)
		var want string // the prefix that must route, by brute force
		for p := range fuzzMappings {
			if (path == p || strings.HasPrefix(path, p+"/")) && len(p) > len(want) {
				want = p
			}
		}
		rest := strings.TrimPrefix(path, want)
		forward := want != "" && len(req.RequestURI) <= maxRequestTarget &&
			dotSegmentFree(rest) && !strings.Contains(rest, "#")
		if !forward {
			if out != nil {
				t.Fatalf("%q was forwarded to %s %s, want it refused", target, out.URL.Host, wire)
			}
			// Refused under a prefix: a 4xx. Elsewhere it may be one of
			// the server's own routes ("/", "/stats"), but never a 5xx.
			if want != "" && (rec.Code < 400 || rec.Code > 499) || rec.Code >= 500 {
				t.Fatalf("%q: status %d, want a 4xx", target, rec.Code)
			}
			return
		}
		if out == nil {
			t.Fatalf("%q was not forwarded (status %d, %s), want it sent to %s", target, rec.Code, rec.Body, fuzzMappings[want])
		}
		rt := s.routes.Load().byPrefix[want]
		if out.URL.Scheme != rt.targets[0].scheme || out.URL.Host != rt.targets[0].host || (out.Host != "" && out.Host != rt.targets[0].host) {
			t.Fatalf("%q: sent to %s://%s (Host %q), want %s://%s", target, out.URL.Scheme, out.URL.Host, out.Host, rt.targets[0].scheme, rt.targets[0].host)
		}
		// Read the request back as the upstream would.
		up, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(wire)))
		if err != nil {
			t.Fatalf("%q: the upstream cannot parse what was sent: %v\n%s", target, err, wire)
		}
		if up.Host != rt.targets[0].host {
			t.Fatalf("%q: upstream Host = %q, want %q\n%s", target, up.Host, rt.targets[0].host, wire)
		}
		if !strings.HasPrefix(up.RequestURI, "/") || up.URL.Host != "" {
			t.Fatalf("%q: upstream request target %q is not in origin form", target, up.RequestURI)
		}
		upPath, upQuery, hasQuery := strings.Cut(up.RequestURI, "?")
		wantPath := rt.targets[0].rawPath + rest
		if wantPath == "" {
			wantPath = "/"
		}
		if strings.HasPrefix(wantPath, "//") && upPath != wantPath {
			// Sent through URL.Path/RawPath (see rewrite): bytes net/url
			// will not send raw arrive percent-encoded; the decoded path
			// and every encoded slash stay as received.
			du, _ := url.PathUnescape(upPath)
			dw, _ := url.PathUnescape(wantPath)
			slashes := func(s string) int { return strings.Count(strings.ToUpper(s), "%2F") }
			if du != dw || slashes(upPath) != slashes(wantPath) {
				t.Fatalf("%q: upstream path = %q, want %q or its equivalent", target, upPath, wantPath)
			}
		} else if upPath != wantPath {
			t.Fatalf("%q: upstream path = %q, want %q", target, upPath, wantPath)
		}
		if !dotSegmentFree(upPath) {
			t.Fatalf("%q: upstream path %q holds a dot segment", target, upPath)
		}
		inQuery, inHasQuery := "", false
		if i := strings.IndexByte(req.RequestURI, '?'); i >= 0 && strings.HasPrefix(req.RequestURI, "/") {
			inQuery, inHasQuery = req.RequestURI[i+1:], true
		} else if !strings.HasPrefix(req.RequestURI, "/") {
			inQuery, inHasQuery = req.URL.RawQuery, req.URL.RawQuery != "" || req.URL.ForceQuery
		}
		if upQuery != inQuery || hasQuery != inHasQuery {
			t.Fatalf("%q: upstream query = %q (%v), want %q (%v)", target, upQuery, hasQuery, inQuery, inHasQuery)
		}
	})
}

// FuzzMappingValidation posts arbitrary prefix and target strings to the
// admin API. Whatever it accepts must be stored exactly as sent, listed
// as sent, pass validation again when read back, and route: a request
// under the prefix reaches the target's host and base path. Whatever it
// refuses is a 4xx that leaves the store unchanged.
func FuzzMappingValidation(f *testing.F) {
	for _, seed := range [][2]string{
		{"/openai", "https://api.openai.com"}, {"/groq", "https://api.groq.com/openai"}, {"/x", "http://127.0.0.1:11434"},
		{"/v6", "http://[::1]:8080/v1/"}, {"/a/b", "https://x.example/base%20path"}, {"/A.b_c~d-e", "HTTPS://UPPER.EXAMPLE"},
		{"/api", "https://x.example"}, {"/x/", "https://x.example"}, {"/ü", "https://x.example"}, {"/x", "javascript:alert(1)"},
		{"/x", "file:///etc/passwd"}, {"/x", "https://u:p@x.example"}, {"/x", "https://x.example?k=1"}, {"/x", "https://x.example#f"},
		{"/x", "https://x.example:0"}, {"/x", "https://x.example/a/../b"}, {"/x", "http://x.example/%2e%2e"}, {"/x", "//x.example"},
		{"/x", "https://x.example\\@evil.example"}, {"/x", "http://x.example:8080/v1;p=1"}, {"/x", "http://[fe80::1%25eth0]:80"},
		{"/x", "https://x.example/a%2Fb"}, {"/x", "http://x.example/..;/y"}, {"/x", "https://xn--bcher-kva.example"},
		{"/x", "https://bücher.example"}, {"/x", "http://x.example:65535/"}, {"/.", "https://x.example"}, {"/..x", "https://x.example"},
	} {
		f.Add(seed[0], seed[1])
	}
	s, ct := newFuzzServer(f, map[string]string{"ADMIN_TOKEN": testAdminToken}, nil)
	call := func(t *testing.T, method, target, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req.RemoteAddr = "192.0.2.1:1234"
		req.Header.Set("Authorization", bearer)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec
	}
	f.Fuzz(func(t *testing.T, prefix, target string) {
		// Each input starts from an empty store, even after one that failed.
		t.Cleanup(func() {
			for p := range storedMappings(t, s) {
				s.store.DeleteMapping(context.Background(), p)
			}
		})
		body, _ := json.Marshal(mappingJSON{Prefix: prefix, Target: target})
		rec := call(t, "POST", "/api/mappings", string(body))
		stored := storedMappings(t, s)
		if rec.Code != http.StatusCreated {
			if rec.Code < 400 || rec.Code > 499 {
				t.Fatalf("POST %s: status %d, want 201 or a 4xx (%s)", body, rec.Code, rec.Body)
			}
			if len(stored) != 0 {
				t.Fatalf("POST %s was refused (%d) but the store holds %v", body, rec.Code, stored)
			}
			return
		}
		// encoding/json turns invalid UTF-8 into U+FFFD: what was sent is
		// what json.Marshal made of the strings.
		var sent mappingJSON
		json.Unmarshal(body, &sent)
		if len(stored) != 1 || stored[sent.Prefix] != sent.Target {
			t.Fatalf("POST %s: the store holds %q, want exactly %q -> %q", body, stored, sent.Prefix, sent.Target)
		}
		if err := validatePrefix(sent.Prefix); err != nil {
			t.Fatalf("stored prefix %q fails validation: %v", sent.Prefix, err)
		}
		if err := validateTarget(sent.Target); err != nil {
			t.Fatalf("stored target %q fails validation: %v", sent.Target, err)
		}
		list := call(t, "GET", "/api/mappings", "")
		var listed struct{ Mappings map[string]string }
		if err := json.Unmarshal(list.Body.Bytes(), &listed); err != nil || listed.Mappings[sent.Prefix] != sent.Target {
			t.Fatalf("GET /api/mappings = %s (%v), want %q -> %q", list.Body, err, sent.Prefix, sent.Target)
		}
		table, skipped := newRouteTable(mappingsOf(stored), selfAddrs{}, nil)
		if len(skipped) != 0 || table.byPrefix[sent.Prefix] == nil {
			t.Fatalf("a restart would skip the stored mapping %q -> %q", sent.Prefix, sent.Target)
		}

		u, _ := url.Parse(sent.Target)
		proxied := httptest.NewRequest("GET", sent.Prefix+"/fuzz?q=1", nil)
		s.ServeHTTP(httptest.NewRecorder(), proxied)
		out, wire := ct.take()
		if out == nil {
			t.Fatalf("GET %s/fuzz was not forwarded to %s", sent.Prefix, sent.Target)
		}
		wantURI := strings.TrimSuffix(u.EscapedPath(), "/") + "/fuzz?q=1"
		up, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(wire)))
		if err != nil {
			t.Fatalf("the upstream cannot parse the request for %s: %v\n%s", sent.Target, err, wire)
		}
		// The Host header carries no IPv6 zone (RFC 6874 §4): net/http
		// drops it, the connection still goes to the zoned address.
		wantHost := u.Host
		if i, j := strings.IndexByte(wantHost, '%'), strings.IndexByte(wantHost, ']'); i >= 0 && j > i {
			wantHost = wantHost[:i] + wantHost[j:]
		}
		hostOK := up.Host == wantHost
		if !isASCII(wantHost) {
			// An internationalised name goes out in its punycode form.
			hostOK = isASCII(up.Host) && strings.Contains(up.Host, "xn--")
		}
		if out.URL.Scheme != strings.ToLower(u.Scheme) || out.URL.Host != u.Host || !hostOK || up.RequestURI != wantURI {
			t.Fatalf("GET %s/fuzz went to %s://%s (Host %q) %s, want %s://%s %s",
				sent.Prefix, out.URL.Scheme, out.URL.Host, up.Host, up.RequestURI, u.Scheme, u.Host, wantURI)
		}

		del := call(t, "DELETE", "/api/mappings"+sent.Prefix, "")
		if del.Code != http.StatusOK {
			t.Fatalf("DELETE %s: %d %s", sent.Prefix, del.Code, del.Body)
		}
		if m := storedMappings(t, s); len(m) != 0 {
			t.Fatalf("after DELETE the store holds %v", m)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// FuzzDecodeMapping: any stored value either reads back into a mapping
// that validate refuses, or into a valid one whose stored form reads back
// the same (so a value the proxy wrote is never routed differently after
// a reload), and decoding never panics.
func FuzzDecodeMapping(f *testing.F) {
	for _, v := range []string{
		"https://api.openai.com", `{"targets":[{"url":"https://a.example"},{"url":"http://b.example:8080/v1","weight":5}],"balance":"weighted"}`,
		`{"targets":[{"url":"https://a.example"}],"retry_on":[],"stream_idle_timeout":"1m"}`,
		`{"targets":[{"url":"https://a.example","key":"sk-x"}],"auth":"keys"}`, `{"targets":null}`, "{",
	} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, value string) {
		m, err := decodeMapping("/p", value)
		if err != nil || m.validate(selfAddrs{}) != nil {
			return
		}
		stored := m.encodeValue()
		again, err := decodeMapping("/p", stored)
		if err != nil || again.encodeValue() != stored {
			t.Fatalf("%q: stored as %q, which reads back as %+v (%v), stored as %q", value, stored, again, err, again.encodeValue())
		}
	})
}
