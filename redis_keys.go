package main

// The proxy keys in the Redis store (SPEC §10): the hash apiproxy:keys,
// field = key id, value = ProxyKey.encode (the secret's hash, never the
// secret). Writes go through the mappings' Lua scripts (redis.go), which
// are written for any hash: one atomic step that checks the Redis was
// initialised, writes, and publishes on the updates channel, so that every
// other instance's watch signals Changes and it reloads its routes and
// keys; the writer's own message is skipped as for mappings.

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
)

// Keys reads the keys hash, seeding a Redis that was not initialised, and
// decodes each value (decodeKey), sorted by id. A successful read becomes
// the last known keys (offlineKeys), kept in the snapshot file with the
// mappings, so that a restart during an outage still admits them.
func (s *redisStore) Keys(ctx context.Context) ([]ProxyKey, error) {
	seq := s.keysReadSeq.Add(1)
	h, err := s.readHash(ctx, "list keys", redisKeysKey)
	if err != nil {
		return nil, err
	}
	s.rememberKeys(seq, h)
	return decodeKeyHash(h), nil
}

func (s *redisStore) CreateKey(ctx context.Context, k ProxyKey) error {
	return s.write(ctx, "create key", redisKeysKey, redisCreateScript, errKeyExists, k.ID, k.encode(), s.key(redisUpdatesChannel), s.keyMessage("key_create", k.ID))
}

func (s *redisStore) UpdateKey(ctx context.Context, k ProxyKey) error {
	return s.write(ctx, "update key", redisKeysKey, redisUpdateScript, errKeyNotFound, k.ID, k.encode(), s.key(redisUpdatesChannel), s.keyMessage("key_update", k.ID))
}

func (s *redisStore) DeleteKey(ctx context.Context, id string) error {
	return s.write(ctx, "delete key", redisKeysKey, redisDeleteScript, errKeyNotFound, id, s.key(redisUpdatesChannel), s.keyMessage("key_delete", id))
}

// keyMessage returns the payload announcing op on the key id. Readers of
// the original design reload the mappings on it, which is harmless.
func (s *redisStore) keyMessage(op, id string) string {
	b, _ := json.Marshal(updateMessage{Op: op, KeyID: id, Instance: s.instance})
	return string(b)
}

// rememberKeys makes h, the keys hash read as number seq, the last known
// keys unless a newer read already is, and asks persistLoop to write the
// snapshot if the file holds something else.
func (s *redisStore) rememberKeys(seq uint64, h map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.lastKeysSeq {
		return
	}
	s.lastKeys, s.lastKeysSeq = maps.Clone(h), seq
	if s.lastKeys == nil {
		s.lastKeys = map[string]string{}
	}
	s.persistLocked()
}

// offlineKeys returns the last known keys (from Redis, or from the
// snapshot file until Redis was read), sorted by id; ok is false if there
// are none. The caller owns the slice.
func (s *redisStore) offlineKeys() (ks []ProxyKey, ok bool) {
	s.mu.Lock()
	last := s.lastKeys
	s.mu.Unlock()
	if last == nil {
		return nil, false
	}
	return decodeKeyHash(last), true
}

// decodeKeyHash decodes the fields of the keys hash, sorted by id.
func decodeKeyHash(h map[string]string) []ProxyKey {
	ks := make([]ProxyKey, 0, len(h))
	for _, id := range slices.Sorted(maps.Keys(h)) {
		k, _ := decodeKey(id, h[id]) // on error a disabled key: see keyStore
		ks = append(ks, k)
	}
	return ks
}
