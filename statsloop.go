package main

// The stats loop (every second: drain, the process figures of /stats'
// "performance", the flush to the store) and the spill file a shutdown
// writes when the store missed the last flush. The recorder, its counters
// and drain are in stats.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"time"
)

// run is the stats loop: every statsInterval it drains, refreshes the
// performance figures and flushes to the store, until ctx is done. Server
// starts it; close makes the last flush after it returned.
func (st *Stats) run(ctx context.Context) {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st.tick(ctx)
		}
	}
}

// tick is one turn of the loop at st.now().
func (st *Stats) tick(ctx context.Context) {
	now := st.now()
	st.mu.Lock()
	st.drainLocked(now)
	s := st.perfAcc
	st.perfAcc = perfSample{}
	st.mu.Unlock()
	st.updatePerf(now, s)
	if !st.enabled || now.Before(st.nextFlush) {
		return
	}
	st.mu.Lock()
	noBase := st.base == nil
	st.mu.Unlock()
	if noBase {
		// Read the stored figures once early, so that /stats has them
		// even if the store goes down before anyone asked.
		st.refresh(ctx, now)
	}
	fctx, cancel := context.WithTimeout(ctx, statsFlushTimeout)
	err := st.flush(fctx)
	cancel()
	switch {
	case err != nil && ctx.Err() == nil:
		st.backoff = min(max(2*st.backoff, statsInterval), maxFlushBackoff)
		st.nextFlush = now.Add(st.backoff)
		if !st.flushFailed {
			st.logger.Warn("writing stats to the store failed; keeping them in memory and retrying", "error", err)
		}
		st.flushFailed = true
	case err == nil:
		if st.flushFailed {
			st.logger.Info("stats written to the store again")
		}
		st.flushFailed, st.backoff = false, 0
	}
}

// flush writes the unacknowledged batches to the store, each with its id,
// then hands pending to it as a new batch. It stops at the first error:
// the batch that failed stays unacknowledged, to be given again as it is
// by the next flush, and newer counts stay pending.
func (st *Stats) flush(ctx context.Context) error {
	st.ioMu.Lock()
	defer st.ioMu.Unlock()
	now := st.now()
	st.mu.Lock()
	st.drainLocked(now)
	// Buckets that stores no longer keep are dropped, so that a long
	// outage cannot grow what waits without bound. Dropping them from a
	// batch the store may hold is harmless: it skips a known id whole.
	st.pending.prune(now)
	for _, d := range st.unacked {
		d.prune(now)
	}
	st.mu.Unlock()
	// One new batch at most: counts drained meanwhile (a /stats answer
	// drains too) wait for the next flush.
	for cut := false; !cut; {
		st.mu.Lock()
		var d *statsData
		switch {
		case len(st.unacked) > 0:
			d = st.unacked[0]
		case !st.pending.empty():
			d, cut = st.pending, true
			st.batchSeq++
			d.Batch = st.batchPrefix + strconv.FormatUint(st.batchSeq, 10)
			st.pending = newStatsData()
			st.unacked = append(st.unacked, d)
		}
		st.mu.Unlock()
		if d == nil {
			break
		}
		if err := st.store.AddStats(ctx, d); err != nil {
			return err
		}
		st.mu.Lock()
		st.unacked = slices.Delete(st.unacked, 0, 1)
		if st.base != nil {
			st.base.add(d)
			st.base.prune(now)
		}
		st.mu.Unlock()
	}
	if st.unspill {
		st.unspill = false
		if err := os.Remove(st.spill); err != nil && !errors.Is(err, os.ErrNotExist) {
			st.logger.Warn("removing the stats spill file failed; its counts may be added again at the next start", "path", st.spill, "error", err)
		}
	}
	return nil
}

// close makes the final flush, after the loop stopped and the HTTP server
// drained. If the store cannot take it, the deltas go to the spill file,
// which the next start picks up.
func (st *Stats) close() {
	if !st.enabled {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), statsFlushTimeout)
	defer cancel()
	err := st.flush(ctx)
	if err == nil {
		return
	}
	if st.spill == "" {
		st.logger.Error("final stats flush failed; these counts are lost", "error", err)
		return
	}
	st.mu.Lock()
	spilled := slices.Clone(st.unacked)
	if !st.pending.empty() {
		spilled = append(spilled, st.pending)
	}
	b, merr := json.Marshal(spilled)
	st.mu.Unlock()
	if merr == nil {
		merr = writeFileAtomic(st.spill, b)
	}
	if merr != nil {
		st.logger.Error("final stats flush failed and the spill file could not be written; these counts are lost", "error", err, "spill_error", merr)
		return
	}
	st.logger.Warn("final stats flush failed; counts saved for the next start", "path", st.spill, "error", err)
}

// loadSpill takes the deltas a previous process could not write: its
// unacknowledged batches, ids kept, into unacked and the rest into
// pending. The file is removed once they are flushed.
func (st *Stats) loadSpill() {
	b, err := os.ReadFile(st.spill)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var spilled []*statsData
	if err == nil {
		spilled, err = decodeSpill(b)
	}
	if err != nil {
		st.logger.Warn("ignoring unreadable stats spill file", "path", st.spill, "error", err)
		return
	}
	now := st.now()
	for _, d := range spilled {
		d.prune(now)
		if d.Batch != "" {
			st.unacked = append(st.unacked, d)
		} else {
			st.pending.add(d)
		}
	}
	st.unspill = true
	st.logger.Info("stats of the previous run that were not flushed will be written now", "path", st.spill)
}

// decodeSpill reads a spill file: a JSON array of statsData, or one
// statsData object (the form written before batches had ids). Every
// returned statsData is non-nil, with non-nil maps.
func decodeSpill(b []byte) ([]*statsData, error) {
	b = bytes.TrimSpace(b)
	var out []*statsData
	if len(b) > 0 && b[0] != '[' {
		out = []*statsData{{}}
		if err := json.Unmarshal(b, out[0]); err != nil {
			return nil, err
		}
	} else if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	// Copied into fresh maps: a field written as null would leave a nil
	// map, which add and drain cannot write to.
	clean := make([]*statsData, 0, len(out))
	for _, d := range out {
		if d == nil {
			continue
		}
		n := newStatsData()
		n.add(d)
		n.Batch = d.Batch
		clean = append(clean, n)
	}
	return clean, nil
}

// perfFigures are the process figures of /stats, computed by the loop.
type perfFigures struct {
	RequestsPerSec    float64 `json:"requests_per_sec"`
	AvgResponseTimeMS float64 `json:"avg_response_time_ms"`
	ErrorRate         float64 `json:"error_rate"` // percent
	MemoryUsageMB     float64 `json:"memory_usage_mb"`
	GoroutineCount    int     `json:"goroutine_count"`
	ActiveRequests    int64   `json:"active_requests"`
	UptimeSeconds     int64   `json:"uptime_seconds"`
}

// updatePerf adds sample s (drained from the last tick to now) to the
// ring and publishes new figures. Only the loop calls it.
func (st *Stats) updatePerf(now time.Time, s perfSample) {
	s.from = st.lastTick
	st.lastTick = now
	st.ring[st.ringN%perfWindow] = s
	st.ringN++
	var sum perfSample
	from := now
	for i := range min(st.ringN, perfWindow) {
		r := &st.ring[i]
		sum.count += r.count
		sum.errors += r.errors
		sum.latSum += r.latSum
		if r.from.Before(from) {
			from = r.from
		}
	}
	p := &perfFigures{GoroutineCount: runtime.NumGoroutine()}
	if secs := now.Sub(from).Seconds(); secs > 0 {
		p.RequestsPerSec = round2(float64(sum.count) / secs)
	}
	if sum.count > 0 {
		p.AvgResponseTimeMS = round2(float64(sum.latSum) / float64(sum.count) / 1e3)
		p.ErrorRate = round2(100 * float64(sum.errors) / float64(sum.count))
	}
	metrics.Read(st.memSamples)
	if st.memSamples[0].Value.Kind() == metrics.KindUint64 && st.memSamples[1].Value.Kind() == metrics.KindUint64 {
		// What the runtime holds from the OS: roughly the resident set.
		held := st.memSamples[0].Value.Uint64() - st.memSamples[1].Value.Uint64()
		p.MemoryUsageMB = round2(float64(held) / (1 << 20))
	}
	st.perf.Store(p)
}

// perfAt returns the process figures of /stats at now: those of the
// loop's last tick, with the requests in flight and the uptime at now.
func (st *Stats) perfAt(now time.Time) perfFigures {
	var p perfFigures
	if f := st.perf.Load(); f != nil {
		p = *f
	}
	if st.active != nil {
		p.ActiveRequests = st.active()
	}
	p.UptimeSeconds = int64(now.Sub(st.started).Seconds())
	return p
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
