package main

// Reading the request log back (SPEC §12): the stores that keep it, the
// query GET /api/requests makes of them, and the match both stores apply.

import (
	"context"
	"encoding/json"
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
	// NotOK asks for the records whose status is not 2xx alone (the
	// dashboard's recent errors).
	NotOK bool
}

// match reports whether r is one of the records q asks for (Before and
// Limit aside).
func (q *logQuery) match(r *logRecord) bool {
	switch {
	case q.Prefix != "" && r.Prefix != q.Prefix,
		q.KeyID != "" && string(r.KeyID) != q.KeyID,
		q.Model != "" && string(r.Model) != q.Model,
		q.Status != 0 && r.Status != q.Status,
		q.Class != 0 && r.Status/100 != q.Class,
		q.NotOK && r.Status/100 == 2:
		return false
	}
	return true
}

// logBounds are the bounds of a store's request log. Tests shrink them;
// a zero field is its default.
type logBounds struct {
	keep int // records kept; 0 is requestLogKeep
	scan int // records one readLog looks at; 0 is requestLogScan
}

// limits returns the bounds in effect.
func (b logBounds) limits() (keep, scan int) {
	keep, scan = requestLogKeep, requestLogScan
	if b.keep > 0 {
		keep = b.keep
	}
	if b.scan > 0 {
		scan = b.scan
	}
	return keep, scan
}

// encodeStoredLogRecord returns the JSON a store keeps for r: every field
// of SPEC §12 but the id, which the store keeps as the record's key
// (bbolt) or replaces by its own (the Redis stream's entry id).
func encodeStoredLogRecord(r *logRecord) []byte {
	return r.appendJSON(make([]byte, 0, 448), false)
}

// decodeStoredLogRecord reads a value of encodeStoredLogRecord as the
// record of id; nil when it does not decode (a value written by hand or
// by a later version), which readLog skips.
func decodeStoredLogRecord(id string, v []byte) *logRecord {
	var r logRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil
	}
	r.ID = id
	return &r
}

// logPage collects one page of readLog from the records a store hands it
// newest first, from the cursor on, so that both stores apply the same
// limit, scan bound and next rules. Not safe for concurrent use.
type logPage struct {
	q     *logQuery
	limit int // q.Limit, kept within 1..requestLogMaxLimit
	scan  int // most records to look at
	// recs are the records that matched, newest first.
	recs   []logRecord
	looked int
	last   string // id of the last record looked at
}

// newLogPage returns the page q asks for, looking at scan records at most.
// A q.Limit outside 1..requestLogMaxLimit is taken as the default or the
// maximum: the API validates it, a store does not fail on it.
func newLogPage(q *logQuery, scan int) *logPage {
	limit := q.Limit
	if limit <= 0 {
		limit = requestLogDefaultLimit
	}
	return &logPage{q: q, limit: min(limit, requestLogMaxLimit), scan: scan}
}

// look takes the next older record, id, decoded as r: nil when it did not
// decode, which counts as looked at but is never returned. It reports
// whether the page wants another record; once it returns false the store
// stops and asks next whether an older record exists.
func (p *logPage) look(id string, r *logRecord) bool {
	p.looked++
	p.last = id
	if r != nil && p.q.match(r) {
		p.recs = append(p.recs, *r)
	}
	return len(p.recs) < p.limit && p.looked < p.scan
}

// wanted returns how many more records the page may look at: as many as
// are missing when every record matches, else what is left of the scan
// bound. A store reading in chunks asks for one more, which tells it
// whether an older record exists when the page is complete.
func (p *logPage) wanted() int {
	left := p.scan - p.looked
	if p.q.all() {
		left = min(left, p.limit-len(p.recs))
	}
	return left
}

// next returns the page's next cursor once look returned false: the id of
// the last record looked at, which is the last returned when the limit
// was filled, or "" when no record older than it exists (older). A store
// whose records ran out before the page was complete returns "" without
// asking.
func (p *logPage) next(older bool) string {
	if !older {
		return ""
	}
	return p.last
}

// all reports whether q matches every record.
func (q *logQuery) all() bool {
	return q.Prefix == "" && q.KeyID == "" && q.Model == "" && q.Status == 0 && q.Class == 0
}
