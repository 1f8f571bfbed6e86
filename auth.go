package main

import (
	"net/http"
)

// checkKey admits the caller of a keys mapping (SPEC §10): it must show
// one proxy key, known, enabled, not expired, allowed on this mapping.
// Otherwise it answers 401 invalid_api_key or 403 key_not_allowed, nothing
// is forwarded, and checkKey returns false. The check reads the in-memory
// key table only: no store round trip.
func (pr *proxyRequest) checkKey() bool {
	secret, ok := callerKey(pr.in)
	var k *ProxyKey
	if ok {
		k = pr.p.keys.Load().lookup(secret)
	}
	switch {
	case k == nil || !k.usable(pr.rec.Start):
		pr.refuse(http.StatusUnauthorized, "invalid_api_key",
			"a valid proxy key is required for this mapping: send it as the API key of your SDK (Authorization: Bearer, x-api-key, x-goog-api-key, api-key or ?key=)")
		return false
	case !k.allows(pr.route.prefix):
		pr.rec.KeyID = k.ID
		pr.refuse(http.StatusForbidden, "key_not_allowed", "this proxy key may not call "+pr.route.prefix)
		return false
	}
	pr.rec.KeyID = k.ID
	return true
}

// refuse answers a request the proxy does not forward with its own error,
// recorded as such.
func (pr *proxyRequest) refuse(status int, code, msg string) {
	pr.rec.Status, pr.rec.ProxyErr = status, code
	if status == http.StatusUnauthorized {
		pr.w.Header().Set("Www-Authenticate", `Bearer realm="apiproxy"`)
	}
	// Through pr.w: the answer gets the proxy's headers, CORS included,
	// so that a browser caller can read why it was refused.
	writeError(&pr.w, status, code, msg)
}
