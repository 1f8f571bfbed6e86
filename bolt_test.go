package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The Store contract (seeding once, sentinels, Changes, the admin token,
// restarts) runs against the bolt store in storecontract_test.go; the
// tests here cover what is particular to bolt.

func TestBoltStoreClosed(t *testing.T) {
	ctx := context.Background()
	s := openEmptyBoltStore(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	x := newMapping("/x", "https://x.example")
	tests := []struct {
		name string
		call func() error
	}{
		{"Ping", func() error { return s.Ping(ctx) }},
		{"Mappings", func() error { _, err := s.Mappings(ctx); return err }},
		{"CreateMapping", func() error { return s.CreateMapping(ctx, x) }},
		{"UpdateMapping", func() error { return s.UpdateMapping(ctx, x) }},
		{"DeleteMapping", func() error { return s.DeleteMapping(ctx, "/x") }},
		{"AdminToken", func() error {
			_, err := s.AdminToken(ctx, func() (string, error) { return "token-0123456789abcdef", nil })
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, errStoreClosed) {
				t.Errorf("%s after Close = %v, want errStoreClosed", tt.name, err)
			}
		})
	}
}

func TestBoltStoreAdminTokenGenerateErrorStoresNothing(t *testing.T) {
	ctx := context.Background()
	s := openEmptyBoltStore(t)
	boom := errors.New("no entropy")
	if _, err := s.AdminToken(ctx, func() (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("AdminToken = %v, want the generate error", err)
	}
	tok, err := s.AdminToken(ctx, func() (string, error) { return "token-after-0123456789", nil })
	if err != nil || tok != "token-after-0123456789" {
		t.Errorf("AdminToken after a failed generate = %q, %v; want the new token", tok, err)
	}
}

// openEmptyBoltStore opens a bolt store in a fresh directory and removes
// the seeded defaults.
func openEmptyBoltStore(t testing.TB) *boltStore {
	t.Helper()
	s, err := openBoltStore(t.TempDir())
	if err != nil {
		t.Fatalf("openBoltStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for _, d := range defaultMappings() {
		if err := s.DeleteMapping(context.Background(), d.Prefix); err != nil {
			t.Fatalf("delete default %s: %v", d.Prefix, err)
		}
	}
	return s
}

// TestBoltStoreValues: the bucket holds prefix → target URL, as it always
// did, and a value in the object form (written by a newer version) is
// listed without targets rather than failing the whole listing.
func TestBoltStoreValues(t *testing.T) {
	ctx := context.Background()
	s := openEmptyBoltStore(t)
	if err := s.CreateMapping(ctx, newMapping("/b", "https://b.example/v1")); err != nil {
		t.Fatal(err)
	}
	const object = `{"prefix":"/a","targets":[{"url":"https://a.example"},{"url":"https://a2.example","weight":3}],"balance":"weighted"}`
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(boltMappings).Put([]byte("/a"), []byte(object)) })
	if err != nil {
		t.Fatal(err)
	}
	var raw string
	s.db.View(func(tx *bolt.Tx) error {
		raw = string(tx.Bucket(boltMappings).Get([]byte("/b")))
		return nil
	})
	if raw != "https://b.example/v1" {
		t.Errorf("stored value of /b = %q, want the target URL", raw)
	}
	got, err := s.Mappings(ctx)
	want := []Mapping{{Prefix: "/a", Balance: "weighted", Targets: []Target{{URL: "https://a.example"}, {URL: "https://a2.example", Weight: 3}}},
		newMapping("/b", "https://b.example/v1")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Mappings() = %+v, %v; want %+v", got, err, want)
	}
}

func TestBoltStoreLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // after the parallel subtests
	for name, open := range map[string]func(string) (*boltStore, error){
		"read-write": openBoltStore,
		// bbolt's read-only open takes flock LOCK_SH, which the writer's
		// LOCK_EX excludes: no reading beside a running server either.
		"read-only": openBoltStoreReadOnly,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				s2, err := open(dir)
				if err == nil {
					s2.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, errStoreLocked) {
					t.Errorf("second open: %v, want errStoreLocked", err)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("second open failed after %v, want within 5s", d)
				}
			case <-time.After(testTimeout):
				t.Fatalf("second open still blocked after %v, want errStoreLocked", testTimeout)
			}
		})
	}
}

// TestBoltStoreReadOnly: a read-only open creates nothing where there is
// no store, reads what a store holds, refuses writes, and shares the file
// with other readers.
func TestBoltStoreReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := openBoltStoreReadOnly(dir); !errors.Is(err, errNoStore) {
		t.Fatalf("read-only open of an empty dir = %v, want errNoStore", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a read-only open created %v", entries)
	}
	if _, err := openBoltStoreReadOnly(dir + "/missing"); !errors.Is(err, errNoStore) {
		t.Fatalf("read-only open of a missing dir = %v, want errNoStore", err)
	}

	w, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.CreateMapping(ctx, newMapping("/mine", "http://127.0.0.1:11434")); err != nil {
		t.Fatal(err)
	}
	want, _ := w.Mappings(ctx)
	w.Close()

	r1, err := openBoltStoreReadOnly(dir)
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	defer r1.Close()
	r2, err := openBoltStoreReadOnly(dir)
	if err != nil {
		t.Fatalf("second read-only open beside the first: %v", err)
	}
	defer r2.Close()
	if got, err := r2.Mappings(ctx); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("read-only Mappings() = %v, %v; want %v", got, err, want)
	}
	if err := r1.CreateMapping(ctx, newMapping("/x", "https://x.example")); !errors.Is(err, bolterrors.ErrDatabaseReadOnly) {
		t.Errorf("CreateMapping on a read-only store = %v, want bbolt's ErrDatabaseReadOnly", err)
	}
}

// TestBoltStoreWriteHonoursContext: an admin write gives up when its
// context ends, with errStoreUnavailable (503), instead of waiting for a
// writer lock or a disk that does not come back; with a context already
// done it writes nothing. Held here: another write transaction, as a
// stalled fsync would hold it.
func TestBoltStoreWriteHonoursContext(t *testing.T) {
	s := openEmptyBoltStore(t)
	x := newMapping("/x", "https://x.example")
	writes := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"CreateMapping", func(ctx context.Context) error { return s.CreateMapping(ctx, x) }},
		{"UpdateMapping", func(ctx context.Context) error { return s.UpdateMapping(ctx, x) }},
		{"DeleteMapping", func(ctx context.Context) error { return s.DeleteMapping(ctx, "/x") }},
		{"AdminToken", func(ctx context.Context) error {
			_, err := s.AdminToken(ctx, func() (string, error) { return "token-0123456789abcdef", nil })
			return err
		}},
	}

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for _, w := range writes {
			if err := w.call(ctx); !errors.Is(err, errStoreUnavailable) || !errors.Is(err, context.Canceled) {
				t.Errorf("%s with a cancelled context = %v, want errStoreUnavailable wrapping context.Canceled", w.name, err)
			}
		}
		if ms, err := s.Mappings(context.Background()); err != nil || len(ms) != 0 {
			t.Errorf("Mappings() after cancelled writes = %v, %v; want none written", ms, err)
		}
	})

	t.Run("blocked", func(t *testing.T) {
		tx, err := s.db.Begin(true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tx.Rollback() })
		for _, w := range writes {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			done := make(chan error, 1)
			go func() { done <- w.call(ctx) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(testTimeout):
				t.Fatalf("%s still blocked behind another write %v after its context ended", w.name, testTimeout)
			}
			cancel()
			if !errors.Is(err, errStoreUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s behind another write = %v, want errStoreUnavailable wrapping context.DeadlineExceeded", w.name, err)
			}
			rec := httptest.NewRecorder()
			writeAPIError(rec, err)
			if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"store_unavailable"`) {
				t.Errorf("%s: the client is told %d %s, want 503 store_unavailable", w.name, rec.Code, rec.Body)
			}
		}
	})
}

// TestBoltKeysOlderFile: a file written before proxy keys existed (no
// keys bucket) reads as no keys, read-only too, and takes keys once opened
// for writing.
func TestBoltKeysOlderFile(t *testing.T) {
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(boltKeys) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ctx := context.Background()

	ro, err := openBoltStoreReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ks, err := ro.Keys(ctx); err != nil || len(ks) != 0 {
		t.Errorf("Keys() of an older file, read-only = %v, %v; want none", ks, err)
	}
	ro.Close()

	s, err = openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k, _ := testKey("late")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatalf("CreateKey on an older file: %v", err)
	}
	if ks, err := s.Keys(ctx); err != nil || len(ks) != 1 {
		t.Errorf("Keys() = %v, %v; want the new key", ks, err)
	}
}
