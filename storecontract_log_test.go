package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestLogStoreContract runs the request log's contract (logStore, SPEC
// §12) against both stores, opened as the Store contract opens them.
func TestLogStoreContract(t *testing.T) {
	t.Run("bolt", func(t *testing.T) { testLogStoreContract(t, openContractBoltStore) })
	t.Run("redis", func(t *testing.T) { testLogStoreContract(t, openContractRedisStore(testRedisAddr(t))) })
}

// testLogWriter writes records to a logStore as the request log's queue
// would: each record given an id (logIDs) when it is written, batches of
// requestLogBatch at most.
type testLogWriter struct {
	ids logIDs
}

// write gives recs ids and writes them, failing the test on an error.
func (w *testLogWriter) write(t testing.TB, s logStore, recs ...logRecord) {
	t.Helper()
	for batch := range slices.Chunk(recs, requestLogBatch) {
		for i := range batch {
			batch[i].ID = w.ids.next(time.Now())
		}
		if err := s.writeLog(context.Background(), batch); err != nil {
			t.Fatalf("writeLog of %d records: %v", len(batch), err)
		}
	}
}

// testLogRecord returns record number n of a test: every field set, its
// values varied with n so that each filter matches a part of them, and n
// in BytesIn (logSeqs).
func testLogRecord(n int) logRecord {
	statuses := []int{200, 404, 429, 500, 503}
	r := logRecord{
		Time:             logTime(time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC).Add(time.Duration(n) * time.Millisecond)),
		Prefix:           []string{"/openai", "/anthropic", "/local"}[n%3],
		Method:           "POST",
		Path:             "/v1/chat/completions",
		Status:           statuses[n%len(statuses)],
		KeyID:            optString([]string{"", "k_a", "k_b", "k_c"}[n%4]),
		Model:            optString([]string{"gpt-4o", "claude", ""}[n%3]),
		Stream:           n%2 == 0,
		PromptTokens:     int64(10 + n),
		CompletionTokens: int64(20 + n),
		TotalTokens:      int64(30 + 2*n),
		LatencyMS:        812.4,
		TTFBMS:           310.7,
		BytesIn:          int64(n),
		BytesOut:         4100,
		Target:           optIndex(n % 2),
		Attempts:         1 + n%2,
		ClientClosed:     n%7 == 0,
		ClientIP:         logAddr(netip.MustParseAddr("203.0.113.7")),
	}
	if r.KeyID != "" {
		r.KeyName = optString("team-" + string(r.KeyID))
	}
	if r.Status >= 500 {
		r.Code = "upstream_error"
	}
	return r
}

// testLogRecords returns records from to to-1 of a test (testLogRecord).
func testLogRecords(from, to int) []logRecord {
	recs := make([]logRecord, 0, to-from)
	for n := from; n < to; n++ {
		recs = append(recs, testLogRecord(n))
	}
	return recs
}

// logSeqs returns the test numbers of recs (BytesIn), in order.
func logSeqs(recs []logRecord) []int {
	out := make([]int, len(recs))
	for i, r := range recs {
		out[i] = int(r.BytesIn)
	}
	return out
}

// descending returns the numbers from-1 down to to.
func descending(from, to int) []int {
	var out []int
	for n := from - 1; n >= to; n-- {
		out = append(out, n)
	}
	return out
}

// mustReadLog reads one page of s, failing the test on an error.
func mustReadLog(t testing.TB, s logStore, q logQuery) ([]logRecord, string) {
	t.Helper()
	recs, next, err := s.readLog(context.Background(), q)
	if err != nil {
		t.Fatalf("readLog(%+v): %v", q, err)
	}
	return recs, next
}

// readWholeLog pages through what s holds that q matches, with next, and
// returns it newest first.
func readWholeLog(t testing.TB, s logStore, q logQuery) []logRecord {
	t.Helper()
	var all []logRecord
	for range 10_000 {
		recs, next := mustReadLog(t, s, q)
		all = append(all, recs...)
		if next == "" {
			return all
		}
		q.Before = next
	}
	t.Fatalf("readLog(%+v) still gives a next cursor after 10,000 pages", q)
	return nil
}

// setLogBounds shrinks s's request log bounds for a test.
func setLogBounds(t testing.TB, s Store, b logBounds) {
	t.Helper()
	switch s := s.(type) {
	case *boltStore:
		s.log.bounds = b
	case *redisStore:
		s.logBounds = b
	default:
		t.Fatalf("setLogBounds: no bounds for %T", s)
	}
}

// withoutID returns the JSON of r without its id.
func withoutID(t testing.TB, r logRecord) string {
	t.Helper()
	r.ID = ""
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testLogStoreContract(t *testing.T, open storeOpener) {
	ctx := context.Background()
	openLog := func(t *testing.T) (logStore, func(t *testing.T) logStore) {
		s, reopen := open(t)
		ls, ok := s.(logStore)
		if !ok {
			t.Fatalf("%T does not keep the request log", s)
		}
		return ls, func(t *testing.T) logStore { return reopen(t).(logStore) }
	}

	t.Run("empty", func(t *testing.T) {
		s, _ := openLog(t)
		if recs, next := mustReadLog(t, s, logQuery{Limit: 10}); len(recs) != 0 || next != "" {
			t.Errorf("readLog of an empty log = %d records, next %q; want none and \"\"", len(recs), next)
		}
	})

	t.Run("every field reads back as written", func(t *testing.T) {
		s, _ := openLog(t)
		full := testLogRecord(1)
		full.ClientClosed, full.Code = true, "upstream_idle_timeout"
		bare := logRecord{Time: logTime(time.Date(2026, 12, 2, 8, 0, 0, 123e6, time.UTC)), Prefix: "/p",
			Method: "GET", Path: "/", Status: 403, Code: "invalid_key", Target: noIndex, ClientIP: logAddr(netip.MustParseAddr("::1"))}
		var w testLogWriter
		written := []logRecord{full, bare}
		w.write(t, s, written...)
		got, _ := mustReadLog(t, s, logQuery{Limit: 10})
		if len(got) != 2 {
			t.Fatalf("read %d records, want 2", len(got))
		}
		for i, want := range []logRecord{written[1], written[0]} {
			if g, w := withoutID(t, got[i]), withoutID(t, want); g != w {
				t.Errorf("record %d reads back as\n%s\nwant\n%s", i, g, w)
			}
			if got[i].ID == "" {
				t.Errorf("record %d reads back without an id", i)
			}
			if _, ok := s.(*boltStore); ok && got[i].ID != want.ID {
				t.Errorf("record %d reads back with id %s, want its own %s", i, got[i].ID, want.ID)
			}
		}
	})

	t.Run("newest first, limit and next", func(t *testing.T) {
		s, _ := openLog(t)
		var w testLogWriter
		for from := 0; from < 20; from += 5 {
			w.write(t, s, testLogRecords(from, from+5)...)
		}
		var q logQuery
		q.Limit = 8
		for _, want := range [][]int{descending(20, 12), descending(12, 4), descending(4, 0)} {
			recs, next := mustReadLog(t, s, q)
			if got := logSeqs(recs); !slices.Equal(got, want) {
				t.Fatalf("page before %q = %v, want %v", q.Before, got, want)
			}
			if len(want) == q.Limit && next != recs[len(recs)-1].ID {
				t.Errorf("next of a full page = %q, want its last id %q", next, recs[len(recs)-1].ID)
			}
			if len(want) < q.Limit && next != "" {
				t.Errorf("next of the last page = %q, want \"\"", next)
			}
			q.Before = next
		}
		// A page that ends on the oldest record says so: next is "".
		q = logQuery{Limit: 10}
		recs, next := mustReadLog(t, s, q)
		q.Before = next
		recs, next = mustReadLog(t, s, q)
		if got, want := logSeqs(recs), descending(10, 0); !slices.Equal(got, want) || next != "" {
			t.Errorf("second page of 10 = %v, next %q; want %v and \"\"", got, next, want)
		}
	})

	t.Run("filters", func(t *testing.T) {
		s, _ := openLog(t)
		var w testLogWriter
		written := testLogRecords(0, 120)
		w.write(t, s, written...)
		tests := []struct {
			name string
			q    logQuery
			want func(r logRecord) bool
		}{
			{"prefix", logQuery{Prefix: "/anthropic"}, func(r logRecord) bool { return r.Prefix == "/anthropic" }},
			{"key_id", logQuery{KeyID: "k_b"}, func(r logRecord) bool { return r.KeyID == "k_b" }},
			{"model", logQuery{Model: "claude"}, func(r logRecord) bool { return r.Model == "claude" }},
			{"exact status", logQuery{Status: 429}, func(r logRecord) bool { return r.Status == 429 }},
			{"class 5", logQuery{Class: 5}, func(r logRecord) bool { return r.Status >= 500 && r.Status <= 599 }},
			{"class 2", logQuery{Class: 2}, func(r logRecord) bool { return r.Status >= 200 && r.Status <= 299 }},
			{"prefix, key, model and class", logQuery{Prefix: "/openai", KeyID: "k_c", Model: "gpt-4o", Class: 4},
				func(r logRecord) bool {
					return r.Prefix == "/openai" && r.KeyID == "k_c" && r.Model == "gpt-4o" && r.Status/100 == 4
				}},
			{"no match", logQuery{Model: "none"}, func(logRecord) bool { return false }},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var want []int
				for i := len(written) - 1; i >= 0; i-- {
					if tt.want(written[i]) {
						want = append(want, int(written[i].BytesIn))
					}
				}
				q := tt.q
				q.Limit = 7
				if got := logSeqs(readWholeLog(t, s, q)); !slices.Equal(got, want) {
					t.Errorf("pages of %+v = %v, want %v", tt.q, got, want)
				}
			})
		}
	})

	// Pages read while records are written neither skip nor repeat one,
	// and hold exactly what existed when the first page was read.
	t.Run("paging while records are written", func(t *testing.T) {
		s, _ := openLog(t)
		var w testLogWriter
		for from := 0; from < 2500; from += 500 {
			w.write(t, s, testLogRecords(from, from+500)...)
		}
		q := logQuery{Limit: 100}
		var got []int
		for page := 0; ; page++ {
			recs, next := mustReadLog(t, s, q)
			got = append(got, logSeqs(recs)...)
			if next == "" {
				break
			}
			if page > 100 {
				t.Fatalf("still paging after %d pages", page)
			}
			w.write(t, s, testLogRecords(10_000+20*page, 10_000+20*page+20)...)
			q.Before = next
		}
		if want := descending(2500, 0); !slices.Equal(got, want) {
			t.Errorf("paged through %d records, want the 2500 written before, newest first, once each (first %v)",
				len(got), got[:min(len(got), 10)])
		}
	})

	// A filter that matches little ends its page at the scan bound with a
	// cursor where the scan stopped; following it reaches every match.
	t.Run("scan bound", func(t *testing.T) {
		s, _ := openLog(t)
		setLogBounds(t, s.(Store), logBounds{scan: 50})
		recs := testLogRecords(0, 120)
		recs[0].Model, recs[119].Model = "rare", "rare"
		var w testLogWriter
		w.write(t, s, recs...)
		q := logQuery{Limit: 10, Model: "rare"}
		for _, want := range []struct {
			seqs []int
			next int // number of the record next names, -1 for ""
		}{{[]int{119}, 70}, {nil, 20}, {[]int{0}, -1}} {
			page, next := mustReadLog(t, s, q)
			if got := logSeqs(page); !slices.Equal(got, want.seqs) {
				t.Errorf("page before %q = %v, want %v", q.Before, got, want.seqs)
			}
			wantNext := ""
			if want.next >= 0 {
				wantNext = idOfSeq(t, s, want.next)
			}
			if next != wantNext {
				t.Fatalf("next = %q, want %q (record %d)", next, wantNext, want.next)
			}
			q.Before = next
		}
	})

	t.Run("a bad cursor is errBadLogCursor", func(t *testing.T) {
		s, _ := openLog(t)
		var w testLogWriter
		w.write(t, s, testLogRecords(0, 3)...)
		for _, before := range []string{"nope", "1-2-3", "-", "12-", "0123456789abcdeg", "+", "(1-0"} {
			if _, _, err := s.readLog(ctx, logQuery{Limit: 10, Before: before}); !errors.Is(err, errBadLogCursor) {
				t.Errorf("readLog(before %q) = %v, want errBadLogCursor", before, err)
			}
		}
	})

	t.Run("keeps the newest records up to the bound", func(t *testing.T) {
		s, _ := openLog(t)
		const keep = 200
		setLogBounds(t, s.(Store), logBounds{keep: keep})
		var w testLogWriter
		for from := 0; from < 600; from += 100 {
			w.write(t, s, testLogRecords(from, from+100)...)
		}
		got := logSeqs(readWholeLog(t, s, logQuery{Limit: 1000}))
		// Redis trims whole macro nodes (~): up to one node more is kept.
		slack := 100
		if _, ok := s.(*boltStore); ok {
			slack = 0
		}
		if len(got) < keep || len(got) > keep+slack {
			t.Errorf("the log holds %d records, want %d to %d", len(got), keep, keep+slack)
		}
		if want := descending(600, 600-keep); len(got) < keep || !slices.Equal(got[:keep], want) {
			t.Errorf("the log holds %v…, want the newest %d first", got[:min(len(got), 5)], keep)
		}
	})

	t.Run("drops records older than requestLogMaxAge", func(t *testing.T) {
		s, _ := openLog(t)
		testLogAgeTrim(t, s)
	})

	t.Run("another handle reads what one wrote", func(t *testing.T) {
		s, reopen := openLog(t)
		var w testLogWriter
		w.write(t, s, testLogRecords(0, 3)...)
		other := reopen(t)
		if got, want := logSeqs(readWholeLog(t, other, logQuery{Limit: 10})), descending(3, 0); !slices.Equal(got, want) {
			t.Errorf("the other handle reads %v, want %v", got, want)
		}
		w.write(t, other, testLogRecords(3, 5)...)
		if got, want := logSeqs(readWholeLog(t, other, logQuery{Limit: 10})), descending(5, 0); !slices.Equal(got, want) {
			t.Errorf("after writing through it, the other handle reads %v, want %v", got, want)
		}
	})

	t.Run("log calls after Close return errStoreClosed", func(t *testing.T) {
		s, _ := openLog(t)
		if err := s.(Store).Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.writeLog(ctx, testLogRecords(0, 1)); !errors.Is(err, errStoreClosed) {
			t.Errorf("writeLog after Close = %v, want errStoreClosed", err)
		}
		if _, _, err := s.readLog(ctx, logQuery{Limit: 1}); !errors.Is(err, errStoreClosed) {
			t.Errorf("readLog after Close = %v, want errStoreClosed", err)
		}
	})
}

// idOfSeq returns the id under which s keeps test record n, reading the
// whole log.
func idOfSeq(t testing.TB, s logStore, n int) string {
	t.Helper()
	for _, r := range readWholeLog(t, s, logQuery{Limit: 1000}) {
		if int(r.BytesIn) == n {
			return r.ID
		}
	}
	t.Fatalf("record %d is not in the log", n)
	return ""
}

// testLogAgeTrim checks that s drops the records queued more than
// requestLogMaxAge ago when it writes. Records are given their age by
// their id: the queue time in the embedded store, the entry id (written
// by hand, as no writeLog can choose one) in the Redis stream.
func testLogAgeTrim(t *testing.T, s logStore) {
	ctx := context.Background()
	now := time.Now()
	switch s := s.(type) {
	case *boltStore:
		recs := testLogRecords(0, 4)
		for i, age := range []time.Duration{8 * 24 * time.Hour, 7*24*time.Hour + time.Minute, 6 * 24 * time.Hour, 0} {
			recs[i].ID = fmt.Sprintf("%016x", now.Add(-age).UnixNano()+int64(i))
		}
		if err := s.writeLog(ctx, recs); err != nil {
			t.Fatal(err)
		}
		if got, want := logSeqs(readWholeLog(t, s, logQuery{Limit: 10})), []int{3, 2}; !slices.Equal(got, want) {
			t.Errorf("after writing records of 8 days, 7 days and a minute, 6 days and now, the log holds %v, want %v", got, want)
		}
	case *redisStore:
		// 300 small entries of 8 days ago fill whole macro nodes (of 100
		// entries at most), which the approximate trim drops; one node
		// may share old and new entries and stay.
		stream := s.key(redisRequestLogKey)
		old := now.Add(-8 * 24 * time.Hour).UnixMilli()
		rec := encodeStoredLogRecord(&logRecord{Target: noIndex})
		pipe := s.client.Pipeline()
		for i := range 300 {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: strconv.FormatInt(old, 10) + "-" + strconv.Itoa(i), Values: []any{"r", rec}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		var w testLogWriter
		w.write(t, s, testLogRecords(0, 1)...)
		cutoff := strconv.FormatInt(now.Add(-requestLogMaxAge).UnixMilli(), 10)
		left, err := s.client.XRange(ctx, stream, "-", "("+cutoff).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 100 {
			t.Errorf("%d of 300 entries older than 7 days are left, want 100 (one macro node) at most", len(left))
		}
		if len(left) > 0 && left[0].ID == strconv.FormatInt(old, 10)+"-0" {
			t.Errorf("the oldest entry is still there")
		}
		if got := logSeqs(readWholeLog(t, s, logQuery{Limit: 1000, Prefix: "/openai"})); !slices.Equal(got, []int{0}) {
			t.Errorf("the new record: read %v, want [0]", got)
		}
	default:
		t.Fatalf("testLogAgeTrim: no way to age records in %T", s)
	}
}
