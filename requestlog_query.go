package main

// Reading the request log back (SPEC §12): the stores that keep it, the
// query GET /api/requests makes of them, and the match both stores apply.

import (
	"context"
	"errors"
	"time"
)

const (
	// requestLogKeep and requestLogMaxAge bound the log a store keeps:
	// the last 100,000 records or 7 days, whichever is less (SPEC §12).
	requestLogKeep   = 100_000
	requestLogMaxAge = 7 * 24 * time.Hour
	// requestLogScan bounds how many records one read looks at. A filter
	// that matches few records ends its page early, with a next cursor
	// where the scan stopped, rather than read the whole log in one call.
	requestLogScan = 20_000
	// Limits of GET /api/requests' limit.
	requestLogDefaultLimit = 100
	requestLogMaxLimit     = 1000
)

// errBadLogCursor is returned by readLog for a before id that is not one
// of its store's ids; GET /api/requests answers it 400.
var errBadLogCursor = errors.New("before is not a request log id")

// logStore is a Store that keeps the request log: the embedded store in
// its file, the Redis store in one capped stream for the fleet. writeLog
// (logSink) appends records in the order given, which is id order for the
// embedded store; it trims the log to requestLogKeep records and
// requestLogMaxAge as it goes. An error means nothing was written (or
// what was will not be read twice: a retry must not duplicate records), and
// wraps errStoreUnavailable when the store cannot be reached.
type logStore interface {
	logSink
	// readLog returns up to q.Limit records that match q, newest first,
	// older than q.Before when it is set. next is the Before of the page
	// after this one: "" when no older record exists. A page may be short
	// with a next cursor when the scan bound (requestLogScan) stopped it.
	// Paging with next neither skips nor repeats a record, however many
	// are written meanwhile.
	readLog(ctx context.Context, q logQuery) (recs []logRecord, next string, err error)
}

// logQuery is what GET /api/requests asks of the log. Empty fields match
// everything.
type logQuery struct {
	Limit  int    // 1..requestLogMaxLimit
	Before string // an id that readLog returned
	Prefix string
	KeyID  string
	Model  string
	// Status is an exact status; Class a status class, 1 to 5 (5 for
	// "5xx"). At most one of them is set.
	Status int
	Class  int
}

// match reports whether r is one of the records q asks for (Before and
// Limit aside).
func (q *logQuery) match(r *logRecord) bool {
	switch {
	case q.Prefix != "" && r.Prefix != q.Prefix,
		q.KeyID != "" && string(r.KeyID) != q.KeyID,
		q.Model != "" && string(r.Model) != q.Model,
		q.Status != 0 && r.Status != q.Status,
		q.Class != 0 && r.Status/100 != q.Class:
		return false
	}
	return true
}
