package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestProxyRequestHeaders sends one raw request full of hop-by-hop,
// repeated and empty headers and checks what the upstream received. TE is
// hop-by-hop whatever it holds: httputil.ReverseProxy alone would forward
// "TE: trailers" (for gRPC), which SPEC §3.3 does not allow.
func TestProxyRequestHeaders(t *testing.T) {
	for _, te := range []string{"gzip", "trailers", "trailers, deflate"} {
		t.Run("TE: "+te, func(t *testing.T) { testProxyRequestHeaders(t, te) })
	}
}

func testProxyRequestHeaders(t *testing.T, te string) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	raw := "GET /p/h HTTP/1.1\r\n" +
		"Host: client.example\r\n" +
		"Connection: X-Conn-Named, keep-alive\r\n" +
		"X-Conn-Named: secret\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
		"TE: " + te + "\r\n" +
		"Trailer: X-Checksum\r\n" +
		"Upgrade: websocket\r\n" +
		"X-Multi: a\r\n" +
		"X-Multi: b, c\r\n" +
		"X-Empty:\r\n" +
		"Cookie: a=1\r\n" +
		"Cookie: b=2\r\n" +
		"Authorization: Bearer sk-test\r\n" +
		"Accept-Encoding: br\r\n" +
		"X-Forwarded-For: 203.0.113.7\r\n" +
		"\r\n"
	res, body := rawRoundTrip(t, front.Listener.Addr().String(), raw)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %q)", res.StatusCode, body)
	}
	got := up.next(t)
	if got.Host != up.Addr() {
		t.Errorf("upstream Host = %q, want the target's %q", got.Host, up.Addr())
	}
	tests := []headerCase{
		{"Connection dropped", "Connection", nil},
		{"header named in Connection dropped", "X-Conn-Named", nil},
		{"Keep-Alive dropped", "Keep-Alive", nil},
		{"Proxy-Connection dropped", "Proxy-Connection", nil},
		{"Proxy-Authorization dropped", "Proxy-Authorization", nil},
		{"TE dropped", "Te", nil},
		{"Trailer dropped", "Trailer", nil},
		{"Upgrade outside an upgrade dropped", "Upgrade", nil},
		{"no User-Agent invented", "User-Agent", nil},
		{"no X-Forwarded-Host added", "X-Forwarded-Host", nil},
		{"no X-Forwarded-Proto added", "X-Forwarded-Proto", nil},
		{"no Forwarded added", "Forwarded", nil},
		{"no Via added", "Via", nil},
		{"repeated header kept in order", "X-Multi", []string{"a", "b, c"}},
		{"empty header kept", "X-Empty", []string{""}},
		{"repeated Cookie kept", "Cookie", []string{"a=1", "b=2"}},
		{"Authorization passes", "Authorization", []string{"Bearer sk-test"}},
		{"Accept-Encoding passes as is", "Accept-Encoding", []string{"br"}},
		{"client X-Forwarded-For passes unchanged", "X-Forwarded-For", []string{"203.0.113.7"}},
	}
	checkHeaders(t, "upstream", got.Header, tests)
}

// headerCase is one header a side of the proxy must see: want nil means
// it must be absent.
type headerCase struct {
	name string
	key  string
	want []string
}

// checkHeaders checks h, the headers one side (who) received, against
// each case in a subtest of its own.
func checkHeaders(t *testing.T, who string, h http.Header, cases []headerCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := h[tt.key]
			if tt.want == nil {
				if ok {
					t.Errorf("%s got %s: %q, want it absent", who, tt.key, v)
				}
				return
			}
			if !slices.Equal(v, tt.want) {
				t.Errorf("%s got %s: %q, want %q", who, tt.key, v, tt.want)
			}
		})
	}
}

// TestProxyNoForwardedHeadersAdded checks that a plain client request
// (without any forwarding headers) reaches the upstream without any.
func TestProxyNoForwardedHeadersAdded(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	rawGet(t, front.Listener.Addr().String(), "/p/x")
	got := up.next(t)
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "Via", "User-Agent"} {
		if v, ok := got.Header[k]; ok {
			t.Errorf("upstream got %s: %q, want it absent", k, v)
		}
	}
}

// TestProxyResponseHeaders has the upstream answer with raw header lines
// and checks what reaches the client.
func TestProxyResponseHeaders(t *testing.T) {
	up := newRawUpstream(t, func(conn net.Conn, rw *bufio.ReadWriter) {
		io.WriteString(conn, "HTTP/1.1 201 Created\r\n"+
			"Content-Type: text/plain\r\n"+
			"Content-Length: 2\r\n"+
			"Set-Cookie: a=1; Path=/\r\n"+
			"Set-Cookie: b=2; Path=/\r\n"+
			"X-Multi: 1\r\n"+
			"X-Multi: 2\r\n"+
			"X-Empty:\r\n"+
			"X-Request-Id: req_123\r\n"+
			"Connection: X-Resp-Named, keep-alive\r\n"+
			"X-Resp-Named: secret\r\n"+
			"Keep-Alive: timeout=5\r\n"+
			"Proxy-Connection: keep-alive\r\n"+
			"Proxy-Authenticate: Basic realm=x\r\n"+
			"Upgrade: h2c\r\n"+
			"Trailer: X-Checksum\r\n"+
			"\r\nok")
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	res, body := rawGet(t, front.Listener.Addr().String(), "/p/x")
	if res.StatusCode != http.StatusCreated || string(body) != "ok" {
		t.Fatalf("got %d %q, want 201 %q", res.StatusCode, body, "ok")
	}
	tests := []headerCase{
		{"repeated Set-Cookie kept in order", "Set-Cookie", []string{"a=1; Path=/", "b=2; Path=/"}},
		{"repeated header kept in order", "X-Multi", []string{"1", "2"}},
		{"empty header kept", "X-Empty", []string{""}},
		{"end-to-end header passes", "X-Request-Id", []string{"req_123"}},
		{"Content-Type passes", "Content-Type", []string{"text/plain"}},
		{"Content-Length kept", "Content-Length", []string{"2"}},
		{"Connection dropped", "Connection", nil},
		{"header named in Connection dropped", "X-Resp-Named", nil},
		{"Keep-Alive dropped", "Keep-Alive", nil},
		{"Proxy-Connection dropped", "Proxy-Connection", nil},
		{"Proxy-Authenticate dropped", "Proxy-Authenticate", nil},
		{"Upgrade outside an upgrade dropped", "Upgrade", nil},
		{"Trailer of a non-chunked body dropped", "Trailer", nil},
	}
	checkHeaders(t, "client", res.Header, tests)
}

// TestProxyAddedResponseHeaders checks the proxy's own response headers
// are added only where the upstream set none. The upstream sets the
// response headers listed in the request's X-Set-Header values.
func TestProxyAddedResponseHeaders(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		for _, kv := range r.Header.Values("X-Set-Header") {
			k, v, _ := strings.Cut(kv, "=")
			w.Header().Add(k, v)
		}
		io.WriteString(w, "ok")
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	defaults := map[string]string{
		"X-Accel-Buffering":      "no",
		"X-Content-Type-Options": "nosniff",
		"X-Frame-Options":        "DENY",
		"Referrer-Policy":        "no-referrer",
		"X-Robots-Tag":           "noindex, nofollow",
	}
	tests := []struct {
		name     string
		upstream map[string]string // set by the upstream
	}{
		{"upstream sets none", nil},
		{"upstream sets all", map[string]string{
			"X-Accel-Buffering": "yes", "X-Content-Type-Options": "other", "X-Frame-Options": "SAMEORIGIN",
			"Referrer-Policy": "origin", "X-Robots-Tag": "all",
		}},
		{"upstream sets one", map[string]string{"X-Frame-Options": "SAMEORIGIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", front.URL+"/p/x", nil)
			for k, v := range tt.upstream {
				req.Header.Add("X-Set-Header", k+"="+v)
			}
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			for k, def := range defaults {
				want := def
				if v, ok := tt.upstream[k]; ok {
					want = v
				}
				if got := res.Header.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("%s = %q, want [%q]", k, got, want)
				}
			}
		})
	}
}

// TestProxyAddsNoContentType: a response the upstream sent without a
// Content-Type reaches the client without one, whatever its body looks
// like (net/http would otherwise sniff one from its first bytes), with a
// known length or chunked.
func TestProxyAddsNoContentType(t *testing.T) {
	page := "<html><body>hi</body></html>"
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil
		if r.URL.Query().Has("chunked") {
			io.WriteString(w, page)
			w.(http.Flusher).Flush()
			io.WriteString(w, page)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(page)))
		io.WriteString(w, page)
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	for _, q := range []string{"", "?chunked"} {
		res, err := front.Client().Get(front.URL + "/p/x" + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if ct, ok := res.Header["Content-Type"]; ok || !strings.HasPrefix(string(body), page) {
			t.Errorf("%q: Content-Type %q (present %v), body %q; want none, the page", q, ct, ok, body)
		}
	}
}

// TestProxyRequestTrailers: the trailers of a chunked request body reach
// the upstream with their values.
func TestProxyRequestTrailers(t *testing.T) {
	got := make(chan http.Header, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer.Clone()
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	req, _ := http.NewRequest("POST", front.URL+"/p/x", io.MultiReader(strings.NewReader("abc")))
	req.Trailer = http.Header{"X-Checksum": {"tv"}}
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", res.StatusCode)
	}
	if tr := <-got; tr.Get("X-Checksum") != "tv" { // sent before the answer
		t.Errorf("upstream got trailers %v, want X-Checksum: tv", tr)
	}
}

// TestProxyRawPathAndQuery checks that the rest of the path and the query
// reach the upstream byte for byte, joined to the target's base path.
func TestProxyRawPathAndQuery(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{
		"/p":     up.URL,
		"/groq":  up.URL + "/openai",
		"/slash": up.URL + "/base/",
		"/n/e/s": up.URL + "/v1beta",
	})
	tests := []struct {
		name   string
		target string // request target sent by the client
		want   string // RequestURI at the upstream
	}{
		{"gemini colon", "/p/v1beta/models/gemini-2.0-flash:generateContent", "/v1beta/models/gemini-2.0-flash:generateContent"},
		{"gemini stream with query", "/p/v1beta/models/x:streamGenerateContent?alt=sse&key=k", "/v1beta/models/x:streamGenerateContent?alt=sse&key=k"},
		{"encoded slash kept", "/p/v1/files/a%2Fb%2fc", "/v1/files/a%2Fb%2fc"},
		{"odd bytes kept", "/p/x/%7e~%41!$&'()*+,;=@%25{|}^`\"%00", "/x/%7e~%41!$&'()*+,;=@%25{|}^`\"%00"},
		{"raw utf-8 kept", "/p/caf\xc3\xa9/%C3%A9", "/caf\xc3\xa9/%C3%A9"},
		{"double slash inside kept", "/p/a//b", "/a//b"},
		{"double slash after prefix kept escaped", "/p//a%2Fb", "//a%2Fb"},
		{"query order and repeated keys", "/p/q?b=2&a=1&a=0&c", "/q?b=2&a=1&a=0&c"},
		{"query semicolons", "/p/q?a=1;b=2&c=3", "/q?a=1;b=2&c=3"},
		{"query %20 vs +", "/p/q?x=a%20b&y=a+b&z=%2B", "/q?x=a%20b&y=a+b&z=%2B"},
		{"query odd escapes", "/p/q?q=%E4%B8%AD&f=%3D%26&g=%zz", "/q?q=%E4%B8%AD&f=%3D%26&g=%zz"},
		{"empty query kept", "/p/q?", "/q?"},
		{"bare prefix", "/p", "/"},
		{"bare prefix with query", "/p?x=1", "/?x=1"},
		{"prefix with slash", "/p/", "/"},
		{"base path joined", "/groq/v1/chat/completions", "/openai/v1/chat/completions"},
		{"base path, bare prefix", "/groq", "/openai"},
		{"base path with query", "/groq/v1/models?x=1", "/openai/v1/models?x=1"},
		{"base path with trailing slash", "/slash/x", "/base/x"},
		{"nested prefix", "/n/e/s/models/m:countTokens", "/v1beta/models/m:countTokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := rawGet(t, front.Listener.Addr().String(), tt.target)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200 (body %q)", res.StatusCode, body)
			}
			got := up.next(t)
			if got.RequestURI != tt.want {
				t.Errorf("upstream RequestURI = %q, want %q", got.RequestURI, tt.want)
			}
			if got.Host != up.Addr() {
				t.Errorf("upstream Host = %q, want %q", got.Host, up.Addr())
			}
		})
	}
}

// TestProxyDotSegments checks that paths holding dot segments, plain or
// encoded, are refused with 400 before the upstream sees them, and that
// paths that only look like them pass.
func TestProxyDotSegments(t *testing.T) {
	tests := []struct {
		target string
		want   int
	}{
		{"/p/./x", 400},
		{"/p/../x", 400},
		{"/p/..", 400},
		{"/p/.", 400},
		{"/p/x/..", 400},
		{"/p/x/../../admin", 400},
		{"/p/%2e%2e/x", 400},
		{"/p/%2E%2E/x", 400},
		{"/p/%2e/x", 400},
		{"/p/%2E./x", 400},
		{"/p/.%2e/x", 400},
		{"/p/..%2Fx", 400},
		{"/p/..%2fx", 400},
		{"/p/x%2F..%2Fy", 400},
		{"/p/..\\x", 400},
		{"/p/x\\..\\y", 400},
		{"/p/..%5Cx", 400},
		{"/p/%2e%2e%5cx", 400},
		{"/p/../x?q=1", 400},
		{"/p/.well-known/x", 200},
		{"/p/...", 200},
		{"/p/..x", 200},
		{"/p/x..", 200},
		{"/p/.x./y", 200},
		{"/p/%2e%2e%2e", 200},
		{"/p/x?q=/../y", 200},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			up := newUpstream(t, nil)
			_, front := newTestServer(t, map[string]string{"/p": up.URL})
			res, body := rawGet(t, front.Listener.Addr().String(), tt.target)
			if tt.want == http.StatusBadRequest {
				wantProxyError(t, res, body, http.StatusBadRequest, "bad_path")
				if n := up.Hits(); n != 0 {
					t.Errorf("upstream hits = %d, want 0", n)
				}
				return
			}
			if res.StatusCode != tt.want {
				t.Errorf("status = %d, want %d (body %q)", res.StatusCode, tt.want, body)
			}
			if n := up.Hits(); n != 1 {
				t.Errorf("upstream hits = %d, want 1", n)
			}
		})
	}
}

// TestProxyUpstreamHostFixed tries every way of naming another host in the
// request; the request must reach the mapping's upstream or be refused,
// and the stand-in for "evil" must never be hit.
func TestProxyUpstreamHostFixed(t *testing.T) {
	good := newUpstream(t, nil)
	evil := newUpstream(t, nil)
	e := evil.Addr()
	_, front := newTestServer(t, map[string]string{"/openai": good.URL, "/base": good.URL + "/v1"})
	addr := front.Listener.Addr().String()
	tests := []struct {
		name   string
		method string
		target string
		host   string // Host header; "" is the frontend's address
		want   int
	}{
		{"double slash authority", "GET", "/openai//" + e + "/x", "", 200},
		{"triple slash authority", "GET", "/openai///" + e + "/x", "", 200},
		{"double slash, bare host", "GET", "/openai//" + e, "", 200},
		{"double slash after base path", "GET", "/base//" + e + "/x", "", 200},
		{"encoded double slash", "GET", "/openai/%2F%2F" + e + "/x", "", 200},
		{"backslashes", "GET", "/openai/\\\\" + e + "/x", "", 200},
		{"userinfo-like @", "GET", "/openai/@" + e + "/x", "", 200},
		{"@ glued to prefix", "GET", "/openai@" + e + "/x", "", 404},
		{"scheme in path", "GET", "/openai/http://" + e + "/x", "", 200},
		{"absolute-form to evil", "GET", "http://" + e + "/openai/x", e, 200},
		{"absolute-form with userinfo", "GET", "http://u@" + e + "/openai/x", e, 200},
		{"Host header of evil", "GET", "/openai/x", e, 200},
		{"dot segments out of the prefix", "GET", "/openai/../" + e, "", 400},
		{"CONNECT to evil", "CONNECT", e, e, 404},
		// net/http answers "OPTIONS *" itself; the proxy never sees it.
		{"asterisk-form", "OPTIONS", "*", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := tt.host
			if host == "" {
				host = addr
			}
			hitsBefore := good.Hits()
			res, body := rawRoundTrip(t, addr, tt.method+" "+tt.target+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			if res.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d (body %q)", res.StatusCode, tt.want, body)
			}
			if tt.want == http.StatusOK && tt.target != "*" {
				got := good.next(t)
				if got.Host != good.Addr() {
					t.Errorf("upstream Host = %q, want %q", got.Host, good.Addr())
				}
				if !strings.HasPrefix(got.RequestURI, "/") {
					t.Errorf("upstream RequestURI = %q, want origin-form", got.RequestURI)
				}
			} else if n := good.Hits() - hitsBefore; n != 0 {
				t.Errorf("upstream hits = %d, want 0", n)
			}
			if n := evil.Hits(); n != 0 {
				t.Errorf("evil upstream hits = %d, want 0", n)
			}
		})
	}
}

// TestProxyPrefixMatch checks longest-prefix routing on segment
// boundaries, and the 404 envelope when nothing matches.
func TestProxyPrefixMatch(t *testing.T) {
	named := func(name string) *upstream {
		return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Upstream", name)
			io.WriteString(w, r.RequestURI)
		})
	}
	a, ab, o := named("a"), named("a/b"), named("openai")
	_, front := newTestServer(t, map[string]string{"/a": a.URL, "/a/b": ab.URL, "/openai": o.URL})
	tests := []struct {
		path         string
		wantUpstream string // "" means 404 no_mapping
		wantURI      string
	}{
		{"/a", "a", "/"},
		{"/a/", "a", "/"},
		{"/a/x", "a", "/x"},
		{"/a/b", "a/b", "/"},
		{"/a/b/c", "a/b", "/c"},
		{"/a/bc", "a", "/bc"},
		{"/a/b%2Fc", "a", "/b%2Fc"},
		{"/openai/v1/models", "openai", "/v1/models"},
		{"/openaix", "", ""},
		{"/openaix/v1", "", ""},
		{"/ab", "", ""},
		{"/b/a", "", ""},
		{"/A", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res, err := front.Client().Get(front.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body := readAll(t, res)
			if tt.wantUpstream == "" {
				wantProxyError(t, res, body, http.StatusNotFound, "no_mapping")
				return
			}
			if got := res.Header.Get("X-Upstream"); got != tt.wantUpstream {
				t.Errorf("upstream = %q, want %q", got, tt.wantUpstream)
			}
			if string(body) != tt.wantURI {
				t.Errorf("upstream RequestURI = %q, want %q", body, tt.wantURI)
			}
		})
	}
}

// TestProxyRequestTargetLimit checks the 16 KiB request-target limit.
func TestProxyRequestTargetLimit(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	tests := []struct {
		name string
		len  int // of the request target
		want int
	}{
		{"at the limit", maxRequestTarget, http.StatusOK},
		{"one byte over", maxRequestTarget + 1, http.StatusRequestURITooLong},
		{"far over", 4 * maxRequestTarget, http.StatusRequestURITooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := up.Hits()
			target := "/p/x?q=" + strings.Repeat("a", tt.len-len("/p/x?q="))
			res, body := rawGet(t, front.Listener.Addr().String(), target)
			if tt.want == http.StatusRequestURITooLong {
				wantProxyError(t, res, body, tt.want, "uri_too_long")
				if n := up.Hits() - before; n != 0 {
					t.Errorf("upstream hits = %d, want 0", n)
				}
				return
			}
			if res.StatusCode != tt.want {
				t.Errorf("status = %d, want %d", res.StatusCode, tt.want)
			}
			if got := up.next(t).RequestURI; got != target[len("/p"):] {
				t.Errorf("upstream RequestURI has %d bytes, want %d", len(got), len(target)-2)
			}
		})
	}
}

// TestProxyUploadStreams checks that the upstream reads the start of an
// upload before the client has sent the rest, with Content-Length kept
// when the client gave one.
func TestProxyUploadStreams(t *testing.T) {
	const size = 1 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	sum := sha256.Sum256(data)
	wantSum := hex.EncodeToString(sum[:])
	tests := []struct {
		name        string
		knownLength bool
	}{
		{"content-length", true},
		{"chunked", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			firstRead := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				h := sha256.New()
				if _, err := io.CopyN(h, r.Body, 1); err != nil {
					t.Errorf("upstream read first byte: %v", err)
					return
				}
				close(firstRead)
				n, err := io.Copy(h, r.Body)
				if err != nil {
					t.Errorf("upstream read body: %v", err)
					return
				}
				fmt.Fprintf(w, "%d %x", n+1, h.Sum(nil))
			})
			_, front := newTestServer(t, map[string]string{"/p": up.URL})

			pr, pw := io.Pipe()
			defer pw.CloseWithError(errors.New("test ended"))
			req, _ := http.NewRequest("POST", front.URL+"/p/upload", pr)
			if tt.knownLength {
				req.ContentLength = size
			}
			type result struct {
				res *http.Response
				err error
			}
			done := make(chan result, 1)
			go func() {
				res, err := front.Client().Do(req)
				done <- result{res, err}
			}()
			if _, err := pw.Write(data[:size/2]); err != nil {
				t.Fatalf("write first half: %v", err)
			}
			waitClosed(t, firstRead, "the upstream to read the first half of the upload")
			if _, err := pw.Write(data[size/2:]); err != nil {
				t.Fatalf("write second half: %v", err)
			}
			pw.Close()

			var r result
			select {
			case r = <-done:
			case <-time.After(testTimeout):
				t.Fatal("no response within the deadline")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.res.Body.Close()
			if got, want := string(readAll(t, r.res)), fmt.Sprintf("%d %s", size, wantSum); got != want {
				t.Errorf("upstream read %q, want %q", got, want)
			}
			got := up.next(t)
			if tt.knownLength {
				if got.ContentLength != size || len(got.TransferEncoding) != 0 {
					t.Errorf("upstream Content-Length = %d, Transfer-Encoding = %q, want %d and none", got.ContentLength, got.TransferEncoding, size)
				}
			} else if got.ContentLength != -1 || !slices.Equal(got.TransferEncoding, []string{"chunked"}) {
				t.Errorf("upstream Content-Length = %d, Transfer-Encoding = %q, want -1 and chunked", got.ContentLength, got.TransferEncoding)
			}
		})
	}
}

// TestProxyStreamsEachChunk has the upstream flush one event and then
// block until the client has read it: nothing may sit in a buffer.
func TestProxyStreamsEachChunk(t *testing.T) {
	const events = 4
	event := func(k int) string { return fmt.Sprintf("data: {\"token\":%d}\n\n", k) }
	var total int
	for k := range events {
		total += len(event(k))
	}
	tests := []struct {
		name          string
		contentType   string
		contentLength bool
	}{
		{"SSE", "text/event-stream; charset=utf-8", false},
		{"SSE with Content-Length", "text/event-stream", true},
		{"NDJSON", "application/x-ndjson", false},
		{"NDJSON with Content-Length", "application/x-ndjson", true},
		{"unknown length octets", "application/octet-stream", false},
		{"known length JSON", "application/json", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				if tt.contentLength {
					w.Header().Set("Content-Length", strconv.Itoa(total))
				}
				for k := range events {
					io.WriteString(w, event(k))
					w.(http.Flusher).Flush()
					select {
					case <-release:
					case <-r.Context().Done():
						return
					}
				}
			})
			s, front := newTestServer(t, map[string]string{"/p": up.URL})
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			// An event stream counts in the proxy's streams (the runtime
			// tuner's crowd) while it runs, and no longer once it ended.
			streams := int64(0)
			if isEventStream([]string{tt.contentType}) {
				streams = 1
			}
			req, _ := http.NewRequestWithContext(ctx, "POST", front.URL+"/p/v1/chat/completions", strings.NewReader(`{"stream":true}`))
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			for k := range events {
				buf := make([]byte, len(event(k)))
				if _, err := io.ReadFull(res.Body, buf); err != nil {
					t.Fatalf("read event %d before releasing the upstream: %v (the proxy held it back)", k, err)
				}
				if string(buf) != event(k) {
					t.Fatalf("event %d = %q, want %q", k, buf, event(k))
				}
				if got := s.proxy.streams.Load(); got != streams && k < events-1 {
					t.Errorf("event %d: %d streams in flight, want %d", k, got, streams)
				}
				select {
				case release <- struct{}{}:
				case <-ctx.Done():
					t.Fatalf("upstream did not wait for release %d", k)
				}
			}
			if rest, err := io.ReadAll(res.Body); err != nil || len(rest) != 0 {
				t.Errorf("after the last event read %q, %v; want a clean end", rest, err)
			}
			eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the request to end")
			if got := s.proxy.streams.Load(); got != 0 {
				t.Errorf("%d streams in flight after the end, want 0", got)
			}
			if got := s.proxy.peakStreams(); got != streams {
				t.Errorf("peakStreams = %d, want %d", got, streams)
			}
			if got := s.proxy.streamStarts(); got != uint64(streams) {
				t.Errorf("streamStarts = %d, want %d", got, streams)
			}
		})
	}
}

// TestProxyHeadersBeforeBody has the upstream send the headers of a
// known-length body and then wait: the client must get the headers before
// the body is released.
func TestProxyHeadersBeforeBody(t *testing.T) {
	tests := []struct {
		name          string
		contentType   string
		contentLength bool
	}{
		{"known length JSON", "application/json", true},
		{"known length NDJSON", "application/x-ndjson", true},
		{"SSE", "text/event-stream", false},
		{"unknown length", "application/json", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				if tt.contentLength {
					w.Header().Set("Content-Length", "5")
				}
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				select {
				case <-release:
					io.WriteString(w, "hello")
				case <-r.Context().Done():
				}
			})
			_, front := newTestServer(t, map[string]string{"/p": up.URL})
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/p/x", nil)
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatalf("headers did not arrive before the body: %v", err)
			}
			defer res.Body.Close()
			close(release)
			if body := readAll(t, res); string(body) != "hello" {
				t.Errorf("body = %q, want %q", body, "hello")
			}
		})
	}
}

// TestProxyClientCancelReachesUpstream checks that a client leaving
// cancels the upstream request, before and after the response headers.
func TestProxyClientCancelReachesUpstream(t *testing.T) {
	tests := []struct {
		name        string
		sendHeaders bool
	}{
		{"mid-stream", true},
		{"before headers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan struct{})
			upstreamDone := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.sendHeaders {
					w.Header().Set("Content-Type", "text/event-stream")
					io.WriteString(w, "data: 1\n\n")
					w.(http.Flusher).Flush()
				}
				close(started)
				<-r.Context().Done()
				close(upstreamDone)
			})
			_, front := newTestServer(t, map[string]string{"/p": up.URL})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/p/stream", nil)
			errc := make(chan error, 1)
			go func() {
				res, err := front.Client().Do(req)
				if err == nil {
					_, err = io.ReadFull(res.Body, make([]byte, len("data: 1\n\n")))
					// Block until the cancellation cuts the body.
					if err == nil {
						_, err = io.ReadAll(res.Body)
					}
					res.Body.Close()
				}
				errc <- err
			}()
			waitClosed(t, started, "the upstream to start")
			cancel()
			waitClosed(t, upstreamDone, "the upstream request context to be cancelled")
			if err := <-errc; err == nil {
				t.Errorf("client request ended cleanly, want a cancellation error")
			}
		})
	}
}

// TestProxyUpstreamBreaksMidBody has the upstream die halfway through its
// body: the client must see an error after the bytes that were sent, never
// a clean end.
func TestProxyUpstreamBreaksMidBody(t *testing.T) {
	tests := []struct {
		name    string
		head    string // response head and the bytes sent before dying
		partial string // body bytes the client should get first
	}{
		{
			"content-length",
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":\"half",
			"{\"id\":\"half",
		},
		{
			"chunked",
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
			"hello",
		},
		{
			"SSE",
			"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n",
			"data: 1\n\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newRawUpstream(t, func(conn net.Conn, rw *bufio.ReadWriter) {
				io.WriteString(conn, tt.head)
			})
			_, front := newTestServer(t, map[string]string{"/p": up.URL})
			res, err := front.Client().Get(front.URL + "/p/x")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err == nil {
				t.Fatalf("body %q ended cleanly, want an error", body)
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("client error: %v", err)
			}
			if string(body) != tt.partial {
				t.Errorf("body before the error = %q, want %q", body, tt.partial)
			}
		})
	}
}

// TestProxyUpstreamErrors checks the proxy's own answers when no upstream
// response arrives.
func TestProxyUpstreamErrors(t *testing.T) {
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}
	raw := func(fn func(net.Conn, *bufio.ReadWriter)) func(t *testing.T) string {
		return func(t *testing.T) string { return newRawUpstream(t, fn).URL }
	}
	tests := []struct {
		name       string
		target     func(t *testing.T) string
		headerWait time.Duration // cfg.ResponseHeaderTimeout
		wantStatus int
		wantCode   string
	}{
		{"closed port", closedPort, 0, http.StatusBadGateway, "upstream_unreachable"},
		{"reset before headers", raw(func(conn net.Conn, _ *bufio.ReadWriter) {
			conn.(*net.TCPConn).SetLinger(0)
		}), 0, http.StatusBadGateway, "upstream_unreachable"},
		{"closed before headers", raw(func(net.Conn, *bufio.ReadWriter) {}), 0, http.StatusBadGateway, "upstream_unreachable"},
		{"garbage instead of HTTP", raw(func(conn net.Conn, _ *bufio.ReadWriter) {
			io.WriteString(conn, "SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n\r\n")
		}), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"malformed status line", raw(func(conn net.Conn, _ *bufio.ReadWriter) {
			io.WriteString(conn, "HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n")
		}), 0, http.StatusBadGateway, "upstream_bad_response"},
		{"no headers in time", func(t *testing.T) string {
			return newUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }).URL
		}, 50 * time.Millisecond, http.StatusGatewayTimeout, "upstream_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, nil)
			cfg.ResponseHeaderTimeout = tt.headerWait
			_, front := newTestServerConfig(t, cfg, map[string]string{"/p": tt.target(t)})
			res, err := front.Client().Get(front.URL + "/p/v1/models?key=secret")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body := readAll(t, res)
			wantProxyError(t, res, body, tt.wantStatus, tt.wantCode)
			if bytes.Contains(body, []byte("secret")) {
				t.Errorf("error body %q leaks the query", body)
			}
		})
	}
}

// TestProxyCORS checks preflights are answered locally for allowed
// origins, other OPTIONS requests are proxied, and CORS headers are added
// to proxied responses only for allowed origins.
func TestProxyCORS(t *testing.T) {
	tests := []corsCase{
		{
			name: "preflight answered locally", method: "OPTIONS",
			header: map[string]string{
				"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
				"Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
			},
			wantStatus: http.StatusNoContent, wantHits: 0,
			want: map[string]string{
				"Access-Control-Allow-Origin":  "*",
				"Access-Control-Allow-Headers": "authorization, content-type, x-stainless-os",
				"Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
				"Access-Control-Max-Age":       "86400",
				"X-Upstream":                   "",
			},
		},
		{
			name: "OPTIONS without Access-Control-Request-Method proxied", method: "OPTIONS",
			header:     map[string]string{"Origin": "https://app.example"},
			wantStatus: http.StatusOK, wantHits: 1,
			want: map[string]string{"X-Upstream": "yes", "Access-Control-Allow-Origin": "*"},
		},
		{
			name: "plain OPTIONS proxied", method: "OPTIONS",
			wantStatus: http.StatusOK, wantHits: 1,
			want: map[string]string{"X-Upstream": "yes", "Access-Control-Allow-Origin": ""},
		},
		{
			name: "listed origin preflight", origins: "https://app.example, https://b.example", method: "OPTIONS",
			header:     map[string]string{"Origin": "https://b.example", "Access-Control-Request-Method": "GET"},
			wantStatus: http.StatusNoContent, wantHits: 0,
			want: map[string]string{"Access-Control-Allow-Origin": "https://b.example", "Vary": "Origin", "Access-Control-Allow-Headers": ""},
		},
		{
			name: "unlisted origin preflight refused", origins: "https://app.example", method: "OPTIONS",
			header:     map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
			wantStatus: http.StatusForbidden, wantHits: 0,
			want: map[string]string{"Access-Control-Allow-Origin": ""},
		},
		{
			name: "listed origin GET gets CORS headers", origins: "https://app.example", method: "GET",
			header:     map[string]string{"Origin": "https://app.example"},
			wantStatus: http.StatusOK, wantHits: 1,
			want: map[string]string{"Access-Control-Allow-Origin": "https://app.example", "Vary": "Origin", "Access-Control-Expose-Headers": "*"},
		},
		{
			name: "unlisted origin GET proxied without CORS headers", origins: "https://app.example", method: "GET",
			header:     map[string]string{"Origin": "https://evil.example"},
			wantStatus: http.StatusOK, wantHits: 1,
			want: map[string]string{"Access-Control-Allow-Origin": "", "X-Upstream": "yes"},
		},
		{
			name: "upstream CORS headers win", method: "GET",
			header:     map[string]string{"Origin": "https://app.example", "X-Upstream-Cors": "https://own.example"},
			wantStatus: http.StatusOK, wantHits: 1,
			want: map[string]string{"Access-Control-Allow-Origin": "https://own.example"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkCORS(t, tt) })
	}
}

// corsCase is a request of TestProxyCORS to a server allowing origins,
// and what it must get.
type corsCase struct {
	name       string
	origins    string // CORS_ALLOW_ORIGINS; "" is the default "*"
	method     string
	header     map[string]string
	wantStatus int
	wantHits   int64
	want       map[string]string // response headers; "" must be absent
}

// checkCORS sends tt's request through a new server to an upstream that
// answers X-Upstream: yes, and its X-Upstream-Cors request header as its
// own Access-Control-Allow-Origin.
func checkCORS(t *testing.T, tt corsCase) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		if o := r.Header.Get("X-Upstream-Cors"); o != "" {
			w.Header().Set("Access-Control-Allow-Origin", o)
		}
	})
	env := map[string]string{}
	if tt.origins != "" {
		env["CORS_ALLOW_ORIGINS"] = tt.origins
	}
	_, front := newTestServerConfig(t, testConfig(t, env), map[string]string{"/p": up.URL})
	req, _ := http.NewRequest(tt.method, front.URL+"/p/v1/chat/completions", nil)
	for k, v := range tt.header {
		req.Header.Set(k, v)
	}
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != tt.wantStatus {
		t.Errorf("status = %d, want %d", res.StatusCode, tt.wantStatus)
	}
	if n := up.Hits(); n != tt.wantHits {
		t.Errorf("upstream hits = %d, want %d", n, tt.wantHits)
	}
	for k, want := range tt.want {
		if got := strings.Join(res.Header.Values(k), ", "); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

// TestProxyWebSocket tunnels a WebSocket echo both ways.
func TestProxyWebSocket(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("upstream accept: %v", err)
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	_, front := newTestServer(t, map[string]string{"/realtime": up.URL})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(front.URL, "http")+"/realtime/v1/realtime?model=gpt-4o-realtime", nil)
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("status = %d, want 101", res.StatusCode)
	}
	if got := up.next(t).RequestURI; got != "/v1/realtime?model=gpt-4o-realtime" {
		t.Errorf("upstream RequestURI = %q, want %q", got, "/v1/realtime?model=gpt-4o-realtime")
	}
	tests := []struct {
		name string
		typ  websocket.MessageType
		msg  []byte
	}{
		{"text", websocket.MessageText, []byte(`{"type":"session.update"}`)},
		{"binary", websocket.MessageBinary, []byte{0, 1, 2, 0xff}},
		{"large", websocket.MessageBinary, bytes.Repeat([]byte("x"), 100<<10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.Write(ctx, tt.typ, tt.msg); err != nil {
				t.Fatalf("write: %v", err)
			}
			typ, msg, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read echo: %v", err)
			}
			if typ != tt.typ || !bytes.Equal(msg, tt.msg) {
				t.Errorf("echo = %v %d bytes, want %v %d bytes", typ, len(msg), tt.typ, len(tt.msg))
			}
		})
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("close: %v", err)
	}
}

// TestProxyCompressedBodies checks that compressed bodies pass as the
// upstream sent them and Accept-Encoding passes as the client sent it.
func TestProxyCompressedBodies(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.WriteString(zw, strings.Repeat(`{"choices":[{"delta":{"content":"hi"}}]}`, 50))
	zw.Close()
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(gz.Len()))
		w.Write(gz.Bytes())
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	tests := []struct {
		name           string
		acceptEncoding string // "" sends none
	}{
		{"client accepts gzip", "gzip"},
		{"client accepts several", "gzip, deflate, br, zstd"},
		{"client sends no Accept-Encoding", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", front.URL+"/p/x", nil)
			if tt.acceptEncoding != "" {
				req.Header.Set("Accept-Encoding", tt.acceptEncoding)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body := readAll(t, res)
			if !bytes.Equal(body, gz.Bytes()) {
				t.Errorf("body is %d bytes, want the upstream's %d compressed bytes unchanged", len(body), gz.Len())
			}
			if got := res.Header.Get("Content-Encoding"); got != "gzip" {
				t.Errorf("Content-Encoding = %q, want gzip", got)
			}
			if res.ContentLength != int64(gz.Len()) {
				t.Errorf("Content-Length = %d, want %d", res.ContentLength, gz.Len())
			}
			got, ok := up.next(t).Header["Accept-Encoding"]
			switch {
			case tt.acceptEncoding == "" && ok:
				t.Errorf("upstream got Accept-Encoding %q, want none", got)
			case tt.acceptEncoding != "" && !slices.Equal(got, []string{tt.acceptEncoding}):
				t.Errorf("upstream got Accept-Encoding %q, want [%q]", got, tt.acceptEncoding)
			}
		})
	}
}

// TestProxyChunkedRequestClosesConnection checks that a chunked HTTP/1.1
// request gets "Connection: close" and a Content-Length one does not.
func TestProxyChunkedRequestClosesConnection(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	tests := []struct {
		name      string
		raw       string
		wantClose bool
	}{
		{"chunked", "POST /p/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true},
		{"content-length", "POST /p/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body := rawRoundTrip(t, front.Listener.Addr().String(), tt.raw)
			if string(body) != "hello" {
				t.Errorf("body = %q, want the upstream's echo %q", body, "hello")
			}
			if res.Close != tt.wantClose {
				t.Errorf("response closes the connection: %v, want %v", res.Close, tt.wantClose)
			}
		})
	}
}

// TestProxyNoRequestSmuggling sends a request with both Content-Length and
// Transfer-Encoding whose Content-Length covers a second, smuggled request.
// The connection must close after the first answer and the smuggled
// request must never reach the upstream.
func TestProxyNoRequestSmuggling(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	smuggled := "GET /p/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
	chunked := "0\r\n\r\n"
	raw := "POST /p/first HTTP/1.1\r\nHost: h\r\n" +
		"Content-Length: " + strconv.Itoa(len(chunked)+len(smuggled)) + "\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n" + chunked + smuggled

	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read first response: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusBadRequest {
		t.Errorf("status = %d, want 200 (answered and closed) or 400 (refused)", res.StatusCode)
	}
	// The server closes the connection after the first answer, so a read
	// ends with EOF; a second response would mean the smuggled request ran.
	if extra, err := io.ReadAll(br); err != nil || len(extra) != 0 {
		t.Fatalf("after the first response read %q, %v; want the connection closed", extra, err)
	}
	if n := up.Hits(); n > 1 {
		t.Errorf("upstream hits = %d, want at most 1", n)
	}
	for range up.Hits() {
		if got := up.next(t).RequestURI; got != "/first" {
			t.Errorf("upstream got %q, want only /first", got)
		}
	}
}

// TestProxyEarlyHints checks a 103 from the upstream reaches the client
// before the final response.
func TestProxyEarlyHints(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	var mu sync.Mutex
	var codes []int
	var links []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		codes = append(codes, code)
		links = append(links, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", front.URL+"/p/x", nil)
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if body := readAll(t, res); res.StatusCode != http.StatusOK || string(body) != "final" {
		t.Errorf("final response = %d %q, want 200 %q", res.StatusCode, body, "final")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(codes) != 1 || codes[0] != http.StatusEarlyHints {
		t.Fatalf("1xx responses = %v, want [103]", codes)
	}
	if links[0] != "</app.css>; rel=preload; as=style" {
		t.Errorf("103 Link = %q, want the upstream's", links[0])
	}
	if got := res.Header.Get("Link"); got != "" {
		t.Errorf("final response Link = %q, want none", got)
	}
}

// TestProxyMappingChangeTakesEffect checks that a new mapping routes on the
// next request once the route table is reloaded, with no restart.
func TestProxyMappingChangeTakesEffect(t *testing.T) {
	up := newUpstream(t, nil)
	s, front := newTestServer(t, nil)
	s.Start()
	res, body := rawGet(t, front.Listener.Addr().String(), "/late/x")
	wantProxyError(t, res, body, http.StatusNotFound, "no_mapping")
	// A write through the store is reloaded by its writer (Store.Changes).
	if err := s.store.CreateMapping(context.Background(), newMapping("/late", up.URL)); err != nil {
		t.Fatal(err)
	}
	if err := s.reloadRoutes(context.Background()); err != nil {
		t.Fatal(err)
	}
	if res, body := rawGet(t, front.Listener.Addr().String(), "/late/x"); res.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("after the change got %d %q, want 200 %q", res.StatusCode, body, "ok")
	}
}

// roundTripFunc is a RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// benchWriter is a reusable http.ResponseWriter and http.Flusher that
// discards the body, so the benchmark measures the proxy, not a recorder.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(code int)        { w.status = code }
func (w *benchWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
func (w *benchWriter) Flush()                      {}

// BenchmarkProxySmall proxies one GET with a 1 KiB answer through the
// whole Server (router, proxy, hooks) against an in-memory transport.
func BenchmarkProxySmall(b *testing.B) { benchmarkProxySmall(b, false) }

// BenchmarkProxySmallKeys is BenchmarkProxySmall on a keys mapping (SPEC
// §10): the caller's proxy key checked and removed, the target's added.
func BenchmarkProxySmallKeys(b *testing.B) { benchmarkProxySmall(b, true) }

func benchmarkProxySmall(b *testing.B, keys bool) {
	payload := bytes.Repeat([]byte("x"), 1<<10)
	respHeader := http.Header{"Content-Type": {"application/json"}, "Content-Length": {"1024"}}
	transport := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{
			StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1,
			Header:        respHeader.Clone(),
			Body:          io.NopCloser(bytes.NewReader(payload)),
			ContentLength: int64(len(payload)),
			Request:       req,
		}, nil
	})
	cfg := testConfig(b, nil)
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		b.Fatal(err)
	}
	s, err := newServer(cfg, testLogger(), store, transport)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	setMappings(b, s, map[string]string{"/openai": "https://api.openai.com"})
	req := httptest.NewRequest("GET", "/openai/v1/models", nil)
	req.Header.Set("Authorization", "Bearer sk-test")
	if keys {
		k, secret := testKey("bench")
		setKeys(b, s, k)
		setMapping(b, s, keysMapping("/openai", "https://api.openai.com", "sk-upstream", "bearer"))
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	// The stats and request log writers run, as in the server: their
	// work per request (a record written to the store) counts too.
	s.Start()
	w := &benchWriter{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		w.status, w.n = 0, 0
		s.ServeHTTP(w, req)
		if w.status != http.StatusOK || w.n != len(payload) {
			b.Fatalf("got %d with %d bytes, want 200 with %d", w.status, w.n, len(payload))
		}
	}
}

// TestMaxInFlight: past MAX_IN_FLIGHT proxied requests in flight, a new
// one gets 503 overloaded at once, counted like other proxy errors, and
// the ones in flight are unaffected (issue 14: a loop through two
// instances must not take a process down).
func TestMaxInFlight(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "ok")
	})
	s, front := newTestServerConfig(t, testConfig(t, map[string]string{"MAX_IN_FLIGHT": "2"}), map[string]string{"/p": up.URL})
	records := make(chan requestRecord, 8)
	observe := s.proxy.observe
	s.proxy.observe = func(rec *requestRecord) {
		records <- *rec
		if observe != nil {
			observe(rec)
		}
	}

	held := make(chan int, 2)
	for range 2 {
		go func() {
			res, err := front.Client().Get(front.URL + "/p/held")
			if err != nil {
				held <- 0
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			held <- res.StatusCode
		}()
	}
	eventually(t, func() bool { return up.Hits() == 2 }, "two requests held at the upstream")

	// Bounded: without the cap this request would wait at the upstream.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/p/third", nil)
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatalf("third request: %v", err)
	}
	body := readAll(t, res)
	res.Body.Close()
	wantProxyError(t, res, body, http.StatusServiceUnavailable, "overloaded")
	if got := up.Hits(); got != 2 {
		t.Errorf("upstream hits = %d, want 2: the refused request must not reach it", got)
	}
	select {
	case rec := <-records:
		if rec.Status != http.StatusServiceUnavailable || rec.ProxyErr != "overloaded" || rec.Prefix != "/p" {
			t.Errorf("recorded %d %q for %s, want 503 \"overloaded\" for /p", rec.Status, rec.ProxyErr, rec.Prefix)
		}
	case <-time.After(testTimeout):
		t.Fatal("the refused request was not recorded")
	}

	close(release)
	for range 2 {
		select {
		case code := <-held:
			if code != http.StatusOK {
				t.Errorf("held request: status %d, want 200", code)
			}
		case <-time.After(testTimeout):
			t.Fatal("held requests did not finish")
		}
	}
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "no request in flight")
	if res, err := front.Client().Get(front.URL + "/p/after"); err != nil || res.StatusCode != http.StatusOK {
		t.Errorf("after the load: %v %v, want 200", res, err)
	} else {
		res.Body.Close()
	}
}
