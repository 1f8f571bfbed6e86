package main

// The Redis store's stats (statsStore) and the fleet's admin lockout
// counts (authCounter).

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Stats keys (stats.go), under the store's key prefix: hashes of
// "<prefix>|<name>" counters to which every instance adds its deltas
// (HINCRBY), so that each reads the fleet's figures.
const (
	redisStatsTotalKey = "stats:total" // hash: all-time counters
	redisStatsLastKey  = "stats:last"  // hash: prefix → Unix time of its last request
	redisStatsHourKey  = "stats:h:"    // + Unix hour: that hour's counters; expire keepHours after it
	redisStatsDayKey   = "stats:d:"    // + Unix day (UTC): that day's counters; expire keepDays after it
	// + batch id (statsData.Batch): set when that batch was added, so that
	// it is added once however often it is given; expires after
	// redisStatsAppliedTTL.
	redisStatsAppliedKey = "stats:applied:"
)

// redisStatsAppliedTTL is how long Redis remembers that it applied a
// batch. A batch is given again within seconds of the failed write (the
// flush backoff is at most maxFlushBackoff), or at the next start when the
// final flush of a process failed: a restart more than this after a final
// flush whose reply was lost would count that batch twice. Each marker is
// one small key per flush of each instance.
const redisStatsAppliedTTL = 6 * time.Hour

// redisStatsAddScript adds one batch of stats, atomically and at most once
// per batch id: it sets the batch's marker first and adds nothing if the
// marker was there. Then it sets each field of the last hash to the larger
// of its value and the one given, adds to the fields of each counter hash
// (HINCRBY) and sets the hash's expiry (EXPIREAT) unless it is 0.
// KEYS[1] marker, KEYS[2] last hash, KEYS[3..] counter hashes. ARGV[1]
// the marker's TTL in seconds, 0 for no marker (a batch without an id);
// then for the last hash: n, n field, value pairs; then for each counter
// hash in KEYS order: expiry (Unix seconds, 0 for none), n, n field,
// value pairs. It answers 1 when it added the batch, 0 when it was there.
var redisStatsAddScript = redis.NewScript(`
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local a = 2
local n = tonumber(ARGV[a])
a = a + 1
for j = 1, n do
  local v = tonumber(redis.call('HGET', KEYS[2], ARGV[a]) or '0') or 0
  if tonumber(ARGV[a+1]) > v then redis.call('HSET', KEYS[2], ARGV[a], ARGV[a+1]) end
  a = a + 2
end
for i = 3, #KEYS do
  local at = ARGV[a]
  n = tonumber(ARGV[a+1])
  a = a + 2
  for j = 1, n do
    redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a+1])
    a = a + 2
  end
  if at ~= '0' then redis.call('EXPIREAT', KEYS[i], at) end
end
return 1`)

// AddStats implements statsStore with one script (redisStatsAddScript):
// no other command runs between its writes, and a batch with an id is
// added at most once: given again after a lost reply, it adds nothing.
// Redis does not undo a script that fails halfway (a hash edited by hand
// to hold a non-integer): what it wrote stays, with the marker, so that
// batch is not added again either.
func (s *redisStore) AddStats(ctx context.Context, d *statsData) error {
	keys, args := s.statsScriptArgs(d)
	err := redisStatsAddScript.Run(ctx, s.client, keys, args...).Err()
	return s.wrap("add stats", err)
}

// statsScriptArgs encodes d as the KEYS and ARGV of redisStatsAddScript.
func (s *redisStore) statsScriptArgs(d *statsData) (keys []string, args []any) {
	n := len(d.Last)
	for _, f := range d.Hours {
		n += len(f)
	}
	for _, f := range d.Days {
		n += len(f)
	}
	n += len(d.Total)
	keys = make([]string, 0, 3+len(d.Hours)+len(d.Days))
	args = make([]any, 0, 2+2*n+2*(1+len(d.Hours)+len(d.Days)))
	ttl := int64(0)
	if d.Batch != "" {
		ttl = int64(redisStatsAppliedTTL / time.Second)
	}
	keys = append(keys, s.key(redisStatsAppliedKey+d.Batch), s.key(redisStatsLastKey))
	args = append(args, ttl, len(d.Last))
	for p, t := range d.Last {
		args = append(args, p, t)
	}
	hash := func(key string, expireAt int64, fields map[string]int64) {
		keys = append(keys, key)
		args = append(args, expireAt, len(fields))
		for f, v := range fields {
			args = append(args, f, v)
		}
	}
	if len(d.Total) > 0 {
		hash(s.key(redisStatsTotalKey), 0, d.Total)
	}
	for h, fields := range d.Hours {
		hash(s.key(redisStatsHourKey+strconv.FormatInt(h, 10)), (h+1+keepHours)*hourSeconds, fields)
	}
	for day, fields := range d.Days {
		hash(s.key(redisStatsDayKey+strconv.FormatInt(day, 10)), (day+1+keepDays)*daySeconds, fields)
	}
	return keys, args
}

// LoadStats implements statsStore with one pipeline of HGETALLs.
func (s *redisStore) LoadStats(ctx context.Context, now time.Time) (*statsData, error) {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	pipe := s.client.Pipeline()
	total := pipe.HGetAll(ctx, s.key(redisStatsTotalKey))
	last := pipe.HGetAll(ctx, s.key(redisStatsLastKey))
	hours := make([]*redis.MapStringStringCmd, windowHours)
	for i := range hours {
		hours[i] = pipe.HGetAll(ctx, s.key(redisStatsHourKey+strconv.FormatInt(h-windowHours+1+int64(i), 10)))
	}
	days := make([]*redis.MapStringStringCmd, windowDays)
	for i := range days {
		days[i] = pipe.HGetAll(ctx, s.key(redisStatsDayKey+strconv.FormatInt(day-windowDays+1+int64(i), 10)))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, s.wrap("load stats", err)
	}
	d := newStatsData()
	redisReadFields(total.Val(), d.Total)
	redisReadFields(last.Val(), d.Last)
	for i, c := range hours {
		if v := c.Val(); len(v) > 0 {
			redisReadFields(v, bucket(d.Hours, h-windowHours+1+int64(i)))
		}
	}
	for i, c := range days {
		if v := c.Val(); len(v) > 0 {
			redisReadFields(v, bucket(d.Days, day-windowDays+1+int64(i)))
		}
	}
	return d, nil
}

// sharedByFleet implements fleetStatsStore: every instance on the same
// Redis adds to the same stats.
func (s *redisStore) sharedByFleet() bool { return true }

// redisReadFields adds the integer values of src to dst; others are
// skipped (a hand-edited hash).
func redisReadFields(src map[string]string, dst map[string]int64) {
	for f, v := range src {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			dst[f] += n
		}
	}
}

// authCounter returns the fleet's admin lockout counts, kept in this
// store's Redis (authCountingStore).
func (s *redisStore) authCounter() authCounter {
	return &redisAuthCounter{client: s.client, keyPrefix: s.key(redisAuthFailuresKey)}
}

// redisAuthCounter is the authCounter of every instance on one Redis: one
// counter per address (redisAuthFailuresKey), its window the key's TTL.
// Errors are the Redis client's, unwrapped: authLimiter logs them and goes
// on with its local counts.
type redisAuthCounter struct {
	client    *redis.Client
	keyPrefix string
}

func (c *redisAuthCounter) blocked(ctx context.Context, addr string) (time.Duration, error) {
	ms, err := redisAuthBlockedScript.Run(ctx, c.client, []string{c.keyPrefix + addr}, authMaxFailures).Int64()
	if err != nil {
		return 0, fmt.Errorf("read auth failures: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func (c *redisAuthCounter) fail(ctx context.Context, addr string) (bool, error) {
	n, err := redisAuthFailScript.Run(ctx, c.client, []string{c.keyPrefix + addr}, authWindow.Milliseconds(), authMaxFailures).Int64()
	if err != nil {
		return false, fmt.Errorf("count auth failure: %w", err)
	}
	return n == authMaxFailures, nil
}

func (c *redisAuthCounter) succeed(ctx context.Context, addr string) error {
	if err := c.client.Del(ctx, c.keyPrefix+addr).Err(); err != nil {
		return fmt.Errorf("reset auth failures: %w", err)
	}
	return nil
}
