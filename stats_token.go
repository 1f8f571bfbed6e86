package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"math"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"
)

// newStatsTokenHash returns the SHA-256 of STATS_TOKEN, or nil when it is
// unset: /stats and /metrics are then public (SPEC §1).
func newStatsTokenHash(token string) *[sha256.Size]byte {
	if token == "" {
		return nil
	}
	h := sha256.Sum256([]byte(token))
	return &h
}

// requireStatsToken guards GET /stats and GET /metrics. Without STATS_TOKEN
// it lets every call through (the original, public design). With it, a
// call must carry "Authorization: Bearer" with STATS_TOKEN or the admin
// token, each compared in constant time as digests of equal length; both
// comparisons always run, so the answer's timing does not tell which token
// came close. Anything else gets 401 with WWW-Authenticate.
//
// Failures (a call with an Authorization header that does not match)
// count against the client address in the admin lockout
// (authFailures), and a blocked address gets 429 here as on the admin API:
// since the admin token opens /stats too, a separate budget would give a
// guesser of the admin token a second ten guesses a minute. A success does
// not clear the address's failures, unlike an admin login: whoever holds
// only the stats token must not be able to reset the count between guesses
// of the admin token. Prometheus scraping with a wrong token (one failure
// per scrape) blocks its own address only when it scrapes more often than
// authMaxFailures times a minute.
//
// The admin token is accepted only once it is known (adminTokenHash): a
// scrape never waits for a store that is down to read it.
func (s *Server) requireStatsToken(c *gin.Context) {
	if s.statsTokenHash == nil {
		c.Next()
		return
	}
	req := c.Request
	addr := s.clientAddr(req)
	if wait := s.authFailures.blocked(req.Context(), addr); wait > 0 {
		c.Header("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeError(c.Writer, http.StatusTooManyRequests, "too_many_auth_failures",
			"too many failed authentications from this address; retry later")
		c.Abort()
		return
	}
	header := req.Header.Get("Authorization")
	got := sha256.Sum256([]byte(bearerToken(header)))
	ok := subtle.ConstantTimeCompare(got[:], s.statsTokenHash[:])
	if admin := s.adminTokenHash.Load(); admin != nil {
		ok |= subtle.ConstantTimeCompare(got[:], admin[:])
	}
	if ok != 1 {
		// A call without credentials guesses nothing: the dashboard's
		// first poll and an unconfigured scraper are not counted.
		if header != "" && s.authFailures.fail(req.Context(), addr) {
			s.logger.Warn("stats: too many failed authentications; blocking address", "client", addr, "for", authWindow.String())
		}
		c.Header("WWW-Authenticate", `Bearer realm="apiproxy stats"`)
		writeError(c.Writer, http.StatusUnauthorized, "unauthorized",
			"missing or wrong stats token: send the header Authorization: Bearer followed by STATS_TOKEN or the admin token")
		c.Abort()
		return
	}
	c.Header("Cache-Control", "no-store")
	c.Next()
}
