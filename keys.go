package main

// Proxy keys (SPEC §10): who may call a mapping with "auth": "keys". A key
// is a secret "apx-…" shown once, when it is created; the stores keep only
// its SHA-256 (keyHash), and every instance checks callers against an
// in-memory table of those hashes (keyTable), rebuilt whenever the keys
// change, so that a request never waits for a store.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	keyIDPrefix     = "k_"
	keySecretPrefix = "apx-"
	maxKeyName      = 64
	maxKeyPrefixes  = 100
	// keyProtocolPrefix is the WebSocket subprotocol that carries a key
	// where a browser cannot set headers (OpenAI Realtime).
	keyProtocolPrefix = "openai-insecure-api-key."
)

// ProxyKey is a proxy key as the stores keep it: never its secret, only
// the secret's hash. The zero ExpiresAt means it never expires.
type ProxyKey struct {
	ID        string
	Name      string
	Hash      string // keyHash of the secret
	Hint      string // "apx-…" and the secret's last 4 characters
	Prefixes  []string
	Limits    Limits
	CreatedAt time.Time
	ExpiresAt time.Time
	Disabled  bool
}

// storedKey is the JSON form in which the stores keep a ProxyKey: the
// value of the bbolt bucket "keys" and of the Redis hash apiproxy:keys
// (field = id), and of the Redis snapshot file. It holds the secret's
// hash, never the secret. A zero ExpiresAt is stored as null.
type storedKey struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	Hash      string       `json:"hash"`
	Hint      string       `json:"hint"`
	Prefixes  []string     `json:"prefixes"`
	Limits    limitsObject `json:"limits"`
	CreatedAt time.Time    `json:"created_at"`
	ExpiresAt *time.Time   `json:"expires_at"`
	Disabled  bool         `json:"disabled"`
}

// encode returns k's stored form (storedKey).
func (k ProxyKey) encode() string {
	v := storedKey{ID: k.ID, Name: k.Name, Hash: k.Hash, Hint: k.Hint, Prefixes: k.Prefixes,
		Limits:    limitsObject{RPM: k.Limits.RPM, TPM: k.Limits.TPM, Concurrency: k.Limits.Concurrency},
		CreatedAt: k.CreatedAt.UTC(), Disabled: k.Disabled}
	if v.Prefixes == nil {
		v.Prefixes = []string{}
	}
	if !k.ExpiresAt.IsZero() {
		t := k.ExpiresAt.UTC()
		v.ExpiresAt = &t
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// decodeKey reads the stored form of the key id. The field (bucket key,
// hash field) is the id that counts. A value that does not decode, or
// that has no hash, comes back as a disabled key with the id alone and an
// error: it admits nobody, and the admin API still lists and deletes it.
func decodeKey(id, value string) (ProxyKey, error) {
	var v storedKey
	if err := json.Unmarshal([]byte(value), &v); err != nil || v.Hash == "" {
		if err == nil {
			err = fmt.Errorf("stored key %s has no hash", id)
		}
		return ProxyKey{ID: id, Disabled: true}, fmt.Errorf("decode stored key %s: %w", id, err)
	}
	k := ProxyKey{ID: id, Name: v.Name, Hash: v.Hash, Hint: v.Hint, Prefixes: v.Prefixes,
		Limits:    Limits{RPM: v.Limits.RPM, TPM: v.Limits.TPM, Concurrency: v.Limits.Concurrency},
		CreatedAt: v.CreatedAt, Disabled: v.Disabled}
	if len(k.Prefixes) == 0 {
		k.Prefixes = nil
	}
	if v.ExpiresAt != nil {
		k.ExpiresAt = *v.ExpiresAt
	}
	return k, nil
}

// newKeySecret returns a new key's id and secret: "k_" and "apx-" followed
// by 26 base32 characters each (130 random bits from crypto/rand).
func newKeySecret() (id, secret string) {
	return keyIDPrefix + strings.ToLower(rand.Text()), keySecretPrefix + rand.Text()
}

// keyHash is what the stores keep of a secret: its SHA-256, in hex. The
// secrets are 130 random bits, so a plain hash cannot be reversed by
// guessing, and it lets the check be one map lookup.
func keyHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// secretHint is what answers show of a secret.
func secretHint(secret string) string {
	return keySecretPrefix + "…" + secret[len(secret)-4:]
}

// usable reports whether k admits requests at now.
func (k *ProxyKey) usable(now time.Time) bool {
	return !k.Disabled && (k.ExpiresAt.IsZero() || now.Before(k.ExpiresAt))
}

// allows reports whether k may call the mapping of prefix.
func (k *ProxyKey) allows(prefix string) bool {
	return len(k.Prefixes) == 0 || slices.Contains(k.Prefixes, prefix)
}

// check adds every problem of k at now (SPEC §10) to fe, in the order of
// the keys API's fields: name, prefixes, limits, expires_at; each message
// names its field. creating also refuses an expiry in the past.
func (k *ProxyKey) check(fe *fieldProblems, now time.Time, creating bool) {
	const code = "invalid_key"
	switch n := utf8.RuneCountInString(k.Name); {
	case strings.TrimSpace(k.Name) == "":
		fe.add(code, "name", "name is required (1 to 64 characters)")
	case n > maxKeyName || !utf8.ValidString(k.Name):
		fe.add(code, "name", fmt.Sprintf("name must be 1 to %d characters of valid UTF-8", maxKeyName))
	case strings.ContainsFunc(k.Name, func(r rune) bool { return r < ' ' || r == 0x7f }):
		fe.add(code, "name", "name must not contain control characters")
	}
	if len(k.Prefixes) > maxKeyPrefixes {
		fe.add(code, "prefixes", fmt.Sprintf("prefixes must hold at most %d prefixes", maxKeyPrefixes))
	} else {
		for i, p := range k.Prefixes {
			if err := validatePrefix(p); err != nil {
				f := fmt.Sprintf("prefixes[%d]", i)
				fe.add(code, f, f+" "+strings.TrimPrefix(err.(*apiError).Message, "prefix "))
			}
		}
	}
	k.Limits.check(fe, code)
	if creating && !k.ExpiresAt.IsZero() && !k.ExpiresAt.After(now) {
		fe.add(code, "expires_at", "expires_at must be in the future")
	}
}

// keyTable is an immutable snapshot of the proxy keys, by hash, published
// through an atomic.Pointer on Server and read without locks on every
// request to a keys mapping.
type keyTable struct {
	byHash map[string]*ProxyKey
	byID   map[string]*ProxyKey
}

// newKeyTable indexes keys; the table keeps pointers into a copy.
func newKeyTable(keys []ProxyKey) *keyTable {
	t := &keyTable{byHash: make(map[string]*ProxyKey, len(keys)), byID: make(map[string]*ProxyKey, len(keys))}
	for i := range keys {
		k := keys[i]
		if k.Hash != "" { // an unreadable stored key (decodeKey) admits nobody
			t.byHash[k.Hash] = &k
		}
		t.byID[k.ID] = &k
	}
	return t
}

// lookup returns the key whose secret is secret, or nil.
func (t *keyTable) lookup(secret string) *ProxyKey {
	if t == nil || !strings.HasPrefix(secret, keySecretPrefix) {
		return nil
	}
	return t.byHash[keyHash(secret)]
}

// keyCredentialHeaders are the request headers where an SDK sends its
// API key (SPEC §10), canonical. A keys mapping removes them all.
var keyCredentialHeaders = []string{"Authorization", "X-Api-Key", "X-Goog-Api-Key", "Api-Key"}

// callerKey returns the one proxy key that req shows, wherever its SDK put
// it: the headers of keyCredentialHeaders ("Bearer" for Authorization),
// the query parameter "key", or the WebSocket subprotocol
// "openai-insecure-api-key.<key>". ok is false when it shows none, or two
// different ones, or a credential that is not readable as one (fail
// closed: the caller is refused).
func callerKey(req *http.Request) (secret string, ok bool) {
	var found []string
	for _, name := range keyCredentialHeaders {
		for _, v := range req.Header[name] {
			if name == "Authorization" {
				scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
				if !strings.EqualFold(scheme, "Bearer") {
					return "", false
				}
				v = rest
			}
			found = append(found, strings.TrimSpace(v))
		}
	}
	for _, v := range queryValues(req.URL.RawQuery, "key") {
		found = append(found, v)
	}
	for _, v := range req.Header["Sec-Websocket-Protocol"] {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); strings.HasPrefix(p, keyProtocolPrefix) {
				found = append(found, strings.TrimPrefix(p, keyProtocolPrefix))
			}
		}
	}
	if len(found) == 0 {
		return "", false
	}
	for _, f := range found[1:] {
		if f != found[0] {
			return "", false
		}
	}
	return found[0], found[0] != ""
}

// queryValues returns the values of the parameters named name in a raw
// query, unescaped; a value that does not unescape is returned as it is
// (it will match no key).
func queryValues(rawQuery, name string) []string {
	var vs []string
	for rawQuery != "" {
		var part string
		part, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name || k == name {
			if uv, err := url.QueryUnescape(v); err == nil {
				v = uv
			}
			vs = append(vs, v)
		}
	}
	return vs
}

// withoutQueryParam returns rawQuery without the parameters named name;
// every other byte, and the order of the others, stay as received.
func withoutQueryParam(rawQuery, name string) string {
	if !strings.Contains(rawQuery, name) && !strings.Contains(rawQuery, "%") {
		return rawQuery
	}
	var kept []string
	for q := rawQuery; q != ""; {
		var part string
		part, q, _ = strings.Cut(q, "&")
		k, _, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name || k == name {
			continue
		}
		kept = append(kept, part)
	}
	return strings.Join(kept, "&")
}

// stripCredentials removes from out, the request to an upstream of a
// keys mapping, every place a caller's key may be in (callerKey).
func stripCredentials(out *http.Request) {
	for _, name := range keyCredentialHeaders {
		delete(out.Header, name)
	}
	if out.URL.RawQuery != "" {
		out.URL.RawQuery = withoutQueryParam(out.URL.RawQuery, "key")
	}
	if vs, ok := out.Header["Sec-Websocket-Protocol"]; ok {
		var kept []string
		for _, v := range vs {
			for _, p := range strings.Split(v, ",") {
				if p = strings.TrimSpace(p); p != "" && !strings.HasPrefix(p, keyProtocolPrefix) {
					kept = append(kept, p)
				}
			}
		}
		if len(kept) == 0 {
			delete(out.Header, "Sec-Websocket-Protocol")
		} else {
			out.Header["Sec-Websocket-Protocol"] = []string{strings.Join(kept, ", ")}
		}
	}
}

// addTargetKey sets target t's upstream key on req in t's auth_style; a
// target without a key gets no credential. req's Header must be its own
// (not shared with another try).
func addTargetKey(req *http.Request, key, style string) {
	if key == "" {
		return
	}
	switch style {
	case "", "bearer":
		req.Header["Authorization"] = []string{"Bearer " + key}
	case "x-api-key":
		req.Header["X-Api-Key"] = []string{key}
	case "x-goog-api-key":
		req.Header["X-Goog-Api-Key"] = []string{key}
	case "api-key":
		req.Header["Api-Key"] = []string{key}
	case "query-key":
		q := "key=" + url.QueryEscape(key)
		if req.URL.RawQuery != "" {
			q = req.URL.RawQuery + "&" + q
		}
		req.URL.RawQuery = q
	}
}
