package main

// The request log in the embedded store (SPEC §12): the bucket requestlog,
// keyed by the record's id as 8 big-endian bytes (so that bbolt's key
// order is id order, which is the order records were queued in), the
// value the record's JSON without its id (encodeStoredLogRecord).

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// boltRequestLog is the request log's bucket.
var boltRequestLog = []byte("requestlog")

var _ logStore = (*boltStore)(nil)

// boltLogBatch is the most records one writeLog of the embedded store
// takes, and how many waiting records wake its writer before its second
// is up: a commit costs two fdatasyncs and the rewrite of the pages it
// touched whatever it holds, so a few large commits cost less than many
// small ones (docs/performance.md, "The request log"). The queue
// (requestLogQueueSize) still holds a second of 10,000 requests a second.
const boltLogBatch = 5000

// logBatch tells the Server's request log queue the batch this store
// takes (boltLogBatch).
func (s *boltStore) logBatch() int { return boltLogBatch }

// boltLog is the request log's state in a boltStore. The number of
// records is kept here rather than counted on each write, which
// Bucket.Stats would do by walking the whole bucket: it is counted once,
// by the first writeLog after the store was opened, and then follows each
// commit. Only writeLog changes the bucket, so the count holds; the mutex
// makes the count and the commit it follows one step.
type boltLog struct {
	bounds logBounds // set by tests before use

	mu      sync.Mutex
	count   int  // records in the bucket, once counted
	counted bool // false until the first write counted them
}

// writeLog implements logSink: it appends recs in one transaction and
// trims the bucket in the same one to the keep bound and
// requestLogMaxAge, so an error means nothing was written.
//
// Unlike the admin writes (update) it waits for its transaction whatever
// ctx says once it has started: a write given up on that landed
// afterwards would be given again by the queue, and its ids, now not
// above the last key, would be stored a second time under new keys. A ctx
// already done writes nothing and returns errStoreUnavailable.
//
// A record is stored under its id unless that is not above the last key
// (the clock stepped back across a restart, since ids increase within a
// process), then under the last key + 1, which it reads back as: order
// and uniqueness hold either way. A record without a valid id is stored
// as if queued now.
func (s *boltStore) writeLog(ctx context.Context, recs []logRecord) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write request log: %w: %w", errStoreUnavailable, err)
	}
	if len(recs) == 0 {
		return nil
	}
	now := time.Now()
	ids := make([]uint64, len(recs))
	vals := make([][]byte, len(recs))
	for i := range recs {
		id, err := boltLogKey(recs[i].ID)
		if err != nil {
			id = uint64(now.UnixNano())
		}
		ids[i], vals[i] = id, encodeStoredLogRecord(&recs[i])
	}
	keep, _ := s.log.bounds.limits()
	cutoff := uint64(now.Add(-requestLogMaxAge).UnixNano())

	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	count, counted := s.log.count, s.log.counted
	err := s.commit("write request log", func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(boltRequestLog)
		if err != nil {
			return err
		}
		if !counted {
			count = boltCountKeys(b)
		}
		n, err := boltAppendLog(b, ids, vals)
		if err != nil {
			return err
		}
		count, err = boltTrimLog(b, count+n, keep, cutoff)
		return err
	})
	if err != nil {
		return err
	}
	s.log.count, s.log.counted = count, true
	return nil
}

// boltAppendLog puts vals under ids, each raised above the bucket's last
// key if it is not above it already, and returns how many it put.
func boltAppendLog(b *bolt.Bucket, ids []uint64, vals [][]byte) (int, error) {
	// Keys only ever go at the end: full pages waste no space on inserts
	// that will not come.
	b.FillPercent = 0.95
	var last uint64
	if k, _ := b.Cursor().Last(); k != nil {
		last = binary.BigEndian.Uint64(k)
	}
	for i, id := range ids {
		if id <= last {
			id = last + 1
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, id), vals[i]); err != nil {
			return i, err
		}
		last = id
	}
	return len(ids), nil
}

// boltTrimLog deletes the oldest records of b, which holds count, while
// more than keep are left or the oldest was queued before cutoff (Unix
// ns; a key is its record's queue time), and returns how many are left.
func boltTrimLog(b *bolt.Bucket, count, keep int, cutoff uint64) (int, error) {
	c := b.Cursor()
	// After a Delete, bbolt's cursor is not guaranteed to step to the
	// right neighbour; First finds the new oldest record afresh.
	for k, _ := c.First(); k != nil && (count > keep || binary.BigEndian.Uint64(k) < cutoff); k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return count, err
		}
		count--
	}
	return count, nil
}

// boltCountKeys counts b's keys, walking it once.
func boltCountKeys(b *bolt.Bucket) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// readLog implements logStore, walking the bucket backwards from q.Before
// (or the end) in one read transaction. It returns errBadLogCursor for a
// Before that is not 16 hex digits.
func (s *boltStore) readLog(ctx context.Context, q logQuery) ([]logRecord, string, error) {
	var start []byte
	if q.Before != "" {
		id, err := boltLogKey(q.Before)
		if err != nil {
			return nil, "", fmt.Errorf("read request log: %w", errBadLogCursor)
		}
		start = binary.BigEndian.AppendUint64(nil, id)
	}
	_, scan := s.log.bounds.limits()
	p := newLogPage(&q, scan)
	var next string
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(boltRequestLog)
		if b == nil { // no record written yet
			return nil
		}
		c := b.Cursor()
		k, v := c.Last()
		if start != nil {
			// Seek finds start or the first key after it; the page begins
			// before either, or at the end when every key is older.
			if k, _ = c.Seek(start); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil; k, v = c.Prev() {
			id := hex.EncodeToString(k)
			if !p.look(id, decodeStoredLogRecord(id, v)) {
				older, _ := c.Prev()
				next = p.next(older != nil)
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", s.wrap("read request log", err)
	}
	return p.recs, next, nil
}

// boltLogKey parses a record id, 16 hex digits of Unix ns (logIDs), as the
// number its bucket key holds.
func boltLogKey(id string) (uint64, error) {
	if len(id) != 16 {
		return 0, fmt.Errorf("record id %q is not 16 hex digits", id)
	}
	b, err := hex.DecodeString(id)
	if err != nil {
		return 0, fmt.Errorf("record id %q is not 16 hex digits", id)
	}
	return binary.BigEndian.Uint64(b), nil
}
