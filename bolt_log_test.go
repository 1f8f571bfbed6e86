package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The request log's contract runs against the embedded store in
// storecontract_log_test.go; the tests here cover what is particular to
// bbolt: keys, the clock guard, the kept count.

// TestBoltLogStoredForm: a record is kept under its id as 8 big-endian
// bytes, its value the record's JSON without the id.
func TestBoltLogStoredForm(t *testing.T) {
	s := openEmptyBoltStore(t)
	var w testLogWriter
	w.write(t, s, testLogRecords(0, 1)...)
	recs, _ := mustReadLog(t, s, logQuery{Limit: 1})
	if len(recs) != 1 {
		t.Fatalf("read %d records, want 1", len(recs))
	}
	want, _ := hex.DecodeString(recs[0].ID)
	err := s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(boltRequestLog).Cursor().First()
		if !slices.Equal(k, want) {
			t.Errorf("key = %x, want the id %s", k, recs[0].ID)
		}
		var fields map[string]any
		if err := json.Unmarshal(v, &fields); err != nil {
			t.Fatalf("value %s: %v", v, err)
		}
		if _, ok := fields["id"]; ok {
			t.Errorf("value %s holds the id, which the key holds", v)
		}
		if fields["prefix"] != "/openai" {
			t.Errorf("value %s, want the record's JSON", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBoltLogClockStepBack: after a restart whose clock stepped back, new
// ids are not above the stored ones; the records go after them all the
// same, under the last key + 1, and read back with those ids, newest first.
func TestBoltLogClockStepBack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	first := testLogRecord(0)
	first.ID = fmt.Sprintf("%016x", now.UnixNano())
	if err := s.writeLog(ctx, []logRecord{first}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	behind := testLogRecords(1, 3)
	for i := range behind {
		behind[i].ID = fmt.Sprintf("%016x", now.Add(-time.Hour).UnixNano()+int64(i))
	}
	if err := s.writeLog(ctx, behind); err != nil {
		t.Fatal(err)
	}
	recs, next := mustReadLog(t, s, logQuery{Limit: 10})
	if got, want := logSeqs(recs), []int{2, 1, 0}; !slices.Equal(got, want) || next != "" {
		t.Fatalf("log = %v, next %q; want %v and \"\"", got, next, want)
	}
	for i, r := range recs {
		if want := fmt.Sprintf("%016x", now.UnixNano()+int64(2-i)); r.ID != want {
			t.Errorf("record %d has id %s, want %s", logSeqs(recs)[i], r.ID, want)
		}
	}
}

// TestBoltLogCountAcrossReopen: the count that the keep bound is checked
// against is taken from the file after a reopen, not restarted at zero.
func TestBoltLogCountAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	var w testLogWriter
	w.write(t, s, testLogRecords(0, 8)...)
	s.Close()

	s, err = openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.log.bounds = logBounds{keep: 10}
	w.write(t, s, testLogRecords(8, 13)...)
	if got, want := logSeqs(readWholeLog(t, s, logQuery{Limit: 100})), descending(13, 3); !slices.Equal(got, want) {
		t.Errorf("log = %v, want %v", got, want)
	}
	w.write(t, s, testLogRecords(13, 14)...)
	if got, want := logSeqs(readWholeLog(t, s, logQuery{Limit: 100})), descending(14, 4); !slices.Equal(got, want) {
		t.Errorf("log = %v, want %v", got, want)
	}
}

// TestBoltLogGrowsUnderARead: the request log's writes go on while a read
// transaction is open (an admin page reading the log) and the file grows
// well past its first map. bbolt maps the file again as it outgrows the
// map, and that waits for every open read; boltMmapSize maps room enough
// from the start.
func TestBoltLogGrowsUnderARead(t *testing.T) {
	s := openEmptyBoltStore(t)
	tx, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	before := tx.Size()
	done := make(chan error, 1)
	go func() {
		var ids logIDs
		for range 8 {
			recs := testLogRecords(0, 1000)
			for i := range recs {
				recs[i].ID = ids.next(time.Now())
			}
			if err := s.writeLog(context.Background(), recs); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		tx.Rollback() // lets a write waiting on it end, then fail the test
		<-done
		t.Fatal("the log's writes waited for an open read transaction")
	}
	fi, err := os.Stat(s.db.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 8*before {
		t.Fatalf("the file grew from %d to %d bytes: too little to need a new map", before, fi.Size())
	}
}

// TestBoltLogCancelled: a write whose context is done writes nothing and
// says the store is unavailable, as the admin writes do.
func TestBoltLogCancelled(t *testing.T) {
	s := openEmptyBoltStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	recs := testLogRecords(0, 1)
	recs[0].ID = fmt.Sprintf("%016x", time.Now().UnixNano())
	if err := s.writeLog(ctx, recs); !errors.Is(err, errStoreUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("writeLog with a cancelled context = %v, want errStoreUnavailable wrapping context.Canceled", err)
	}
	if recs, _ := mustReadLog(t, s, logQuery{Limit: 1}); len(recs) != 0 {
		t.Errorf("the cancelled write stored %d records", len(recs))
	}
}

// BenchmarkBoltWriteLog writes batches of requestLogBatch records, as the
// queue does, one commit (and fsync) each; ns/record is the figure.
func BenchmarkBoltWriteLog(b *testing.B) {
	s := openEmptyBoltStore(b)
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
