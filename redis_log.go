package main

// The request log in the Redis store (SPEC §12): one stream for the whole
// fleet, every instance appending to it. An entry's id (<ms>-<seq>,
// assigned by Redis, time-ordered across the fleet) is the id its record
// is read back with; its one field r holds the record's JSON without the
// id the instance gave it (encodeStoredLogRecord).

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Request log keys, under the store's key prefix.
const (
	redisRequestLogKey = "requestlog" // stream: one entry per record, field r
	// + instance (redisStore.instance): the id the instance gave the last
	// record it appended, so that a batch given again after a lost reply
	// appends none of its records twice; expires after requestLogMaxAge.
	redisRequestLogWrittenKey = "requestlog:written:"
)

// redisLogReadChunk is the most entries one XREVRANGE of readLog asks for:
// a filter that matches few records reads the scan bound in a few dozen
// round trips, each reply a few hundred kB at most.
const redisLogReadChunk = 500

// redisLogWriteScript appends one batch of records to the stream and trims
// it, in one atomic step. It skips the records whose instance id is not
// above the last one this instance appended (the marker), so that a batch
// whose reply was lost, given again, adds nothing twice; a record without
// an id is always appended. Then it trims the stream to the records of
// requestLogMaxAge (MINID). Both trims are approximate (~): Redis drops
// whole macro nodes only, which costs next to nothing, and keeps up to one
// node (stream-node-max-entries, 100 by default) beyond each bound.
// KEYS[1] the stream, KEYS[2] the marker; ARGV: the keep bound, the
// oldest entry id to keep, the marker's TTL in seconds, then id, JSON
// pairs. It answers the number of records appended.
var redisLogWriteScript = redis.NewScript(`
local last = redis.call('GET', KEYS[2]) or ''
local n = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if id == '' or id > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i+1])
    if id ~= '' then last = id end
    n = n + 1
  end
end
if last ~= '' then redis.call('SET', KEYS[2], last, 'EX', ARGV[3]) end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
return n`)

var _ logStore = (*redisStore)(nil)

// writeLog implements logSink with redisLogWriteScript: one round trip,
// all of the batch or none of it. A script rather than a MULTI/EXEC
// pipeline, because a transaction whose EXEC ran but whose reply was lost
// (and go-redis retries a command on a network error by itself) would be
// run again; the script's marker makes that second run add nothing, as
// the stats' batch marker does for AddStats. The marker relies on the
// queue's ids increasing within the process (logIDs), which they do.
// Redis does not undo a script that fails halfway (the key holds another
// type, a misconfiguration returned as is): what it appended stays, with
// no marker, and is appended again by the retry. Errors of an unreachable
// Redis wrap errStoreUnavailable.
func (s *redisStore) writeLog(ctx context.Context, recs []logRecord) error {
	if len(recs) == 0 {
		return nil
	}
	keep, _ := s.logBounds.limits()
	minID := strconv.FormatInt(time.Now().Add(-requestLogMaxAge).UnixMilli(), 10)
	args := make([]any, 0, 3+2*len(recs))
	args = append(args, keep, minID, int64(requestLogMaxAge/time.Second))
	for i := range recs {
		args = append(args, recs[i].ID, encodeStoredLogRecord(&recs[i]))
	}
	keys := []string{s.key(redisRequestLogKey), s.key(redisRequestLogWrittenKey + s.instance)}
	err := redisLogWriteScript.Run(ctx, s.client, keys, args...).Err()
	return s.wrap("write request log", err)
}

// readLog implements logStore with XREVRANGE from q.Before (exclusive) or
// the end, in chunks of redisLogReadChunk at most. An entry whose record
// does not decode is looked at and skipped. It returns errBadLogCursor
// for a Before that is not a stream id.
func (s *redisStore) readLog(ctx context.Context, q logQuery) ([]logRecord, string, error) {
	start := "+"
	if q.Before != "" {
		if !validStreamID(q.Before) {
			return nil, "", fmt.Errorf("read request log: %w", errBadLogCursor)
		}
		start = "(" + q.Before
	}
	key := s.key(redisRequestLogKey)
	_, scan := s.logBounds.limits()
	p := newLogPage(&q, scan)
	for {
		// One more than wanted tells whether an older entry exists when
		// the page completes on the last wanted one.
		n := min(redisLogReadChunk, p.wanted()+1)
		msgs, err := s.client.XRevRangeN(ctx, key, start, "-", int64(n)).Result()
		if err != nil {
			return nil, "", s.wrap("read request log", err)
		}
		for i, m := range msgs {
			if p.look(m.ID, decodeRedisLogEntry(m)) {
				continue
			}
			older := i+1 < len(msgs)
			if !older {
				more, err := s.client.XRevRangeN(ctx, key, "("+m.ID, "-", 1).Result()
				if err != nil {
					return nil, "", s.wrap("read request log", err)
				}
				older = len(more) > 0
			}
			return p.recs, p.next(older), nil
		}
		if len(msgs) < n {
			return p.recs, "", nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// decodeRedisLogEntry returns the record of the stream entry m, nil when
// it has none that decodes.
func decodeRedisLogEntry(m redis.XMessage) *logRecord {
	v, ok := m.Values["r"].(string)
	if !ok {
		return nil
	}
	return decodeStoredLogRecord(m.ID, []byte(v))
}

// validStreamID reports whether id is a stream entry id, <ms>-<seq>.
func validStreamID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return false
	}
	for _, part := range []string{ms, seq} {
		// ParseUint in base 10 takes digits alone: no sign, no space.
		if _, err := strconv.ParseUint(part, 10, 64); err != nil {
			return false
		}
	}
	return true
}
