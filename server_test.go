package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestServerOwnRoutes(t *testing.T) {
	_, front := newTestServer(t, map[string]string{"/p": "http://127.0.0.1:1"})
	tests := []struct {
		method     string
		path       string
		wantStatus int
		wantType   string // Content-Type prefix
		wantBody   string // exact, or a JSON object's fields when wantJSON
		wantJSON   map[string]any
	}{
		{"GET", "/healthz", http.StatusOK, "application/json", "", map[string]any{"status": "ok"}},
		{"HEAD", "/healthz", http.StatusOK, "application/json", "", nil},
		{"GET", "/readyz", http.StatusOK, "application/json", "", map[string]any{"status": "ready"}},
		{"GET", "/robots.txt", http.StatusOK, "text/plain", "User-agent: *\nDisallow: /\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, front.URL+tt.path, nil)
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body := readAll(t, res)
			if res.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", res.StatusCode, tt.wantStatus)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantType) {
				t.Errorf("Content-Type = %q, want %s", ct, tt.wantType)
			}
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body = %q, want %q", body, tt.wantBody)
			}
			if tt.wantJSON != nil {
				var got map[string]any
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("body %q is not JSON: %v", body, err)
				}
				for k, want := range tt.wantJSON {
					if got[k] != want {
						t.Errorf("%s = %v, want %v (body %s)", k, got[k], want, body)
					}
				}
			}
		})
	}
}

// TestServerReadyzStoreDown checks /readyz answers 503 with a reason once
// the store cannot be reached, while /healthz stays 200.
func TestServerReadyzStoreDown(t *testing.T) {
	s, front := newTestServer(t, nil)
	if err := s.store.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path       string
		wantStatus int
	}{
		{"/readyz", http.StatusServiceUnavailable},
		{"/healthz", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res, err := front.Client().Get(front.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body := readAll(t, res)
			if res.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", res.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != http.StatusServiceUnavailable {
				return
			}
			var got struct {
				Status string `json:"status"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %q is not JSON: %v", body, err)
			}
			if got.Status != "degraded" || got.Reason == "" {
				t.Errorf("body = %s, want status degraded with a reason", body)
			}
		})
	}
}

// startRun runs run(ctx, cfg, ...) on its own goroutine and returns the
// address it listens on and the channel run's result arrives on.
func startRun(t testing.TB, ctx context.Context, cfg Config) (string, <-chan error) {
	t.Helper()
	addrc := make(chan net.Addr, 1)
	runErr := make(chan error, 1)
	go func() { runErr <- run(ctx, cfg, testLogger(), func(a net.Addr) { addrc <- a }) }()
	select {
	case a := <-addrc:
		return a.String(), runErr
	case err := <-runErr:
		t.Fatalf("run returned before serving: %v", err)
	case <-time.After(testTimeout):
		t.Fatalf("run did not start serving within %v", testTimeout)
	}
	return "", nil
}

// seedMapping writes one mapping into cfg's store (embedded or Redis)
// and closes it, for run to open.
func seedMapping(t testing.TB, cfg Config, prefix, target string) {
	t.Helper()
	store, err := openStore(context.Background(), cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.CreateMapping(context.Background(), newMapping(prefix, target)); err != nil {
		t.Fatal(err)
	}
}

// TestRunGracefulShutdown cancels run's context while a stream is in
// flight: the listener closes at once, the stream still completes, and run
// returns nil once it has.
func TestRunGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, heldStream(release, "data: 2\n\ndata: [DONE]\n\n"))
	cfg := testConfig(t, nil)
	seedMapping(t, cfg, "/slow", up.URL)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, runErr := startRun(t, ctx, cfg)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	res, err := client.Get("http://" + addr + "/slow/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	first := make([]byte, len("data: 1\n\n"))
	if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "data: 1\n\n" {
		t.Fatalf("first event = %q, %v; want %q", first, err, "data: 1\n\n")
	}

	cancel()
	eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}, "the listener to close after cancel")
	select {
	case err := <-runErr:
		t.Fatalf("run returned %v while a stream was in flight, want it to drain first", err)
	default:
	}

	close(release)
	rest, err := io.ReadAll(res.Body)
	if err != nil || string(rest) != "data: 2\n\ndata: [DONE]\n\n" {
		t.Errorf("rest of the stream = %q, %v; want %q and a clean end", rest, err, "data: 2\n\ndata: [DONE]\n\n")
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("run = %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("run did not return within %v after the stream ended", testTimeout)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("dial %s after shutdown succeeded, want refused", addr)
	}
}

// TestRunBusyPort checks run fails at start when its address is taken.
func TestRunBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, nil)
	cfg.ListenAddr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), cfg, testLogger(), nil) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listen") {
			t.Errorf("run on a busy port = %v, want a listen error", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("run on a busy port did not return within %v", testTimeout)
	}
}
