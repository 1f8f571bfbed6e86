package main

import (
	"fmt"
	"net/http"
	"strconv"
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
		pr.rec.KeyID, pr.rec.KeyName = k.ID, k.Name
		pr.refuse(http.StatusForbidden, "key_not_allowed", "this proxy key may not call "+pr.route.prefix)
		return false
	}
	pr.rec.KeyID, pr.rec.KeyName, pr.key = k.ID, k.Name, k
	return true
}

// admitLimits admits the request under the limits of its mapping and of
// the caller's proxy key (SPEC §11), or answers 429 rate_limited with
// Retry-After and returns false: nothing is forwarded, nothing counted.
// A request without limits costs nothing here.
func (pr *proxyRequest) admitLimits() bool {
	scopes := limitScopes{mappingScope(pr.route.prefix, pr.route.limits)}
	if k := pr.key; k != nil {
		scopes[1] = keyScope(k.ID, k.Limits)
	}
	if !scopes.limited() {
		return true
	}
	res := pr.p.limiter.admit(pr.in.Context(), scopes)
	if !res.admitted {
		pr.rec.Limit = res.limit
		who := "this mapping"
		if res.scope.kind == 'k' {
			who = "this proxy key"
		}
		pr.w.Header().Set("Retry-After", strconv.FormatInt(res.retryAfter, 10))
		pr.refuse(http.StatusTooManyRequests, "rate_limited",
			fmt.Sprintf("%s is over its %s limit; retry after %d s", who, res.limit, res.retryAfter))
		return false
	}
	pr.ticket = res.ticket
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
