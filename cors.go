package main

import (
	"net/http"
	"strings"
)

// corsPolicy answers browser preflights and adds CORS headers to proxied
// responses for the allowed origins. The zero value allows none.
type corsPolicy struct {
	any     bool
	origins map[string]bool
}

func newCORSPolicy(origins []string) corsPolicy {
	c := corsPolicy{origins: make(map[string]bool)}
	for _, o := range origins {
		if o == "*" {
			c.any = true
		} else {
			c.origins[strings.ToLower(o)] = true
		}
	}
	return c
}

func (c corsPolicy) allowed(origin string) bool {
	return origin != "" && (c.any || c.origins[strings.ToLower(origin)])
}

// isPreflight reports whether req is a CORS preflight (OPTIONS with Origin
// and Access-Control-Request-Method); other OPTIONS requests are proxied.
func (c corsPolicy) isPreflight(req *http.Request) bool {
	return req.Method == http.MethodOptions && req.Header.Get("Origin") != "" &&
		req.Header.Get("Access-Control-Request-Method") != ""
}

// preflight answers a CORS preflight without asking the upstream.
func (c corsPolicy) preflight(w http.ResponseWriter, req *http.Request) {
	origin := req.Header.Get("Origin")
	if !c.allowed(origin) {
		writeError(w, http.StatusForbidden, "cors_origin_not_allowed", "origin "+truncate(origin, 200)+" is not in CORS_ALLOW_ORIGINS")
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", c.originValue(origin))
	if !c.any {
		h.Set("Vary", "Origin")
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
	if rh := req.Header.Values("Access-Control-Request-Headers"); len(rh) > 0 {
		h.Set("Access-Control-Allow-Headers", strings.Join(rh, ", "))
	}
	if req.Header.Get("Access-Control-Request-Private-Network") == "true" {
		h.Set("Access-Control-Allow-Private-Network", "true")
	}
	h.Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}

func (c corsPolicy) originValue(origin string) string {
	if c.any {
		return "*"
	}
	return origin
}

// addResponseHeaders adds CORS headers to a proxied response when the
// request came from an allowed origin and the upstream set none.
func (c corsPolicy) addResponseHeaders(h http.Header, req *http.Request) {
	o := req.Header["Origin"]
	if len(o) == 0 || !c.allowed(o[0]) {
		return
	}
	if _, ok := h["Access-Control-Allow-Origin"]; ok {
		return
	}
	if c.any {
		h["Access-Control-Allow-Origin"] = hdrStar
	} else {
		h["Access-Control-Allow-Origin"] = o[:1:1]
		h["Vary"] = append(h["Vary"], "Origin")
	}
	addIfAbsent(h, "Access-Control-Expose-Headers", hdrStar)
}
