package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
)

const (
	// maxAdminBody bounds an admin request body (SPEC §6); a mapping is a
	// few hundred bytes.
	maxAdminBody = 64 << 10
	// adminStoreTimeout bounds the store calls of one admin request, so a
	// Redis that stopped answering gives a 503 instead of a hung page.
	adminStoreTimeout = 10 * time.Second
	// authMaxFailures failed authentications from one client address within
	// authWindow block that address for authWindow (SPEC §6: at most 10
	// failures a minute).
	authMaxFailures = 10
	authWindow      = time.Minute
	// authMaxTracked bounds the failure table; past it, addresses whose
	// window is over are forgotten first.
	authMaxTracked = 10000
	// authStoreTimeout bounds each call to the fleet's failure counts
	// (Redis), so that a Redis that stopped answering delays an admin
	// request by this at most before the local counts decide alone.
	authStoreTimeout = time.Second
)

// updateObject is the body of PUT /api/mappings/{prefix}: the mapping
// object of SPEC §9, whose prefix is optional and, when present, must name
// the same mapping as the path. Its Prefix shadows mappingObject's so that
// `"prefix": ""` is told apart from no prefix at all.
type updateObject struct {
	Prefix *string `json:"prefix"`
	mappingObject
}

// generateAdminToken returns a new random admin token: 26 base32
// characters holding 128 bits from crypto/rand, one word that a
// double-click selects.
func generateAdminToken() (string, error) { return rand.Text(), nil }

// resolveAdminToken sets the token the admin API accepts: ADMIN_TOKEN if
// set, else the one kept in the store (generated there on first use). A
// token from the store is logged, alone as a word on its own line, at every
// start, so the operator can always find it; no other line or response
// ever holds it. Only its SHA-256 is kept on Server.
func (s *Server) resolveAdminToken(ctx context.Context) (*[sha256.Size]byte, error) {
	token := s.cfg.AdminToken
	if token == "" {
		t, err := s.store.AdminToken(ctx, generateAdminToken)
		if err != nil {
			return nil, fmt.Errorf("load admin token: %w", err)
		}
		if t == "" {
			return nil, errors.New("load admin token: the stored token is empty")
		}
		token = t
		// Written whatever LOG_LEVEL says: without it nobody can log in.
		msg := "admin token: " + token + " (kept in the store; set ADMIN_TOKEN to use your own)"
		s.logger.Handler().Handle(ctx, slog.NewRecord(time.Now(), slog.LevelInfo, msg, 0))
	}
	h := sha256.Sum256([]byte(token))
	s.adminTokenHash.Store(&h)
	return &h, nil
}

// adminToken returns the SHA-256 of the admin token, resolving it first if
// the store could not be read before (Redis down at start).
func (s *Server) adminToken(ctx context.Context) (*[sha256.Size]byte, error) {
	if h := s.adminTokenHash.Load(); h != nil {
		return h, nil
	}
	s.adminTokenMu.Lock()
	defer s.adminTokenMu.Unlock()
	if h := s.adminTokenHash.Load(); h != nil {
		return h, nil
	}
	ctx, cancel := context.WithTimeout(ctx, adminStoreTimeout)
	defer cancel()
	return s.resolveAdminToken(ctx)
}

// requireAdmin is the middleware of /api/mappings and /api/keys: a bearer token equal to
// the admin token, compared in constant time (of equal-length digests, so
// not even the length leaks). A client address with authMaxFailures recent
// failures gets 429 until its block ends, whatever it sends.
func (s *Server) requireAdmin(c *gin.Context) {
	req := c.Request
	addr := s.clientAddr(req)
	if wait := s.authFailures.blocked(req.Context(), addr); wait > 0 {
		c.Header("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeError(c.Writer, http.StatusTooManyRequests, "too_many_auth_failures",
			"too many failed admin authentications from this address; retry later")
		c.Abort()
		return
	}
	want, err := s.adminToken(req.Context())
	if err != nil {
		s.logger.Warn("admin API unavailable: no admin token", "error", err)
		writeAPIError(c.Writer, err)
		c.Abort()
		return
	}
	got := sha256.Sum256([]byte(bearerToken(req.Header.Get("Authorization"))))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		if s.authFailures.fail(req.Context(), addr) {
			s.logger.Warn("admin API: too many failed authentications; blocking address", "client", addr, "for", authWindow.String())
		}
		c.Header("WWW-Authenticate", `Bearer realm="apiproxy admin"`)
		writeError(c.Writer, http.StatusUnauthorized, "unauthorized",
			"missing or wrong admin token: send the header Authorization: Bearer followed by ADMIN_TOKEN (or the generated token that the server log prints at start)")
		c.Abort()
		return
	}
	s.authFailures.succeed(req.Context(), addr)
	c.Header("Cache-Control", "no-store")
	c.Next()
}

// refuseCrossOrigin is the first middleware of /api/mappings and
// /api/keys: it answers 403 to a call that a browser makes on behalf of
// another origin's page, for every method (reads too), so that no other
// site can drive the API with a token it got hold of, nor probe it. The
// API never sends CORS headers (CORS_ALLOW_ORIGINS applies to proxied
// paths only), so browsers would also refuse to show another origin the
// answer; this refuses the call itself, as net/http's
// CrossOriginProtection does for writes.
//
// Browsers name the requesting site in Sec-Fetch-Site (all current ones)
// and else in Origin; a call with neither (curl, scripts, SDKs) does not
// come from a browser page and passes to the token check. Origin is
// compared with the Host the browser sent, whatever the scheme, so a TLS
// terminator in front changes nothing.
func (s *Server) refuseCrossOrigin(c *gin.Context) {
	req := c.Request
	switch req.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		c.Next()
		return
	case "":
		origin := req.Header.Get("Origin")
		if origin == "" {
			c.Next()
			return
		}
		if u, err := url.Parse(origin); err == nil && u.Host != "" && strings.EqualFold(u.Host, req.Host) {
			c.Next()
			return
		}
	}
	writeError(c.Writer, http.StatusForbidden, "cross_origin_refused",
		"the admin API refuses calls from pages of another origin; use the /admin page of this server, or call it without a browser")
	c.Abort()
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header value, or "" (the scheme is case-insensitive, RFC 9110 §11.1).
func bearerToken(h string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// clientAddr is the address that auth failures are counted against: the
// client's IP (clientIP: the TCP peer's, or X-Forwarded-For's only when
// that peer is in TRUSTED_PROXIES, since anyone else could pick a fresh
// address for every guess), or its /64 for IPv6, where one client usually
// holds the whole block.
func (s *Server) clientAddr(req *http.Request) string {
	ip, ok := s.cfg.TrustedProxies.clientIP(req)
	if !ok {
		return req.RemoteAddr
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// storeMappings reads the mappings for an admin request, sorted by prefix;
// on failure it has answered the request and ok is false.
func (s *Server) storeMappings(c *gin.Context) (ms []Mapping, ok bool) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	ms, err := s.store.Mappings(ctx)
	if err != nil {
		s.writeStoreError(c, err)
		return nil, false
	}
	return ms, true
}

// handleListMappings answers {"mappings": {prefix: first target URL},
// "count": N, "items": [mapping objects]} (SPEC §6, §9), sorted by prefix.
// Items never hold a key, only key_set and key_hint.
func (s *Server) handleListMappings(c *gin.Context) {
	ms, ok := s.storeMappings(c)
	if !ok {
		return
	}
	byPrefix := make(map[string]string, len(ms))
	items := make([]mappingObject, 0, len(ms))
	for _, m := range ms {
		byPrefix[m.Prefix] = m.firstURL()
		items = append(items, m.object(false))
	}
	c.JSON(http.StatusOK, gin.H{"mappings": byPrefix, "count": len(byPrefix), "items": items})
}

// handleGetMapping answers one mapping object, every option shown and
// "target" its first URL; /api/mappings/ is the list.
func (s *Server) handleGetMapping(c *gin.Context) {
	prefix := c.Param("prefix")
	if prefix == "/" {
		s.handleListMappings(c)
		return
	}
	ms, ok := s.storeMappings(c)
	if !ok {
		return
	}
	i := slices.IndexFunc(ms, func(m Mapping) bool { return m.Prefix == prefix })
	if i < 0 {
		writeAPIError(c.Writer, errMappingNotFound)
		return
	}
	c.JSON(http.StatusOK, ms[i].object(false))
}

// handleCreateMapping stores the mapping object of the body (SPEC §9), or
// the original {"prefix", "target"}, and answers it with 201.
func (s *Server) handleCreateMapping(c *gin.Context) {
	var o mappingObject
	if err := decodeJSONBody(c.Writer, c.Request, &o); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	m, err := s.requestMapping(o)
	if err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.CreateMapping(ctx, m); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("mapping created", "prefix", m.Prefix, "target", m.firstURL(), "targets", m.urls(), "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	c.Header("Location", "/api/mappings"+m.Prefix)
	c.JSON(http.StatusCreated, m.object(false))
}

// handleUpdateMapping replaces the whole mapping of the path with the
// object of the body (SPEC §9); {"target": "…"} alone means one target
// and no options. A target that leaves "key" out and whose URL is the
// stored one at its position keeps its stored key (keepKeys).
func (s *Server) handleUpdateMapping(c *gin.Context) {
	prefix, ok := pathPrefix(c)
	if !ok {
		return
	}
	if err := validatePrefix(prefix); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	var body updateObject
	if err := decodeJSONBody(c.Writer, c.Request, &body); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	if body.Prefix != nil && *body.Prefix != prefix {
		writeError(c.Writer, http.StatusBadRequest, "invalid_prefix", fmt.Sprintf(
			"prefix in the body (%q) differs from the one in the path (%q); to rename a mapping, create the new one and delete the old one",
			truncate(*body.Prefix, 200), prefix))
		return
	}
	o := body.mappingObject
	o.Prefix = prefix
	m, err := s.requestMapping(o)
	if err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	ms, ok := s.storeMappings(c)
	if !ok {
		return
	}
	i := slices.IndexFunc(ms, func(old Mapping) bool { return old.Prefix == prefix })
	if i < 0 {
		writeAPIError(c.Writer, errMappingNotFound)
		return
	}
	given := make([]bool, len(m.Targets))
	for j, t := range o.Targets {
		given[j] = t.Key != nil
	}
	m.keepKeys(ms[i], given)
	if err := m.validate(s.self); err != nil {
		// The body alone was valid: a kept key made it invalid (a key with
		// auth "passthrough").
		if ae, ok := err.(*apiError); ok {
			const kept = `; a target that leaves "key" out keeps its stored key while its URL is unchanged: send "key": "" to remove it`
			ae.Message += kept
			for i := range ae.Fields {
				ae.Fields[i].Message += kept
			}
		}
		writeAPIError(c.Writer, err)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.UpdateMapping(ctx, m); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("mapping updated", "prefix", m.Prefix, "target", m.firstURL(), "targets", m.urls(), "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	c.JSON(http.StatusOK, m.object(false))
}

// requestMapping converts the mapping object of an admin request and
// validates it. The error names every field at fault (issue 19), in the
// order of the object's fields: the prefix, the targets, then the
// options; its message is the first one's.
func (s *Server) requestMapping(o mappingObject) (Mapping, error) {
	m, fe := o.convert()
	m.check(&fe, s.self)
	fe.sortBy(mappingFieldRank)
	if err := fe.err(); err != nil {
		return Mapping{}, err
	}
	return m, nil
}

// handleDeleteMapping removes a mapping. The prefix is not validated, so
// that an invalid entry put into Redis by hand (which routing skips) can
// still be removed here.
func (s *Server) handleDeleteMapping(c *gin.Context) {
	prefix, ok := pathPrefix(c)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.DeleteMapping(ctx, prefix); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("mapping deleted", "prefix", prefix, "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	c.JSON(http.StatusOK, gin.H{"prefix": prefix, "deleted": true})
}

// pathPrefix returns the mapping prefix of /api/mappings/{prefix}: the
// catch-all parameter, which keeps the leading slash and is already
// unescaped (so a%2Fb and a/b both name /a/b). An empty one is answered
// with 400 here.
func pathPrefix(c *gin.Context) (string, bool) {
	prefix := c.Param("prefix")
	if prefix == "/" || prefix == "" {
		writeError(c.Writer, http.StatusBadRequest, "invalid_prefix",
			"prefix is required in the path: /api/mappings/{prefix without its leading slash}, e.g. /api/mappings/openai")
		return "", false
	}
	return prefix, true
}

// methodNotAllowed answers a method that a route of the admin API does not
// have, listing those it does.
func methodNotAllowed(allow string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Allow", allow)
		writeError(c.Writer, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("method %s is not allowed here; allowed: %s", c.Request.Method, allow))
	}
}

// reloadAfterWrite publishes the change to this instance's routes before
// the admin call returns, so the very next request routes by it. It is the
// one reload of a local write: the store does not signal Changes for it
// (see Store.Changes). Failing to reload does not undo the write:
// watchMappings is asked to retry, as it retries its own reloads.
func (s *Server) reloadAfterWrite(ctx context.Context) {
	if err := s.reloadRoutes(ctx); err != nil {
		s.logger.Warn("route reload after an admin change failed; retrying in the background", "error", err)
		notify(s.reloadRetry)
	}
}

// writeStoreError answers a store error and logs what the client does not
// see: the cause of a 503 or 500. Expected answers (404, 409) are not
// logged.
func (s *Server) writeStoreError(c *gin.Context, err error) {
	switch {
	case errors.Is(err, errMappingNotFound), errors.Is(err, errMappingExists),
		errors.Is(err, errKeyNotFound), errors.Is(err, errKeyExists):
	case errors.Is(err, errStoreUnavailable):
		s.logger.Warn("admin API: store unavailable", "method", c.Request.Method, "path", c.Request.URL.Path, "error", err)
	default:
		s.logger.Error("admin API: store error", "method", c.Request.Method, "path", c.Request.URL.Path, "error", err)
	}
	writeAPIError(c.Writer, err)
}

// decodeJSONBody reads the request body as one JSON object into dst, a
// pointer to a struct (see decodeJSON). A body over maxAdminBody is 413.
func decodeJSONBody(w http.ResponseWriter, req *http.Request, dst any) error {
	tooLarge := &apiError{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
		Message: fmt.Sprintf("request body must be at most %d KiB", maxAdminBody>>10)}
	if req.ContentLength > maxAdminBody {
		return tooLarge
	}
	err := decodeJSON(http.MaxBytesReader(w, req.Body, maxAdminBody), dst, "request body")
	var maxErr *http.MaxBytesError
	if errors.As(err, &maxErr) {
		return tooLarge
	}
	return err
}

// decodeJSON reads r, named what in messages ("request body", "file
// m.json"), as one JSON object into dst, a pointer to a struct. Each way
// it can be wrong gets its own 400 invalid_json *apiError naming the field
// where there is one: not JSON, not an object, a field of the wrong type,
// an unknown field (a typo such as "traget"), data after the object. A
// *http.MaxBytesError from r is returned as it is.
func decodeJSON(r io.Reader, dst any, what string) error {
	bad := func(msg string) error {
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_json", Message: msg}
	}
	fields := jsonFieldNames(dst)
	example := "a JSON object with the fields " + fields
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		// One value only: "{...} {...}" or "{...}x" is not what was meant.
		if _, terr := dec.Token(); terr != io.EOF {
			err = errTrailingData
			var mbe *http.MaxBytesError
			if errors.As(terr, &mbe) {
				err = terr
			}
		}
	}
	var (
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
		maxErr    *http.MaxBytesError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &maxErr):
		return err
	case errors.Is(err, io.EOF):
		return bad(what + " is empty; send " + example)
	case errors.Is(err, errTrailingData):
		return bad(what + " must hold a single JSON object; found more data after it")
	case errors.As(err, &syntaxErr):
		return bad(fmt.Sprintf("%s is not valid JSON (at byte %d): %s", what, syntaxErr.Offset, strings.TrimPrefix(syntaxErr.Error(), "json: ")))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return bad(what + " is not valid JSON: it ends before the object is complete")
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return bad(fmt.Sprintf("%s must be %s, not %s", what, example, withArticle(typeErr.Value)))
		}
		field := typeErr.Field
		// encoding/json names a field of an embedded struct with the
		// struct's Go name first ("mappingObject.target"); the JSON has none.
		for _, f := range reflect.VisibleFields(reflect.TypeOf(dst).Elem()) {
			if f.Anonymous {
				field = strings.TrimPrefix(field, f.Name+".")
			}
		}
		return bad(fmt.Sprintf("field %q must be a JSON %s, not %s", field, jsonKind(typeErr.Type), withArticle(typeErr.Value)))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for this one.
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return bad(fmt.Sprintf("unknown field %s; the allowed fields are %s", name, fields))
	}
	return bad(what + " is not valid JSON: " + strings.TrimPrefix(err.Error(), "json: "))
}

var errTrailingData = errors.New("data after the JSON value")

// jsonFieldNames lists the JSON names of the fields of *struct dst for
// messages, those of embedded structs included, and then those of each
// field that is an object or a list of objects:
// `"prefix", "targets" and "limits"; in "limits": "rpm" and "tpm"`.
func jsonFieldNames(dst any) string {
	t := reflect.TypeOf(dst).Elem()
	list := func(t reflect.Type) (names []string, nested []reflect.StructField) {
		for _, f := range reflect.VisibleFields(t) {
			if f.Anonymous || !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			names = append(names, strconv.Quote(name))
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				f.Type = ft
				nested = append(nested, f)
			}
		}
		return names, nested
	}
	and := func(names []string) string {
		if len(names) < 2 {
			return strings.Join(names, "")
		}
		return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
	}
	names, nested := list(t)
	out := and(names)
	for _, f := range nested {
		sub, _ := list(f.Type)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		out += fmt.Sprintf("; in %q: %s", name, and(sub))
	}
	return out
}

// withArticle turns the JSON type named in a json.UnmarshalTypeError
// ("number", "bool", "object", …) into words: "a number", "an object".
func withArticle(value string) string {
	if value == "bool" {
		value = "boolean"
	}
	if value != "" && strings.ContainsRune("aeiou", rune(value[0])) {
		return "an " + value
	}
	return "a " + value
}

// jsonKind names the JSON type that decodes into t.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer" // "not a number 1.5" would read as a contradiction
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "object"
}

// authCounter keeps the failed admin authentications of client addresses
// (SPEC §6): an address that failed authMaxFailures times within
// authWindow is blocked for authWindow. localAuthCounter keeps them in
// this process; redisAuthCounter (redis.go) in Redis, for the whole fleet.
// Implementations are safe for concurrent use.
type authCounter interface {
	// blocked returns how long addr stays blocked; 0 if it is not.
	blocked(ctx context.Context, addr string) (time.Duration, error)
	// fail counts a failure of addr and reports whether it blocked addr.
	fail(ctx context.Context, addr string) (bool, error)
	// succeed forgets the failures of addr.
	succeed(ctx context.Context, addr string) error
}

// authCountingStore is a Store that keeps failure counts for every
// instance that shares it (the Redis store), so that the budget of
// guesses does not grow with the number of replicas.
type authCountingStore interface {
	authCounter() authCounter
}

// authLimiter is the admin lockout. It always counts in this process
// (local); on a shared store it counts in the store too (shared), and an
// address blocked by either is blocked. A shared store that fails is
// logged (at most once a minute) and skipped: the admin API stays usable
// while Redis is down, and the local limit still holds guessing back.
// Safe for concurrent use.
type authLimiter struct {
	local     *localAuthCounter
	shared    authCounter // nil: this process alone (the embedded store)
	logger    *slog.Logger
	sharedErr logLimiter
}

// newAuthLimiter returns the lockout of a Server on store.
func newAuthLimiter(store Store, logger *slog.Logger) *authLimiter {
	l := &authLimiter{local: newLocalAuthCounter(), logger: logger,
		sharedErr: logLimiter{every: time.Minute, now: time.Now}}
	if cs, ok := store.(authCountingStore); ok {
		l.shared = cs.authCounter()
	}
	return l
}

// blocked returns how long addr stays blocked; 0 if it is not.
func (l *authLimiter) blocked(ctx context.Context, addr string) time.Duration {
	wait, _ := l.local.blocked(ctx, addr)
	if l.shared != nil {
		ctx, cancel := context.WithTimeout(ctx, authStoreTimeout)
		defer cancel()
		w, err := l.shared.blocked(ctx, addr)
		l.sharedFailed(err)
		wait = max(wait, w)
	}
	return wait
}

// fail counts a failure of addr and reports whether it blocked addr.
func (l *authLimiter) fail(ctx context.Context, addr string) bool {
	blocked, _ := l.local.fail(ctx, addr)
	if l.shared != nil {
		ctx, cancel := context.WithTimeout(ctx, authStoreTimeout)
		defer cancel()
		b, err := l.shared.fail(ctx, addr)
		l.sharedFailed(err)
		blocked = blocked || b
	}
	return blocked
}

// succeed forgets the failures of addr.
func (l *authLimiter) succeed(ctx context.Context, addr string) {
	l.local.succeed(ctx, addr)
	if l.shared != nil {
		ctx, cancel := context.WithTimeout(ctx, authStoreTimeout)
		defer cancel()
		l.sharedFailed(l.shared.succeed(ctx, addr))
	}
}

// sharedFailed logs err, if any, from the shared counts.
func (l *authLimiter) sharedFailed(err error) {
	if err == nil {
		return
	}
	if suppressed, ok := l.sharedErr.allow(); ok {
		l.logger.Warn("admin lockout: the fleet's failure counts are unavailable; counting in this instance only",
			"error", err, "suppressed", suppressed)
	}
}

// localAuthCounter is the authCounter of this process. Memory stays
// bounded (authMaxTracked). Its errors are always nil.
type localAuthCounter struct {
	now func() time.Time // time.Now; tests replace it

	mu      sync.Mutex
	clients map[string]*authRecord
}

type authRecord struct {
	failures     int
	windowStart  time.Time // of the current counting window
	blockedUntil time.Time // zero unless blocked
}

func newLocalAuthCounter() *localAuthCounter {
	return &localAuthCounter{now: time.Now, clients: make(map[string]*authRecord)}
}

func (l *localAuthCounter) blocked(_ context.Context, addr string) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.clients[addr]
	if r == nil || r.blockedUntil.IsZero() {
		return 0, nil
	}
	if wait := r.blockedUntil.Sub(l.now()); wait > 0 {
		return wait, nil
	}
	delete(l.clients, addr) // the block is over: start afresh
	return 0, nil
}

func (l *localAuthCounter) fail(_ context.Context, addr string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.clients[addr]
	if r == nil {
		if len(l.clients) >= authMaxTracked {
			l.sweep(now)
		}
		r = &authRecord{windowStart: now}
		l.clients[addr] = r
	}
	if now.Sub(r.windowStart) >= authWindow {
		r.failures, r.windowStart = 0, now
	}
	r.failures++
	if r.failures >= authMaxFailures && r.blockedUntil.IsZero() {
		r.blockedUntil = now.Add(authWindow)
		return true, nil
	}
	return false, nil
}

func (l *localAuthCounter) succeed(_ context.Context, addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.clients, addr)
	return nil
}

// sweep drops the records that no longer count: window over, not blocked.
// If every record still counts (many addresses failing at once), the
// table grows past authMaxTracked rather than letting anyone through.
func (l *localAuthCounter) sweep(now time.Time) {
	for addr, r := range l.clients {
		if now.Sub(r.windowStart) >= authWindow && !now.Before(r.blockedUntil) {
			delete(l.clients, addr)
		}
	}
}
