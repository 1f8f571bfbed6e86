package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
)

// staticFS holds the dashboard and admin pages and their assets. They are
// compiled into the binary, so it serves them from any working directory
// and in an image that holds nothing but the binary.
//
//go:embed static
var staticFS embed.FS

// pageCSP is the Content-Security-Policy of everything under static/: the
// pages load only their own files (no inline script or style, no other
// host), fetch only this server's JSON, and may not be framed.
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// staticAsset is one embedded file, ready to serve: its bytes, their gzip
// form when that is smaller, its Content-Type and a strong ETag.
type staticAsset struct {
	body        []byte
	gzipped     []byte // nil when gzip would not make it smaller
	contentType string
	etag        string
}

// staticAssets returns the embedded files by their path under static/
// ("index.html", "app.css", …), read and compressed on first use. The map
// and its assets never change and are shared: callers must not modify them.
var staticAssets = sync.OnceValue(func() map[string]*staticAsset {
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(fmt.Sprintf("static: %v", err)) // cannot happen: the directory is embedded
	}
	assets := make(map[string]*staticAsset)
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		a := &staticAsset{
			body:        body,
			contentType: staticContentType(name),
			etag:        `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`,
		}
		// Text compresses to a third or less; the pages are compressed
		// once here rather than on every request.
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(body)
		zw.Close()
		if buf.Len() < len(body) {
			a.gzipped = buf.Bytes()
		}
		assets[name] = a
		return nil
	})
	if err != nil {
		panic(fmt.Sprintf("static: read embedded files: %v", err))
	}
	return assets
})

// staticContentType is the Content-Type of an embedded file by its
// extension. The list is closed, so nothing depends on the host's MIME
// tables (a scratch image has none).
func staticContentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".png":
		return "image/png"
	case ".ico":
		return "image/x-icon"
	case ".json":
		return "application/json"
	case ".txt", ".md":
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

// handleIndex serves the stats dashboard, at / and /index.html.
func (s *Server) handleIndex(c *gin.Context) { serveStatic(c, "index.html") }

// handleAdminPage serves the admin page; the admin API it calls checks the
// token, the page itself is public.
func (s *Server) handleAdminPage(c *gin.Context) { serveStatic(c, "admin.html") }

// handleFavicon answers browsers that ask for /favicon.ico without reading
// the pages' <link rel="icon">.
func (s *Server) handleFavicon(c *gin.Context) { serveStatic(c, "favicon.svg") }

// handleStatic serves /static/{file}: only embedded files, no directory
// listings.
func (s *Server) handleStatic(c *gin.Context) {
	serveStatic(c, strings.TrimPrefix(c.Param("filepath"), "/"))
}

// serveStatic answers the embedded file name with the page security
// headers, gzip when the client accepts it, and ETag revalidation. The
// files carry no version in their names, so browsers must revalidate
// (no-cache): an upgraded binary is seen at the next load, and an
// unchanged file costs a 304.
func serveStatic(c *gin.Context, name string) {
	a := staticAssets()[name]
	if a == nil || name != path.Clean(name) {
		writeError(c.Writer, http.StatusNotFound, "not_found", "no such file")
		return
	}
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	h.Set("Vary", "Accept-Encoding")
	if etagMatches(c.GetHeader("If-None-Match"), a.etag) {
		c.Status(http.StatusNotModified)
		c.Writer.WriteHeaderNow()
		return
	}
	body := a.body
	if a.gzipped != nil && acceptsGzip(c.GetHeader("Accept-Encoding")) {
		body = a.gzipped
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	c.Data(http.StatusOK, a.contentType, body)
}

// etagMatches reports whether an If-None-Match header names etag (weak
// comparison, RFC 9110 §13.1.2).
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether an Accept-Encoding header accepts gzip:
// gzip listed without q=0, or else "*" without q=0 (RFC 9110 §12.5.3).
func acceptsGzip(header string) bool {
	gzipQ, starQ := -1.0, -1.0
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		q := 1.0
		for _, p := range strings.Split(params, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				}
			}
		}
		switch strings.ToLower(strings.TrimSpace(coding)) {
		case "gzip", "x-gzip":
			gzipQ = q
		case "*":
			starQ = q
		}
	}
	if gzipQ >= 0 {
		return gzipQ > 0
	}
	return starQ > 0
}
