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
// under its GC goal. A proxy's heap swings: a burst of new streams leaves
// megabytes of buffers and request state free behind it, which would stay
// in RSS while the thousands of streams that remain sit idle (measured
// with the bench's hold scenario: a fifth of the RSS per held stream). So
// a GC runs and the free memory goes back to the OS at once (when more
// than freeMemoryThreshold is free or garbage) in two cases:
//   - requests are in flight while the process is quiet (in the last
//     freeMemoryEvery it allocated less than quietAllocs and used less
//     than quietCPU): they are idle streams, and their memory is what the
//     proxy holds;
//   - nothing is in flight and the process has been quiet for idleRelease.
//
// Never while streams are busy or under load, and not sooner with nothing
// in flight: the GC and the returning of pages pause what runs (measured:
// a worse latency p99 of 300 streams when it ran while their events
// flowed, which allocate almost nothing), and the pages returned are
// faulted back in by the next burst of requests (it cost the bench's small
// requests 10-14 % more CPU when memory was returned in every quiet second
// between its load rounds).
const (
	freeMemoryEvery     = time.Second
	freeMemoryThreshold = 4 << 20
	quietAllocs         = 1 << 20               // per freeMemoryEvery: a few hundred small requests a second
	quietCPU            = 50 * time.Millisecond // per freeMemoryEvery: 5 % of a core
	idleRelease         = 30 * time.Second
)

// memoryReleaser decides, once per freeMemoryEvery, whether to return
// free memory; see above.
type memoryReleaser struct {
	lastAllocs uint64
	quietFor   time.Duration
}

// tick takes the cumulative bytes allocated, the CPU time the process used
// since the last tick, the free and garbage bytes of the heap and the
// number of requests in flight, and reports whether to release now.
func (m *memoryReleaser) tick(allocs uint64, busy time.Duration, freeAndGarbage uint64, inFlight int64) bool {
	quiet := allocs-m.lastAllocs < quietAllocs && busy < quietCPU
	m.lastAllocs = allocs
	if !quiet {
		m.quietFor = 0
		return false
	}
	m.quietFor += freeMemoryEvery
	if freeAndGarbage <= freeMemoryThreshold {
		return false
	}
	return inFlight > 0 || m.quietFor >= idleRelease
}

// releaseFreeMemory runs until ctx is done; inFlight counts the requests
// being served. Garbage counts as free: after a burst the heap may not
// grow again for a long time, so no GC would run to free it.
func releaseFreeMemory(ctx context.Context, inFlight func() int64) {
	sample := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},              // allocated since start
		{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
		{Name: "/gc/heap/live:bytes"},                // live at the last GC
	}
	var v [4]uint64
	var busy time.Duration // CPU used since start; 0 where not known
	read := func() {
		metrics.Read(sample)
		for i, s := range sample {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		busy, _ = processCPU()
	}
	tick := time.NewTicker(freeMemoryEvery)
	defer tick.Stop()
	var m memoryReleaser
	read()
	m.lastAllocs = v[0]
	lastBusy := busy
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		read()
		garbage := max(int64(v[2])-int64(v[3]), 0)
		release := m.tick(v[0], busy-lastBusy, v[1]+uint64(garbage), inFlight())
		lastBusy = busy
		if release {
			debug.FreeOSMemory()
			// Start the next period after the GC it ran.
			read()
			m.lastAllocs, lastBusy = v[0], busy
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
