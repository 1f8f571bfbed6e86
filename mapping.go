package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Mapping is one prefix and the upstream(s) it goes to (SPEC §9). It is the
// one shape every layer speaks: the stores keep it, the admin API and the
// CLI build it, the route table prepares it for the request path.
//
// The options of SPEC §9 (balance, retry_on, auth, limits,
// stream_idle_timeout) join as fields here when their feature lands, each
// validated in validate. A mapping that sets any of them no longer has the
// plain stored form (see encodeValue).
type Mapping struct {
	// Prefix is the path prefix that routes to the targets, such as
	// "/openai" (rules in validatePrefix).
	Prefix string
	// Targets are the upstreams in the order they are tried. Exactly one
	// until several targets land (issue 15); validate enforces it.
	Targets []Target
}

// Target is one upstream of a Mapping. SPEC §9's weight, key and
// auth_style join as fields here when their feature lands.
type Target struct {
	// URL is the absolute http or https URL that requests go to; it may
	// carry a base path (rules in validateTarget).
	URL string
}

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

// validate checks m against SPEC §6, with self the addresses of the
// instance that would route it (a target there is a loop; the zero
// selfAddrs checks none). The error is an *apiError (400) whose message
// names the field and the rule broken: the prefix's if it is invalid, else
// the first invalid target's.
func (m Mapping) validate(self selfAddrs) error {
	if err := validatePrefix(m.Prefix); err != nil {
		return err
	}
	switch len(m.Targets) {
	case 0:
		return validateTarget("")
	case 1:
		if err := validateTarget(m.Targets[0].URL); err != nil {
			return err
		}
		return self.checkTarget(m.Targets[0].URL)
	}
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_target",
		Message: fmt.Sprintf("targets must hold exactly one target, not %d: several targets are not supported yet", len(m.Targets))}
}

// encodeValue is m as a value of the stores (the Redis hash, the bbolt
// bucket). m must be valid.
//
// SPEC §9 "Redis": a mapping with one target and no options keeps the
// original value, the target's URL, which the original design and every
// older instance read. Any other mapping is to be a JSON object, a value
// starting with "{"; that encoding belongs here, beside its decoding in
// decodeMapping, once Mapping can hold such a mapping (issue 15). Until
// then validate refuses every mapping without the plain form.
func (m Mapping) encodeValue() string {
	return m.firstURL()
}

// errObjectMapping is returned by decodeMapping for a stored value in the
// object form, which this version cannot read.
var errObjectMapping = errors.New("stored mapping is a JSON object, which this version of apiproxy cannot read")

// decodeMapping reads a stored value (see encodeValue) back into the
// mapping of prefix. It does not validate: a value put into Redis by hand
// may be any string, and routing skips what fails validate.
//
// A value starting with "{" is the object form of SPEC §9. This version
// cannot read it: decodeMapping returns errObjectMapping with the mapping
// of prefix and no targets, which validate refuses, so that routing skips
// it while the admin API still lists it (and can delete it).
func decodeMapping(prefix, value string) (Mapping, error) {
	if strings.HasPrefix(value, "{") {
		return Mapping{Prefix: prefix}, fmt.Errorf("mapping %s: %w", prefix, errObjectMapping)
	}
	return newMapping(prefix, value), nil
}

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
