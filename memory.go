package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// Returning free memory. The Go runtime keeps heap pages it freed for
// reuse and gives them back to the OS lazily, as long as the heap stays
// under its GC goal. A proxy's heap swings: a burst of requests or of new
// streams leaves megabytes of buffers and request state free behind it,
// which would stay in RSS while the thousands of streams that remain sit
// idle (measured with the bench's hold scenario: a fifth of the RSS per
// held stream). So once the process is quiet (it allocated less than
// quietAllocs during the last freeMemoryEvery) and more than
// freeMemoryThreshold is free or garbage, a GC runs and the free memory
// goes back to the OS at once.
//
// Never under load: returning pages that the next second of requests
// faults back in cost small requests 2-7 % more CPU (measured: the
// allocator refilling spans from fresh pages).
const (
	freeMemoryEvery     = time.Second
	freeMemoryThreshold = 4 << 20
	quietAllocs         = 1 << 20 // per freeMemoryEvery: a few hundred small requests a second
)

// releaseFreeMemory runs until ctx is done. Garbage counts as free: after
// a burst the heap may not grow again for a long time, so no GC would run
// to free it.
func releaseFreeMemory(ctx context.Context) {
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
		{Name: "/gc/heap/live:bytes"},                // live at the last GC
		{Name: "/gc/heap/allocs:bytes"},              // allocated since start
	}
	tick := time.NewTicker(freeMemoryEvery)
	defer tick.Stop()
	var lastAllocs uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		var v [4]uint64
		for i, s := range sample {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		free, garbage, allocs := v[0], int64(v[1])-int64(v[2]), v[3]-lastAllocs
		lastAllocs = v[3]
		if allocs < quietAllocs && free+uint64(max(garbage, 0)) > freeMemoryThreshold {
			debug.FreeOSMemory()
			lastAllocs = 0 // re-read: FreeOSMemory's own GC allocates
			metrics.Read(sample[3:])
			if sample[3].Value.Kind() == metrics.KindUint64 {
				lastAllocs = sample[3].Value.Uint64()
			}
		}
	}
}

// The GC floor. The GC starts a cycle when the heap reaches twice what was
// live after the previous one, and at least 4 MiB. A proxy's live heap is
// small (about 1-2 MiB under a 50-connection load) while it allocates
// several KiB per request, so without a floor the GC ran 3 times as often
// as in a plain httputil proxy (whose 32 KiB transport buffers make its
// live heap 5 MiB), and each cycle's fixed cost (stopping the world,
// scanning a hundred goroutine stacks) made small requests 10 % dearer.
//
// Go has no setting for a minimum heap goal, so the floor is a ballast: one
// pointer-free allocation that counts as live heap, which the GC never
// scans, and whose pages are never touched, so that it takes no RAM (it
// is mapped, not resident; measured: +0.6 MiB RSS at start). With it the
// GC runs once per ~gcFloorSize allocated. Garbage may then reach about
// that much RSS under load; releaseFreeMemory returns it once the load
// stops. A GOMEMLIMIT, if set, counts the floor as used.
const gcFloorSize = 16 << 20

var gcFloor struct {
	once sync.Once
	b    []byte
}

// raiseGCFloor allocates the ballast once per process.
func raiseGCFloor() {
	gcFloor.once.Do(func() { gcFloor.b = make([]byte, gcFloorSize) })
}
