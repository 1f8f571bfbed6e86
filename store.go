package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Store keeps the mappings, the proxy keys and the little state that must
// be shared by every instance (the generated admin token). Implementations
// are safe for concurrent use. The proxy never calls a Store on the request
// path: it routes from a routeTable snapshot and checks keys against a
// keyTable, both rebuilt by whoever changed them and on Changes.
//
// The embedded store is boltStore (bolt.go), the shared one redisStore
// (redis.go); storecontract_test.go holds both to this contract.
type Store interface {
	// Mappings returns every mapping, sorted by prefix; the caller owns the
	// slice. A stored value that this version cannot read (the object form
	// of SPEC §9, see decodeMapping) comes back with its prefix and no
	// targets: routing skips it, the admin API lists and can delete it.
	Mappings(ctx context.Context) ([]Mapping, error)
	// CreateMapping stores m, which the caller validated, atomically; it
	// returns errMappingExists if the prefix is taken, even by a concurrent
	// create.
	CreateMapping(ctx context.Context, m Mapping) error
	// UpdateMapping replaces the stored mapping of m.Prefix with m, which
	// the caller validated; it returns errMappingNotFound rather than
	// creating one.
	UpdateMapping(ctx context.Context, m Mapping) error
	// DeleteMapping removes the mapping of prefix; errMappingNotFound if
	// there is none.
	DeleteMapping(ctx context.Context, prefix string) error
	// Changes delivers a value whenever the mappings or the proxy keys may
	// have changed other than through this Store's own write methods: another instance wrote,
	// a connection was restored, a periodic resync is due. A write through
	// CreateMapping, UpdateMapping or DeleteMapping does not signal it: its
	// caller reloads (Server.reloadAfterWrite), so that one local write is
	// one reload. Signals are coalesced: a reader that is busy misses none,
	// it sees one value for several changes. The channel may never deliver
	// (the embedded store has no other writer).
	Changes() <-chan struct{}
	// AdminToken returns the stored admin token. If none is stored yet it
	// stores generate()'s value first, atomically, so that concurrent
	// instances agree on one token.
	AdminToken(ctx context.Context, generate func() (string, error)) (string, error)
	// Ping reports whether the store can be reached now.
	Ping(ctx context.Context) error
	// Close releases the store. Calls after Close return errStoreClosed.
	Close() error
	statsStore // AddStats, LoadStats: the stats figures every instance adds to
	keyStore   // Keys, CreateKey, UpdateKey, DeleteKey: the proxy keys (SPEC §10)
}

// keyStore is the proxy keys part of Store (SPEC §10): never a secret, only
// its hash, in the stored form of storedKey (keys.go). Changes is signalled
// for another instance's key writes as for mappings, and a write through
// these methods signals none (its caller reloads). A stored value that
// does not decode comes back as a disabled key with its id alone
// (decodeKey).
type keyStore interface {
	// Keys returns every key, sorted by id; the caller owns the slice.
	Keys(ctx context.Context) ([]ProxyKey, error)
	// CreateKey stores k, which the caller validated; errKeyExists if its
	// id is taken.
	CreateKey(ctx context.Context, k ProxyKey) error
	// UpdateKey replaces the stored key of k.ID; errKeyNotFound if none.
	UpdateKey(ctx context.Context, k ProxyKey) error
	// DeleteKey removes the key of id; errKeyNotFound if none.
	DeleteKey(ctx context.Context, id string) error
}

// Sentinel errors of the stores. Stores wrap them with the failed
// operation; writeAPIError (errors.go) alone turns them into an HTTP
// status and message.
var (
	errMappingNotFound = errors.New("mapping not found")
	errMappingExists   = errors.New("mapping already exists")
	errKeyNotFound     = errors.New("key not found")
	errKeyExists       = errors.New("key id already exists")
	errStoreClosed     = errors.New("store closed")
	errStoreLocked     = errors.New("data directory is in use by another apiproxy process")
	// errNoStore is returned by a read-only open of a data directory that
	// holds no embedded store yet.
	errNoStore = errors.New("no embedded store in the data directory")
	// errStoreUnavailable marks every store error that means "cannot be
	// reached now" (Redis: network, timeout, loading, read-only replica;
	// the embedded store: a write that its context gave up waiting for).
	// The client is told 503; the cause it travels with is for the log.
	errStoreUnavailable = errors.New("store unavailable")
	// errStoreNotWritable marks a write that the embedded store could not
	// make because its file system refused it: disk full, quota, read-only,
	// I/O error (see storageRefused); or that Redis refused while up (out
	// of memory, too few replicas: redisWriteRefusals). The client is told
	// 503; the cause it travels with names the path, for the log.
	errStoreNotWritable = errors.New("store not writable")
)

// writeHealthStore is a Store that remembers whether its storage takes
// writes. writeFailure returns nil while it does, else the error of the
// last write, which failed with errStoreNotWritable: the last write's
// outcome sets it, whoever wrote (an admin call, the stats flush every
// second), and the next write that lands clears it. Safe for concurrent
// use. Only the embedded store implements it: the Redis store's failures
// are outages, which /readyz reports through Ping.
type writeHealthStore interface {
	writeFailure() error
}

// storageRefused reports whether err is a file system's refusal to store
// more: the disk or the quota is full, the file system is read-only or
// failing. Other errors of a write (a sentinel, a cancelled context) say
// nothing about the disk.
func storageRefused(err error) bool {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// notWritableReason says in a few words why a write failed with
// errStoreNotWritable, for clients and /readyz: no path, no errno.
func notWritableReason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return "the data directory's disk is full"
	case errors.Is(err, syscall.EDQUOT):
		return "the data directory's disk quota is exhausted"
	case errors.Is(err, syscall.EROFS):
		return "the data directory is on a read-only file system"
	case errors.Is(err, syscall.EIO):
		return "the data directory's disk reports I/O errors"
	}
	if reason, ok := redisWriteRefusal(err); ok {
		return reason
	}
	return "the data directory cannot be written"
}

// notify sends a signal on ch without blocking: when one is already
// pending, its reader will see the latest state anyway. A nil ch is never
// signalled.
func notify(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// writeFileAtomic replaces path with data so that a reader (or a crash)
// sees either the old or the new file, never a part: write a temporary
// file in the same directory, sync it, rename it over path.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	// Make the rename itself durable; not every filesystem can sync a
	// directory, and the file is already complete either way.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Stats storage: the figures Stats flushes and every store keeps, in one
// form for the embedded store, Redis and the spill file.

// statsStore is the stats part of Store: every store keeps the stats
// figures of the instances that share it. Implementations are safe for
// concurrent use.
type statsStore interface {
	// AddStats adds d to the stored figures, atomically: all or nothing.
	// Counters add; Last keeps the larger value. After an error the
	// caller gives the same d again, Batch id and all. A store that can
	// apply a write and still return an error (Redis: the reply was lost)
	// adds a d with a Batch id at most once, however often it is given; a
	// store whose error means "not added" (bbolt) may ignore Batch. A d
	// without a Batch is added each time.
	AddStats(ctx context.Context, d *statsData) error
	// LoadStats returns the stored all-time figures, the hourly buckets of
	// the windowHours hours up to now's and the daily buckets of the
	// windowDays days up to now's (UTC). The caller owns the result.
	LoadStats(ctx context.Context, now time.Time) (*statsData, error)
}

// statsData is a set of stats counters, stored or to be added. Fields are
// named "<prefix>|<name>" (prefixes never hold '|'); see the field*
// constants. Hours and Days are keyed by Unix hour and Unix day (UTC).
type statsData struct {
	Total map[string]int64           `json:"total"`
	Hours map[int64]map[string]int64 `json:"hours"`
	Days  map[int64]map[string]int64 `json:"days"`
	Last  map[string]int64           `json:"last"` // prefix → Unix time of the last request; the larger wins
	// Batch identifies a set of deltas handed to a store, so that giving
	// it again after an error cannot add it twice (statsStore.AddStats);
	// "" for figures read from a store and deltas not yet handed over.
	// add and the other methods ignore it.
	Batch string `json:"batch,omitempty"`
}

// Field names after "<prefix>|". Total, Hours and Days hold every field
// but the histograms (Hours, Days) and the target figures (Total only);
// Total also holds "s<class>" for each of statusClasses, as do Hours and
// Days. Buckets written before /stats had ranges (issue 19) hold only
// count, errors and, in Hours, the latency figures: their other fields
// read as 0.
const (
	fieldCount        = "count"  // Total, Hours, Days
	fieldErrors       = "errors" // Total, Hours, Days
	fieldLatencySum   = "lat_us" // Hours, Days: sum of durations in µs
	fieldLatency      = "lat|"   // Hours, Days: "lat|<bucket>" histogram of durations
	fieldTTFB         = "ttfb|"  // Hours, Days: "ttfb|<bucket>" histogram of times to first byte
	fieldClientClosed = "client_closed"
	fieldBytesIn      = "bytes_in"
	fieldBytesOut     = "bytes_out"
	fieldTokens       = "tok_"         // "tok_<kind>" with a token kind (tokenKinds)
	fieldUnknown      = "tok_unknown"  // 2xx responses that carried no usage
	fieldModel        = "m|"           // "m|<model>|<kind>" with kind "count" or a token kind
	fieldTarget       = "t"            // Total: "t<index>|<figure>" with a figure of targetFigures
	fieldRateLimited  = "rate_limited" // requests refused by a limit (SPEC §11)
	fieldS429         = "s429"         // responses 429, also counted in "s4xx"
)

func newStatsData() *statsData {
	return &statsData{
		Total: map[string]int64{},
		Hours: map[int64]map[string]int64{},
		Days:  map[int64]map[string]int64{},
		Last:  map[string]int64{},
	}
}

func (d *statsData) empty() bool {
	return len(d.Total) == 0 && len(d.Hours) == 0 && len(d.Days) == 0 && len(d.Last) == 0
}

// bucket returns m[k], created if missing.
func bucket(m map[int64]map[string]int64, k int64) map[string]int64 {
	b := m[k]
	if b == nil {
		b = map[string]int64{}
		m[k] = b
	}
	return b
}

// add adds o to d. o is not modified nor retained.
func (d *statsData) add(o *statsData) {
	if o == nil {
		return
	}
	addFields(d.Total, o.Total)
	for h, f := range o.Hours {
		addFields(bucket(d.Hours, h), f)
	}
	for day, f := range o.Days {
		addFields(bucket(d.Days, day), f)
	}
	for p, t := range o.Last {
		d.Last[p] = max(d.Last[p], t)
	}
}

func addFields(dst, src map[string]int64) {
	for k, v := range src {
		if v != 0 {
			dst[k] += v
		}
	}
}

// prune drops hourly and daily buckets that stores no longer keep, so a
// long store outage cannot grow pending without bound.
func (d *statsData) prune(now time.Time) {
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := range d.Hours {
		if k <= h-keepHours {
			delete(d.Hours, k)
		}
	}
	for k := range d.Days {
		if k <= day-keepDays {
			delete(d.Days, k)
		}
	}
}

// window returns a copy of d with only the buckets LoadStats returns for
// now.
func (d *statsData) window(now time.Time) *statsData {
	out := newStatsData()
	addFields(out.Total, d.Total)
	for p, t := range d.Last {
		out.Last[p] = t
	}
	h, day := now.Unix()/hourSeconds, now.Unix()/daySeconds
	for k := h - windowHours + 1; k <= h; k++ {
		if f := d.Hours[k]; len(f) > 0 {
			addFields(bucket(out.Hours, k), f)
		}
	}
	for k := day - windowDays + 1; k <= day; k++ {
		if f := d.Days[k]; len(f) > 0 {
			addFields(bucket(out.Days, k), f)
		}
	}
	return out
}
