package main

import (
	"net/url"
	"sort"
	"strings"
	"time"
)

// route is one mapping, prepared for the request path. Immutable, but for
// the targets' states.
type route struct {
	prefix  string
	targets []*routeTarget // 1 to maxTargets, in the mapping's order
	// multi: the mapping has several targets, and requests go through
	// the failover loop (failover.go). A mapping with one target never
	// does: it costs what it cost before targets were a list.
	multi    bool
	weighted bool
	// keys: "auth": "keys", callers must show a proxy key (auth.go).
	keys bool
	// limits are the mapping's own (SPEC §11; admitLimits).
	limits Limits
	// retryOn holds the retry_on statuses, bit s-400 for status s.
	retryOn [200/64 + 1]uint64
	// idle is the mapping's stream_idle_timeout; 0 means none.
	idle time.Duration
}

// routeTarget is one target of a route.
type routeTarget struct {
	index   int    // position in the mapping
	url     string // as stored
	scheme  string // "http" or "https"
	host    string // host[:port]
	path    string // the decoded base path without trailing "/"
	rawPath string // the same, escaped
	weight  int
	// key and authStyle are the upstream key sent to this target for
	// callers of a keys mapping, and how (addTargetKey).
	key, authStyle string
	// state is the target's failures and cooldown, shared by the route
	// tables that keep this target at this position (targetStates); nil
	// on a route with one target, which needs none.
	state *targetState
}

// retries reports whether status is in the route's retry_on.
func (r *route) retries(status int) bool {
	i := status - 400
	return i >= 0 && i < 200 && r.retryOn[i/64]&(1<<(i%64)) != 0
}

// routeTable is an immutable snapshot of the mappings, published through an
// atomic.Pointer on Server and read without locks on every request.
type routeTable struct {
	byPrefix map[string]*route
	sorted   []*route // by prefix, for listings
	maxLen   int      // longest prefix, to skip impossible candidates
}

// newRouteTable prepares mappings, whose prefixes are unique, for routing
// by the instance at self. Mappings that fail validate (which a store never
// holds, but a hand-edited Redis hash, a value this version cannot read,
// or a mapping another instance accepted that points at this one might)
// are skipped, and their prefixes returned sorted in skipped. states keeps
// the targets' cooldowns across tables (nil: fresh states).
func newRouteTable(mappings []Mapping, self selfAddrs, states *targetStates) (t *routeTable, skipped []string) {
	t = &routeTable{byPrefix: make(map[string]*route, len(mappings))}
	for _, m := range mappings {
		if m.validate(self) != nil {
			skipped = append(skipped, m.Prefix)
			continue
		}
		r := &route{prefix: m.Prefix, multi: len(m.Targets) > 1, weighted: m.balance() == balanceWeighted,
			keys: m.auth() == authKeys, limits: m.Limits, idle: m.StreamIdleTimeout}
		for _, s := range m.retryOn() {
			i := s - 400
			r.retryOn[i/64] |= 1 << (i % 64)
		}
		for i, tg := range m.Targets {
			u, _ := url.Parse(tg.URL)
			rt := &routeTarget{
				index:   i,
				url:     tg.URL,
				scheme:  u.Scheme,
				host:    u.Host,
				path:    strings.TrimSuffix(u.Path, "/"),
				rawPath: strings.TrimSuffix(u.EscapedPath(), "/"),
				weight:  tg.weight(),

				key:       tg.Key,
				authStyle: tg.AuthStyle,
			}
			if r.multi {
				rt.state = states.get(m.Prefix, i, tg.URL)
			}
			r.targets = append(r.targets, rt)
		}
		t.byPrefix[m.Prefix] = r
		t.sorted = append(t.sorted, r)
		t.maxLen = max(t.maxLen, len(m.Prefix))
	}
	states.keepOnly(t)
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
