package main

// The keys API (SPEC §10): /api/keys, behind the admin token like
// /api/mappings. A key's secret is in the answer that created it and
// nowhere else; no answer holds its hash.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"
)

// keyObject is a proxy key in the keys API's answers. Key, the secret, is
// set only in the answer of POST /api/keys; the hash is never shown. A
// null expires_at means the key never expires.
type keyObject struct {
	ID        string       `json:"id"`
	Key       string       `json:"key,omitempty"`
	Name      string       `json:"name"`
	Prefixes  []string     `json:"prefixes"`
	Limits    limitsObject `json:"limits"`
	CreatedAt time.Time    `json:"created_at"`
	ExpiresAt *time.Time   `json:"expires_at"`
	Disabled  bool         `json:"disabled"`
	Hint      string       `json:"hint"`
}

// listedKey is a keyObject as GET and PATCH answer it: with last_used_at,
// the Unix time (seconds) of the key's last request, null if none is
// known.
type listedKey struct {
	keyObject
	LastUsedAt *int64 `json:"last_used_at"`
}

// keyCreateRequest is the body of POST /api/keys. Only name is required.
// ExpiresAt is an RFC 3339 time or null (parseExpiry).
type keyCreateRequest struct {
	Name      string          `json:"name"`
	Prefixes  []string        `json:"prefixes"`
	Limits    *limitsObject   `json:"limits"`
	ExpiresAt json.RawMessage `json:"expires_at"`
	Disabled  bool            `json:"disabled"`
}

// keyUpdateRequest is the body of PATCH /api/keys/{id}: each field given
// replaces the key's, the others stay. "expires_at": null clears the
// expiry; "prefixes": [] lets the key call every keys mapping. "limits"
// is merged the same way: {"limits":{"tpm":1000}} leaves the key's rpm
// and concurrency as they were (0 removes a limit).
type keyUpdateRequest struct {
	Name      *string         `json:"name"`
	Prefixes  *[]string       `json:"prefixes"`
	Limits    *limitsPatch    `json:"limits"`
	ExpiresAt json.RawMessage `json:"expires_at"`
	Disabled  *bool           `json:"disabled"`
}

// limitsPatch is the "limits" of a PATCH: each limit given replaces the
// key's.
type limitsPatch struct {
	RPM         *int64 `json:"rpm"`
	TPM         *int64 `json:"tpm"`
	Concurrency *int64 `json:"concurrency"`
}

// apply sets on l the limits p gives.
func (p *limitsPatch) apply(l *Limits) {
	if p.RPM != nil {
		l.RPM = *p.RPM
	}
	if p.TPM != nil {
		l.TPM = *p.TPM
	}
	if p.Concurrency != nil {
		l.Concurrency = *p.Concurrency
	}
}

// object returns k as the keys API shows it, without its secret.
func (k ProxyKey) object() keyObject {
	o := keyObject{ID: k.ID, Name: k.Name, Prefixes: slices.Clone(k.Prefixes), Hint: k.Hint, Disabled: k.Disabled,
		Limits:    limitsObject{RPM: k.Limits.RPM, TPM: k.Limits.TPM, Concurrency: k.Limits.Concurrency},
		CreatedAt: k.CreatedAt.UTC()}
	if o.Prefixes == nil {
		o.Prefixes = []string{}
	}
	if !k.ExpiresAt.IsZero() {
		t := k.ExpiresAt.UTC()
		o.ExpiresAt = &t
	}
	return o
}

// listed returns k as GET answers it, with its last use.
func (s *Server) listed(k ProxyKey) listedKey {
	l := listedKey{keyObject: k.object()}
	if t := s.stats.keyLastUsed(k.ID); t > 0 {
		l.LastUsedAt = &t
	}
	return l
}

// parseExpiry reads the expires_at of a keys API body: absent (set is
// false), null (the zero time: never), or an RFC 3339 time. Anything else
// is a 400 naming the field.
func parseExpiry(raw json.RawMessage) (t time.Time, set bool, err error) {
	if len(raw) == 0 {
		return time.Time{}, false, nil
	}
	if bytes.Equal(raw, []byte("null")) {
		return time.Time{}, true, nil
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		if t, err := time.Parse(time.RFC3339, str); err == nil {
			return t.UTC(), true, nil
		}
	}
	return time.Time{}, false, &apiError{Status: http.StatusBadRequest, Code: "invalid_key",
		Message: `expires_at must be an RFC 3339 time such as "2027-01-01T00:00:00Z", or null for never`}
}

// storeKeys reads the keys for an admin request, sorted by id; on failure
// it has answered the request and ok is false.
func (s *Server) storeKeys(c *gin.Context) (ks []ProxyKey, ok bool) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	ks, err := s.store.Keys(ctx)
	if err != nil {
		s.writeStoreError(c, err)
		return nil, false
	}
	return ks, true
}

// storeKey reads the key of the path's id; on failure (404 included) it
// has answered the request and ok is false.
func (s *Server) storeKey(c *gin.Context) (k ProxyKey, ok bool) {
	ks, ok := s.storeKeys(c)
	if !ok {
		return ProxyKey{}, false
	}
	id := c.Param("id")
	i := slices.IndexFunc(ks, func(k ProxyKey) bool { return k.ID == id })
	if i < 0 {
		writeAPIError(c.Writer, errKeyNotFound)
		return ProxyKey{}, false
	}
	return ks[i], true
}

// handleListKeys answers {"keys": [...], "count": N}, sorted by id.
func (s *Server) handleListKeys(c *gin.Context) {
	ks, ok := s.storeKeys(c)
	if !ok {
		return
	}
	out := make([]listedKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, s.listed(k))
	}
	c.JSON(http.StatusOK, gin.H{"keys": out, "count": len(out)})
}

// handleGetKey answers one key.
func (s *Server) handleGetKey(c *gin.Context) {
	if k, ok := s.storeKey(c); ok {
		c.JSON(http.StatusOK, s.listed(k))
	}
}

// handleCreateKey makes a key with a new id and secret and answers it with
// 201: the one answer that holds the secret.
func (s *Server) handleCreateKey(c *gin.Context) {
	var body keyCreateRequest
	if err := decodeJSONBody(c.Writer, c.Request, &body); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	// An expires_at that is not a time is named with the key's other
	// problems (it is the last field); the key is checked without it.
	expires, _, expiryErr := parseExpiry(body.ExpiresAt)
	now := time.Now()
	id, secret := newKeySecret()
	k := ProxyKey{ID: id, Name: body.Name, Hash: keyHash(secret), Hint: secretHint(secret),
		CreatedAt: now.UTC().Truncate(time.Second), ExpiresAt: expires, Disabled: body.Disabled}
	if len(body.Prefixes) > 0 {
		k.Prefixes = body.Prefixes
	}
	if body.Limits != nil {
		k.Limits = Limits{RPM: body.Limits.RPM, TPM: body.Limits.TPM, Concurrency: body.Limits.Concurrency}
	}
	var fe fieldProblems
	k.check(&fe, now, true)
	fe.addErr("expires_at", expiryErr)
	if err := fe.err(); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.CreateKey(ctx, k); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("key created", "id", k.ID, "name", k.Name, "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	o := k.object()
	o.Key = secret
	c.Header("Location", "/api/keys/"+k.ID)
	c.JSON(http.StatusCreated, o)
}

// handleUpdateKey changes the fields of the body on the key of the path.
// An expires_at given here must be in the future, as in a create; a key
// that expired already may still be renamed, disabled or given a new
// expiry.
func (s *Server) handleUpdateKey(c *gin.Context) {
	var body keyUpdateRequest
	if err := decodeJSONBody(c.Writer, c.Request, &body); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	// As in a create, an expires_at that is not a time is named with the
	// other problems of the key as changed.
	expires, expiresSet, expiryErr := parseExpiry(body.ExpiresAt)
	k, ok := s.storeKey(c)
	if !ok {
		return
	}
	if body.Name != nil {
		k.Name = *body.Name
	}
	if body.Prefixes != nil {
		k.Prefixes = nil
		if len(*body.Prefixes) > 0 {
			k.Prefixes = *body.Prefixes
		}
	}
	if body.Limits != nil {
		body.Limits.apply(&k.Limits)
	}
	if expiresSet {
		k.ExpiresAt = expires
	}
	if body.Disabled != nil {
		k.Disabled = *body.Disabled
	}
	var fe fieldProblems
	k.check(&fe, time.Now(), expiresSet)
	fe.addErr("expires_at", expiryErr)
	if err := fe.err(); err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.UpdateKey(ctx, k); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("key updated", "id", k.ID, "name", k.Name, "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	c.JSON(http.StatusOK, s.listed(k))
}

// handleDeleteKey revokes a key. The reload before the answer makes this
// instance refuse it at once; other instances follow on the store's
// change signal.
func (s *Server) handleDeleteKey(c *gin.Context) {
	k, ok := s.storeKey(c)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	if err := s.store.DeleteKey(ctx, k.ID); err != nil {
		s.writeStoreError(c, err)
		return
	}
	s.logger.Info("key deleted", "id", k.ID, "name", k.Name, "client", s.clientAddr(c.Request))
	s.reloadAfterWrite(ctx)
	c.JSON(http.StatusOK, gin.H{"id": k.ID, "deleted": true})
}
