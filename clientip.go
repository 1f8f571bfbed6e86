package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// trustedProxies is TRUSTED_PROXIES: the networks of the balancers in front
// of apiproxy. Only a request whose TCP peer is in one of them has its
// client taken from X-Forwarded-For (clientIP); anyone else could write any
// address there. The zero value trusts nobody. As a flag.Value, Set
// replaces the list.
type trustedProxies []netip.Prefix

// Set reads a comma list of CIDR prefixes; a bare IP address stands for
// itself (/32 or /128). An invalid entry is an error naming it.
func (tp *trustedProxies) Set(s string) error {
	var out trustedProxies
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				// Peers are compared unmapped: ::ffff:10.0.0.0/104 is 10.0.0.0/8.
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			return fmt.Errorf("%q is not a CIDR prefix (10.0.0.0/8, fd00::/8) or an IP address", item)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	*tp = out
	return nil
}

func (tp *trustedProxies) String() string {
	if tp == nil {
		return ""
	}
	s := make([]string, len(*tp))
	for i, p := range *tp {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// contains reports whether a is the address of a trusted proxy.
func (tp trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range tp {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerTrusted reports whether req came straight from a trusted proxy. It
// allocates nothing, for the proxy's hot path.
func (tp trustedProxies) peerTrusted(req *http.Request) bool {
	if len(tp) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	return err == nil && tp.contains(ap.Addr())
}

// clientIP returns the address of the client that sent req: its TCP peer,
// unless that peer is a trusted proxy; then X-Forwarded-For (all its
// lines, in order) is read from the right, each trusted proxy having
// appended the address it received from, and the first address not in the
// list is the client. When every address is trusted, the left-most one is.
// An entry that is not an address stops the walk at the last trusted hop:
// it was written by someone untrusted, and taking it as the client would
// let that someone pick a fresh identity per request.
//
// ok is false when RemoteAddr holds no IP address (a Unix socket); callers
// then use RemoteAddr as it is. It is the one place that decides who the
// client is: the admin lockout uses it, and so will limits and the
// request log.
func (tp trustedProxies) clientIP(req *http.Request) (ip netip.Addr, ok bool) {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		host = req.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	client := peer.WithZone("").Unmap()
	if !tp.contains(client) {
		return client, true
	}
	xff := req.Header.Values("X-Forwarded-For")
	for i := len(xff) - 1; i >= 0; i-- {
		entries := strings.Split(xff[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			e := strings.TrimSpace(entries[j])
			if e == "" {
				continue
			}
			a, ok := parseForwardedAddr(e)
			if !ok {
				return client, true
			}
			client = a
			if !tp.contains(a) {
				return client, true
			}
		}
	}
	return client, true
}

// parseForwardedAddr reads one X-Forwarded-For entry: an IP address, or
// one with a port as some balancers write it ("192.0.2.1:4711",
// "[2001:db8::1]:4711").
func parseForwardedAddr(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.WithZone("").Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().WithZone("").Unmap(), true
	}
	return netip.Addr{}, false
}
