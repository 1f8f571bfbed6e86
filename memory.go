package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning free memory. The Go runtime keeps heap pages it freed for
// reuse and gives them back to the OS lazily, as long as the heap stays
// under its GC goal (twice the live heap). A proxy's heap swings: a burst
// of requests or of new streams leaves megabytes of buffers and request
// state free behind it, which would stay in RSS while the thousands of
// streams that remain sit idle (measured with the bench's hold scenario:
// a fifth of the RSS per held stream). So every freeMemoryEvery, when more
// than freeMemoryThreshold is free or garbage, a GC runs and the free
// memory goes back to the OS at once; under load this costs one forced GC
// every few seconds among the many the load triggers anyway.
const (
	freeMemoryEvery     = 5 * time.Second
	freeMemoryThreshold = 4 << 20
)

// releaseFreeMemory runs until ctx is done. Garbage counts as free: after
// a burst the heap may not grow again for a long time, so no GC would run
// to free it.
func releaseFreeMemory(ctx context.Context) {
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
		{Name: "/gc/heap/live:bytes"},                // live at the last GC
	}
	tick := time.NewTicker(freeMemoryEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		var v [3]uint64
		for i, s := range sample {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		if free, garbage := v[0], int64(v[1])-int64(v[2]); free+uint64(max(garbage, 0)) > freeMemoryThreshold {
			debug.FreeOSMemory()
		}
	}
}
