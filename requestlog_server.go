package main

// The request log in the Server: its sinks (the store, REQUEST_LOG), the
// observer that feeds it, SIGHUP's reopen, the final flush, and
// GET /api/requests (SPEC §12).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
)

const (
	// requestLogFlushTimeout bounds the final flush of the request log at
	// shutdown, per sink.
	requestLogFlushTimeout = 5 * time.Second
	// requestLogSpillFile, in DATA_DIR, holds the records the final flush
	// could not write to the store (Redis down at shutdown); the next
	// start queues them again (SPEC §12: never silently lost).
	requestLogSpillFile = "requestlog-unflushed.json"
)

// serverLog is a Server's request log: the queues and, when REQUEST_LOG
// names one, the JSON-lines file that SIGHUP reopens. store is the store
// that keeps the log, nil if the Store does not (a test's); its queue is
// queues[0].
type serverLog struct {
	requestLog
	store  logStore
	lines  *jsonLines // nil when REQUEST_LOG is off
	spill  string     // the spill file's path; "" for none
	logger *slog.Logger
}

// newServerLog returns the request log of a Server on store, with
// REQUEST_LOG's JSON lines when cfg asks for them. An unwritable
// REQUEST_LOG file is an error: the operator asked for it.
func newServerLog(cfg Config, store Store, logger *slog.Logger) (*serverLog, error) {
	l := &serverLog{logger: logger}
	if ls, ok := store.(logStore); ok {
		l.store = ls
		q := newLogQueue(ls, logger)
		if b, ok := store.(interface{ logBatch() int }); ok {
			q.batch = b.logBatch()
		}
		l.queues = append(l.queues, q)
		if cfg.DataDir != "" {
			l.spill = filepath.Join(cfg.DataDir, requestLogSpillFile)
			l.loadSpill(q)
		}
	}
	dest, err := requestLogDest(cfg.RequestLog)
	if err != nil {
		return nil, err
	}
	if dest != "" {
		j, err := openJSONLines(dest, logger)
		if err != nil {
			return nil, fmt.Errorf("REQUEST_LOG: %w", err)
		}
		l.lines = j
		l.queues = append(l.queues, newLogQueue(j, logger))
	}
	return l, nil
}

// on reports whether any sink takes records.
func (l *serverLog) on() bool { return len(l.queues) > 0 }

// record queues the log record of the finished request rec.
func (l *serverLog) record(rec *requestRecord) {
	// Its end, which finish measured: no second clock read.
	l.add(newLogRecord(rec), rec.Start.Add(rec.Duration))
}

// reopen reopens the REQUEST_LOG file (SIGHUP, after logrotate renamed
// it); a failure is logged and the old file kept. Without a file there is
// nothing to do.
func (l *serverLog) reopen() {
	if l.lines == nil || l.lines.path == "" {
		l.logger.Info("SIGHUP ignored: no request log file to reopen")
		return
	}
	if err := l.lines.reopen(); err != nil {
		l.logger.Error("reopen request log failed; writing to the old file", "error", err)
		return
	}
	l.logger.Info("request log reopened", "path", l.lines.path)
}

// reopenOnSIGHUP reopens the REQUEST_LOG file on every SIGHUP until the
// returned stop is called.
func (l *serverLog) reopenOnSIGHUP() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				l.reopen()
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

// close writes what waits, within requestLogFlushTimeout, and closes the
// file. Records the store could not take now go to the spill file; what
// is lost even so (no DATA_DIR, an unwritable spill file, a REQUEST_LOG
// file that failed) is counted in the log line that says so.
func (l *serverLog) close() {
	ctx, cancel := context.WithTimeout(context.Background(), requestLogFlushTimeout)
	defer cancel()
	if err := l.flush(ctx); err != nil {
		lost := 0
		for i, q := range l.queues {
			if i == 0 && l.store != nil && l.spillQueue(q, err) {
				continue
			}
			lost += q.waiting()
		}
		if lost > 0 {
			l.logger.Error("final request log flush failed; these records are lost", "records", lost, "error", err)
		}
	}
	if l.lines != nil {
		if err := l.lines.close(); err != nil {
			l.logger.Warn("close request log", "error", err)
		}
	}
}

// spillQueue saves the records waiting in q, the store's queue, to the
// spill file after the final flush failed with cause; it reports whether
// none of them is lost.
func (l *serverLog) spillQueue(q *logQueue, cause error) bool {
	q.mu.Lock()
	recs := slices.Clone(q.pending)
	q.mu.Unlock()
	if len(recs) == 0 {
		return true
	}
	if l.spill == "" {
		return false
	}
	b, err := json.Marshal(recs)
	if err == nil {
		err = writeFileAtomic(l.spill, b)
	}
	if err != nil {
		l.logger.Error("the request log's spill file could not be written", "path", l.spill, "error", err)
		return false
	}
	l.logger.Warn("final request log flush failed; records saved for the next start", "records", len(recs), "path", l.spill, "error", cause)
	return true
}

// loadSpill queues for the store (q) the records a previous process saved
// to the spill file, and removes it once q has written them (a start that
// fails after this, or a process killed before, leaves it for the next).
// The queue's ids are made to follow theirs. An unreadable file is moved
// aside, for the operator, so that a spill of this run does not replace
// it.
func (l *serverLog) loadSpill(q *logQueue) {
	b, err := os.ReadFile(l.spill)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var recs []logRecord
	if err == nil {
		err = json.Unmarshal(b, &recs)
	}
	if err != nil {
		aside := l.spill + ".unreadable"
		rerr := os.Rename(l.spill, aside)
		l.logger.Warn("ignoring unreadable request log spill file", "path", l.spill, "moved_to", aside, "error", err, "rename_error", rerr)
		return
	}
	for _, r := range recs {
		l.ids.after(r.ID)
		q.add(r)
	}
	left := q.waiting() // what did not fit is counted in dropped
	q.wrote = func(n int) {
		if left <= 0 {
			return
		}
		if left -= n; left <= 0 {
			if err := os.Remove(l.spill); err != nil && !errors.Is(err, os.ErrNotExist) {
				l.logger.Warn("removing the request log's spill file failed; its records may be written again at the next start", "path", l.spill, "error", err)
			}
		}
	}
	l.logger.Info("request log records of the previous run that were not written will be now", "records", len(recs), "path", l.spill)
}

// observe is the proxy's observer: it counts a finished request in the
// stats (when on) and puts it in the request log.
func (s *Server) observe(rec *requestRecord) {
	if s.cfg.EnableStats {
		s.stats.record(rec)
	}
	s.reqlog.record(rec)
}

// recentErrorsShown is how many of the request log's newest errors a
// ranged /stats shows (the dashboard's Recent errors).
const recentErrorsShown = 20

// recentError is one of /stats' recent_errors: a request log record's
// time, route and outcome, without its key, client or figures, for the
// dashboard (which STATS_TOKEN alone may open).
type recentError struct {
	ID     string `json:"id"`
	Time   string `json:"time"`
	Prefix string `json:"prefix"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Status int    `json:"status"`
	Code   string `json:"code"`
	Model  string `json:"model"`
}

// recentErrors returns the request log's newest non-2xx records for a
// ranged /stats, whatever the range (the log holds 7 days at most). A
// store that cannot be read gives none, and /stats answers all the same:
// nil omits the field, the figures are what matter.
func (s *Server) recentErrors(ctx context.Context) *[]recentError {
	ctx, cancel := context.WithTimeout(ctx, statsLoadTimeout)
	defer cancel()
	recs, _, err := s.reqlog.store.readLog(ctx, logQuery{Limit: recentErrorsShown, NotOK: true})
	if err != nil {
		s.logger.Debug("recent errors for /stats not read", "error", err)
		return nil
	}
	out := make([]recentError, len(recs))
	for i := range recs {
		r := &recs[i]
		out[i] = recentError{ID: r.ID, Time: time.Time(r.Time).UTC().Format(requestLogTimeFormat), Prefix: r.Prefix,
			Method: r.Method, Path: r.Path, Status: r.Status, Code: r.Code, Model: string(r.Model)}
	}
	return &out
}

// handleRequests answers GET /api/requests (SPEC §12): the newest records
// of the log that match the filters, and the cursor of the next page.
func (s *Server) handleRequests(c *gin.Context) {
	q, err := parseLogQuery(c.Request.URL.Query())
	if err != nil {
		writeAPIError(c.Writer, err)
		return
	}
	if s.reqlog.store == nil {
		writeError(c.Writer, http.StatusNotImplemented, "not_implemented", "this store keeps no request log")
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), adminStoreTimeout)
	defer cancel()
	recs, next, err := s.reqlog.store.readLog(ctx, q)
	switch {
	case errors.Is(err, errBadLogCursor):
		writeError(c.Writer, http.StatusBadRequest, "invalid_query", "before: not an id of this request log")
		return
	case errors.Is(err, errStoreUnavailable):
		s.logger.Warn("request log read failed", "error", err)
		writeError(c.Writer, http.StatusServiceUnavailable, "store_unavailable",
			"store unavailable: the request log cannot be read now; new records wait in the queue")
		return
	case err != nil:
		s.writeStoreError(c, err)
		return
	}
	if recs == nil {
		recs = []logRecord{}
	}
	var nextID any // null when there is no older page
	if next != "" {
		nextID = next
	}
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"requests": recs, "next": nextID})
}

// logQueryParams are the parameters GET /api/requests takes; any other is
// refused, so that a misspelt filter is not silently ignored.
var logQueryParams = []string{"limit", "before", "prefix", "key_id", "status", "model"}

// parseLogQuery reads GET /api/requests' parameters, or returns an
// *apiError (400) that names the one at fault.
func parseLogQuery(v url.Values) (logQuery, error) {
	q := logQuery{Limit: requestLogDefaultLimit}
	for name, vals := range v {
		if !slices.Contains(logQueryParams, name) {
			return q, badLogParam(name, "unknown parameter; the filters are "+strings.Join(logQueryParams, ", "))
		}
		if len(vals) > 1 {
			return q, badLogParam(name, "given more than once")
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > requestLogMaxLimit {
			return q, badLogParam("limit", fmt.Sprintf("want a whole number from 1 to %d", requestLogMaxLimit))
		}
		q.Limit = n
	}
	q.Before, q.Prefix, q.KeyID, q.Model = v.Get("before"), v.Get("prefix"), v.Get("key_id"), v.Get("model")
	for name, s := range map[string]string{"before": q.Before, "prefix": q.Prefix, "key_id": q.KeyID, "model": q.Model} {
		if len(s) > 256 {
			return q, badLogParam(name, "longer than 256 bytes")
		}
	}
	if s := v.Get("status"); s != "" {
		switch {
		case len(s) == 3 && s[0] >= '1' && s[0] <= '5' && strings.EqualFold(s[1:], "xx"):
			q.Class = int(s[0] - '0')
		default:
			n, err := strconv.Atoi(s)
			if err != nil || n < 100 || n > 599 {
				return q, badLogParam("status", "want a status code (404) or a class (5xx)")
			}
			q.Status = n
		}
	}
	return q, nil
}

// badLogParam is the 400 of a bad GET /api/requests parameter.
func badLogParam(name, msg string) error {
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_query", Message: name + ": " + msg}
}
