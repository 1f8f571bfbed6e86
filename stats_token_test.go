package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const testStatsToken = "test-stats-token-0123456789"

// newStatsTokenServer is a Server with ADMIN_TOKEN and STATS_TOKEN set.
func newStatsTokenServer(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "STATS_TOKEN": testStatsToken})
	return newTestServerConfig(t, cfg, nil)
}

// getWith sends GET path to front with the given headers.
func getWith(t *testing.T, front *httptest.Server, path string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, front.URL+path, nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := front.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	return res, readAll(t, res)
}

// TestStatsTokenUnsetIsPublic: without STATS_TOKEN the dashboard, /stats
// and /metrics answer anyone, as in the original design.
func TestStatsTokenUnsetIsPublic(t *testing.T) {
	_, front := newTestServer(t, nil)
	for _, path := range []string{"/", "/stats", "/metrics", "/healthz", "/readyz"} {
		if res, body := getWith(t, front, path, nil); res.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token: status %d, want 200 (body %.200s)", path, res.StatusCode, body)
		}
	}
}

// TestStatsToken: with STATS_TOKEN set, /stats and /metrics need it or the
// admin token; the page, its assets and the health checks stay public.
func TestStatsToken(t *testing.T) {
	s, front := newStatsTokenServer(t)
	// Every case comes from 127.0.0.1: forget its failures before each, so
	// that the lockout (TestStatsTokenLockout) stays out of this test.
	forget := func() { s.authFailures.succeed(context.Background(), "127.0.0.1") }
	tests := []struct {
		name string
		auth string // the Authorization header; none if ""
		want int
	}{
		{"no header", "", http.StatusUnauthorized},
		{"wrong token", "Bearer wrong-token-0123456789", http.StatusUnauthorized},
		{"stats token prefix", "Bearer " + testStatsToken[:12], http.StatusUnauthorized},
		{"stats token without scheme", testStatsToken, http.StatusUnauthorized},
		{"basic scheme", "Basic " + testStatsToken, http.StatusUnauthorized},
		{"empty bearer", "Bearer ", http.StatusUnauthorized},
		{"stats token", "Bearer " + testStatsToken, http.StatusOK},
		{"admin token", "Bearer " + testAdminToken, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + testStatsToken, http.StatusOK},
	}
	for _, path := range []string{"/stats", "/metrics"} {
		for _, tt := range tests {
			t.Run(path+"/"+tt.name, func(t *testing.T) {
				forget()
				h := map[string]string{}
				if tt.auth != "" {
					h["Authorization"] = tt.auth
				}
				res, body := getWith(t, front, path, h)
				if tt.want != http.StatusOK {
					wantProxyError(t, res, body, tt.want, "unauthorized")
					if got := res.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
						t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", got)
					}
					for _, secret := range []string{testStatsToken, testAdminToken} {
						if strings.Contains(string(body), secret) {
							t.Errorf("the 401 body holds a token: %s", body)
						}
					}
					return
				}
				if res.StatusCode != http.StatusOK {
					t.Fatalf("status = %d, want 200 (body %.200s)", res.StatusCode, body)
				}
				if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
					t.Errorf("Cache-Control = %q, want no-store", cc)
				}
			})
		}
	}

	t.Run("Prometheus scrape", func(t *testing.T) {
		forget()
		// What Prometheus sends for a scrape config with
		// authorization: {credentials: …} (type Bearer by default).
		res, body := getWith(t, front, "/metrics", map[string]string{
			"Authorization":                       "Bearer " + testStatsToken,
			"User-Agent":                          "Prometheus/3.5.0",
			"Accept":                              "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.1,*/*;q=0.1",
			"Accept-Encoding":                     "gzip",
			"X-Prometheus-Scrape-Timeout-Seconds": "10",
		})
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200 (body %.200s)", res.StatusCode, body)
		}
		if res.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("gzip: %v", err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatalf("gunzip: %v", err)
			}
		}
		if !strings.Contains(string(body), "go_goroutines") {
			t.Errorf("body holds no metrics: %.300s", body)
		}
	})

	t.Run("public without a token", func(t *testing.T) {
		for _, path := range []string{"/", "/index.html", "/static/dashboard.js", "/healthz", "/readyz", "/admin"} {
			if res, body := getWith(t, front, path, nil); res.StatusCode != http.StatusOK {
				t.Errorf("GET %s: status %d, want 200 (body %.200s)", path, res.StatusCode, body)
			}
		}
	})

	t.Run("the admin API does not take the stats token", func(t *testing.T) {
		forget()
		res, body := getWith(t, front, "/api/mappings", map[string]string{"Authorization": "Bearer " + testStatsToken})
		wantProxyError(t, res, body, http.StatusUnauthorized, "unauthorized")
		if res, _ := adminRequest(t, front, "GET", "/api/mappings", ""); res.StatusCode != http.StatusOK {
			t.Errorf("admin token on the admin API: status %d, want 200", res.StatusCode)
		}
	})
}

// TestStatsTokenLockout: wrong tokens on /stats and /metrics count in the
// admin lockout, and a stats token does not reset the count, so the stats
// endpoints give no extra guesses at the admin token. Calls without a
// token are not counted.
func TestStatsTokenLockout(t *testing.T) {
	s, _ := newStatsTokenServer(t)
	now := time.Unix(1_700_000_000, 0)
	s.authFailures.local.now = func() time.Time { return now }
	const attacker, other = "203.0.113.7:5000", "203.0.113.8:5000"
	const wrong = "Bearer guess-0123456789abcdef"
	const stats = "Bearer " + testStatsToken

	// Calls without credentials guess nothing and are not counted.
	for i := 0; i < 2*authMaxFailures; i++ {
		if res, _ := adminCall(t, s, "GET", "/stats", "", "", attacker); res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("call %d without a token: status %d, want 401", i, res.StatusCode)
		}
	}
	for i := 1; i <= authMaxFailures; i++ {
		path := "/stats"
		if i%2 == 0 {
			path = "/metrics"
		}
		if i == authMaxFailures/2 {
			// A right stats token in between forgets nothing.
			if res, _ := adminCall(t, s, "GET", "/stats", "", stats, attacker); res.StatusCode != http.StatusOK {
				t.Fatalf("stats token between failures: status %d, want 200", res.StatusCode)
			}
		}
		if res, body := adminCall(t, s, "GET", path, "", wrong, attacker); res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401 (body %s)", i, res.StatusCode, body)
		}
	}
	for _, path := range []string{"/stats", "/metrics"} {
		res, body := adminCall(t, s, "GET", path, "", stats, attacker)
		wantProxyError(t, res, body, http.StatusTooManyRequests, "too_many_auth_failures")
		if res.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 429 without Retry-After", path)
		}
	}
	if res, _ := adminCall(t, s, "GET", "/api/mappings", "", bearer, attacker); res.StatusCode != http.StatusTooManyRequests {
		t.Errorf("admin API from the address blocked on /stats: status %d, want 429", res.StatusCode)
	}
	if res, _ := adminCall(t, s, "GET", "/stats", "", stats, other); res.StatusCode != http.StatusOK {
		t.Errorf("another address with the stats token: status %d, want 200", res.StatusCode)
	}
	if res, _ := adminCall(t, s, "GET", "/healthz", "", "", attacker); res.StatusCode != http.StatusOK {
		t.Errorf("/healthz from the blocked address: status %d, want 200", res.StatusCode)
	}
	now = now.Add(authWindow + time.Second)
	if res, _ := adminCall(t, s, "GET", "/metrics", "", stats, attacker); res.StatusCode != http.StatusOK {
		t.Errorf("after the block: status %d, want 200", res.StatusCode)
	}
}

// TestStatsTokenConfig: STATS_TOKEN is trimmed and, like ADMIN_TOKEN,
// refused when shorter than 16 characters.
func TestStatsTokenConfig(t *testing.T) {
	tests := []struct {
		name, value string
		want        string // the token read; "" with wantErr
		wantErr     bool
	}{
		{"unset", "", "", false},
		{"blank is unset", "   ", "", false},
		{"trimmed", "  " + testStatsToken + "\n", testStatsToken, false},
		{"too short", "short-token", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"STATS_TOKEN": tt.value}
			cfg, err := loadConfig(func(k string) string { return env[k] }, nil, io.Discard)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "STATS_TOKEN") {
					t.Fatalf("err = %v, want one naming STATS_TOKEN", err)
				}
				if strings.Contains(err.Error(), tt.value) {
					t.Errorf("the error %q repeats the token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if cfg.StatsToken != tt.want {
				t.Errorf("StatsToken = %q, want %q", cfg.StatsToken, tt.want)
			}
		})
	}
}
