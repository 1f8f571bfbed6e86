package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// acceptLogEvery is how often at most a failing accept is logged: while
// the process is out of file descriptors, net/http retries Accept up to
// once a second, and each retry would otherwise be a line.
const acceptLogEvery = time.Minute

// serverErrorLog is the writer of the http.Server's ErrorLog. net/http
// reports there what happens outside any handler: TLS handshake errors,
// bad request lines, hijack misuse, all noise a client can cause, logged
// at Debug. The exception is "http: Accept error": the listener failing,
// most often because the file descriptors ran out (EMFILE). Then no new
// client gets in and /healthz cannot answer, which an operator must see:
// it is logged at Error, at most once per acceptLogEvery. Safe for
// concurrent use (log.Logger serialises its writes anyway).
type serverErrorLog struct {
	logger *slog.Logger
	accept logLimiter
}

func newServerErrorLog(logger *slog.Logger) *serverErrorLog {
	return &serverErrorLog{logger: logger, accept: logLimiter{every: acceptLogEvery, now: time.Now}}
}

// Write takes one line of log.Logger output (prefix "", no flags).
func (w *serverErrorLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if strings.HasPrefix(msg, "http: Accept error") {
		if suppressed, ok := w.accept.allow(); ok {
			w.logger.LogAttrs(context.Background(), slog.LevelError,
				"accepting connections fails; new clients cannot connect (out of file descriptors? see ulimit -n, MAX_IN_FLIGHT)",
				slog.String("error", strings.TrimPrefix(msg, "http: Accept error: ")),
				slog.Int64("suppressed", suppressed))
		}
		return len(p), nil
	}
	w.logger.LogAttrs(context.Background(), slog.LevelDebug, msg)
	return len(p), nil
}

// logLimiter lets one log line through per period (every) and counts the
// ones it holds back. Safe for concurrent use.
type logLimiter struct {
	every time.Duration
	now   func() time.Time // time.Now; tests replace it

	mu         sync.Mutex
	last       time.Time // of the last line let through; zero before the first
	suppressed int64
}

// allow reports whether a line may be logged now and, if so, how many were
// held back since the last one.
func (l *logLimiter) allow() (suppressed int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return 0, false
	}
	l.last = now
	suppressed, l.suppressed = l.suppressed, 0
	return suppressed, true
}
