package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Store keeps the prefix → target mappings and the little state that must
// be shared by every instance (the generated admin token). Implementations
// are safe for concurrent use. The proxy never calls a Store on the request
// path: it routes from a routeTable snapshot rebuilt on Changes.
type Store interface {
	// Mappings returns a fresh map of every prefix to its target; the caller
	// owns it.
	Mappings(ctx context.Context) (map[string]string, error)
	// CreateMapping adds prefix → target atomically; it returns
	// errMappingExists if the prefix is taken, even by a concurrent create.
	CreateMapping(ctx context.Context, prefix, target string) error
	// UpdateMapping changes the target of an existing prefix; it returns
	// errMappingNotFound rather than creating one.
	UpdateMapping(ctx context.Context, prefix, target string) error
	// DeleteMapping removes prefix; errMappingNotFound if it is absent.
	DeleteMapping(ctx context.Context, prefix string) error
	// Changes delivers a value whenever the mappings may have changed, made
	// here or by another instance. Signals are coalesced: a reader that is
	// busy misses none, it sees one value for several changes.
	Changes() <-chan struct{}
	// AdminToken returns the stored admin token. If none is stored yet it
	// stores generate()'s value first, atomically, so that concurrent
	// instances agree on one token.
	AdminToken(ctx context.Context, generate func() (string, error)) (string, error)
	// Ping reports whether the store can be reached now.
	Ping(ctx context.Context) error
	// Close releases the store. Calls after Close return errStoreClosed.
	Close() error
	statsStore // AddStats, LoadStats: the stats figures every instance adds to
}

// defaultMappings is seeded once, when a store is first initialised. It is
// the one list for the embedded store, the Redis store and the init script.
var defaultMappings = map[string]string{
	"/openai":     "https://api.openai.com",
	"/claude":     "https://api.anthropic.com",
	"/gemini":     "https://generativelanguage.googleapis.com",
	"/xai":        "https://api.x.ai",
	"/groq":       "https://api.groq.com/openai",
	"/openrouter": "https://openrouter.ai/api",
	"/mistral":    "https://api.mistral.ai",
	"/deepseek":   "https://api.deepseek.com",
	"/together":   "https://api.together.xyz",
	"/fireworks":  "https://api.fireworks.ai",
	"/cerebras":   "https://api.cerebras.ai",
	"/cohere":     "https://api.cohere.ai",
}

// reservedPrefixes are the server's own routes; no mapping may take one of
// them or any prefix under them.
var reservedPrefixes = []string{
	"/", "/index.html", "/stats", "/admin", "/api", "/metrics", "/healthz",
	"/readyz", "/robots.txt", "/static", "/favicon.ico",
}

const maxPrefixLen = 128

// validatePrefix checks a mapping prefix against SPEC §6. The error is an
// *apiError (400) whose message names the field and the rule broken.
func validatePrefix(prefix string) error {
	bad := func(msg string) error {
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_prefix", Message: "prefix " + msg}
	}
	switch {
	case prefix == "":
		return bad("is required")
	case len(prefix) > maxPrefixLen:
		return bad(fmt.Sprintf("must be at most %d bytes", maxPrefixLen))
	case prefix[0] != '/':
		return bad(`must start with "/"`)
	case prefix == "/":
		return bad(`"/" is reserved`)
	case strings.HasSuffix(prefix, "/"):
		return bad(`must not end with "/"`)
	}
	for i := 0; i < len(prefix); i++ {
		if c := prefix[i]; c != '/' && !isUnreserved(c) {
			return bad(fmt.Sprintf("may only hold the letters A-Z a-z, digits and . _ ~ - between single slashes (found %q)", c))
		}
	}
	for _, seg := range strings.Split(prefix[1:], "/") {
		if seg == "" {
			return bad(`must not contain "//"`)
		}
		if seg == "." || seg == ".." {
			return bad(`must not contain "." or ".." segments`)
		}
	}
	lower := strings.ToLower(prefix)
	for _, r := range reservedPrefixes[1:] {
		if lower == r || strings.HasPrefix(lower, r+"/") {
			return bad(fmt.Sprintf("%q is reserved for the server's own routes", r))
		}
	}
	return nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// validateMapping checks both halves of a mapping; the error is the
// prefix's if both are invalid (see validatePrefix and validateTarget).
func validateMapping(prefix, target string) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	return validateTarget(target)
}

// validateTarget checks a mapping target against SPEC §6: an absolute http
// or https URL with a host and no user info, query or fragment. Loopback and
// private addresses are allowed (local models, sidecars).
func validateTarget(target string) error {
	bad := func(msg string) error {
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_target", Message: "target " + msg}
	}
	if target == "" {
		return bad("is required")
	}
	if len(target) > 2048 {
		return bad("must be at most 2048 bytes")
	}
	if !utf8.ValidString(target) {
		return bad("must not contain spaces, control characters or backslashes")
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f || c == '\\' {
			return bad("must not contain spaces, control characters or backslashes")
		}
	}
	u, err := url.Parse(target)
	if err != nil {
		return bad("must be an absolute http or https URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad(`must use the http or https scheme`)
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return bad("must be an absolute URL with a host, such as https://api.openai.com")
	case u.User != nil:
		return bad("must not contain user info (put credentials in request headers)")
	case u.RawQuery != "" || u.ForceQuery:
		return bad("must not contain a query")
	case u.Fragment != "" || strings.Contains(target, "#"):
		return bad("must not contain a fragment")
	}
	if !validHost(u) {
		return bad("has an invalid host: want a host name, an IPv4 address or a bracketed IPv6 address")
	}
	if p := u.Port(); p != "" {
		if n := atoiOrNeg(p); n < 1 || n > 65535 {
			return bad("has an invalid port")
		}
	}
	if hasDotSegment(u.EscapedPath()) {
		return bad(`must not contain "." or ".." path segments`)
	}
	return nil
}

// validHost reports whether u's host is one the Transport can dial and
// send as a Host header: a bracketed IPv6 address (with a zone or not), an
// IPv4 address, or a host name of letters, digits, "-" and "_" in dot-
// separated labels (non-ASCII letters too: they go out in punycode).
// url.Parse alone lets through hosts such as `"x` that every request
// would then fail on (found by FuzzMappingValidation).
func validHost(u *url.URL) bool {
	h := u.Hostname()
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(h)
		return err == nil && a.Is6()
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	name := strings.TrimSuffix(h, ".") // a fully qualified "api.openai.com." is fine
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c >= 0x80) {
				return false
			}
		}
	}
	return true
}

func atoiOrNeg(s string) int {
	if s == "" || len(s) > 5 {
		return -1
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return -1
		}
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// route is one mapping, prepared for the request path. Immutable.
type route struct {
	prefix  string
	target  string   // as stored
	scheme  string   // "http" or "https"
	host    string   // host[:port] of the target
	path    string   // the target's decoded base path without trailing "/"
	rawPath string   // the same, escaped
	url     *url.URL // parsed target, never modified
}

// routeTable is an immutable snapshot of the mappings, published through an
// atomic.Pointer on Server and read without locks on every request.
type routeTable struct {
	byPrefix map[string]*route
	sorted   []*route // by prefix, for listings
	maxLen   int      // longest prefix, to skip impossible candidates
}

// newRouteTable prepares mappings for routing. Mappings that fail
// validation (which a store never holds, but a hand-edited Redis hash might)
// are skipped and returned in skipped.
func newRouteTable(mappings map[string]string) (t *routeTable, skipped []string) {
	t = &routeTable{byPrefix: make(map[string]*route, len(mappings))}
	for prefix, target := range mappings {
		if validateMapping(prefix, target) != nil {
			skipped = append(skipped, prefix)
			continue
		}
		u, _ := url.Parse(target)
		r := &route{
			prefix:  prefix,
			target:  target,
			scheme:  u.Scheme,
			host:    u.Host,
			path:    strings.TrimSuffix(u.Path, "/"),
			rawPath: strings.TrimSuffix(u.EscapedPath(), "/"),
			url:     u,
		}
		t.byPrefix[prefix] = r
		t.sorted = append(t.sorted, r)
		t.maxLen = max(t.maxLen, len(prefix))
	}
	sort.Slice(t.sorted, func(i, j int) bool { return t.sorted[i].prefix < t.sorted[j].prefix })
	sort.Strings(skipped)
	return t, skipped
}

// match returns the route of the longest prefix that matches path on a
// segment boundary ("/openai" matches "/openai" and "/openai/x", never
// "/openaix"), and the rest of path after that prefix. path is the escaped
// request path; prefixes hold no escapable bytes, so the rest keeps every
// escape exactly as received.
func (t *routeTable) match(path string) (*route, string) {
	end := len(path)
	if end > t.maxLen {
		// The longest candidate that can match ends at a '/' at or before maxLen.
		end = strings.LastIndexByte(path[:t.maxLen+1], '/')
	}
	for end > 0 {
		if r, ok := t.byPrefix[path[:end]]; ok {
			return r, path[end:]
		}
		end = strings.LastIndexByte(path[:end], '/')
	}
	return nil, ""
}

// hasDotSegment reports whether an escaped path holds a "." or ".." segment,
// also when its dots are percent-encoded (%2e) or its separators are "%2F"
// or backslashes, which some upstreams decode into "/", and when a ";"
// parameter follows the dots ("..;x"), which Tomcat and Jetty strip before
// resolving the segment.
func hasDotSegment(p string) bool {
	segStart := true
	dots := 0 // dots seen since the segment began, -1 once something else was
	for i := 0; i <= len(p); i++ {
		var c byte
		n := 1
		if i < len(p) {
			c = p[i]
			if c == '%' && i+2 < len(p) {
				switch {
				case p[i+1] == '2' && (p[i+2] == 'e' || p[i+2] == 'E'):
					c, n = '.', 3
				case p[i+1] == '2' && (p[i+2] == 'f' || p[i+2] == 'F'):
					c, n = '/', 3
				case p[i+1] == '5' && (p[i+2] == 'c' || p[i+2] == 'C'):
					c, n = '/', 3
				}
			}
			if c == '\\' {
				c = '/'
			}
		} else {
			c = '/'
		}
		switch {
		case c == '/':
			if !segStart && (dots == 1 || dots == 2) {
				return true
			}
			segStart, dots = false, 0
		case c == '.' && dots >= 0:
			dots++
		case c == ';':
			if !segStart && (dots == 1 || dots == 2) {
				return true
			}
			dots = -1
		default:
			dots = -1
		}
		i += n - 1
	}
	return false
}

// Bucket and key names in the embedded store's bbolt file.
var (
	boltMappings   = []byte("mappings")
	boltMeta       = []byte("meta")
	boltSeeded     = []byte("seeded")
	boltAdminToken = []byte("admin_token")
)

// boltStore is the embedded single-node Store: one bbolt file under
// DATA_DIR. bbolt serialises writers, which makes create-if-absent atomic.
type boltStore struct {
	db      *bolt.DB
	changes chan struct{}
}

// openBoltStore opens (creating if needed) DATA_DIR/apiproxy.db and seeds
// the default mappings the first time. A second process on the same file
// fails after a short wait with errStoreLocked instead of hanging.
func openBoltStore(dir string) (*boltStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dir, "apiproxy.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, errStoreLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &boltStore{db: db, changes: make(chan struct{}, 1)}
	err = db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(boltMappings)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(boltMeta)
		if err != nil {
			return err
		}
		if meta.Get(boltSeeded) != nil {
			return nil
		}
		for p, t := range defaultMappings {
			if err := m.Put([]byte(p), []byte(t)); err != nil {
				return err
			}
		}
		return meta.Put(boltSeeded, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return s, nil
}

func (s *boltStore) Mappings(ctx context.Context) (map[string]string, error) {
	out := make(map[string]string)
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(boltMappings).ForEach(func(k, v []byte) error {
			out[string(k)] = string(v)
			return nil
		})
	})
	return out, s.wrap("list mappings", err)
}

func (s *boltStore) CreateMapping(ctx context.Context, prefix, target string) error {
	return s.write("create mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(prefix)) != nil {
			return errMappingExists
		}
		return b.Put([]byte(prefix), []byte(target))
	})
}

func (s *boltStore) UpdateMapping(ctx context.Context, prefix, target string) error {
	return s.write("update mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(prefix)) == nil {
			return errMappingNotFound
		}
		return b.Put([]byte(prefix), []byte(target))
	})
}

func (s *boltStore) DeleteMapping(ctx context.Context, prefix string) error {
	return s.write("delete mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(prefix)) == nil {
			return errMappingNotFound
		}
		return b.Delete([]byte(prefix))
	})
}

// write runs fn on the mappings bucket in one transaction and signals
// Changes once it committed.
func (s *boltStore) write(op string, fn func(*bolt.Bucket) error) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(boltMappings)) })
	if err != nil {
		return s.wrap(op, err)
	}
	notify(s.changes)
	return nil
}

// notify sends a signal on ch without blocking: when one is already
// pending, its reader will see the latest state anyway.
func notify(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *boltStore) wrap(op string, err error) error {
	switch {
	case err == nil, errors.Is(err, errMappingExists), errors.Is(err, errMappingNotFound):
		return err
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return fmt.Errorf("%s: %w", op, errStoreClosed)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (s *boltStore) Changes() <-chan struct{} { return s.changes }

func (s *boltStore) AdminToken(ctx context.Context, generate func() (string, error)) (string, error) {
	var token string
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(boltMeta)
		if v := meta.Get(boltAdminToken); v != nil {
			token = string(v)
			return nil
		}
		t, err := generate()
		if err != nil {
			return err
		}
		token = t
		return meta.Put(boltAdminToken, []byte(t))
	})
	return token, s.wrap("admin token", err)
}

func (s *boltStore) Ping(ctx context.Context) error {
	return s.wrap("ping", s.db.View(func(*bolt.Tx) error { return nil }))
}

func (s *boltStore) Close() error { return s.db.Close() }

// Stats in the embedded store (stats.go): bucket stats holds total and
// last (field → 8-byte big-endian int64) and hours and days, whose nested
// buckets are keyed by the 8-byte big-endian Unix hour or day and hold the
// fields of that bucket. Buckets older than keepHours/keepDays are
// dropped as newer ones are written.
var (
	boltStats      = []byte("stats")
	boltStatsTotal = []byte("total")
	boltStatsLast  = []byte("last")
	boltStatsHours = []byte("hours")
	boltStatsDays  = []byte("days")
)

// AddStats implements statsStore in one transaction: all or nothing.
func (s *boltStore) AddStats(ctx context.Context, d *statsData) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(boltStats)
		if err != nil {
			return err
		}
		total, err := root.CreateBucketIfNotExists(boltStatsTotal)
		if err != nil {
			return err
		}
		if err := boltAddFields(total, d.Total); err != nil {
			return err
		}
		last, err := root.CreateBucketIfNotExists(boltStatsLast)
		if err != nil {
			return err
		}
		for p, t := range d.Last {
			if v := last.Get([]byte(p)); v == nil || boltInt(v) < t {
				if err := last.Put([]byte(p), boltBytes(t)); err != nil {
					return err
				}
			}
		}
		if err := boltAddBuckets(root, boltStatsHours, d.Hours, keepHours); err != nil {
			return err
		}
		return boltAddBuckets(root, boltStatsDays, d.Days, keepDays)
	})
	return s.wrap("add stats", err)
}

// LoadStats implements statsStore.
func (s *boltStore) LoadStats(ctx context.Context, now time.Time) (*statsData, error) {
	d := newStatsData()
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(boltStats)
		if root == nil {
			return nil
		}
		boltReadFields(root.Bucket(boltStatsTotal), d.Total)
		boltReadFields(root.Bucket(boltStatsLast), d.Last)
		h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
		if b := root.Bucket(boltStatsHours); b != nil {
			for k := h - windowHours + 1; k <= h; k++ {
				if sub := b.Bucket(boltBytes(k)); sub != nil {
					boltReadFields(sub, bucket(d.Hours, k))
				}
			}
		}
		if b := root.Bucket(boltStatsDays); b != nil {
			for k := day - windowDays + 1; k <= day; k++ {
				if sub := b.Bucket(boltBytes(k)); sub != nil {
					boltReadFields(sub, bucket(d.Days, k))
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("load stats", err)
	}
	return d, nil
}

// boltAddBuckets adds m's time buckets under root/name and drops the
// buckets more than keep older than the newest.
func boltAddBuckets(root *bolt.Bucket, name []byte, m map[int64]map[string]int64, keep int64) error {
	b, err := root.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	for k, fields := range m {
		sub, err := b.CreateBucketIfNotExists(boltBytes(k))
		if err != nil {
			return err
		}
		if err := boltAddFields(sub, fields); err != nil {
			return err
		}
	}
	newest, _ := b.Cursor().Last()
	if newest == nil {
		return nil
	}
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && boltInt(k) <= boltInt(newest)-keep; k, _ = c.Next() {
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := b.DeleteBucket(k); err != nil {
			return err
		}
	}
	return nil
}

func boltAddFields(b *bolt.Bucket, fields map[string]int64) error {
	for f, v := range fields {
		if err := b.Put([]byte(f), boltBytes(boltInt(b.Get([]byte(f)))+v)); err != nil {
			return err
		}
	}
	return nil
}

func boltReadFields(b *bolt.Bucket, dst map[string]int64) {
	if b == nil {
		return
	}
	b.ForEach(func(k, v []byte) error {
		if v != nil {
			dst[string(k)] += boltInt(v)
		}
		return nil
	})
}

// boltBytes and boltInt convert an int64 to and from 8 big-endian bytes
// (the order of non-negative keys is their numeric order); a value of
// another length reads as 0.
func boltBytes(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

func boltInt(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}

// Stats storage: the figures Stats flushes and every store keeps, in one
// form for the embedded store, Redis and the spill file.

// statsStore is the stats part of Store: every store keeps the stats
// figures of the instances that share it. Implementations are safe for
// concurrent use.
type statsStore interface {
	// AddStats adds d to the stored figures, atomically: all or nothing.
	// Counters add; Last keeps the larger value.
	AddStats(ctx context.Context, d *statsData) error
	// LoadStats returns the stored all-time figures, the hourly buckets of
	// the windowHours hours up to now's and the daily buckets of the
	// windowDays days up to now's (UTC). The caller owns the result.
	LoadStats(ctx context.Context, now time.Time) (*statsData, error)
}

// statsData is a set of stats counters, stored or to be added. Fields are
// named "<prefix>|<name>" (prefixes never hold '|'); see the field*
// constants. Hours and Days are keyed by Unix hour and Unix day (UTC).
type statsData struct {
	Total map[string]int64           `json:"total"`
	Hours map[int64]map[string]int64 `json:"hours"`
	Days  map[int64]map[string]int64 `json:"days"`
	Last  map[string]int64           `json:"last"` // prefix → Unix time of the last request; the larger wins
}

// Field names after "<prefix>|". Total also holds "s<class>" for each of
// statusClasses.
const (
	fieldCount        = "count"  // Total, Hours, Days
	fieldErrors       = "errors" // Total, Hours, Days
	fieldLatencySum   = "lat_us" // Hours: sum of durations in µs
	fieldLatency      = "lat|"   // Hours: "lat|<bucket>" histogram of durations
	fieldTTFB         = "ttfb|"  // Hours: "ttfb|<bucket>" histogram of times to first byte
	fieldClientClosed = "client_closed"
	fieldBytesIn      = "bytes_in"
	fieldBytesOut     = "bytes_out"
	fieldTokens       = "tok_"        // "tok_<kind>" with a token kind (tokenKinds)
	fieldUnknown      = "tok_unknown" // 2xx responses that carried no usage
	fieldModel        = "m|"          // "m|<model>|<kind>" with kind "count" or a token kind
)

func newStatsData() *statsData {
	return &statsData{
		Total: map[string]int64{},
		Hours: map[int64]map[string]int64{},
		Days:  map[int64]map[string]int64{},
		Last:  map[string]int64{},
	}
}

func (d *statsData) empty() bool {
	return len(d.Total) == 0 && len(d.Hours) == 0 && len(d.Days) == 0 && len(d.Last) == 0
}

// bucket returns m[k], created if missing.
func bucket(m map[int64]map[string]int64, k int64) map[string]int64 {
	b := m[k]
	if b == nil {
		b = map[string]int64{}
		m[k] = b
	}
	return b
}

// add adds o to d. o is not modified nor retained.
func (d *statsData) add(o *statsData) {
	if o == nil {
		return
	}
	addFields(d.Total, o.Total)
	for h, f := range o.Hours {
		addFields(bucket(d.Hours, h), f)
	}
	for day, f := range o.Days {
		addFields(bucket(d.Days, day), f)
	}
	for p, t := range o.Last {
		d.Last[p] = max(d.Last[p], t)
	}
}

func addFields(dst, src map[string]int64) {
	for k, v := range src {
		if v != 0 {
			dst[k] += v
		}
	}
}

// prune drops hourly and daily buckets that stores no longer keep, so a
// long store outage cannot grow pending without bound.
func (d *statsData) prune(now time.Time) {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := range d.Hours {
		if k <= h-keepHours {
			delete(d.Hours, k)
		}
	}
	for k := range d.Days {
		if k <= day-keepDays {
			delete(d.Days, k)
		}
	}
}

// window returns a copy of d with only the buckets LoadStats returns for
// now.
func (d *statsData) window(now time.Time) *statsData {
	out := newStatsData()
	addFields(out.Total, d.Total)
	for p, t := range d.Last {
		out.Last[p] = t
	}
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := h - windowHours + 1; k <= h; k++ {
		if f := d.Hours[k]; len(f) > 0 {
			addFields(bucket(out.Hours, k), f)
		}
	}
	for k := day - windowDays + 1; k <= day; k++ {
		if f := d.Days[k]; len(f) > 0 {
			addFields(bucket(out.Days, k), f)
		}
	}
	return out
}
