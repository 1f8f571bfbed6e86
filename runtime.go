package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Runtime tuning, once a second (tuneRuntime): how many processors run Go
// code, the GC's room under load, and returning free memory once streams
// idle. All three are process-wide, so run (the process) owns the loop,
// not a Server. The first two run unless RUNTIME_TUNING is off
// (Config.RuntimeTuning), which leaves GOMAXPROCS and GOGC to the Go
// runtime, and each only while the operator did not set its environment
// variable. The memory release runs unless MEMORY_RELEASE is off (Config.MemoryRelease):
// it changes no runtime setting, and it runs only while the process is
// quiet, so it costs nothing under load (docs/performance.md).
//
// GC room. The GC starts a cycle when the heap reaches twice what was live
// after the previous one (GOGC=100), and at least 4 MiB. A proxy's live
// heap is small while every request allocates, so under load the GC runs
// far more often than in a plain httputil proxy (whose 32 KiB transport
// buffers make its live heap larger), and each cycle's fixed cost
// (stopping the world, scanning every goroutine stack) makes small
// requests dearer. Streams feel it too, though they allocate little: each
// one's start allocates its request state, and a cycle that begins while a
// burst of streams starts makes the goroutines starting them assist its
// marking, which holds up their first events, and the events of the
// streams already flowing wait behind it; the baseline's larger live heap
// gives it room for several bursts where ours has room for one or two
// (docs/performance.md, "GC room for bursts of streams"). So while the
// process allocates busyAllocs a second or more (the GC would then run
// several times a second), or while burstStreams or more streams start in
// a tuneEvery, and for gcBusyHold after either, GOGC is raised so that the
// heap may grow by about gcRoom beyond what is live (gcPercent); otherwise
// it stays at 100. Not always, nor a fixed floor under the heap (a
// ballast): a quiet process, or one holding idle streams that started long
// ago, keeps a heap within a few MiB of what is live. Streams in flight do
// not count, only their starts: a held stream allocates next to nothing.
// The first burst after a quiet time starts at 100 (the raise comes at the
// next tick). An operator's GOGC environment variable turns this off. GOGC
// is process-wide: it is set back to 100 when the loop ends.
const (
	busyAllocs   = 16 << 20 // per tuneEvery: small requests by the thousand a second
	burstStreams = procsFewStreams
	gcBusyHold   = 30 * time.Second
	gcRoom       = 32 << 20
	maxGCPercent = 800
)

// tuneEvery is how often tuneRuntime looks at the process.
const tuneEvery = time.Second

// Processors. Go runs goroutines on GOMAXPROCS processors, by default one
// per CPU. A proxy's goroutines hand each request along (the server's
// connection, the Transport's write and read loops), and with two or more
// processors every hand-off may wake a thread on another CPU, which on a
// virtual machine is dear: at a moderate rate of small requests most of
// the CPU a request costs is these wake-ups, and one processor serves the
// same requests for less CPU, as fast (docs/performance.md, "An ordinary
// day"). But on one processor
// a burst of work holds up every event behind it, so streams that run
// together see their events later; and where the proxy alone has more
// work than one CPU, a second one is worth its cost. So:
//   - the process starts with two processors (one if the runtime's default
//     is one);
//   - one, for light work: after procsLightAfter in which the process used
//     under half a CPU and never had procsFewStreams streams (event
//     streams, upgraded connections) in flight at once;
//   - fewer: while the process leaves more than half a processor unused,
//     has fewer than procsFewStreams streams in flight, and the machine has
//     no CPU to spare, the extra one only contends with the rest of the
//     machine: one goes after procsContendAfter with under procsSaturated
//     CPUs idle, or after procsTightAfter with under procsSpare idle; and
//     then none is taken again for procsNoRaise (but for streams, below),
//     so that a load whose clients slow down with the proxy does not swing
//     it back and forth quickly;
//   - more: from one, at once when a stream starts (the proxy signals it
//     from the response that turned out to be one, not at the next tick),
//     whatever the machine: their events' latency is what their users
//     see, and streams come in bursts whose starts, on one processor, hold
//     up each other's first events; and after procsRaiseAfter in which the machine
//     had at least procsSpare CPUs idle and the process used nearly all its
//     processors (at least n - procsSlack CPUs);
//   - past two, one also goes after procsQuietAfter fitting in one fewer
//     with half a CPU to spare.
//
// It never goes above the runtime's default. At the default it hands
// GOMAXPROCS back to the runtime (runtime.SetDefaultGOMAXPROCS), which
// then follows a container's CPU limit as it changes; below it, the tuner
// set the value, and it learns a changed limit when it next returns to
// the default. In a container /proc/stat counts the host's CPUs: a
// container whose CPU limit throttled it in the last period (cgroup v2
// cpu.stat) counts as a machine with none idle. An operator's GOMAXPROCS
// environment variable turns this off.
const (
	procsSlack        = 0.25 // CPUs
	procsSpare        = 0.5  // idle CPUs
	procsSaturated    = 0.25 // idle CPUs
	procsFewStreams   = 16   // streams in flight at once
	procsLightAfter   = 5 * time.Second
	procsRaiseAfter   = 2 * time.Second
	procsContendAfter = 2 * time.Second
	procsTightAfter   = 30 * time.Second
	procsQuietAfter   = 30 * time.Second
	procsNoRaise      = 30 * time.Second
)

// procsTuner decides GOMAXPROCS once per tuneEvery, and when requests
// crowd in (crowd); see above. Make it with newProcsTuner, or with max
// (the most it may use) and n (the GOMAXPROCS it starts with).
type procsTuner struct {
	max, n int
	// How long each condition has held; noRaise is what is left of the
	// wait after a lowering for contention.
	raiseFor, contendFor, tightFor, quietFor, lightFor, noRaise time.Duration
}

// newProcsTuner returns the tuner of a process whose runtime default is
// def processors.
func newProcsTuner(def int) procsTuner {
	return procsTuner{max: def, n: min(2, def)}
}

// tick takes the CPUs the process used and the machine's idle CPUs over
// the last period, and the most streams in flight at once in it, and
// returns the GOMAXPROCS to use.
func (p *procsTuner) tick(used, idle float64, peak int64) int {
	n := float64(p.n)
	p.noRaise = max(p.noRaise-tuneEvery, 0)
	crowded := peak >= procsFewStreams
	busy := used >= n-procsSlack
	p.raiseFor = holds(p.n < p.max && p.noRaise == 0 && idle >= procsSpare && busy, p.raiseFor)
	spareProcessor := p.n > 1 && used < n-0.5
	p.contendFor = holds(spareProcessor && !crowded && idle < procsSaturated, p.contendFor)
	p.tightFor = holds(spareProcessor && !crowded && idle < procsSpare, p.tightFor)
	p.quietFor = holds(p.n > 2 && used < n-1.5, p.quietFor)
	p.lightFor = holds(p.n == 2 && used < n-1.5 && !crowded, p.lightFor)
	switch {
	case p.raiseFor >= procsRaiseAfter, crowded && p.mayCrowd():
		p.n++
	case p.contendFor >= procsContendAfter, p.tightFor >= procsTightAfter:
		p.n--
		p.noRaise = procsNoRaise
	case p.quietFor >= procsQuietAfter, p.lightFor >= procsLightAfter:
		p.n--
	default:
		return p.n
	}
	p.restart()
	return p.n
}

// restart starts every condition's wait anew, after a change of
// processors.
func (p *procsTuner) restart() {
	p.raiseFor, p.contendFor, p.tightFor, p.quietFor, p.lightFor = 0, 0, 0, 0, 0
}

// crowd is told that a stream started while the process ran on one
// processor, between ticks, and returns the GOMAXPROCS to use.
func (p *procsTuner) crowd() int {
	if p.mayCrowd() {
		p.n++
		p.restart()
	}
	return p.n
}

// mayCrowd reports whether streams crowding in take a second processor:
// from one, even while a lowering for contention holds (that wait is
// against small requests whose clients slow down with the proxy).
func (p *procsTuner) mayCrowd() bool {
	return p.n == 1 && p.max > 1
}

// atDefault tells the tuner the runtime's default after it was handed
// GOMAXPROCS back: a container's CPU limit may have changed it.
func (p *procsTuner) atDefault(def int) {
	p.max, p.n = def, def
}

// holds returns how long a condition has held, given whether it held in
// the last tuneEvery and how long it had held before.
func holds(now bool, before time.Duration) time.Duration {
	if !now {
		return 0
	}
	return before + tuneEvery
}

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

// gcTuner decides GOGC once per tuneEvery; see above.
type gcTuner struct {
	busyFor time.Duration // left of gcBusyHold
}

// tick takes the bytes allocated and the streams started since the last
// tick, and the live heap, and returns the GOGC to use.
func (g *gcTuner) tick(allocated, streams, live uint64) int {
	if allocated >= busyAllocs || streams >= burstStreams {
		g.busyFor = gcBusyHold
	} else if g.busyFor > 0 {
		g.busyFor -= tuneEvery
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
// in RSS, a large part of it per stream, while the thousands of streams
// that remain sit idle. So a GC runs and the free memory goes back to the
// OS at once (when more than freeMemoryThreshold is free or garbage) in
// two cases:
//   - requests are in flight while the process is quiet (in the last
//     tuneEvery it allocated less than quietAllocs and used less than
//     quietCPU plus quietCPUPerRequest for each request in flight): they
//     are idle streams, and their memory is what the proxy holds. The
//     part per request lets the keep-alive pings of many idle streams pass
//     for quiet, and the memory they hold go back, while streams of
//     tokens, which use far more CPU each, do not. A few hundred token
//     streams among thousands of idle ones can pass for quiet too; a
//     release then pauses their events once, and freeMemoryThreshold
//     keeps that rare;
//   - nothing is in flight and the process has been quiet for idleRelease.
//
// Never while streams are busy or under load, and not sooner with nothing
// in flight: the GC and the returning of pages pause what runs, which
// shows in the latency of streams whose events flow (they allocate almost
// nothing, so only their CPU tells them apart), and the pages returned are
// faulted back in by the next burst of requests, which costs CPU if memory
// is returned in every quiet second between bursts. Nor in a tuneEvery in
// which a request began or a stream was handed off, that is while a burst
// is still coming in:
//   - a burst of streams that starts after a quiet second is in flight at
//     the next tick, with the last burst's garbage still in the heap, and
//     a release then (two collections and the return of the pages, which
//     pause what runs) would hold up the streams' first events, which
//     their users wait on (docs/performance.md, "The memory release at a
//     burst's start");
//   - streams are handed off STREAM_HANDOFF_AFTER after their start, and
//     what each leaves (net/http's buffers and the handler's stack) is in
//     pools, not counted as free or garbage, until a collection: a release
//     between a burst's starts and its hand-offs would return little, and
//     none would come after them.
//
// So while new requests keep coming in every second among idle streams,
// their memory goes back only as the Go runtime's own scavenger returns
// it, more slowly.
const (
	freeMemoryThreshold = 4 << 20
	quietAllocs         = 1 << 20               // per tuneEvery: a few hundred small requests a second
	quietCPU            = 50 * time.Millisecond // per tuneEvery: 5 % of a core
	quietCPUPerRequest  = 20 * time.Microsecond // per tuneEvery and request in flight
	idleRelease         = 30 * time.Second
)

// memoryReleaser decides, once per tuneEvery, whether to return
// free memory; see above.
type memoryReleaser struct {
	quietFor time.Duration
	starts   uint64 // requestLoad.starts at the last tick
}

// tick takes the bytes allocated and the CPU time the process used since
// the last tick, the requests begun and streams handed off so far
// (requestLoad.starts), the free and garbage bytes of the heap and the
// number of requests in flight, and reports whether to release now.
func (m *memoryReleaser) tick(allocated uint64, busy time.Duration, starts uint64, freeAndGarbage uint64, inFlight int64) bool {
	started := starts - m.starts
	m.starts = starts
	quiet := allocated < quietAllocs && busy < quietCPU+time.Duration(inFlight)*quietCPUPerRequest
	if !quiet {
		m.quietFor = 0
		return false
	}
	m.quietFor += tuneEvery
	if freeAndGarbage <= freeMemoryThreshold || started > 0 {
		return false
	}
	return inFlight > 0 || m.quietFor >= idleRelease
}

// tuneRuntime starts tuning, once a second, GOMAXPROCS (if procs) and
// GOGC (if gc), and returning free memory (if release); load is what the
// tuner learns of the requests being served. stop ends the tuning and puts
// what it tuned back to the runtime's defaults. run calls it once per
// process, when RUNTIME_TUNING or MEMORY_RELEASE is on.
func tuneRuntime(procs, gc, release bool, load requestLoad) (stop func()) {
	return tuneRuntimeFrom(tuneSources{machine: machineCPU, process: processCPU, every: tuneEvery}, procs, gc, release, load)
}

// requestLoad is what the tuner reads of the requests a Server serves
// (the proxy's): how many are in flight, how many requests began and
// streams were handed off since the process started, how many streams
// (event streams, upgraded connections) started since then, the most
// streams in flight at once since the last call of peakStreams, and a
// channel that receives when a stream starts while oneProcessor was last
// told true (the tuner tells it whether it runs the process on one
// processor and may raise).
type requestLoad interface {
	inFlight() int64
	starts() uint64
	streamStarts() uint64
	peakStreams() int64
	crowded() <-chan struct{}
	oneProcessor(on bool)
}

// tuneSources is where tuneRuntimeFrom reads the process's and the
// machine's CPU time, and how often.
type tuneSources struct {
	machine func() (cpuSample, bool)
	process func() time.Duration
	every   time.Duration
}

// tuneRuntimeFrom is tuneRuntime with its sources given. The tuners count
// time in ticks of tuneEvery whatever src.every is.
func tuneRuntimeFrom(src tuneSources, procs, gc, release bool, load requestLoad) (stop func()) {
	pt := newProcsTuner(runtime.GOMAXPROCS(0))
	machine, ok := src.machine()
	procs = procs && ok && pt.max > 1
	if procs && pt.n < pt.max {
		runtime.GOMAXPROCS(pt.n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tuneLoop(ctx, src, load, gc, procs, release, &pt, machine)
	}()
	return func() {
		cancel()
		<-done
		load.oneProcessor(false)
		if procs {
			runtime.SetDefaultGOMAXPROCS()
		}
	}
}

// setProcs gives the runtime the GOMAXPROCS p decided: at p's most, back
// to the runtime's default, which p then learns. It tells load whether a
// stream's start is now to be signalled.
func setProcs(p *procsTuner, n int, load requestLoad) {
	if n < p.max {
		runtime.GOMAXPROCS(n)
	} else {
		runtime.SetDefaultGOMAXPROCS()
		p.atDefault(runtime.GOMAXPROCS(0))
	}
	one := p.mayCrowd()
	if one {
		// A signal a stream sent while the last raise was under way (the
		// load was still told one) is stale: dropped, so that the first
		// wait on one processor does not end in a raise at once. No new
		// signal comes until the load is told below.
		select {
		case <-load.crowded():
		default:
		}
	}
	load.oneProcessor(one)
}

// tuneLoop is tuneRuntime's loop; machine is the machine's CPU time when
// it started. Garbage counts as free: after a burst the heap may not grow
// again for a long time, so no GC would run to free it.
func tuneLoop(ctx context.Context, src tuneSources, load requestLoad, tuneGC, tuneProcs, release bool, procs *procsTuner, machine cpuSample) {
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
		busy = src.process()
	}
	tick := time.NewTicker(src.every)
	defer tick.Stop()
	var m memoryReleaser
	var g gcTuner
	gogc := 100
	defer func() {
		if gogc != 100 {
			debug.SetGCPercent(100)
		}
	}()
	read()
	load.peakStreams()
	lastAllocs, lastBusy, lastTime := v[0], busy, time.Now()
	lastStreams := load.streamStarts()
	m.starts = load.starts()
	for {
		select {
		case <-ctx.Done():
			return
		case <-load.crowded():
			if before := procs.n; tuneProcs && procs.crowd() != before {
				setProcs(procs, procs.n, load)
			}
			continue
		case <-tick.C:
		}
		read()
		allocated, cpu := v[0]-lastAllocs, busy-lastBusy
		peak := load.peakStreams()
		if tuneProcs {
			if procs.n == procs.max {
				// At the runtime's default, which a container's CPU
				// limit may have moved.
				if d := runtime.GOMAXPROCS(0); d != procs.n {
					procs.atDefault(d)
				}
			}
			now, ok := src.machine()
			if idle, valid := idleCPUs(machine, now); ok && valid {
				used := float64(cpu) / float64(time.Since(lastTime))
				before := procs.n
				if n := procs.tick(used, idle, peak); n != before {
					setProcs(procs, n, load)
				}
			}
			machine = now // zero when not ok: a period without figures is skipped, not merged into the next
		}
		streams := load.streamStarts()
		if tuneGC {
			if pct := g.tick(allocated, streams-lastStreams, v[3]); pct != gogc {
				debug.SetGCPercent(pct)
				gogc = pct
			}
		}
		garbage := max(int64(v[2])-int64(v[3]), 0)
		if release && m.tick(allocated, cpu, load.starts(), v[1]+uint64(garbage), load.inFlight()) {
			// Two collections: what a burst left in sync.Pools (net/http's
			// buffers given back at each hijack, stream_here.go) survives
			// the first in the pools' victim caches, and goes with the
			// second, whose free pages FreeOSMemory then returns.
			runtime.GC()
			debug.FreeOSMemory()
			read() // the next period starts after the GC it ran
			if tuneProcs {
				machine, _ = src.machine()
			}
		}
		lastAllocs, lastBusy, lastTime, lastStreams = v[0], busy, time.Now(), streams
	}
}

// cpuSample is the machine's CPU time so far, as machineCPU reads it.
type cpuSample struct {
	idle, total uint64 // clock ticks summed over the CPUs
	cpus        int
	// throttled is the time a container's CPU limit held the process
	// back, in microseconds; hasThrottled is false outside a cgroup v2
	// CPU controller.
	throttled    uint64
	hasThrottled bool
}

// idleCPUs returns how many of the machine's CPUs were idle, on average,
// between two samples: none if its CPU limit throttled the process. valid
// is false when the counters did not move forward (the kernel's idle
// counters may go back, for instance when a CPU goes offline).
func idleCPUs(prev, cur cpuSample) (idle float64, valid bool) {
	if prev.total == 0 || cur.total <= prev.total || cur.idle < prev.idle || cur.cpus <= 0 {
		return 0, false
	}
	if cur.hasThrottled && prev.hasThrottled && cur.throttled > prev.throttled {
		return 0, true
	}
	f := float64(cur.idle-prev.idle) / float64(cur.total-prev.total)
	return min(f, 1) * float64(cur.cpus), true
}
