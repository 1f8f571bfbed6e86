package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestStaticPages checks the pages are served, from the embedded files,
// with the security headers that make the CSP's promises hold.
func TestStaticPages(t *testing.T) {
	_, front := newTestServer(t, nil)
	tests := []struct {
		path     string
		file     string
		wantType string
	}{
		{"/", "index.html", "text/html; charset=utf-8"},
		{"/index.html", "index.html", "text/html; charset=utf-8"},
		{"/admin", "admin.html", "text/html; charset=utf-8"},
		{"/favicon.ico", "favicon.svg", "image/svg+xml"},
		{"/static/app.css", "app.css", "text/css; charset=utf-8"},
		{"/static/i18n.js", "i18n.js", "text/javascript; charset=utf-8"},
		{"/static/dashboard.js", "dashboard.js", "text/javascript; charset=utf-8"},
		{"/static/admin.js", "admin.js", "text/javascript; charset=utf-8"},
		{"/static/requests.js", "requests.js", "text/javascript; charset=utf-8"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			want, err := fs.ReadFile(staticFS, "static/"+tt.file)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodGet, front.URL+tt.path, nil)
			req.Header.Set("Accept-Encoding", "identity") // keep Go's transport from asking for gzip
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, res)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200 (body %q)", res.StatusCode, body)
			}
			if !bytes.Equal(body, want) {
				t.Errorf("body differs from the embedded static/%s (%d bytes, want %d)", tt.file, len(body), len(want))
			}
			for k, v := range map[string]string{
				"Content-Type":            tt.wantType,
				"Content-Security-Policy": pageCSP,
				"X-Content-Type-Options":  "nosniff",
				"X-Frame-Options":         "DENY",
				"Referrer-Policy":         "no-referrer",
				"Cache-Control":           "no-cache",
				"Content-Encoding":        "",
			} {
				if got := res.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if res.Header.Get("ETag") == "" {
				t.Error("no ETag")
			}
		})
	}
}

// TestStaticCSP pins the policy's parts: a page may load only its own
// files, run no inline script or style, and not be framed.
func TestStaticCSP(t *testing.T) {
	for _, want := range []string{
		"default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
		"connect-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'",
	} {
		if !strings.Contains(pageCSP, want) {
			t.Errorf("CSP %q lacks %q", pageCSP, want)
		}
	}
	if strings.Contains(pageCSP, "unsafe-") {
		t.Errorf("CSP %q allows unsafe-*", pageCSP)
	}
}

// TestStaticHEAD checks HEAD answers like GET without a body, so uptime
// checks on / do not fall through to the proxy's 404.
func TestStaticHEAD(t *testing.T) {
	_, front := newTestServer(t, nil)
	for _, path := range []string{"/", "/admin", "/static/app.css"} {
		res, err := front.Client().Head(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("HEAD %s = %d (CSP %q), want 200 with the CSP", path, res.StatusCode, res.Header.Get("Content-Security-Policy"))
		}
	}
}

// TestStaticGzip checks a client that accepts gzip gets the precompressed
// form, which decompresses to the embedded file, and one that refuses it
// gets the plain bytes.
func TestStaticGzip(t *testing.T) {
	_, front := newTestServer(t, nil)
	want, _ := fs.ReadFile(staticFS, "static/dashboard.js")
	tests := []struct {
		acceptEncoding string
		wantGzip       bool
	}{
		{"gzip, deflate, br", true},
		{"br;q=1.0, gzip;q=0.8", true},
		{"*", true},
		{"gzip;q=0", false},
		{"*, gzip;q=0", false},
		{"br", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.acceptEncoding, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, front.URL+"/static/dashboard.js", nil)
			// Set explicitly: the transport then leaves the body compressed.
			req.Header.Set("Accept-Encoding", tt.acceptEncoding)
			if tt.acceptEncoding == "" {
				req.Header.Set("Accept-Encoding", "identity")
			}
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, res)
			res.Body.Close()
			if got := res.Header.Get("Vary"); got != "Accept-Encoding" {
				t.Errorf("Vary = %q, want Accept-Encoding", got)
			}
			gotGzip := res.Header.Get("Content-Encoding") == "gzip"
			if gotGzip != tt.wantGzip {
				t.Fatalf("Content-Encoding = %q, want gzip: %v", res.Header.Get("Content-Encoding"), tt.wantGzip)
			}
			if gotGzip {
				if len(body) >= len(want) {
					t.Errorf("gzip body is %d bytes, not smaller than the %d-byte file", len(body), len(want))
				}
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(body, want) {
				t.Errorf("body differs from the embedded file")
			}
		})
	}
}

// TestStaticETag checks revalidation: the ETag of a 200 gets a 304 with no
// body.
func TestStaticETag(t *testing.T) {
	_, front := newTestServer(t, nil)
	res, err := front.Client().Get(front.URL + "/static/app.css")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	res.Body.Close()
	etag := res.Header.Get("ETag")
	for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag} {
		req, _ := http.NewRequest(http.MethodGet, front.URL+"/static/app.css", nil)
		req.Header.Set("If-None-Match", inm)
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		res.Body.Close()
		if res.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("If-None-Match %s: status %d with %d bytes, want 304 and none", inm, res.StatusCode, len(body))
		}
	}
}

// TestStaticNotFound checks that only embedded files are served: no
// listings, no escape from static/, a JSON 404 otherwise.
func TestStaticNotFound(t *testing.T) {
	_, front := newTestServer(t, nil)
	for _, target := range []string{
		"/static/", "/static/nope.js", "/static/../static.go", "/static/%2e%2e/static.go",
		"/static//app.css", "/static/./app.css", "/static/app.css/",
	} {
		t.Run(target, func(t *testing.T) {
			res, body := rawGet(t, front.Listener.Addr().String(), target)
			if res.StatusCode == http.StatusOK {
				t.Fatalf("status = 200, want an error (body %.80q)", body)
			}
			if res.StatusCode == http.StatusNotFound && !strings.Contains(string(body), `"error"`) {
				t.Errorf("404 body = %q, want the JSON error envelope", body)
			}
		})
	}
}

// TestStaticFromAnyDirectory checks the pages need nothing from the
// working directory: they are in the binary.
func TestStaticFromAnyDirectory(t *testing.T) {
	t.Chdir(t.TempDir())
	_, front := newTestServer(t, nil)
	for _, path := range []string{"/", "/admin", "/static/dashboard.js"} {
		res, err := front.Client().Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s from an empty directory = %d, %d bytes; want 200 with the page", path, res.StatusCode, len(body))
		}
	}
}

// externalRef finds a reference that would make a browser load something
// from another host: an absolute or protocol-relative URL in src, href,
// action and similar attributes, in CSS url() or @import, or in fetch or
// import calls.
var externalRef = regexp.MustCompile(`(?i)(?:\b(?:src|href|action|formaction|poster|srcset|data|xlink:href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//)` +
	`|(?:url\(\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//)|(?:@import)|(?:\b(?:fetch|import)\s*\(\s*["'\x60]\s*(?:[a-z][a-z0-9+.-]*:)?//)|(?:\bfrom\s+["'](?:[a-z][a-z0-9+.-]*:)?//)`)

// anyURL finds every absolute http(s) URL; allowedURL lists the ones that
// load nothing: the SVG namespace name and example.com placeholders
// (RFC 2606).
var (
	anyURL     = regexp.MustCompile(`(?i)https?://[^\s"'<>()\x60]+`)
	allowedURL = regexp.MustCompile(`(?i)^(?:http://www\.w3\.org/2000/svg|https?://(?:[a-z0-9-]+\.)*example\.com(?:[/:][^\s]*)?)$`)
)

// TestStaticNoExternalURLs checks no embedded file refers to another host:
// the pages work offline and the CSP would block such a load anyway.
func TestStaticNoExternalURLs(t *testing.T) {
	files := 0
	err := fs.WalkDir(staticFS, "static", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		b, err := fs.ReadFile(staticFS, name)
		if err != nil {
			return err
		}
		for _, m := range externalRef.FindAllString(string(b), -1) {
			t.Errorf("%s: external reference %q", name, m)
		}
		for _, u := range anyURL.FindAllString(string(b), -1) {
			if !allowedURL.MatchString(u) {
				t.Errorf("%s: absolute URL %q", name, u)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 6 {
		t.Errorf("found %d embedded files, want the pages, their scripts and stylesheet", files)
	}
}

// TestStaticExternalRefPattern checks the scan itself catches what it is
// meant to catch, so a green TestStaticNoExternalURLs means something.
func TestStaticExternalRefPattern(t *testing.T) {
	tests := []struct {
		text string
		want bool
	}{
		{`<script src="https://cdn.example.org/x.js">`, true},
		{`<link href="//fonts.example.net/css">`, true},
		{`<img src=http://x/y.png>`, true},
		{`background: url("https://x/y.png")`, true},
		{`@import "x.css";`, true},
		{`fetch("//evil/x")`, true},
		{`import x from "https://esm.sh/x"`, true},
		{`<script src="/static/app.js">`, false},
		{`<a href="/admin">`, false},
		{`fetch('/stats', {})`, false},
		{`// a comment`, false},
	}
	for _, tt := range tests {
		if got := externalRef.MatchString(tt.text); got != tt.want {
			t.Errorf("externalRef.MatchString(%q) = %v, want %v", tt.text, got, tt.want)
		}
	}
}

// inlineCode finds what the CSP would refuse in the pages' HTML besides
// inline scripts: an on* event attribute, a style element or attribute, a
// javascript: URL.
var inlineCode = regexp.MustCompile(`(?i)\son[a-z]+\s*=|<style\b|\sstyle\s*=|javascript:`)

// TestStaticNoInlineCode checks the pages hold no inline script or style,
// which the CSP (no 'unsafe-inline') would block.
func TestStaticNoInlineCode(t *testing.T) {
	script := regexp.MustCompile(`(?is)(<script\b[^>]*>)(.*?)</script>`)
	for _, name := range []string{"static/index.html", "static/admin.html"} {
		b, err := fs.ReadFile(staticFS, name)
		if err != nil {
			t.Fatal(err)
		}
		if m := inlineCode.FindString(string(b)); m != "" {
			t.Errorf("%s: inline code the CSP blocks: %q", name, m)
		}
		scripts := script.FindAllStringSubmatch(string(b), -1)
		if len(scripts) == 0 {
			t.Errorf("%s: no script found", name)
		}
		for _, m := range scripts {
			if !strings.Contains(m[1], `src="/static/`) || strings.TrimSpace(m[2]) != "" {
				t.Errorf("%s: %s holds inline code or does not load an embedded file", name, m[0])
			}
		}
	}
}

// TestStaticScriptsUseTextOnly checks no script turns strings into markup:
// server values (mapping targets, model names) are inserted as text.
func TestStaticScriptsUseTextOnly(t *testing.T) {
	markup := regexp.MustCompile(`\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function\(`)
	err := fs.WalkDir(staticFS, "static", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(name, ".js") {
			return err
		}
		b, err := fs.ReadFile(staticFS, name)
		if err != nil {
			return err
		}
		if m := markup.FindString(string(b)); m != "" {
			t.Errorf("%s uses %s; build elements with textContent instead", name, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStaticI18nKeys checks every string of the pages exists in English
// and Chinese, and every key the pages name literally (t('key'),
// data-i18n="key") is defined, so neither language shows a raw key.
func TestStaticI18nKeys(t *testing.T) {
	src, err := fs.ReadFile(staticFS, "static/i18n.js")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	en, zh := strings.Index(text, "\n    en: {"), strings.Index(text, "\n    zh: {")
	end := strings.Index(text, "const LANG_KEY")
	if en < 0 || zh < en || end < zh {
		t.Fatal("i18n.js: STRINGS.en, STRINGS.zh not found where expected")
	}
	keyDef := regexp.MustCompile(`(?m)^\s*'([A-Za-z0-9_.]+)':`)
	keys := func(block string) map[string]bool {
		m := map[string]bool{}
		for _, k := range keyDef.FindAllStringSubmatch(block, -1) {
			m[k[1]] = true
		}
		return m
	}
	enKeys, zhKeys := keys(text[en:zh]), keys(text[zh:end])
	if len(enKeys) < 50 {
		t.Fatalf("found %d English strings, want the pages' (the pattern no longer matches?)", len(enKeys))
	}
	for k := range enKeys {
		if !zhKeys[k] {
			t.Errorf("i18n.js: %q has no Chinese string", k)
		}
	}
	for k := range zhKeys {
		if !enKeys[k] {
			t.Errorf("i18n.js: %q has no English string", k)
		}
	}
	used := regexp.MustCompile(`\bt\('([A-Za-z0-9_.]+)'|data-i18n(?:-[a-z-]+)?="([A-Za-z0-9_.]+)"`)
	for _, name := range []string{"static/i18n.js", "static/admin.js", "static/requests.js", "static/dashboard.js", "static/admin.html", "static/index.html"} {
		b, err := fs.ReadFile(staticFS, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range used.FindAllStringSubmatch(string(b), -1) {
			if k := m[1] + m[2]; !enKeys[k] {
				t.Errorf("%s uses the string %q, which i18n.js does not define", name, k)
			}
		}
	}
}

// TestAcceptsGzip covers the Accept-Encoding parsing on its own.
func TestAcceptsGzip(t *testing.T) {
	tests := []struct {
		header string
		want   bool
	}{
		{"gzip", true},
		{"GZIP", true},
		{"x-gzip", true},
		{"deflate, gzip;q=0.5", true},
		{"gzip; q=0", false},
		{"gzip;q=0.000", false},
		{"*;q=0.1", true},
		{"*;q=0", false},
		{"identity", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := acceptsGzip(tt.header); got != tt.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}
