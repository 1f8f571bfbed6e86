package main

// Shared cooldowns (SPEC §9): a target that one instance puts in cooldown
// is skipped by every instance on the same Redis. A cooldown is one key
// with a TTL per target (apiproxy:cooldown:<prefix>|<index>), so that an
// instance that starts, or resubscribes after an outage, reads the ones
// still running, and a message on apiproxy:cooldowns, so that the others
// learn of it within milliseconds. Nothing of this runs on the request
// path: a request reads only the instance's memory (targetState), and a
// cooldown begins at most once per failing target every few seconds.

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	redisCooldownKey     = "cooldown:" // + prefix "|" index: the cooldown's message, expiring with it
	redisCooldownChannel = "cooldowns" // Pub/Sub: one message per cooldown begun
	// cooldownQueue bounds the cooldowns waiting to be written; past it
	// one is dropped (the others instances then learn of that target's
	// failures by themselves).
	cooldownQueue = 64
)

// cooldownMessage is the JSON of a shared cooldown, both the key's value
// and the message.
type cooldownMessage struct {
	Prefix   string `json:"prefix"`
	Index    int    `json:"index"`
	URL      string `json:"url"`
	UntilMS  int64  `json:"until_ms"`
	Instance string `json:"instance"`
}

// cooldownSharingStore is a store that shares the targets' cooldowns
// with the fleet (the Redis store). Server wires it to the proxy's
// targetStates before Start.
type cooldownSharingStore interface {
	// shareCooldown queues a cooldown that began here; it never blocks.
	shareCooldown(k targetKey, until time.Time)
	// onCooldown sets the function that watch calls with a cooldown that
	// another instance began.
	onCooldown(fn func(k targetKey, until time.Time))
}

func (s *redisStore) shareCooldown(k targetKey, until time.Time) {
	select {
	case s.cooldownsOut <- cooldownMessage{Prefix: k.prefix, Index: k.index, URL: k.url, UntilMS: until.UnixMilli(), Instance: s.instance}:
	default:
	}
}

func (s *redisStore) onCooldown(fn func(k targetKey, until time.Time)) { s.cooldownsIn = fn }

// writeCooldowns writes the queued cooldowns until ctx is done: each is a
// key that expires with it and a message, in one round trip. A write that
// fails is dropped: the cooldown still holds here, and the other
// instances learn of the target's failures by themselves.
func (s *redisStore) writeCooldowns(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-s.cooldownsOut:
			ttl := time.Until(time.UnixMilli(m.UntilMS))
			if ttl <= 0 {
				continue
			}
			b, _ := json.Marshal(m)
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := s.client.Pipelined(wctx, func(p redis.Pipeliner) error {
				p.Set(wctx, s.cooldownKey(m.Prefix, m.Index), b, ttl)
				p.Publish(wctx, s.key(redisCooldownChannel), b)
				return nil
			})
			cancel()
			if err != nil && ctx.Err() == nil {
				s.logger.Debug("sharing a target's cooldown failed", "prefix", m.Prefix, "target", m.Index, "error", err)
			}
		}
	}
}

func (s *redisStore) cooldownKey(prefix string, index int) string {
	return s.key(redisCooldownKey) + prefix + "|" + strconv.Itoa(index)
}

// receiveCooldown applies a cooldown message of another instance.
func (s *redisStore) receiveCooldown(payload string) {
	var m cooldownMessage
	if json.Unmarshal([]byte(payload), &m) != nil || m.Instance == s.instance || s.cooldownsIn == nil {
		return
	}
	s.cooldownsIn(targetKey{prefix: m.Prefix, index: m.Index, url: m.URL}, time.UnixMilli(m.UntilMS))
}

// loadCooldowns reads the cooldowns still running, for an instance that
// (re)subscribed: those begun while it was not listening.
func (s *redisStore) loadCooldowns(ctx context.Context) {
	if s.cooldownsIn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	match := strings.NewReplacer("*", `\*`, "?", `\?`, "[", `\[`).Replace(s.key(redisCooldownKey)) + "*"
	iter := s.client.Scan(ctx, 0, match, 100).Iterator()
	var keys []string
	for iter.Next(ctx) && len(keys) < 10000 {
		keys = append(keys, iter.Val())
	}
	if iter.Err() != nil || len(keys) == 0 {
		return
	}
	vals, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return
	}
	for _, v := range vals {
		if str, ok := v.(string); ok {
			s.receiveCooldown(str)
		}
	}
}
