package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// boltFileName is the embedded store's file under DATA_DIR.
const boltFileName = "apiproxy.db"

// boltLockWait is how long an open waits for another process's lock on
// the file before it gives up with errStoreLocked: long enough for a CLI
// command that holds it for a moment, short enough that a file held for
// good (a running server) is reported instead of waited on.
const boltLockWait = 2 * time.Second

// boltMmapSize is how much of the file bbolt maps from the start
// (bolt.Options.InitialMmapSize). bbolt otherwise maps the file at twice
// its size and maps it again each time it outgrows that, and a new map
// copies out what the open transaction holds and waits for every read
// transaction to end: on a new store the request log's commits would
// pay it again and again as the log fills (docs/performance.md, "An
// ordinary day"). The map only reserves address space; memory is used
// by the pages read, as before. With a map this size bbolt grows the file
// in steps of its AllocSize (16 MiB, a sparse extension on Linux file
// systems) instead of doubling it, so a new store's file reads 16 MiB
// while it holds far less. Not on Windows, where bbolt would grow the
// file itself to the map's size.
const boltMmapSize = 256 << 20

// boltInitialMmap is boltMmapSize where the OS lets a map outrun the file.
func boltInitialMmap() int {
	if runtime.GOOS == "windows" {
		return 0
	}
	return boltMmapSize
}

// Bucket and key names in the embedded store's bbolt file. The mappings
// bucket holds prefix → Mapping.encodeValue, the keys bucket key id →
// ProxyKey.encode (storedKey).
var (
	boltMappings   = []byte("mappings")
	boltKeys       = []byte("keys")
	boltMeta       = []byte("meta")
	boltSeeded     = []byte("seeded")
	boltAdminToken = []byte("admin_token")
)

// boltStore is the embedded single-node Store: one bbolt file under
// DATA_DIR. bbolt serialises writers, which makes create-if-absent atomic,
// and its file lock keeps every other process out while this one has the
// file open for writing.
//
// Its writes are bounded by their context (see update); its reads are not:
// bbolt's readers never wait for a writer.
type boltStore struct {
	db *bolt.DB
	// writeErr is the error of the last write if the file system refused
	// it (errStoreNotWritable), nil if that write landed: writeFailure.
	writeErr atomic.Pointer[error]
	// box seals the upstream keys of the mappings written (SECRET_KEY);
	// nil keeps them as given. Set by useSecrets before use.
	box *secretBox
	// log is the request log's bookkeeping (bolt_log.go).
	log boltLog
}

// useSecrets makes the store seal upstream keys with box (secrets.go).
func (s *boltStore) useSecrets(box *secretBox) { s.box = box }

// boltPath is the embedded store's file in dir.
func boltPath(dir string) string { return filepath.Join(dir, boltFileName) }

// openBoltStore opens (creating if needed) DATA_DIR/apiproxy.db and seeds
// the default mappings the first time. A second process on the same file
// fails after boltLockWait with errStoreLocked instead of hanging.
//
// A file that this call created and could not initialise (a full disk
// cuts bbolt's first write short) is removed before the error returns:
// left in place, its partial first page would fail every later start with
// bbolt's "file size too small" until someone deleted it by hand. A file
// that was there before is never removed, whatever it holds.
func openBoltStore(dir string) (*boltStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := boltPath(dir)
	// O_EXCL tells whether this call created the file, which a Stat before
	// the open could not: another process may create it in between.
	created := false
	openFile := func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if name != path || flag&os.O_CREATE == 0 {
			return os.OpenFile(name, flag, perm)
		}
		f, err := os.OpenFile(name, flag|os.O_EXCL, perm)
		if errors.Is(err, os.ErrExist) {
			return os.OpenFile(name, flag, perm)
		}
		created = err == nil
		return f, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: boltLockWait, OpenFile: openFile, InitialMmapSize: boltInitialMmap()})
	if errors.Is(err, bolterrors.ErrTimeout) {
		// Another process opened the file this call created and holds its
		// lock: the file is that process's now.
		return nil, fmt.Errorf("open %s: %w", path, errStoreLocked)
	}
	if err != nil {
		if created {
			return nil, removeUninitialised(path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(boltMappings)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(boltMeta)
		if err != nil {
			return err
		}
		// A file written before proxy keys existed gets the bucket too.
		if _, err := tx.CreateBucketIfNotExists(boltKeys); err != nil {
			return err
		}
		if meta.Get(boltSeeded) != nil {
			return nil
		}
		for _, d := range defaultMappings() {
			if err := m.Put([]byte(d.Prefix), []byte(d.encodeValue())); err != nil {
				return err
			}
		}
		return meta.Put(boltSeeded, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		db.Close()
		if created {
			return nil, removeUninitialised(path, err)
		}
		return nil, fmt.Errorf("initialise %s: %w", path, err)
	}
	return &boltStore{db: db}, nil
}

// removeUninitialised removes the store file at path, which this process
// created and could not initialise (err), and returns the error to report.
func removeUninitialised(path string, err error) error {
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return fmt.Errorf("initialise %s: %w (removing the incomplete new file failed too: %v; remove it before the next start)", path, err, rerr)
	}
	return fmt.Errorf("initialise %s: %w (the incomplete new file was removed)", path, err)
}

// openBoltStoreReadOnly opens an existing DATA_DIR/apiproxy.db for reading
// only: it creates and seeds nothing, and returns errNoStore if there is
// no file yet. Its writes fail. It takes bbolt's shared lock (flock
// LOCK_SH), which readers share with each other but not with a process
// that has the file open for writing: while a server runs on the file it
// fails after boltLockWait with errStoreLocked, as openBoltStore does.
func openBoltStoreReadOnly(dir string) (*boltStore, error) {
	path := boltPath(dir)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open %s: %w", path, errNoStore)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: boltLockWait, ReadOnly: true})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, errStoreLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &boltStore{db: db}, nil
}

func (s *boltStore) Mappings(ctx context.Context) ([]Mapping, error) {
	var out []Mapping
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(boltMappings)
		if b == nil { // a file that a read-only open found half initialised
			return nil
		}
		// bbolt iterates in key order, which is prefix order.
		return b.ForEach(func(k, v []byte) error {
			m := s.box.readMapping(string(k), string(v)) // on error m has no targets: see Store.Mappings
			out = append(out, m)
			return nil
		})
	})
	if err != nil {
		return nil, s.wrap("list mappings", err)
	}
	return out, nil
}

func (s *boltStore) CreateMapping(ctx context.Context, m Mapping) error {
	return s.write(ctx, "create mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(m.Prefix)) != nil {
			return errMappingExists
		}
		return b.Put([]byte(m.Prefix), []byte(s.box.storedValue(m)))
	})
}

func (s *boltStore) UpdateMapping(ctx context.Context, m Mapping) error {
	return s.write(ctx, "update mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(m.Prefix)) == nil {
			return errMappingNotFound
		}
		return b.Put([]byte(m.Prefix), []byte(s.box.storedValue(m)))
	})
}

func (s *boltStore) DeleteMapping(ctx context.Context, prefix string) error {
	return s.write(ctx, "delete mapping", func(b *bolt.Bucket) error {
		if b.Get([]byte(prefix)) == nil {
			return errMappingNotFound
		}
		return b.Delete([]byte(prefix))
	})
}

// write runs fn on the mappings bucket in one transaction (update). It
// signals no Changes: the caller reloads (see Store.Changes).
func (s *boltStore) write(ctx context.Context, op string, fn func(*bolt.Bucket) error) error {
	return s.update(ctx, op, func(tx *bolt.Tx) error { return fn(tx.Bucket(boltMappings)) })
}

// update runs fn in a write transaction (commit) and returns its error,
// or a context error wrapped with errStoreUnavailable as soon as ctx
// ends, whichever comes first: an admin call's timeout bounds a write that
// waits behind a stalled fsync. A write that ctx gave up on goes on in the
// background and may still land (the next read shows it); Close waits for
// it. A ctx already done when update is called writes nothing.
//
// The transaction runs on a goroutine of its own because bbolt has no way
// to abandon a transaction that waits for the writer lock or the disk;
// writes are admin calls, never the request path.
func (s *boltStore) update(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w: %w", op, errStoreUnavailable, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.commit(op, fn) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w: %w (the write may still complete)", op, errStoreUnavailable, ctx.Err())
	}
}

// commit runs fn in a write transaction and returns its error, wrapped
// (wrap). Its outcome sets writeFailure: a write that landed clears it, one
// that the file system refused sets it, any other leaves it as it was.
func (s *boltStore) commit(op string, fn func(*bolt.Tx) error) error {
	err := s.wrap(op, s.db.Update(fn))
	switch {
	case err == nil:
		s.writeErr.Store(nil)
	case errors.Is(err, errStoreNotWritable):
		s.writeErr.Store(&err)
	}
	return err
}

// writeFailure implements writeHealthStore.
func (s *boltStore) writeFailure() error {
	if p := s.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *boltStore) wrap(op string, err error) error {
	switch {
	case err == nil, errors.Is(err, errMappingExists), errors.Is(err, errMappingNotFound),
		errors.Is(err, errKeyExists), errors.Is(err, errKeyNotFound):
		return err
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return fmt.Errorf("%s: %w", op, errStoreClosed)
	case storageRefused(err):
		return fmt.Errorf("%s: %w: %w", op, errStoreNotWritable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Keys reads the keys bucket, in id order (bbolt's key order).
func (s *boltStore) Keys(ctx context.Context) ([]ProxyKey, error) {
	var out []ProxyKey
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(boltKeys)
		if b == nil { // an older file opened read-only: no keys yet
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			key, _ := decodeKey(string(k), string(v)) // on error a disabled key: see keyStore
			out = append(out, key)
			return nil
		})
	})
	if err != nil {
		return nil, s.wrap("list keys", err)
	}
	return out, nil
}

func (s *boltStore) CreateKey(ctx context.Context, k ProxyKey) error {
	return s.writeKeys(ctx, "create key", func(b *bolt.Bucket) error {
		if b.Get([]byte(k.ID)) != nil {
			return errKeyExists
		}
		return b.Put([]byte(k.ID), []byte(k.encode()))
	})
}

func (s *boltStore) UpdateKey(ctx context.Context, k ProxyKey) error {
	return s.writeKeys(ctx, "update key", func(b *bolt.Bucket) error {
		if b.Get([]byte(k.ID)) == nil {
			return errKeyNotFound
		}
		return b.Put([]byte(k.ID), []byte(k.encode()))
	})
}

func (s *boltStore) DeleteKey(ctx context.Context, id string) error {
	return s.writeKeys(ctx, "delete key", func(b *bolt.Bucket) error {
		if b.Get([]byte(id)) == nil {
			return errKeyNotFound
		}
		return b.Delete([]byte(id))
	})
}

// writeKeys runs fn on the keys bucket in one transaction (update), like
// write for the mappings.
func (s *boltStore) writeKeys(ctx context.Context, op string, fn func(*bolt.Bucket) error) error {
	return s.update(ctx, op, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(boltKeys)
		if err != nil {
			return err
		}
		return fn(b)
	})
}

// Changes never delivers: bbolt's file lock keeps every other process out,
// so every change is made through this store, whose caller reloads.
func (s *boltStore) Changes() <-chan struct{} { return nil }

func (s *boltStore) AdminToken(ctx context.Context, generate func() (string, error)) (string, error) {
	var token string
	err := s.update(ctx, "admin token", func(tx *bolt.Tx) error {
		meta := tx.Bucket(boltMeta)
		if v := meta.Get(boltAdminToken); v != nil {
			token = string(v)
			return nil
		}
		t, err := generate()
		if err != nil {
			return err
		}
		token = t
		return meta.Put(boltAdminToken, []byte(t))
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

func (s *boltStore) Ping(ctx context.Context) error {
	return s.wrap("ping", s.db.View(func(*bolt.Tx) error { return nil }))
}

func (s *boltStore) Close() error { return s.db.Close() }

// Stats in the embedded store (stats.go): bucket stats holds total and
// last (field → 8-byte big-endian int64) and hours and days, whose nested
// buckets are keyed by the 8-byte big-endian Unix hour or day and hold the
// fields of that bucket. Buckets older than keepHours/keepDays are
// dropped as newer ones are written.
var (
	boltStats      = []byte("stats")
	boltStatsTotal = []byte("total")
	boltStatsLast  = []byte("last")
	boltStatsHours = []byte("hours")
	boltStatsDays  = []byte("days")
)

// AddStats implements statsStore in one transaction: all or nothing. It
// waits for the transaction whatever ctx says: Stats gives a batch whose
// write failed again, so a write given up on that landed afterwards would
// count it twice. d.Batch needs no record here: an error means the
// transaction did not commit.
func (s *boltStore) AddStats(ctx context.Context, d *statsData) error {
	return s.commit("add stats", func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(boltStats)
		if err != nil {
			return err
		}
		total, err := root.CreateBucketIfNotExists(boltStatsTotal)
		if err != nil {
			return err
		}
		if err := boltAddFields(total, d.Total); err != nil {
			return err
		}
		last, err := root.CreateBucketIfNotExists(boltStatsLast)
		if err != nil {
			return err
		}
		for p, t := range d.Last {
			if v := last.Get([]byte(p)); v == nil || boltInt(v) < t {
				if err := last.Put([]byte(p), boltBytes(t)); err != nil {
					return err
				}
			}
		}
		if err := boltAddBuckets(root, boltStatsHours, d.Hours, keepHours); err != nil {
			return err
		}
		return boltAddBuckets(root, boltStatsDays, d.Days, keepDays)
	})
}

// LoadStats implements statsStore.
func (s *boltStore) LoadStats(ctx context.Context, now time.Time) (*statsData, error) {
	d := newStatsData()
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(boltStats)
		if root == nil {
			return nil
		}
		boltReadFields(root.Bucket(boltStatsTotal), d.Total)
		boltReadFields(root.Bucket(boltStatsLast), d.Last)
		h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
		if b := root.Bucket(boltStatsHours); b != nil {
			for k := h - windowHours + 1; k <= h; k++ {
				if sub := b.Bucket(boltBytes(k)); sub != nil {
					boltReadFields(sub, bucket(d.Hours, k))
				}
			}
		}
		if b := root.Bucket(boltStatsDays); b != nil {
			for k := day - windowDays + 1; k <= day; k++ {
				if sub := b.Bucket(boltBytes(k)); sub != nil {
					boltReadFields(sub, bucket(d.Days, k))
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("load stats", err)
	}
	return d, nil
}

// boltAddBuckets adds m's time buckets under root/name and drops the
// buckets more than keep older than the newest.
func boltAddBuckets(root *bolt.Bucket, name []byte, m map[int64]map[string]int64, keep int64) error {
	b, err := root.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	for k, fields := range m {
		sub, err := b.CreateBucketIfNotExists(boltBytes(k))
		if err != nil {
			return err
		}
		if err := boltAddFields(sub, fields); err != nil {
			return err
		}
	}
	newest, _ := b.Cursor().Last()
	if newest == nil {
		return nil
	}
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && boltInt(k) <= boltInt(newest)-keep; k, _ = c.Next() {
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := b.DeleteBucket(k); err != nil {
			return err
		}
	}
	return nil
}

func boltAddFields(b *bolt.Bucket, fields map[string]int64) error {
	for f, v := range fields {
		if err := b.Put([]byte(f), boltBytes(boltInt(b.Get([]byte(f)))+v)); err != nil {
			return err
		}
	}
	return nil
}

func boltReadFields(b *bolt.Bucket, dst map[string]int64) {
	if b == nil {
		return
	}
	b.ForEach(func(k, v []byte) error {
		if v != nil {
			dst[string(k)] += boltInt(v)
		}
		return nil
	})
}

// boltBytes and boltInt convert an int64 to and from 8 big-endian bytes
// (the order of non-negative keys is their numeric order); a value of
// another length reads as 0.
func boltBytes(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

func boltInt(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}
