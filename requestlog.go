package main

// The request log (SPEC §12): one record per proxied request, refused ones
// included, queued off the request path and written in batches to its
// sinks: the REQUEST_LOG JSON-lines writer here, the stores' sinks later.
// A record holds ids, names and figures only, never a query string, a
// header value, a body or a key: the traps other gateways fell into
// (LiteLLM #30670, #31620: keys in spend logs) are closed by the record's
// type, which has no field that could carry them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// requestLogQueueSize bounds the records waiting for a sink, while it
	// is slow or its store unreachable (SPEC §12); past it records are
	// dropped and counted.
	requestLogQueueSize = 10_000
	// requestLogBatch is how many waiting records wake the writer before
	// its interval is up, and the most one write takes.
	requestLogBatch = 1000
	// requestLogInterval is how often the writer writes what waits.
	requestLogInterval = time.Second
	// requestLogTimeFormat is the record's time: UTC, milliseconds.
	requestLogTimeFormat = "2006-01-02T15:04:05.000Z07:00"
)

// logRecord is one request of the request log, as SPEC §12 shows it. Its
// JSON field names are a stable contract (the admin page, GET
// /api/requests, the JSON lines operators parse). Every field is an id, a
// name the operator configured, a figure or a name the upstream reported
// (the model): adding a field that could hold a query string, a header
// value, a body or a key breaks TestLogRecordFields on purpose.
type logRecord struct {
	// ID is unique and time-ordered (logIDs); set when the record is
	// queued, "" before.
	ID string `json:"id"`
	// Time is when the request started.
	Time logTime `json:"time"`
	// Prefix is the mapping's prefix.
	Prefix string `json:"prefix"`
	Method string `json:"method"`
	// Path is the path after the prefix, without its query.
	Path   string `json:"path"`
	Status int    `json:"status"`
	// Code is the proxy's error code when it answered or cut the
	// response, "" otherwise.
	Code string `json:"code"`
	// KeyID and KeyName are the proxy key shown; null when none was
	// recognised or the mapping is passthrough.
	KeyID   optString `json:"key_id"`
	KeyName optString `json:"key_name"`
	// Model is the model the response reported; null when none.
	Model            optString `json:"model"`
	Stream           bool      `json:"stream"`
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	TotalTokens      int64     `json:"total_tokens"`
	// LatencyMS and TTFBMS are in milliseconds, to a tenth; TTFBMS is 0
	// when no byte came back.
	LatencyMS float64 `json:"latency_ms"`
	TTFBMS    float64 `json:"ttfb_ms"`
	// BytesIn and BytesOut count body bytes.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// Target is the index of the target that answered, null when no
	// target was tried (the proxy refused the request); Attempts is the
	// number of tries, 0 then.
	Target       optIndex `json:"target"`
	Attempts     int      `json:"attempts"`
	ClientClosed bool     `json:"client_closed"`
	ClientIP     logAddr  `json:"client_ip"`
}

// newLogRecord builds the log record of the finished request rec. It
// copies what it keeps: rec.Usage.Model points into the parser's buffer
// and is only valid during the observer call. The record's ID is left
// empty, for the queue to set. A path's query, should one reach it, is
// cut.
func newLogRecord(rec *requestRecord) logRecord {
	path, _, _ := strings.Cut(rec.Path, "?")
	lr := logRecord{
		Time:         logTime(rec.Start),
		Prefix:       rec.Prefix,
		Method:       rec.Method,
		Path:         path,
		Status:       rec.Status,
		Code:         rec.ProxyErr,
		KeyID:        optString(rec.KeyID),
		Stream:       rec.Stream,
		LatencyMS:    millis(rec.Duration),
		TTFBMS:       millis(rec.TTFB),
		BytesIn:      rec.BytesIn,
		BytesOut:     rec.BytesOut,
		Attempts:     len(rec.Tries),
		ClientClosed: clientClosed(rec),
		ClientIP:     logAddr(rec.Client),
	}
	if rec.KeyID != "" {
		// A name without an id would name a key nobody showed.
		lr.KeyName = optString(rec.KeyName)
	}
	if rec.Usage.Known {
		lr.PromptTokens = rec.Usage.Tokens[tokPrompt]
		lr.CompletionTokens = rec.Usage.Tokens[tokCompletion]
		lr.TotalTokens = rec.Usage.Tokens[tokTotal]
	}
	if len(rec.Usage.Model) > 0 {
		lr.Model = optString(rec.Usage.Model)
	}
	lr.Target = noIndex
	if n := len(rec.Tries); n > 0 {
		lr.Target = optIndex(rec.Tries[n-1].Index)
	}
	return lr
}

// millis returns d in milliseconds, rounded to a tenth.
func millis(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Millisecond/10)) / 10
}

// optString is a string that is null in JSON when empty.
type optString string

// UnmarshalJSON reads null as "".
func (s *optString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = ""
		return nil
	}
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = optString(v)
	return nil
}

// optIndex is an index that is null in JSON when it is noIndex. Not a
// pointer, which would cost the request an allocation.
type optIndex int

// noIndex is the null optIndex.
const noIndex optIndex = -1

// UnmarshalJSON reads null as noIndex.
func (i *optIndex) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*i = noIndex
		return nil
	}
	v, err := strconv.Atoi(string(b))
	if err != nil {
		return fmt.Errorf("parse target index %q: %w", b, err)
	}
	*i = optIndex(v)
	return nil
}

// logAddr is the client's address, written as its text ("" when it has
// none); a netip.Addr, not a string, so that recording it allocates
// nothing on the request path.
type logAddr netip.Addr

// UnmarshalJSON reads an address; "" is the invalid one.
func (a *logAddr) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v == "" {
		*a = logAddr{}
		return nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil {
		return fmt.Errorf("parse client_ip: %w", err)
	}
	*a = logAddr(ip)
	return nil
}

// String returns the address's text, "" when it has none.
func (a logAddr) String() string {
	if ip := netip.Addr(a); ip.IsValid() {
		return ip.String()
	}
	return ""
}

// logTime is a time written in UTC to the millisecond, as SPEC §12 shows.
type logTime time.Time

// UnmarshalJSON reads an RFC 3339 time.
func (t *logTime) UnmarshalJSON(b []byte) error {
	var v time.Time
	if err := v.UnmarshalJSON(b); err != nil {
		return err
	}
	*t = logTime(v)
	return nil
}

// logIDs makes record ids: 16 hex digits of Unix nanoseconds, strictly
// increasing within a process even when the clock steps back or two
// records share a nanosecond, so ids sort as the records were queued and
// a "before=<id>" cursor neither skips nor repeats one. Safe for
// concurrent use.
type logIDs struct {
	last atomic.Int64
}

// next returns the id of a record queued at now.
func (g *logIDs) next(now time.Time) string {
	n := now.UnixNano()
	for {
		last := g.last.Load()
		v := max(n, last+1)
		if g.last.CompareAndSwap(last, v) {
			var b [16]byte
			for i := len(b) - 1; i >= 0; i-- {
				b[i] = hexDigits[v&0xf]
				v >>= 4
			}
			return string(b[:])
		}
	}
}

// after makes every id next returns come after id, one of a record of an
// earlier run (a spill file): a store's duplicate check relies on ids
// that increase (redisLogWriteScript), whatever the clock says now. An
// id that is not one is ignored.
func (g *logIDs) after(id string) {
	v, err := strconv.ParseInt(id, 16, 64)
	if err != nil || len(id) != 16 {
		return
	}
	for {
		last := g.last.Load()
		if v <= last || g.last.CompareAndSwap(last, v) {
			return
		}
	}
}

// logSink is where the request log's records go: the REQUEST_LOG writer,
// a store. write is called from one goroutine at a time, with records in
// the order they were queued; it must not keep recs, which the queue
// reuses. An error means the records were not written and are to be tried
// again (a store that is down); a sink that cannot usefully retry (a
// file) reports its own errors and returns nil.
type logSink interface {
	writeLog(ctx context.Context, recs []logRecord) error
}

// logQueue holds the records waiting for one sink and writes them to it
// off the request path: once per interval, or as soon as a batch is
// waiting. It holds at most size records; what would overflow it is
// dropped and counted in dropped (apiproxy_request_log_dropped_total),
// never lost silently. add is safe for concurrent use; run is the writer
// loop, owned by whoever started it; flush writes what waits now.
type logQueue struct {
	sink   logSink
	logger *slog.Logger
	// size, batch and interval are set by newLogQueue to
	// requestLogQueueSize, requestLogBatch and requestLogInterval; tests
	// shrink them. None may be 0.
	size     int // most records waiting
	batch    int // most records per write
	interval time.Duration

	dropped atomic.Int64 // records that found the queue full
	wake    chan struct{}

	mu      sync.Mutex
	pending []logRecord
	failing bool // the last write failed; logged once until one succeeds

	writeMu sync.Mutex // one write at a time: run and flush
	spare   []logRecord
	// wrote, if set, is told the size of each batch the sink took; it
	// runs under writeMu (serverLog.loadSpill).
	wrote func(n int)
}

// newLogQueue returns a queue of the default size writing to sink.
func newLogQueue(sink logSink, logger *slog.Logger) *logQueue {
	return &logQueue{sink: sink, logger: logger, size: requestLogQueueSize,
		batch: requestLogBatch, interval: requestLogInterval,
		wake: make(chan struct{}, 1)}
}

// add queues rec, whose ID requestLog.add set, or counts it in dropped if
// the queue is full. It never blocks on the sink.
func (q *logQueue) add(rec logRecord) {
	q.mu.Lock()
	if len(q.pending) >= q.size {
		q.mu.Unlock()
		q.dropped.Add(1)
		return
	}
	q.pending = append(q.pending, rec)
	full := len(q.pending) >= q.batch
	q.mu.Unlock()
	if full {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// waiting returns the number of records waiting.
func (q *logQueue) waiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// run writes what waits every interval, or when a batch is waiting, until
// ctx is done. It does not flush on return: shutdown calls flush, with a
// deadline of its own.
func (q *logQueue) run(ctx context.Context) {
	t := time.NewTicker(q.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-q.wake:
		}
		// A failed write is logged by flush and retried at the next tick.
		_ = q.flush(ctx)
	}
}

// flush writes the waiting records to the sink, a batch per write, until
// none wait or a write fails. Records a failed write did not take stay
// queued, ahead of newer ones, and the error is returned (and logged the
// first time in a row). Safe for concurrent use.
func (q *logQueue) flush(ctx context.Context) error {
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	for {
		q.mu.Lock()
		n := min(len(q.pending), q.batch)
		if n == 0 {
			q.mu.Unlock()
			return nil
		}
		// Copy the batch out, so that add can go on appending while the
		// sink writes.
		batch := append(q.spare[:0], q.pending[:n]...)
		q.mu.Unlock()

		err := q.sink.writeLog(ctx, batch)

		q.mu.Lock()
		if err == nil {
			rest := copy(q.pending, q.pending[n:])
			clear(q.pending[rest:])
			q.pending = q.pending[:rest]
		}
		wasFailing := q.failing
		q.failing = err != nil
		q.mu.Unlock()
		clear(batch)
		q.spare = batch[:0]
		if err == nil && q.wrote != nil {
			q.wrote(n)
		}
		switch {
		case err != nil:
			if !wasFailing {
				q.logger.Warn("request log write failed; records wait in the queue", "error", err)
			}
			return fmt.Errorf("write request log: %w", err)
		case wasFailing:
			q.logger.Info("request log written again")
		}
	}
}

// requestLog fans records out to one queue per sink, so a sink that is
// down (a store) holds back neither the others (the REQUEST_LOG file) nor
// the proxy. Its zero value logs nowhere.
type requestLog struct {
	queues []*logQueue
	// ids gives a record its id once, so that every sink has the same one
	// (a store that makes its own, the Redis stream, keeps it in the file
	// only).
	ids logIDs
}

// add gives rec the id of a record queued at at, the time its request
// ended, and queues it for every sink.
func (l *requestLog) add(rec logRecord, at time.Time) {
	if len(l.queues) == 0 {
		return
	}
	rec.ID = l.ids.next(at)
	for _, q := range l.queues {
		q.add(rec)
	}
}

// dropped returns the records dropped by a full queue, all sinks
// together: apiproxy_request_log_dropped_total.
func (l *requestLog) dropped() int64 {
	var n int64
	for _, q := range l.queues {
		n += q.dropped.Load()
	}
	return n
}

// run runs every queue's writer until ctx is done, and returns when they
// have.
func (l *requestLog) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, q := range l.queues {
		wg.Go(func() { q.run(ctx) })
	}
	wg.Wait()
}

// flush writes what waits in every queue, for shutdown; it returns the
// errors of the sinks that failed.
func (l *requestLog) flush(ctx context.Context) error {
	var errs []error
	for _, q := range l.queues {
		errs = append(errs, q.flush(ctx))
	}
	return errors.Join(errs...)
}

// jsonLines is the REQUEST_LOG sink: one JSON line per record, to stdout
// or appended to a file. A file is reopened by reopen (SIGHUP), so that
// logrotate can rename it and have new lines go to a new file at the path.
// A write error is logged once, until a write succeeds again, and the
// records are dropped: the proxy goes on. Safe for concurrent use.
type jsonLines struct {
	path   string // "" for stdout
	logger *slog.Logger

	mu      sync.Mutex
	w       io.Writer
	f       *os.File // nil for stdout
	buf     []byte   // reused by writeLog
	failing bool
}

// openJSONLines returns the sink REQUEST_LOG names: "stdout", or a file
// path opened for appending (created 0640 if missing).
func openJSONLines(dest string, logger *slog.Logger) (*jsonLines, error) {
	if dest == "stdout" {
		return &jsonLines{logger: logger, w: os.Stdout}, nil
	}
	j := &jsonLines{path: dest, logger: logger}
	f, err := j.open()
	if err != nil {
		return nil, err
	}
	j.f, j.w = f, f
	return j, nil
}

func (j *jsonLines) open() (*os.File, error) {
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open request log %s: %w", j.path, err)
	}
	return f, nil
}

// reopen opens the file at the path again and closes the old one, for
// SIGHUP after logrotate renamed it. A no-op for stdout. On error the old
// file is kept and the error returned, for the caller to log.
func (j *jsonLines) reopen() error {
	if j.path == "" {
		return nil
	}
	f, err := j.open()
	if err != nil {
		return err
	}
	j.mu.Lock()
	old := j.f
	j.f, j.w = f, f
	j.failing = false
	j.mu.Unlock()
	return old.Close()
}

// close closes the file; a no-op for stdout.
func (j *jsonLines) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	return j.f.Close()
}

// writeLog writes recs as JSON lines in one write. It never returns an
// error: a record that could not be written is logged (once) and dropped.
func (j *jsonLines) writeLog(_ context.Context, recs []logRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := j.buf[:0]
	for i := range recs {
		b = append(recs[i].appendJSON(b, true), '\n')
	}
	j.buf = b
	_, err := j.w.Write(b)
	if err != nil {
		if !j.failing {
			j.logger.Error("request log write failed; records dropped until it works again",
				"path", j.path, "error", err)
		}
		j.failing = true
		return nil
	}
	if j.failing {
		j.logger.Info("request log written again", "path", j.path)
		j.failing = false
	}
	return nil
}
