package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Mapping is one prefix and the upstreams it goes to (SPEC §9). It is the
// one shape every layer speaks: the stores keep it (encodeValue), the admin
// API and the CLI build it (mappingObject), the route table prepares it for
// the request path (newRouteTable).
//
// The zero value of each option is its default, so that newMapping and a
// literal with only Prefix and Targets are the original form: one target,
// failover, the default retry_on, passthrough, no limits, no idle timeout.
type Mapping struct {
	// Prefix is the path prefix that routes to the targets, such as
	// "/openai" (rules in validatePrefix).
	Prefix string
	// Targets are the upstreams in the order they are tried: 1 to
	// maxTargets.
	Targets []Target
	// Balance is balanceFailover (or "", the same) or balanceWeighted.
	Balance string
	// RetryOn are the statuses (400-599) on which the next target is
	// tried. nil means defaultRetryOn; an empty, non-nil slice means none
	// (only connection errors and timeouts fail over).
	RetryOn []int
	// Auth is authPassthrough (or "", the same) or authKeys (SPEC §10).
	Auth string
	// Limits are SPEC §11's; zero means none.
	Limits Limits
	// StreamIdleTimeout cuts a response whose upstream sends nothing for
	// that long (SPEC §9); 0 means none.
	StreamIdleTimeout time.Duration

	// unreadable says why a store could not read this mapping (a value
	// this version cannot decode, a key this SECRET_KEY cannot open); such
	// a mapping has its prefix and no targets (see Store.Mappings). ""
	// for every other.
	unreadable string
}

// Target is one upstream of a Mapping.
type Target struct {
	// URL is the absolute http or https URL that requests go to; it may
	// carry a base path (rules in validateTarget).
	URL string
	// Weight is the share of first tries of a weighted mapping, 1-1000;
	// 0 means 1.
	Weight int
	// Key is the upstream key the proxy sends to this target for callers
	// that showed a proxy key (SPEC §10), in AuthStyle; "" means none.
	// Write-only: answers show keyHint.
	Key       string
	AuthStyle string
}

// Limits are the limits of SPEC §11; 0 means none.
type Limits struct {
	RPM, TPM, Concurrency int64
}

// check adds to fe each limit of l that is not valid (SPEC §11:
// non-negative integers), in the order rpm, tpm, concurrency, under code.
// Mappings and proxy keys both have limits; each gives its own code.
func (l Limits) check(fe *fieldProblems, code string) {
	for _, f := range []struct {
		name string
		v    int64
	}{{"limits.rpm", l.RPM}, {"limits.tpm", l.TPM}, {"limits.concurrency", l.Concurrency}} {
		if f.v < 0 {
			fe.add(code, f.name, f.name+" must be a non-negative integer (0 means no limit)")
		}
	}
}

// The words of a Mapping's options, and their bounds (SPEC §9).
const (
	balanceFailover = "failover"
	balanceWeighted = "weighted"
	authPassthrough = "passthrough"
	authKeys        = "keys"

	maxTargets       = 16
	maxWeight        = 1000
	maxMappingPeriod = 24 * time.Hour
)

// defaultRetryOn is retry_on when a mapping does not set it. Never modified.
var defaultRetryOn = []int{429, 500, 502, 503, 504}

// authStyles are the ways a target's key can be sent (SPEC §9).
var authStyles = []string{"bearer", "x-api-key", "x-goog-api-key", "api-key", "query-key"}

// newMapping returns the mapping of the original form: prefix to one
// target URL, no options.
func newMapping(prefix, url string) Mapping {
	return Mapping{Prefix: prefix, Targets: []Target{{URL: url}}}
}

// firstURL returns the URL of the first target, "" when there is none. It
// is the "target" of the admin API's answers and of the CLI's listing.
func (m Mapping) firstURL() string {
	if len(m.Targets) == 0 {
		return ""
	}
	return m.Targets[0].URL
}

// urls returns the URLs of m's targets in their order, for logs and the
// CLI: never a key.
func (m Mapping) urls() []string {
	urls := make([]string, len(m.Targets))
	for i, t := range m.Targets {
		urls[i] = t.URL
	}
	return urls
}

// weight is t's weight with the default applied.
func (t Target) weight() int {
	if t.Weight == 0 {
		return 1
	}
	return t.Weight
}

// balance, auth and retryOn are m's options with their defaults applied.
// retryOn's result is shared: never modify it.
func (m Mapping) balance() string {
	if m.Balance == "" {
		return balanceFailover
	}
	return m.Balance
}

func (m Mapping) auth() string {
	if m.Auth == "" {
		return authPassthrough
	}
	return m.Auth
}

func (m Mapping) retryOn() []int {
	if m.RetryOn == nil {
		return defaultRetryOn
	}
	return m.RetryOn
}

// plain reports whether m has the original form: one target and every
// option at its default. Such a mapping is stored as its URL alone.
func (m Mapping) plain() bool {
	return len(m.Targets) == 1 && m.Targets[0].weight() == 1 && m.Targets[0].Key == "" &&
		m.Targets[0].AuthStyle == "" && m.balance() == balanceFailover &&
		slices.Equal(m.retryOn(), defaultRetryOn) && m.auth() == authPassthrough &&
		m.Limits == (Limits{}) && m.StreamIdleTimeout == 0
}

// validate checks m against SPEC §6 and §9, with self the addresses of the
// instance that would route it (a target there is a loop; the zero
// selfAddrs checks none). The error is an *apiError (400) whose message
// names the field and the rule broken: the prefix's first, then each
// target's in order, then the options'. Its Fields hold every problem
// (check), the first of them its message.
func (m Mapping) validate(self selfAddrs) error {
	var fe fieldProblems
	m.check(&fe, self)
	return fe.err()
}

// check adds every problem of m to fe, in the order of m's fields (see
// mappingFieldRank), at most one a field. A "target" or "targets"
// problem already in fe (a conversion's, such as an empty list) stands
// for m's lack of targets.
func (m Mapping) check(fe *fieldProblems, self selfAddrs) {
	fe.addErr("prefix", validatePrefix(m.Prefix))
	switch n := len(m.Targets); {
	case n == 0:
		if !fe.has("target") && !fe.has("targets") {
			fe.addErr("target", validateTarget(""))
		}
	case n > maxTargets:
		fe.add("invalid_target", "targets", fmt.Sprintf("targets must hold 1 to %d targets, not %d", maxTargets, n))
	default:
		for i := range m.Targets {
			m.checkTarget(fe, self, i)
		}
	}
	if b := m.balance(); b != balanceFailover && b != balanceWeighted {
		fe.add("invalid_mapping", "balance", fmt.Sprintf("balance must be %q or %q", balanceFailover, balanceWeighted))
	}
	if i := slices.IndexFunc(m.retryOn(), func(s int) bool { return s < 400 || s > 599 }); i >= 0 {
		fe.add("invalid_mapping", "retry_on", fmt.Sprintf("retry_on must hold statuses from 400 to 599 (found %d)", m.retryOn()[i]))
	} else if len(m.RetryOn) > 200 {
		// 200 statuses fit in 400-599: a longer list repeats one.
		fe.add("invalid_mapping", "retry_on", "retry_on must hold at most 200 statuses (each of 400 to 599 once)")
	}
	switch m.auth() {
	case authPassthrough:
	case authKeys:
	default:
		fe.add("invalid_mapping", "auth", fmt.Sprintf("auth must be %q or %q", authPassthrough, authKeys))
	}
	m.Limits.check(fe, "invalid_mapping")
	if d := m.StreamIdleTimeout; d < 0 || d > maxMappingPeriod {
		fe.add("invalid_mapping", "stream_idle_timeout", "stream_idle_timeout must be a duration from 0s to 24h")
	}
}

// targetField is the name of field name of m's target i in messages:
// "targets[1].weight", or "target" for the URL of a mapping's only target
// (the original form's one field).
func (m Mapping) targetField(i int, name string) string {
	if len(m.Targets) == 1 && name == "url" {
		return "target"
	}
	return fmt.Sprintf("targets[%d].%s", i, name)
}

// checkTarget adds the problems of m's target i to fe: its URL, then
// weight, auth_style and key.
func (m Mapping) checkTarget(fe *fieldProblems, self selfAddrs, i int) {
	t, field := m.Targets[i], m.targetField
	urlErr := validateTarget(t.URL)
	if urlErr == nil {
		urlErr = self.checkTarget(t.URL)
	}
	if urlErr != nil {
		msg := urlErr.(*apiError).Message
		if len(m.Targets) > 1 {
			msg = strings.Replace(msg, "target", field(i, "url"), 1)
		}
		fe.add("invalid_target", field(i, "url"), msg)
	}
	if t.Weight < 0 || t.Weight > maxWeight {
		fe.add("invalid_target", field(i, "weight"), fmt.Sprintf("%s must be an integer from 1 to %d", field(i, "weight"), maxWeight))
	}
	if t.AuthStyle != "" && !slices.Contains(authStyles, t.AuthStyle) {
		fe.add("invalid_target", field(i, "auth_style"), fmt.Sprintf("%s must be one of %s", field(i, "auth_style"), strings.Join(authStyles, ", ")))
	}
	switch {
	case len(t.Key) > 4096 || strings.ContainsFunc(t.Key, func(r rune) bool { return r < ' ' || r == 0x7f }):
		fe.add("invalid_target", field(i, "key"), fmt.Sprintf("%s must be at most 4096 bytes without control characters", field(i, "key")))
	case t.Key != "" && m.auth() != authKeys:
		fe.add("invalid_target", field(i, "key"), fmt.Sprintf(`%s is only allowed with "auth": "keys": an upstream key is only ever used for callers that showed a proxy key`, field(i, "key")))
	}
}

// mappingOptions are the fields of a mapping object after its targets,
// in their order (SPEC §9).
var mappingOptions = []string{"balance", "retry_on", "auth", "limits.rpm", "limits.tpm", "limits.concurrency", "stream_idle_timeout"}

// mappingFieldRank orders the fields that problems of a mapping object
// name as check adds them: prefix, target or targets, each target's url,
// weight, auth_style and key, then the options. A field it does not know
// comes last.
func mappingFieldRank(field string) int {
	switch field {
	case "prefix":
		return 0
	case "target", "targets":
		return 1
	}
	if rest, ok := strings.CutPrefix(field, "targets["); ok {
		idx, name, _ := strings.Cut(rest, "].")
		if i, err := strconv.Atoi(idx); err == nil && i >= 0 && i < maxTargets {
			return 2 + i*4 + max(0, slices.Index([]string{"url", "weight", "auth_style", "key"}, name))
		}
	}
	if i := slices.Index(mappingOptions, field); i >= 0 {
		return 2 + maxTargets*4 + i
	}
	return math.MaxInt
}

func invalidTarget(msg string) error {
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_target", Message: msg}
}

// mappingObject is the JSON form of a Mapping (SPEC §9): the admin API's
// requests and answers, the CLI's files, and the stored value of a mapping
// that is not plain. Every field is optional on input but targets (or
// the original form's target, in the admin API); answers show each option.
type mappingObject struct {
	Prefix string `json:"prefix"`
	// Target is the original form's one URL on input, and the first
	// target's URL in answers. Never in a stored value.
	Target            string         `json:"target,omitempty"`
	Targets           []targetObject `json:"targets,omitempty"`
	Balance           string         `json:"balance,omitempty"`
	RetryOn           []int          `json:"retry_on"`
	Auth              string         `json:"auth,omitempty"`
	Limits            *limitsObject  `json:"limits,omitempty"`
	StreamIdleTimeout string         `json:"stream_idle_timeout,omitempty"`
}

// targetObject is one target of a mappingObject. Key is write-only: an
// answer shows KeySet and KeyHint instead; both are accepted on input
// (so that an answer can be sent back) and ignored.
type targetObject struct {
	URL       string  `json:"url"`
	Weight    *int    `json:"weight,omitempty"`
	Key       *string `json:"key,omitempty"`
	AuthStyle string  `json:"auth_style,omitempty"`
	KeySet    bool    `json:"key_set,omitempty"`
	KeyHint   string  `json:"key_hint,omitempty"`
}

type limitsObject struct {
	RPM         int64 `json:"rpm"`
	TPM         int64 `json:"tpm"`
	Concurrency int64 `json:"concurrency"`
}

// object returns m in its JSON form with every option shown. withKeys
// puts each target's key in (the stored form); otherwise a target with a
// key shows key_set and key_hint (an answer).
func (m Mapping) object(withKeys bool) mappingObject {
	o := mappingObject{
		Prefix:            m.Prefix,
		Balance:           m.balance(),
		RetryOn:           slices.Clone(m.retryOn()),
		Auth:              m.auth(),
		Limits:            &limitsObject{RPM: m.Limits.RPM, TPM: m.Limits.TPM, Concurrency: m.Limits.Concurrency},
		StreamIdleTimeout: m.StreamIdleTimeout.String(),
	}
	if !withKeys {
		o.Target = m.firstURL()
	}
	for _, t := range m.Targets {
		w := t.weight()
		to := targetObject{URL: t.URL, Weight: &w, AuthStyle: t.AuthStyle}
		if t.Key != "" {
			if withKeys {
				k := t.Key
				to.Key = &k
			} else {
				to.KeySet, to.KeyHint = true, keyHint(t.Key)
			}
		}
		o.Targets = append(o.Targets, to)
	}
	return o
}

// keyHint is what answers show of an upstream key: its last 4
// characters, or none of a key too short to hide the rest.
func keyHint(key string) string {
	if len(key) < 12 {
		return "…"
	}
	return "…" + key[len(key)-4:]
}

// mapping converts o into a Mapping, which the caller then validates. An
// error is a 400 naming the field: an explicit weight of 0, a duration
// that is not one, neither of target and targets, or both with a target
// that is not the first of targets (the first of convert's problems, all
// of them in its Fields). Keys absent from o's targets are left "" (see
// keepKeys).
func (o mappingObject) mapping() (Mapping, error) {
	m, fe := o.convert()
	return m, fe.err()
}

// convert is mapping with every problem listed, in the order of o's
// fields. A field at fault is left at its zero value in m, so that
// validation (check) does not name it a second time.
func (o mappingObject) convert() (Mapping, fieldProblems) {
	var fe fieldProblems
	m := Mapping{Prefix: o.Prefix, Balance: o.Balance, RetryOn: o.RetryOn, Auth: o.Auth}
	switch {
	case o.Target != "" && o.Targets != nil:
		// An answer shows both, "target" being the first of "targets"
		// (SPEC §9): sent back as it came, it is the same mapping.
		if len(o.Targets) == 0 || o.Targets[0].URL != o.Target {
			fe.add("invalid_target", "targets", `give either "target" (one URL) or "targets" (a list), not both, unless target is the URL of the first of targets, as answers show them`)
		}
	case o.Target != "":
		m.Targets = []Target{{URL: o.Target}}
	case o.Targets == nil:
		fe.add("invalid_target", "target", "target is required (or targets, a list of 1 to 16 targets)")
	case len(o.Targets) == 0:
		fe.add("invalid_target", "targets", fmt.Sprintf("targets must hold 1 to %d targets, not 0", maxTargets))
	}
	for i, to := range o.Targets {
		t := Target{URL: to.URL, AuthStyle: to.AuthStyle}
		if to.Weight != nil {
			if *to.Weight < 1 || *to.Weight > maxWeight {
				f := fmt.Sprintf("targets[%d].weight", i)
				fe.add("invalid_target", f, fmt.Sprintf("%s must be an integer from 1 to %d", f, maxWeight))
			} else {
				t.Weight = *to.Weight
			}
		}
		if to.Key != nil {
			t.Key = *to.Key
		}
		m.Targets = append(m.Targets, t)
	}
	if o.Limits != nil {
		m.Limits = Limits{RPM: o.Limits.RPM, TPM: o.Limits.TPM, Concurrency: o.Limits.Concurrency}
	}
	if o.StreamIdleTimeout != "" {
		d, err := time.ParseDuration(o.StreamIdleTimeout)
		if err != nil {
			fe.add("invalid_mapping", "stream_idle_timeout", fmt.Sprintf(`stream_idle_timeout must be a duration such as "30s" or "2m" (got %q)`, truncate(o.StreamIdleTimeout, 40)))
		} else {
			m.StreamIdleTimeout = d
		}
	}
	return m, fe
}

// keepKeys gives each target of m that has no key, and whose URL is the
// one at the same position in old, old's key there (SPEC §9: a PUT that
// leaves key out of a target whose URL is unchanged keeps its key).
func (m *Mapping) keepKeys(old Mapping, given []bool) {
	for i := range m.Targets {
		if i < len(old.Targets) && !given[i] && m.Targets[i].URL == old.Targets[i].URL {
			m.Targets[i].Key = old.Targets[i].Key
		}
	}
}

// encodeValue is m as a value of the stores (the Redis hash, the bbolt
// bucket). m must be valid.
//
// SPEC §9 "Redis": a mapping with one target and no options keeps the
// original value, the target's URL, which the original design and every
// older instance read. Any other is a JSON object (a value starting with
// "{"), with every option shown and the targets' keys in.
func (m Mapping) encodeValue() string {
	if m.plain() {
		return m.firstURL()
	}
	b, _ := json.Marshal(m.object(true))
	return string(b)
}

// decodeMapping reads a stored value (see encodeValue) back into the
// mapping of prefix. It does not validate: a value put into Redis by hand
// may be any string, and routing skips what fails validate.
//
// A value starting with "{" is the object form. Its fields are read
// strictly: one this version does not know (written by a newer one, such
// as an auth rule) gives an error and the mapping of prefix with no
// targets, which validate refuses, so that routing skips it rather than
// route it without that rule, while the admin API still lists it (and can
// delete it). The prefix inside the object, if any, must be prefix.
func decodeMapping(prefix, value string) (Mapping, error) {
	if !strings.HasPrefix(value, "{") {
		return newMapping(prefix, value), nil
	}
	var o mappingObject
	dec := json.NewDecoder(strings.NewReader(value))
	dec.DisallowUnknownFields()
	err := dec.Decode(&o)
	if err == nil && o.Prefix != "" && o.Prefix != prefix {
		err = fmt.Errorf("holds prefix %q", o.Prefix)
	}
	var m Mapping
	if err == nil {
		o.Prefix = prefix
		m, err = o.mapping()
	}
	if err != nil {
		return Mapping{Prefix: prefix}, fmt.Errorf("mapping %s: stored object: %w: %w", prefix, errObjectMapping, err)
	}
	return m, nil
}

// errObjectMapping is returned by decodeMapping for a stored object it
// cannot read.
var errObjectMapping = errors.New("stored mapping object is not valid for this version of apiproxy")

// sortMappings sorts ms by prefix, the order of every listing.
func sortMappings(ms []Mapping) {
	slices.SortFunc(ms, func(a, b Mapping) int { return strings.Compare(a.Prefix, b.Prefix) })
}

// defaultTargets is the list of SPEC §1, in its order.
var defaultTargets = [...]struct{ prefix, url string }{
	{"/openai", "https://api.openai.com"},
	{"/claude", "https://api.anthropic.com"},
	{"/gemini", "https://generativelanguage.googleapis.com"},
	{"/xai", "https://api.x.ai"},
	{"/groq", "https://api.groq.com/openai"},
	{"/openrouter", "https://openrouter.ai/api"},
	{"/mistral", "https://api.mistral.ai"},
	{"/deepseek", "https://api.deepseek.com"},
	{"/together", "https://api.together.xyz"},
	{"/fireworks", "https://api.fireworks.ai"},
	{"/cerebras", "https://api.cerebras.ai"},
	{"/cohere", "https://api.cohere.ai"},
}

// defaultMappings returns the mappings seeded once, when a store is first
// initialised, sorted by prefix; the caller owns the slice. It is the one
// list for the embedded store, the Redis store and init-redis.
func defaultMappings() []Mapping {
	ms := make([]Mapping, 0, len(defaultTargets))
	for _, d := range defaultTargets {
		ms = append(ms, newMapping(d.prefix, d.url))
	}
	sortMappings(ms)
	return ms
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
			return bad(fmt.Sprintf("may only hold the letters A-Z a-z, digits and . _ ~ - between single slashes (found %s)", quoteRuneAt(prefix[i:])))
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

// quoteRuneAt names the character that s starts with for a message: the
// rune quoted as Go would ('ü', '\x01'), or a byte that does not start
// valid UTF-8 as '\xNN'. Quoting the byte alone would show "/ü" as 'Ã',
// the first byte of its encoding read as Latin-1.
func quoteRuneAt(s string) string {
	r, size := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && size <= 1 {
		return fmt.Sprintf(`'\x%02x'`, s[0])
	}
	return strconv.QuoteRune(r)
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// validateTarget checks a mapping target against SPEC §6: an absolute http
// or https URL with a host and no user info, query or fragment. Loopback and
// private addresses are allowed (local models, sidecars).
func validateTarget(target string) error {
	bad := func(msg string) error { return invalidTarget("target " + msg) }
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
// would then fail on (FuzzMappingValidation holds validation to that).
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

// atoiOrNeg parses a port of at most 5 decimal digits; anything else
// (a sign, a space, a longer number) is -1.
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

// selfAddrs is where an instance receives requests: its listen port, on
// the listen host or, for an unspecified one (":8000", "0.0.0.0:8000",
// "[::]:8000"), on every address of the machine. A mapping whose target is
// one of them sends each request back to the proxy, which forwards it
// again until the file descriptors run out (issue 14). The zero value
// holds no address. Computed once (newSelfAddrs); safe for concurrent
// reads.
type selfAddrs struct {
	port string // "" or "0": no check (the port is not known)
	// loopback: every loopback address and name, and the unspecified
	// addresses (a connection to 0.0.0.0 or [::] reaches the local host),
	// are this instance.
	loopback bool
	ips      []netip.Addr // further addresses, unmapped and without zone
	names    []string     // host names, lower case, without a final dot
}

// newSelfAddrs returns the addresses of an instance listening on
// listenAddr (host:port). interfaceAddrs lists the machine's addresses
// (net.InterfaceAddrs); it is asked only for an unspecified listen host,
// and an error from it leaves them out: the loopback addresses are still
// checked.
func newSelfAddrs(listenAddr string, interfaceAddrs func() ([]net.Addr, error)) selfAddrs {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil || port == "0" {
		return selfAddrs{}
	}
	sa := selfAddrs{port: port}
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "" || err == nil && ip.IsUnspecified():
		sa.loopback = true
		if addrs, err := interfaceAddrs(); err == nil {
			for _, a := range addrs {
				if pfx, err := netip.ParsePrefix(a.String()); err == nil {
					sa.ips = append(sa.ips, pfx.Addr().WithZone("").Unmap())
				}
			}
		}
	case err == nil:
		ip = ip.WithZone("").Unmap()
		sa.loopback = ip.IsLoopback()
		sa.ips = append(sa.ips, ip)
	default:
		name := strings.TrimSuffix(strings.ToLower(host), ".")
		sa.loopback = isLocalhostName(name)
		sa.names = append(sa.names, name)
	}
	return sa
}

// isLocalhostName reports whether name (lower case, no final dot) is a
// loopback name: "localhost" and the names under it (RFC 6761 §6.3).
func isLocalhostName(name string) bool {
	return name == "localhost" || strings.HasSuffix(name, ".localhost")
}

// checkTarget returns the 400 invalid_target error if target, a URL that
// validateTarget accepted, is one of these addresses. Only the literal host
// is compared, with no DNS lookup: a name that resolves to this machine,
// or a loop through a second instance, is left to MAX_IN_FLIGHT.
func (sa selfAddrs) checkTarget(target string) error {
	if sa.port == "" {
		return nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if atoiOrNeg(port) != atoiOrNeg(sa.port) || !sa.isSelfHost(u.Hostname()) {
		return nil
	}
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_target", Message: fmt.Sprintf(
		"target must not be this proxy's own address (%s, port %s): every request would come back to the proxy and be forwarded again, without end (a loop)",
		u.Host, sa.port)}
}

// isSelfHost reports whether host, a URL's host name or IP address, is one
// of these addresses.
func (sa selfAddrs) isSelfHost(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.WithZone("").Unmap()
		if sa.loopback && (ip.IsLoopback() || ip.IsUnspecified()) {
			return true
		}
		return slices.Contains(sa.ips, ip)
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	return sa.loopback && isLocalhostName(name) || slices.Contains(sa.names, name)
}
