package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Key names in Redis, compatible with the original design: the mappings
// hash is apiproxy:mappings (field = prefix, value = Mapping.encodeValue,
// the target URL for a plain mapping) and every change is announced on
// apiproxy:mappings:updates, a change of the proxy keys (apiproxy:keys)
// too. A redisStore puts its keyPrefix
// (redisKeyPrefix in production) in front of each name, so that tests can
// share one Redis without seeing each other's keys.
const (
	redisKeyPrefix      = "apiproxy:"
	redisMappingsKey    = "mappings"         // hash: prefix → encoded mapping
	redisKeysKey        = "keys"             // hash: proxy key id → ProxyKey.encode (redis_keys.go)
	redisUpdatesChannel = "mappings:updates" // Pub/Sub: one message per change
	redisAdminTokenKey  = "admin_token"      // string: the generated admin token
	redisSeededKey      = "seeded"           // string: set once the hash was initialised
	// redisAuthFailuresKey + client address: the admin lockout's failure
	// count of that address (redisAuthCounter), expiring with its window.
	redisAuthFailuresKey = "auth_failures:"
)

const (
	// redisResyncInterval is the safety net under Pub/Sub: a message lost
	// while a connection was being replaced is made up for at this pace.
	redisResyncInterval = 30 * time.Second
	// snapshotFileName is the local copy of the last mappings read from
	// Redis, under DATA_DIR, so that a restart during an outage still routes.
	snapshotFileName = "mappings-snapshot.json"
)

// Lua scripts make each read and write one atomic step: a create never
// overwrites a concurrent create (HSETNX), an update never creates, no
// instance can miss a change that was made, and nothing reads or writes a
// Redis that was not initialised (a fresh one, or one that restarted
// empty) before seed filled it. The read and write scripts serve any hash
// of ours, the mappings' and the proxy keys' (redis_keys.go). The write
// scripts answer 1 when done, 0 when the field exists (create) or is
// missing (update, delete), -1 when the Redis is not initialised.
var (
	// KEYS[1] the hash, KEYS[2] seeded. Nil when not initialised.
	redisReadScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
return redis.call('HGETALL', KEYS[1])`)
	// KEYS[1] the hash, KEYS[2] seeded; ARGV: field, value, channel, message.
	redisCreateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`)
	// KEYS[1] the hash, KEYS[2] seeded; ARGV: field, value, channel, message.
	redisUpdateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`)
	// KEYS[1] the hash, KEYS[2] seeded; ARGV: field, channel, message.
	redisDeleteScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`)
	// seed initialises a Redis once: only the caller that sets the seeded
	// marker writes, the mappings only if the hash does not exist. A Redis
	// that already holds mappings (the original design's, or ours) is left
	// as it is; a deleted mapping never comes back because the marker
	// stays. The admin token and the proxy keys are restored too when they
	// are known, so that a Redis that restarted empty keeps the token
	// every instance holds and admits the keys it admitted. It answers 1
	// when it wrote the mappings.
	// KEYS[1] mappings, KEYS[2] seeded, KEYS[3] admin token, KEYS[4] keys;
	// ARGV: marker value, channel, message, admin token or "", the number
	// n of mappings, then n prefix, value pairs, then key id, value pairs.
	redisSeedScript = redis.NewScript(`
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 0 end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'NX') end
local n, wrote, seeded = tonumber(ARGV[5]), false, 0
if redis.call('EXISTS', KEYS[4]) == 0 then
  for i = 6 + 2*n, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i+1]); wrote = true end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 6, 5 + 2*n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]); wrote = true end
  seeded = 1
end
if wrote then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return seeded`)
	// authFail counts one failed admin authentication. The first failure
	// starts the window (the key's TTL); the failure that reaches the
	// limit restarts it, so the block lasts a full window from then.
	// KEYS[1] the address's counter; ARGV: window in ms, limit.
	redisAuthFailScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)
	// authBlocked answers the ms an address stays blocked, 0 if it is not.
	// KEYS[1] the address's counter; ARGV: limit.
	redisAuthBlockedScript = redis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then return 0 end
return math.max(redis.call('PTTL', KEYS[1]), 0)`)
	// initDefaults is init-redis: add each missing default, overwrite a
	// different value only when forced, and report what happened to each
	// as action, previous value pairs.
	// KEYS[1] mappings, KEYS[2] seeded; ARGV: force ("1" or "0"), channel,
	// message, marker value, then prefix, value pairs.
	redisInitDefaultsScript = redis.NewScript(`
local out, changed = {}, false
for i = 5, #ARGV, 2 do
  local p, t = ARGV[i], ARGV[i+1]
  local old = redis.call('HGET', KEYS[1], p)
  if not old then
    redis.call('HSET', KEYS[1], p, t); changed = true
    out[#out+1] = 'added'; out[#out+1] = ''
  elseif old == t then
    out[#out+1] = 'unchanged'; out[#out+1] = old
  elseif ARGV[1] == '1' then
    redis.call('HSET', KEYS[1], p, t); changed = true
    out[#out+1] = 'overwritten'; out[#out+1] = old
  else
    out[#out+1] = 'kept'; out[#out+1] = old
  end
end
redis.call('SET', KEYS[2], ARGV[4], 'NX')
if changed then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return out`)
)

// redisStore is the shared Store: mappings in a Redis hash, changes
// announced on a Pub/Sub channel that every instance listens to (see
// watch). It keeps the last mappings and admin token it read, in memory
// and in a snapshot file (mode 0600 under DATA_DIR, like the embedded
// store's file), for outages. Safe for concurrent use.
type redisStore struct {
	client    *redis.Client
	keyPrefix string // before every key and channel name; redisKeyPrefix in production
	logger    *slog.Logger
	changes   chan struct{}
	// box seals the upstream keys of the mappings written (SECRET_KEY);
	// nil keeps them as given. Set by useSecrets before use.
	box *secretBox
	// logBounds bound the request log stream (redis_log.go); set by tests
	// before use.
	logBounds logBounds

	// instance names this store in the messages it publishes, so that
	// watch can tell its own from another instance's (see updateMessage).
	// Random: it only has to differ between the stores on one Redis.
	instance string
	// ownMessages counts the messages of this store that watch received
	// and did not signal, so that a test can wait for one.
	ownMessages atomic.Int64
	// cooldownsOut queues the cooldowns to share (writeCooldowns);
	// cooldownsIn receives those of other instances, set before watch
	// (cooldowns_redis.go).
	cooldownsOut chan cooldownMessage
	cooldownsIn  func(k targetKey, until time.Time)

	// listOnly is set for `map list`: a read of a Redis never initialised
	// gives errRedisNotSeeded instead of seeding it, so that a wrong
	// database number is not filled with the defaults by a read.
	listOnly bool

	// snapshotPath is the snapshot file; "" keeps none. source names the
	// Redis (address, db, key prefix) in the file, so that a snapshot of
	// another Redis is never used.
	snapshotPath string
	source       string

	readSeq     atomic.Uint64 // numbers Mappings reads, so an older read never replaces a newer one
	keysReadSeq atomic.Uint64 // the same for Keys reads
	persist     chan struct{} // signalled when last differs from the file; drained by persistLoop

	mu      sync.Mutex
	last    map[string]string // last hash read, field → value (or the snapshot's, until one is); never modified
	lastSeq uint64
	lastAt  time.Time
	token   string // last admin token read, or the snapshot's; "" if none
	// lastKeys is the last keys hash read (id → stored key), or the
	// snapshot's until one is; nil if none. Never modified.
	lastKeys    map[string]string
	lastKeysSeq uint64
	onDisk      snapshotFile // what the snapshot file holds; only persistLoop writes it
}

// snapshotFile is the JSON of the snapshot file. Mappings is the hash as
// read, prefix → stored value (Mapping.encodeValue), so that a file
// written by any version reads back the same; Keys likewise the keys hash,
// id → ProxyKey.encode (hashes, never secrets), absent in a file written
// before proxy keys existed.
type snapshotFile struct {
	Source     string            `json:"source"`
	SavedAt    time.Time         `json:"saved_at"`
	Mappings   map[string]string `json:"mappings"`
	Keys       map[string]string `json:"keys,omitempty"`
	AdminToken string            `json:"admin_token,omitempty"`
}

// parseRedisURL reads API_PROXY_REDIS_URL: redis://[user:pass@]host:port/db
// or rediss://… for TLS. Its errors never repeat the URL, which may carry
// a password.
func parseRedisURL(raw string) (*redis.Options, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("API_PROXY_REDIS_URL is not a valid redis:// or rediss:// URL: %w", err)
	}
	// Every command is already retried (max_retries, default 3). go-redis's
	// own dial attempts inside each retry only delay the report of a
	// refused connection, which start-up during an outage waits for on
	// every retry.
	opts.DialerRetries = 2
	opts.DialerRetryTimeout = 50 * time.Millisecond
	return opts, nil
}

// openRedisStore opens the Redis store of cfg: production key names and
// the snapshot file under DATA_DIR. A Redis that is down is not an error
// here (the server starts from the snapshot and catches up when Redis is
// back); a Redis that refuses us (wrong password) is.
func openRedisStore(ctx context.Context, cfg Config, logger *slog.Logger) (*redisStore, error) {
	opts, err := parseRedisURL(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	return openRedisStoreWith(ctx, opts, redisKeyPrefix, filepath.Join(cfg.DataDir, snapshotFileName), logger)
}

// openRedisStoreWith is openRedisStore with explicit options, key prefix
// and snapshot path (empty: none); tests use it to isolate their keys. It
// loads the snapshot file and checks that Redis accepts us.
func openRedisStoreWith(ctx context.Context, opts *redis.Options, keyPrefix, snapshotPath string, logger *slog.Logger) (*redisStore, error) {
	s := newRedisStore(redis.NewClient(opts), keyPrefix, snapshotPath, logger)
	s.loadSnapshot()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		if !errors.Is(err, errStoreUnavailable) {
			s.client.Close()
			return nil, fmt.Errorf("redis at %s: %w", redisDescription(opts), err)
		}
		s.logger.Warn("redis unreachable; will keep retrying", "redis", redisDescription(opts), "error", err)
	}
	return s, nil
}

// newRedisStore wraps client. It does no I/O.
func newRedisStore(client *redis.Client, keyPrefix, snapshotPath string, logger *slog.Logger) *redisStore {
	// go-redis logs through one process-wide logger; the last store opened
	// sets it (a process opens one, tests many, all alike).
	redis.SetLogger(redisLogger{logger})
	opts := client.Options()
	return &redisStore{
		client:       client,
		keyPrefix:    keyPrefix,
		logger:       logger,
		changes:      make(chan struct{}, 1),
		persist:      make(chan struct{}, 1),
		snapshotPath: snapshotPath,
		source:       fmt.Sprintf("%s/%d %s", opts.Addr, opts.DB, keyPrefix),
		instance:     rand.Text(),
		cooldownsOut: make(chan cooldownMessage, cooldownQueue),
	}
}

// useSecrets makes the store seal upstream keys with box (secrets.go).
func (s *redisStore) useSecrets(box *secretBox) { s.box = box }

func (s *redisStore) key(name string) string { return s.keyPrefix + name }

// updateMessage is the JSON published on the updates channel. Readers
// reload the whole hash whatever a message says (the original design's
// readers, and ours on any message that is not their own), so its fields
// are free: op and prefix are for people watching the channel with
// redis-cli, instance lets the publishing store skip its own message (its
// caller reloaded already, see Store.Changes).
type updateMessage struct {
	Op       string `json:"op"`
	Prefix   string `json:"prefix"`
	KeyID    string `json:"key_id,omitempty"` // of a proxy key's change (redis_keys.go)
	Instance string `json:"instance"`
}

// message returns the payload announcing op on prefix.
func (s *redisStore) message(op, prefix string) string {
	b, _ := json.Marshal(updateMessage{Op: op, Prefix: prefix, Instance: s.instance})
	return string(b)
}

// ownMessage reports whether payload was published by this store.
func (s *redisStore) ownMessage(payload string) bool {
	if !strings.Contains(payload, s.instance) {
		return false // the common case for another instance's message, without a JSON parse
	}
	var m updateMessage
	return json.Unmarshal([]byte(payload), &m) == nil && m.Instance == s.instance
}

// Mappings reads the whole hash, seeding it first if this Redis was not
// initialised, and decodes each value (decodeMapping). A successful read
// also becomes the last known mappings (see offlineMappings) and is queued
// for the snapshot file.
func (s *redisStore) Mappings(ctx context.Context) ([]Mapping, error) {
	seq := s.readSeq.Add(1)
	m, err := s.readHash(ctx, "list mappings", redisMappingsKey)
	if err != nil {
		return nil, err
	}
	s.remember(seq, m)
	return decodeHash(m, s.box), nil
}

// readHash reads the hash name (redisMappingsKey, redisKeysKey) in one
// atomic step with the check that this Redis was initialised, seeding it
// first if it was not.
func (s *redisStore) readHash(ctx context.Context, op, name string) (map[string]string, error) {
	keys := []string{s.key(name), s.key(redisSeededKey)}
	flat, err := redisReadScript.Run(ctx, s.client, keys).StringSlice()
	if errors.Is(err, redis.Nil) {
		if s.listOnly {
			return nil, fmt.Errorf("%s: %w", op, errRedisNotSeeded)
		}
		if err := s.seed(ctx); err != nil {
			return nil, err
		}
		flat, err = redisReadScript.Run(ctx, s.client, keys).StringSlice()
	}
	if err != nil {
		return nil, s.wrap(op, err)
	}
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		m[flat[i]] = flat[i+1]
	}
	return m, nil
}

// decodeHash decodes the fields of the mappings hash, sorted by prefix. A
// value that does not decode keeps its prefix and no targets (see
// Store.Mappings).
func decodeHash(h map[string]string, box *secretBox) []Mapping {
	ms := make([]Mapping, 0, len(h))
	for p, v := range h {
		ms = append(ms, box.readMapping(p, v))
	}
	sortMappings(ms)
	return ms
}

// remember makes m, the hash read as number seq, the last known mappings
// unless a newer read already is, and asks persistLoop to write the
// snapshot if the file holds something else.
func (s *redisStore) remember(seq uint64, m map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.lastSeq {
		return
	}
	s.last, s.lastSeq, s.lastAt = maps.Clone(m), seq, time.Now()
	s.persistLocked()
}

// persistLocked asks persistLoop to write the snapshot file if what it holds is
// not the last known state. s.mu must be held.
func (s *redisStore) persistLocked() {
	if s.snapshotStaleLocked() {
		notify(s.persist)
	}
}

// snapshotStaleLocked reports whether there is a snapshot file to write and
// the last known state differs from what it holds. s.mu must be held.
func (s *redisStore) snapshotStaleLocked() bool {
	return s.snapshotPath != "" && s.last != nil &&
		!(maps.Equal(s.last, s.onDisk.Mappings) && maps.Equal(s.lastKeys, s.onDisk.Keys) && s.token == s.onDisk.AdminToken)
}

func (s *redisStore) CreateMapping(ctx context.Context, m Mapping) error {
	return s.write(ctx, "create mapping", redisMappingsKey, redisCreateScript, errMappingExists, m.Prefix, s.box.storedValue(m), s.key(redisUpdatesChannel), s.message("create", m.Prefix))
}

func (s *redisStore) UpdateMapping(ctx context.Context, m Mapping) error {
	return s.write(ctx, "update mapping", redisMappingsKey, redisUpdateScript, errMappingNotFound, m.Prefix, s.box.storedValue(m), s.key(redisUpdatesChannel), s.message("update", m.Prefix))
}

func (s *redisStore) DeleteMapping(ctx context.Context, prefix string) error {
	return s.write(ctx, "delete mapping", redisMappingsKey, redisDeleteScript, errMappingNotFound, prefix, s.key(redisUpdatesChannel), s.message("delete", prefix))
}

// write runs one of the write scripts on the hash name (redisMappingsKey,
// redisKeysKey), seeding a Redis that was not initialised first. unchanged
// is the error for a script that changed nothing (it returned 0): the
// field exists, or does not. A write signals no Changes, here or through
// its Pub/Sub message coming back (see watch): the caller reloads.
func (s *redisStore) write(ctx context.Context, op, name string, script *redis.Script, unchanged error, args ...any) error {
	keys := []string{s.key(name), s.key(redisSeededKey)}
	n, err := script.Run(ctx, s.client, keys, args...).Int64()
	if err == nil && n == -1 {
		if err := s.seed(ctx); err != nil {
			return err
		}
		n, err = script.Run(ctx, s.client, keys, args...).Int64()
	}
	if err != nil {
		return s.wrap(op, err)
	}
	switch n {
	case -1:
		return fmt.Errorf("%s: redis lost its initialisation marker %s while being written", op, s.key(redisSeededKey))
	case 0:
		return unchanged
	}
	return nil
}

// signal tells the Changes reader to reload; it never blocks.
func (s *redisStore) signal() { notify(s.changes) }

func (s *redisStore) Changes() <-chan struct{} { return s.changes }

// AdminToken returns the token under admin_token, storing generate()'s
// first if there is none. SET NX decides between instances that start
// together: the loser reads the winner's token. While Redis cannot be
// reached it returns the token it last read (kept in the snapshot file),
// so a restart during an outage still knows it.
func (s *redisStore) AdminToken(ctx context.Context, generate func() (string, error)) (string, error) {
	token, err := s.adminToken(ctx, generate)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.token = token
		s.persistLocked()
		return token, nil
	}
	if errors.Is(err, errStoreUnavailable) && s.token != "" {
		return s.token, nil
	}
	return "", err
}

func (s *redisStore) adminToken(ctx context.Context, generate func() (string, error)) (string, error) {
	key := s.key(redisAdminTokenKey)
	token, err := s.client.Get(ctx, key).Result()
	if err == nil {
		return token, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", s.wrap("read admin token", err)
	}
	token, err = generate()
	if err != nil {
		return "", fmt.Errorf("generate admin token: %w", err)
	}
	ok, err := s.client.SetNX(ctx, key, token, 0).Result()
	if err != nil {
		return "", s.wrap("store admin token", err)
	}
	if ok {
		return token, nil
	}
	token, err = s.client.Get(ctx, key).Result()
	return token, s.wrap("read admin token", err)
}

func (s *redisStore) Ping(ctx context.Context) error {
	return s.wrap("ping redis", s.client.Ping(ctx).Err())
}

// Close closes the client. watch must have returned before (Server.Close
// stops its loops first).
func (s *redisStore) Close() error { return s.client.Close() }

// wrap names the failed operation and classifies err: errStoreClosed after
// Close, errStoreUnavailable when Redis cannot answer now,
// errStoreNotWritable when it answers but takes no writes now, else as is
// (a reply error such as WRONGPASS or WRONGTYPE is a misconfiguration,
// 500).
func (s *redisStore) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.ErrClosed):
		return fmt.Errorf("%s: %w", op, errStoreClosed)
	case redisUnavailable(err):
		return &unavailableError{op: op, err: err}
	}
	if _, ok := redisWriteRefusal(err); ok {
		return fmt.Errorf("%s: %w: %w", op, errStoreNotWritable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// redisWriteRefusals are the error replies of a Redis that is up but
// takes no writes now, and what the client is told of each.
var redisWriteRefusals = []struct{ prefix, reason string }{
	{"OOM", "Redis is out of memory (maxmemory)"},
	{"NOREPLICAS", "Redis has too few replicas to take writes (min-replicas-to-write)"},
	{"MISCONF", "Redis cannot save its snapshot (stop-writes-on-bgsave-error)"},
}

// redisWriteRefusal returns the reason of err when it is one of
// redisWriteRefusals.
func redisWriteRefusal(err error) (string, bool) {
	for _, r := range redisWriteRefusals {
		if redis.HasErrorPrefix(err, r.prefix) {
			return r.reason, true
		}
	}
	return "", false
}

// unavailableError is a Redis error that means "cannot be reached now". It
// matches errStoreUnavailable (what the client is told) and err (what the
// log says).
type unavailableError struct {
	op  string
	err error
}

func (e *unavailableError) Error() string   { return e.op + ": redis unreachable: " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{errStoreUnavailable, e.err} }

// redisUnavailable reports whether err means Redis cannot serve us now
// rather than that it refused the command: anything that is not a reply
// from the server (dial, I/O, timeouts, pool exhaustion), and the replies
// of a server that is starting, failing over or a read-only replica.
func redisUnavailable(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return true
	}
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// errRedisNotSeeded is what a listOnly store's read finds in a Redis that
// no apiproxy ever initialised.
var errRedisNotSeeded = errors.New("no apiproxy mappings in this Redis database: never initialised")

// seed initialises this Redis if it was not: with the last known hash
// when there is one (a Redis that restarted empty gets back what the fleet
// was routing, value for value, and the admin token), else with
// defaultMappings. If several instances race, one initialises and the
// others find it done. Having initialised it, seed signals Changes: the
// call that needed the seeding may not reload (a create that then finds
// its prefix taken), and its own Pub/Sub message is skipped.
func (s *redisStore) seed(ctx context.Context) error {
	s.mu.Lock()
	m, ok, token, keyValues := s.last, s.last != nil, s.token, s.lastKeys
	s.mu.Unlock()
	if !ok {
		m = make(map[string]string)
		for _, d := range defaultMappings() {
			m[d.Prefix] = d.encodeValue()
		}
	}
	args := []any{time.Now().UTC().Format(time.RFC3339), s.key(redisUpdatesChannel), s.message("seed", ""), token, len(m)}
	for _, p := range slices.Sorted(maps.Keys(m)) {
		args = append(args, p, m[p])
	}
	for _, id := range slices.Sorted(maps.Keys(keyValues)) {
		args = append(args, id, keyValues[id])
	}
	keys := []string{s.key(redisMappingsKey), s.key(redisSeededKey), s.key(redisAdminTokenKey), s.key(redisKeysKey)}
	n, err := redisSeedScript.Run(ctx, s.client, keys, args...).Int64()
	if err != nil {
		return s.wrap("seed mappings", err)
	}
	if n == 1 {
		from := "defaults"
		if ok {
			from = "last known mappings"
		}
		s.logger.Info("initialised redis mappings", "from", from, "mappings", len(m))
		s.signal()
	}
	return nil
}

// seedResult is what init-redis did with one default mapping: Action is
// "added", "unchanged", "overwritten" or "kept"; Old is the value found in
// the hash ("" if none).
type seedResult struct {
	Default Mapping
	Old     string
	Action  string
}

// initDefaults writes defaultMappings into the hash, never replacing a
// different value unless force, and marks the hash initialised. The
// results are in prefix order.
func (s *redisStore) initDefaults(ctx context.Context, force bool) ([]seedResult, error) {
	defaults := defaultMappings()
	forceArg := "0"
	if force {
		forceArg = "1"
	}
	args := []any{forceArg, s.key(redisUpdatesChannel), s.message("seed", ""), time.Now().UTC().Format(time.RFC3339)}
	for _, d := range defaults {
		args = append(args, d.Prefix, d.encodeValue())
	}
	out, err := redisInitDefaultsScript.Run(ctx, s.client, []string{s.key(redisMappingsKey), s.key(redisSeededKey)}, args...).StringSlice()
	if err != nil {
		return nil, s.wrap("seed default mappings", err)
	}
	if len(out) != 2*len(defaults) {
		return nil, fmt.Errorf("seed default mappings: unexpected reply of %d values", len(out))
	}
	res := make([]seedResult, len(defaults))
	for i, d := range defaults {
		res[i] = seedResult{Default: d, Action: out[2*i], Old: out[2*i+1]}
	}
	return res, nil
}

// watch listens on the updates channel until ctx is done and signals
// Changes on every message but this store's own (whose writer reloaded
// already), on every (re)subscription (a reconnect after an outage
// resyncs; the reload re-seeds a Redis that came back empty) and every
// redisResyncInterval as a safety net. It also writes the snapshot file.
// Server.Start runs it; it must run at most once at a time.
func (s *redisStore) watch(ctx context.Context) {
	// The snapshot file is written by a loop of its own: an fsync takes
	// milliseconds, which the next Pub/Sub message should not wait for.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.persistLoop(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.writeCooldowns(ctx)
	}()
	defer wg.Wait()
	cooldowns := s.key(redisCooldownChannel)
	ps := s.client.Subscribe(ctx, s.key(redisUpdatesChannel), cooldowns)
	defer ps.Close()
	// go-redis reconnects and resubscribes by itself, pings an idle
	// connection, and delivers a *redis.Subscription after each subscribe.
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelSize(16))
	tick := time.NewTicker(redisResyncInterval)
	defer tick.Stop()
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-msgs:
			if !ok {
				return
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				if m.Channel == cooldowns {
					s.loadCooldowns(ctx)
					continue
				}
				if subscribed {
					s.logger.Info("redis subscription restored; resyncing mappings")
				}
				subscribed = true
				s.signal()
			case *redis.Message:
				if m.Channel == cooldowns {
					s.receiveCooldown(m.Payload)
					continue
				}
				if s.ownMessage(m.Payload) {
					s.ownMessages.Add(1)
					continue
				}
				s.signal()
			}
		case <-tick.C:
			s.signal()
		}
	}
}

// persistLoop writes the snapshot file when asked, and once more when ctx
// is done, so that a clean stop leaves the latest mappings on disk.
func (s *redisStore) persistLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			s.persistSnapshot()
			return
		case <-s.persist:
			s.persistSnapshot()
		}
	}
}

// offlineMappings returns the last known mappings (from Redis, or from the
// snapshot file until Redis was read), sorted by prefix and decoded as
// Mappings does, and when they were read; ok is false if there are none.
// The caller owns the slice.
func (s *redisStore) offlineMappings() (ms []Mapping, readAt time.Time, ok bool) {
	s.mu.Lock()
	last, readAt := s.last, s.lastAt
	s.mu.Unlock()
	if last == nil {
		return nil, time.Time{}, false
	}
	return decodeHash(last, s.box), readAt, true
}

// loadSnapshot makes the snapshot file's mappings the last known ones if
// the file exists and was written for this Redis.
func (s *redisStore) loadSnapshot() {
	if s.snapshotPath == "" {
		return
	}
	b, err := os.ReadFile(s.snapshotPath)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var f snapshotFile
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err != nil {
		s.logger.Warn("ignoring unreadable mappings snapshot", "path", s.snapshotPath, "error", err)
		return
	}
	if f.Source != s.source {
		s.logger.Info("ignoring mappings snapshot of another redis", "path", s.snapshotPath, "snapshot_of", f.Source)
		return
	}
	if f.Mappings == nil {
		f.Mappings = map[string]string{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.lastAt, s.token, s.lastKeys, s.onDisk = f.Mappings, f.SavedAt, f.AdminToken, f.Keys, f
}

// persistSnapshot writes the last known mappings and token to the snapshot
// file if it holds something else. Only persistLoop calls it, so writes
// never overlap.
func (s *redisStore) persistSnapshot() {
	s.mu.Lock()
	f := snapshotFile{Source: s.source, SavedAt: s.lastAt.UTC(), Mappings: s.last, Keys: s.lastKeys, AdminToken: s.token}
	stale := s.snapshotStaleLocked()
	s.mu.Unlock()
	if !stale {
		return
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = writeFileAtomic(s.snapshotPath, append(b, '\n'))
	}
	if err != nil {
		s.logger.Warn("writing mappings snapshot failed; a restart during a redis outage would route with an older copy", "path", s.snapshotPath, "error", err)
		return
	}
	s.mu.Lock()
	s.onDisk = f
	s.mu.Unlock()
}

// redisLogger sends go-redis's own messages (dial retries, pool events) to
// slog at debug level. Left alone they would be unstructured lines on
// stderr, even with LOG_FORMAT=json, repeated on every dial during an
// outage; our own lines already say what an outage means for routing and
// the admin API.
type redisLogger struct{ logger *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l.logger.Enabled(ctx, slog.LevelDebug) {
		l.logger.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
	}
}

// redisDescription names the Redis of opts for logs: address, db and TLS,
// never the password.
func redisDescription(opts *redis.Options) string {
	d := opts.Addr + "/" + strconv.Itoa(opts.DB)
	if opts.TLSConfig != nil {
		d += " (tls)"
	}
	return d
}
