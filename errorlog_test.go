package main

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// recordHandler is a slog.Handler that keeps every record.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// atLevel returns the messages of the records at level, with their
// "error" attribute when they have one.
func (h *recordHandler) atLevel(level slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		if r.Level != level {
			continue
		}
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" {
				msg += " error=" + a.Value.String()
			}
			return true
		})
		out = append(out, msg)
	}
	return out
}

// emfileListener is a net.Listener whose Accept fails with EMFILE, as it
// does when the process is out of file descriptors, until Close.
type emfileListener struct {
	fails  atomic.Int64
	closed chan struct{}
	once   sync.Once
}

func (l *emfileListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	l.fails.Add(1)
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

func (l *emfileListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *emfileListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8000} }

// TestAcceptErrorLogged: a listener that fails to accept (EMFILE) is
// reported at Error level, once however often it fails within a minute
// (issue 14: it went to Debug only, so 22 s of refused clients left no
// trace at the default level).
func TestAcceptErrorLogged(t *testing.T) {
	h := &recordHandler{}
	srv := newHTTPServer(nil, slog.New(h))
	ln := &emfileListener{closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// net/http retries after 5 ms, doubling: five failures take ~150 ms.
	eventually(t, func() bool { return ln.fails.Load() >= 5 }, "five failed accepts")
	srv.Close()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v, want http.ErrServerClosed", err)
	}
	got := h.atLevel(slog.LevelError)
	if len(got) != 1 {
		t.Fatalf("Error records = %q, want exactly one for %d failed accepts", got, ln.fails.Load())
	}
	if !strings.Contains(got[0], "too many open files") {
		t.Errorf("Error record %q, want it to carry the cause", got[0])
	}
}

// TestServerErrorLogLimit: one accept error line a minute, the next one
// saying how many were held back; other lines of the http.Server stay at
// Debug.
func TestServerErrorLogLimit(t *testing.T) {
	h := &recordHandler{}
	w := newServerErrorLog(slog.New(h))
	now := time.Unix(1_700_000_000, 0)
	w.accept.now = func() time.Time { return now }
	l := log.New(w, "", 0)
	acceptErr := "http: Accept error: accept tcp [::]:8000: accept4: too many open files; retrying in 1s"
	for range 5 {
		l.Print(acceptErr)
	}
	l.Print("http: TLS handshake error from 192.0.2.1:5000: EOF")
	now = now.Add(acceptLogEvery)
	l.Print(acceptErr)

	h.mu.Lock()
	defer h.mu.Unlock()
	var levels []slog.Level
	var suppressed []int64
	for _, r := range h.records {
		levels = append(levels, r.Level)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				suppressed = append(suppressed, a.Value.Int64())
			}
			return true
		})
	}
	if want := []slog.Level{slog.LevelError, slog.LevelDebug, slog.LevelError}; !slices.Equal(levels, want) {
		t.Errorf("levels = %v, want %v", levels, want)
	}
	if want := []int64{0, 4}; !slices.Equal(suppressed, want) {
		t.Errorf("suppressed = %v, want %v", suppressed, want)
	}
}
