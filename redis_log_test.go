package main

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The request log's contract runs against the Redis store in
// storecontract_log_test.go; the tests here cover the fleet's one stream,
// a batch given again, entries that do not decode and outages.

// TestRedisLogBatchGivenAgain: a batch given again after its reply was
// lost (the queue retries what an error left) appends none of its records
// twice, and a batch that holds records already written and new ones
// appends only the new ones.
func TestRedisLogBatchGivenAgain(t *testing.T) {
	ctx := context.Background()
	addr := testRedisAddr(t)
	s := openTestRedisStore(t, addr, testKeyPrefix(t, addr), "")
	var ids logIDs
	recs := testLogRecords(0, 5)
	for i := range recs {
		recs[i].ID = ids.next(time.Now())
	}
	for range 2 {
		if err := s.writeLog(ctx, recs[:3]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.writeLog(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if got, want := logSeqs(readWholeLog(t, s, logQuery{Limit: 100})), descending(5, 0); !slices.Equal(got, want) {
		t.Errorf("log = %v, want %v: each record once", got, want)
	}
}

// TestRedisLogFleet: two instances on one Redis write to one stream; each
// reads the other's records, in the order they were appended. Each
// instance's own last id guards its retries only: records of B whose ids
// are older than A's last are appended all the same.
func TestRedisLogFleet(t *testing.T) {
	addr := testRedisAddr(t)
	prefix := testKeyPrefix(t, addr)
	a := openTestRedisStore(t, addr, prefix, "")
	b := openTestRedisStore(t, addr, prefix, "")
	var idsA, idsB logIDs
	fromB := testLogRecords(0, 2)
	for i := range fromB {
		fromB[i].ID = idsB.next(time.Now()) // queued at B before A's
	}
	fromA := testLogRecords(2, 4)
	for i := range fromA {
		fromA[i].ID = idsA.next(time.Now())
	}
	ctx := context.Background()
	if err := a.writeLog(ctx, fromA); err != nil {
		t.Fatal(err)
	}
	if err := b.writeLog(ctx, fromB); err != nil {
		t.Fatal(err)
	}
	want := []int{1, 0, 3, 2} // append order, newest first
	for name, s := range map[string]*redisStore{"A": a, "B": b} {
		if got := logSeqs(readWholeLog(t, s, logQuery{Limit: 100})); !slices.Equal(got, want) {
			t.Errorf("instance %s reads %v, want %v", name, got, want)
		}
	}
}

// TestRedisLogUndecodableEntry: an entry that is not a record (written by
// hand, or by another program) is skipped, not an error.
func TestRedisLogUndecodableEntry(t *testing.T) {
	ctx := context.Background()
	addr := testRedisAddr(t)
	s := openTestRedisStore(t, addr, testKeyPrefix(t, addr), "")
	var w testLogWriter
	w.write(t, s, testLogRecords(0, 1)...)
	stream := s.key(redisRequestLogKey)
	for _, values := range [][]any{{"r", "{not json"}, {"other", "field"}} {
		if err := s.client.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	w.write(t, s, testLogRecords(1, 2)...)
	recs, next := mustReadLog(t, s, logQuery{Limit: 10})
	if got, want := logSeqs(recs), []int{1, 0}; !slices.Equal(got, want) || next != "" {
		t.Errorf("log = %v, next %q; want %v and \"\"", got, next, want)
	}
}

// TestRedisLogOutage: while Redis is down, writeLog and readLog fail with
// errStoreUnavailable (the queue keeps the records, GET /api/requests
// answers 503); once it is back, writes land again.
func TestRedisLogOutage(t *testing.T) {
	rs := startRedisServer(t)
	// The client options of production (parseRedisURL), whose dial
	// retries report a refused connection quickly.
	opts, err := parseRedisURL(rs.url())
	if err != nil {
		t.Fatal(err)
	}
	s, err := openRedisStoreWith(context.Background(), opts, redisKeyPrefix, "", testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var w testLogWriter
	w.write(t, s, testLogRecords(0, 1)...)

	rs.kill()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	recs := testLogRecords(1, 2)
	recs[0].ID = w.ids.next(time.Now())
	if err := s.writeLog(ctx, recs); !errors.Is(err, errStoreUnavailable) {
		t.Errorf("writeLog while redis is down = %v, want errStoreUnavailable", err)
	}
	if _, _, err := s.readLog(ctx, logQuery{Limit: 10}); !errors.Is(err, errStoreUnavailable) {
		t.Errorf("readLog while redis is down = %v, want errStoreUnavailable", err)
	}

	rs.start() // empty: no persistence
	if err := s.writeLog(ctx, recs); err != nil {
		t.Fatalf("writeLog once redis is back: %v", err)
	}
	if got := logSeqs(readWholeLog(t, s, logQuery{Limit: 10})); !slices.Equal(got, []int{1}) {
		t.Errorf("log after the outage = %v, want [1]", got)
	}
}

// BenchmarkRedisWriteLog writes batches of requestLogBatch records, as the
// queue does, one script call each; ns/record is the figure.
func BenchmarkRedisWriteLog(b *testing.B) {
	addr := testRedisAddr(b)
	s := openTestRedisStore(b, addr, testKeyPrefix(b, addr), "")
	var ids logIDs
	recs := testLogRecords(0, requestLogBatch)
	b.ReportAllocs()
	for b.Loop() {
		for i := range recs {
			recs[i].ID = ids.next(time.Now())
		}
		if err := s.writeLog(context.Background(), recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/record")
}
