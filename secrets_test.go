package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

const testSecretKey = "a-secret-key-of-at-least-32-characters"

func TestSecretBox(t *testing.T) {
	box, err := newSecretBox(testSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	sealed := box.seal("/ai", "sk-upstream")
	if !strings.HasPrefix(sealed, sealedPrefix) || strings.Contains(sealed, "sk-upstream") {
		t.Fatalf("seal = %q, want an opaque enc:v1: value", sealed)
	}
	if again := box.seal("/ai", "sk-upstream"); again == sealed {
		t.Errorf("two seals of one key are equal: the nonce is not fresh")
	}
	if got, err := box.open("/ai", sealed); got != "sk-upstream" || err != nil {
		t.Errorf("open = %q, %v; want the key", got, err)
	}
	if _, err := box.open("/other", sealed); !errors.Is(err, errSealedKey) {
		t.Errorf("open for another prefix: %v, want errSealedKey (the key is bound to its mapping)", err)
	}
	other, _ := newSecretBox(testSecretKey + "!")
	if _, err := other.open("/ai", sealed); !errors.Is(err, errSealedKey) {
		t.Errorf("open with another SECRET_KEY: %v, want errSealedKey", err)
	}
	var none *secretBox
	if _, err := none.open("/ai", sealed); !errors.Is(err, errSealedKey) {
		t.Errorf("open without SECRET_KEY: %v, want errSealedKey", err)
	}
	if got, err := box.open("/ai", "sk-plain"); got != "sk-plain" || err != nil {
		t.Errorf("open of a key stored before SECRET_KEY = %q, %v; want it as it is", got, err)
	}
	if _, err := newSecretBox("short"); err == nil {
		t.Errorf("a SECRET_KEY of 5 characters was accepted")
	}
}

// TestSecretKeyAtRest: with SECRET_KEY set, neither store holds an
// upstream key in clear, and both give it back in clear; a store read
// without the right SECRET_KEY does not route the mapping (fail closed).
func TestSecretKeyAtRest(t *testing.T) {
	const marker = "sk-upstream-MARKER-5d1e"
	m := keysMapping("/ai", "https://a.example", marker, "bearer", "https://b.example", marker+"-2", "x-api-key")
	check := func(t *testing.T, cfg Config, dump func() []byte) {
		store, err := openStore(context.Background(), cfg, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		if err := store.CreateMapping(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		ms, err := store.Mappings(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var got Mapping
		for _, x := range ms {
			if x.Prefix == "/ai" {
				got = x
			}
		}
		if len(got.Targets) != 2 || got.Targets[0].Key != marker || got.Targets[1].Key != marker+"-2" {
			t.Errorf("read back %+v, want the keys in clear", got)
		}
		store.Close()
		if d := dump(); bytes.Contains(d, []byte(marker)) || !bytes.Contains(d, []byte(sealedPrefix)) {
			t.Errorf("the store's dump holds the upstream key in clear (or nothing sealed)")
		}
		cfg.SecretKey = ""
		store, err = openStore(context.Background(), cfg, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		ms, _ = store.Mappings(context.Background())
		table, skipped := newRouteTable(ms, selfAddrs{}, nil)
		if table.byPrefix["/ai"] != nil || !strings.Contains(strings.Join(skipped, " "), "/ai") {
			t.Errorf("without SECRET_KEY the sealed mapping is routed; want it skipped")
		}
		// Why is said: to the server's log and in `map list`.
		for _, x := range ms {
			if x.Prefix == "/ai" && !strings.Contains(describeTargets(x, "\t"), "SECRET_KEY is not set") {
				t.Errorf("map list shows %q, want it to say SECRET_KEY is not set", describeTargets(x, "\t"))
			}
		}
	}
	t.Run("embedded", func(t *testing.T) {
		cfg := testConfig(t, map[string]string{"SECRET_KEY": testSecretKey})
		check(t, cfg, func() []byte {
			b, err := os.ReadFile(boltPath(cfg.DataDir))
			if err != nil {
				t.Fatal(err)
			}
			return b
		})
	})
	t.Run("redis", func(t *testing.T) {
		addr := testRedisAddr(t)
		prefix := testKeyPrefix(t, addr)
		rs := openTestRedisStore(t, addr, prefix, "")
		dump := func() []byte {
			vals, err := rs.client.HGetAll(context.Background(), prefix+redisMappingsKey).Result()
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			for k, v := range vals {
				b.WriteString(k + "=" + v + "\n")
			}
			return b.Bytes()
		}
		box, _ := newSecretBox(testSecretKey)
		rs.useSecrets(box)
		if _, err := rs.Mappings(context.Background()); err != nil { // seed
			t.Fatal(err)
		}
		if err := rs.CreateMapping(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		if d := dump(); bytes.Contains(d, []byte(marker)) || !bytes.Contains(d, []byte(sealedPrefix)) {
			t.Errorf("the Redis hash holds the upstream key in clear (or nothing sealed)")
		}
		ms, _ := rs.Mappings(context.Background())
		for _, x := range ms {
			if x.Prefix == "/ai" && x.Targets[0].Key != marker {
				t.Errorf("read back key %q, want it in clear", x.Targets[0].Key)
			}
		}
	})
}

// TestSecretKeyStartWarning: without SECRET_KEY the start log warns once
// that upstream keys are stored in clear; with it, it does not.
func TestSecretKeyStartWarning(t *testing.T) {
	for _, secret := range []string{"", testSecretKey} {
		var logs syncBuffer
		logger := slog.New(slog.NewTextHandler(&logs, nil))
		cfg := testConfig(t, map[string]string{"SECRET_KEY": secret, "ADMIN_TOKEN": testAdminToken})
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan net.Addr, 1)
		done := make(chan error, 1)
		go func() { done <- run(ctx, cfg, logger, func(a net.Addr) { ready <- a }) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("run: %v", err)
		case <-time.After(testTimeout):
			t.Fatal("run did not start")
		}
		cancel()
		<-done
		n := strings.Count(logs.String(), "SECRET_KEY is not set")
		if want := map[bool]int{true: 1, false: 0}[secret == ""]; n != want {
			t.Errorf("SECRET_KEY %q: the warning appears %d times, want %d", secret, n, want)
		}
	}
}
