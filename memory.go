package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Memory management, once a second (manageMemory): the GC's room under
// load, and returning free memory once streams idle.
//
// GC room. The GC starts a cycle when the heap reaches twice what was live
// after the previous one (GOGC=100), and at least 4 MiB. A proxy's live
// heap is small (1-2 MiB under a 50-connection load) while it allocates
// several KiB per request, so under load the GC ran 3 times as often as in
// a plain httputil proxy (whose 32 KiB transport buffers make its live heap
// 5 MiB), and each cycle's fixed cost (stopping the world, scanning every
// goroutine stack) made small requests 10 % dearer. So while the process
// allocates busyAllocs a second or more (the GC would then run several
// times a second), and for gcBusyHold after, GOGC is raised so that the
// heap may grow by about gcRoom beyond what is live (gcPercent); otherwise
// it stays at 100. Not always: a heap that cycles within a few MiB stays
// in the CPU caches and in pages already touched, and measured so it gave
// 300 SSE streams a 10-15 % lower event latency than a fixed 16 MiB floor
// (a ballast, tried first). An operator's GOGC environment variable turns
// this off. GOGC is process-wide: it is set back to 100 when the loop ends.
const (
	busyAllocs   = 16 << 20 // per freeMemoryEvery: about 2,500 small requests a second
	gcBusyHold   = 30 * time.Second
	gcRoom       = 32 << 20
	maxGCPercent = 800
)

// gcPercent returns the GOGC that gives a heap of live bytes about gcRoom
// to grow before the next cycle: 100 * gcRoom / live, rounded down to a
// power of two times 100 (so that small swings of live change nothing),
// between 100 and maxGCPercent.
func gcPercent(live uint64) int {
	pct := 100
	for pct < maxGCPercent && uint64(pct*2)*max(live, 1) <= 100*gcRoom {
		pct *= 2
	}
	return pct
}

// gcTuner decides GOGC once per freeMemoryEvery; see above.
type gcTuner struct {
	busyFor time.Duration // left of gcBusyHold
}

// tick takes the bytes allocated since the last tick and the live heap,
// and returns the GOGC to use.
func (g *gcTuner) tick(allocated, live uint64) int {
	if allocated >= busyAllocs {
		g.busyFor = gcBusyHold
	} else if g.busyFor > 0 {
		g.busyFor -= freeMemoryEvery
	}
	if g.busyFor <= 0 {
		return 100
	}
	return gcPercent(live)
}

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
	quietFor time.Duration
}

// tick takes the bytes allocated and the CPU time the process used since
// the last tick, the free and garbage bytes of the heap and the number of
// requests in flight, and reports whether to release now.
func (m *memoryReleaser) tick(allocated uint64, busy time.Duration, freeAndGarbage uint64, inFlight int64) bool {
	quiet := allocated < quietAllocs && busy < quietCPU
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

// manageMemory tunes GOGC and returns free memory until ctx is done;
// inFlight counts the requests being served. Garbage counts as free: after
// a burst the heap may not grow again for a long time, so no GC would run
// to free it.
func manageMemory(ctx context.Context, inFlight func() int64) {
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
		busy = processCPU()
	}
	tick := time.NewTicker(freeMemoryEvery)
	defer tick.Stop()
	var m memoryReleaser
	var g gcTuner
	tuneGC := os.Getenv("GOGC") == ""
	gogc := 100
	defer func() {
		if gogc != 100 {
			debug.SetGCPercent(100)
		}
	}()
	read()
	lastAllocs, lastBusy := v[0], busy
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		read()
		allocated, cpu := v[0]-lastAllocs, busy-lastBusy
		if tuneGC {
			if pct := g.tick(allocated, v[3]); pct != gogc {
				debug.SetGCPercent(pct)
				gogc = pct
			}
		}
		garbage := max(int64(v[2])-int64(v[3]), 0)
		if m.tick(allocated, cpu, v[1]+uint64(garbage), inFlight()) {
			debug.FreeOSMemory()
			read() // the next period starts after the GC it ran
		}
		lastAllocs, lastBusy = v[0], busy
	}
}
