package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func TestTrustedProxiesSet(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the result
		wantErr string // part of the error; "" for none
	}{
		{"", "", ""},
		{" 10.0.0.0/8 , 192.168.1.7 ,, fd00::/8", "10.0.0.0/8,192.168.1.7/32,fd00::/8", ""},
		{"10.1.2.3/8", "10.0.0.0/8", ""},
		{"::1", "::1/128", ""},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8", ""},
		{"10.0.0.0/8,10.0.0.300", "", `"10.0.0.300"`},
		{"nginx", "", `"nginx"`},
		{"10.0.0.0/33", "", `"10.0.0.0/33"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var tp trustedProxies
			err := tp.Set(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set(%q) error = %v, want one naming %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%q): %v", tt.in, err)
			}
			if got := tp.String(); got != tt.want {
				t.Errorf("Set(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestClientIP(t *testing.T) {
	var tp trustedProxies
	if err := tp.Set("10.0.0.0/8, 2001:db8:ff::/48"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"untrusted peer: XFF ignored", "192.0.2.1:4000", []string{"203.0.113.9"}, "192.0.2.1"},
		{"trusted peer without XFF: the peer", "10.0.0.5:4000", nil, "10.0.0.5"},
		{"trusted peer: XFF names the client", "10.0.0.5:4000", []string{"203.0.113.9"}, "203.0.113.9"},
		{"right-most untrusted wins", "10.0.0.5:4000", []string{"198.51.100.1, 203.0.113.9, 10.0.0.7"}, "203.0.113.9"},
		{"several header lines read in order", "10.0.0.5:4000", []string{"198.51.100.1", "203.0.113.9, 10.0.0.7"}, "203.0.113.9"},
		{"all trusted: the left-most", "10.0.0.5:4000", []string{"10.9.9.9, 10.0.0.7"}, "10.9.9.9"},
		{"garbage stops at the last trusted hop", "10.0.0.5:4000", []string{"evil, 10.0.0.7"}, "10.0.0.7"},
		{"garbage from the peer itself", "10.0.0.5:4000", []string{"unknown"}, "10.0.0.5"},
		{"entries with ports", "10.0.0.5:4000", []string{"[2001:db8::1]:443, 203.0.113.9:80"}, "203.0.113.9"},
		{"IPv6 trusted peer", "[2001:db8:ff::1]:4000", []string{"2001:db8::7"}, "2001:db8::7"},
		{"IPv4-mapped peer", "[::ffff:10.0.0.5]:4000", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"empty entries skipped", "10.0.0.5:4000", []string{"203.0.113.9, , "}, "203.0.113.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			got, ok := tp.clientIP(req)
			if !ok || got != netip.MustParseAddr(tt.want) {
				t.Errorf("clientIP = %v, %v; want %s", got, ok, tt.want)
			}
		})
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "@"
	if _, ok := tp.clientIP(req); ok {
		t.Errorf("clientIP of a non-IP peer: ok = true, want false")
	}
}

// adminCallXFF is adminCall with an X-Forwarded-For header (none if "").
func adminCallXFF(t testing.TB, s *Server, auth, remote, xff string) int {
	t.Helper()
	req := httptest.NewRequest("GET", "/api/mappings", nil)
	req.RemoteAddr = remote
	req.Header.Set("Authorization", auth)
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code
}

// TestAdminLockoutBehindBalancer: behind a trusted balancer the lockout
// counts per client (X-Forwarded-For), so one guesser cannot lock every
// operator out (issue 14); from an untrusted peer X-Forwarded-For is
// ignored, so a guesser cannot pick a fresh address per guess.
func TestAdminLockoutBehindBalancer(t *testing.T) {
	s, _ := newTestServerConfig(t, testConfig(t, map[string]string{
		"ADMIN_TOKEN": testAdminToken, "TRUSTED_PROXIES": "10.0.0.0/8"}), nil)
	const balancer = "10.0.0.5:41000"
	wrong := "Bearer guess-0123456789abcdef"

	for i := 1; i <= authMaxFailures; i++ {
		if got := adminCallXFF(t, s, wrong, balancer, "203.0.113.1"); got != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i, got)
		}
	}
	if got := adminCallXFF(t, s, bearer, balancer, "203.0.113.1"); got != http.StatusTooManyRequests {
		t.Errorf("the guessing client with the right token: status %d, want 429", got)
	}
	if got := adminCallXFF(t, s, bearer, balancer, "203.0.113.2"); got != http.StatusOK {
		t.Errorf("another client behind the same balancer: status %d, want 200", got)
	}
	if got := adminCallXFF(t, s, bearer, balancer, ""); got != http.StatusOK {
		t.Errorf("the balancer itself (no X-Forwarded-For): status %d, want 200", got)
	}

	const direct = "192.0.2.40:5000"
	for i := 1; i <= authMaxFailures; i++ {
		adminCallXFF(t, s, wrong, direct, fmt.Sprintf("198.51.100.%d", i))
	}
	if got := adminCallXFF(t, s, bearer, direct, "198.51.100.200"); got != http.StatusTooManyRequests {
		t.Errorf("untrusted peer with a fresh X-Forwarded-For: status %d, want 429", got)
	}
}

// TestForwardedForToUpstream: the X-Forwarded-For that a trusted balancer
// wrote for the proxy never reaches the provider; a client's own passes
// as received when it connects directly (SPEC §3.3).
func TestForwardedForToUpstream(t *testing.T) {
	for _, tt := range []struct {
		name    string
		trusted string
		want    string
	}{
		{"trusted peer", "127.0.0.0/8", ""},
		{"untrusted peer", "", "203.0.113.9"},
		{"other network trusted", "10.0.0.0/8", "203.0.113.9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, nil)
			_, front := newTestServerConfig(t, testConfig(t, map[string]string{"TRUSTED_PROXIES": tt.trusted}),
				map[string]string{"/p": up.URL})
			req, _ := http.NewRequest("GET", front.URL+"/p/x", nil)
			req.Header.Set("X-Forwarded-For", "203.0.113.9")
			req.Header.Set("X-Forwarded-Proto", "https")
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, res)
			res.Body.Close()
			seen := up.next(t)
			if got := seen.Header.Get("X-Forwarded-For"); got != tt.want {
				t.Errorf("upstream X-Forwarded-For = %q, want %q", got, tt.want)
			}
			if got := seen.Header.Get("X-Forwarded-Proto"); got != "https" {
				t.Errorf("upstream X-Forwarded-Proto = %q, want it passed as received", got)
			}
		})
	}
}
