package main

// The headers the proxy adds to proxied responses (SPEC §3.5), and how it
// tells an event stream from a Content-Type.

import (
	"net/http"
	"strings"
)

// Static header values shared by every response; never modified.
var (
	hdrNo      = []string{"no"}
	hdrNosniff = []string{"nosniff"}
	hdrDeny    = []string{"DENY"}
	hdrNoRef   = []string{"no-referrer"}
	hdrNoIndex = []string{"noindex, nofollow"}
	hdrStar    = []string{"*"}
)

// addProxyHeaders adds to a proxied response's headers those the proxy
// sets where the upstream did not (SPEC §3.5), and the CORS headers for
// req's origin; nothing else.
func addProxyHeaders(h http.Header, cors corsPolicy, req *http.Request) {
	addIfAbsent(h, "X-Accel-Buffering", hdrNo)
	addIfAbsent(h, "X-Content-Type-Options", hdrNosniff)
	addIfAbsent(h, "X-Frame-Options", hdrDeny)
	addIfAbsent(h, "Referrer-Policy", hdrNoRef)
	addIfAbsent(h, "X-Robots-Tag", hdrNoIndex)
	cors.addResponseHeaders(h, req)
	// Nor is a Content-Type the upstream did not send: net/http would
	// sniff one from the body's first bytes. A key without values is
	// written as nothing.
	addIfAbsent(h, "Content-Type", nil)
}

func addIfAbsent(h http.Header, key string, v []string) {
	if _, ok := h[key]; !ok {
		h[key] = v
	}
}

// isEventStream reports whether a response is a token stream that idles
// between small writes: SSE or newline-delimited JSON.
func isEventStream(ct []string) bool {
	mt := mediaType(ct)
	for _, t := range eventStreamTypes {
		if strings.EqualFold(mt, t) {
			return true
		}
	}
	return false
}

var eventStreamTypes = []string{"text/event-stream", "application/x-ndjson",
	"application/jsonl", "application/json-seq", "application/stream+json"}

// isSSE reports whether a response is text/event-stream, which
// ReverseProxy flushes after every write on its own.
func isSSE(ct []string) bool { return strings.EqualFold(mediaType(ct), "text/event-stream") }

// mediaType returns the media type of a Content-Type header's values
// without parameters ("text/event-stream" of "text/event-stream;
// charset=utf-8"), or "" when there is none.
func mediaType(ct []string) string {
	if len(ct) == 0 {
		return ""
	}
	base, _, _ := strings.Cut(ct[0], ";")
	return strings.TrimSpace(base)
}
