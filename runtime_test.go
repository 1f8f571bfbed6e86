package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMemoryReleaser checks when free memory goes back to the OS: at once
// for quiet in-flight streams, only after idleRelease with nothing in
// flight, never while the process allocates (under load) or when little
// is free.
func TestMemoryReleaser(t *testing.T) {
	const mib = 1 << 20
	type step = releaserStep
	run := runReleaser
	t.Run("held streams after a burst", func(t *testing.T) {
		run(t, []step{
			{allocated: 40 * mib, started: 1000, free: 30 * mib, inFlight: 1000, want: false}, // the burst itself
			{allocated: 1000, free: 30 * mib, inFlight: 1000, want: true},
		})
	})
	t.Run("busy streams", func(t *testing.T) {
		// Events flowing allocate almost nothing but keep the process busy.
		var steps []step
		for i := 0; i < 40; i++ {
			steps = append(steps, step{allocated: 40 << 10, busy: 200 * time.Millisecond, free: 20 * mib, inFlight: 300})
		}
		steps = append(steps, step{allocated: 40 << 10, busy: 5 * time.Millisecond, free: 20 * mib, inFlight: 300, want: true})
		run(t, steps)
	})
	t.Run("many idle streams with pings", func(t *testing.T) {
		// Ten thousand held streams whose pings together keep the process
		// as busy as the few busy streams below: very little per stream.
		run(t, []step{
			{allocated: 200 * mib, busy: 900 * time.Millisecond, free: 150 * mib, inFlight: 10000}, // the burst
			{allocated: 100 << 10, busy: 60 * time.Millisecond, free: 150 * mib, inFlight: 10000, want: true},
		})
	})
	t.Run("a few busy streams", func(t *testing.T) {
		// Fifty streams of tokens: the same CPU as the pings above, much
		// more per stream.
		var steps []step
		for i := 0; i < 40; i++ {
			steps = append(steps, step{allocated: 10 << 10, busy: 60 * time.Millisecond, free: 20 * mib, inFlight: 50})
		}
		run(t, steps)
	})
	t.Run("under load", func(t *testing.T) {
		var steps []step
		for i := 0; i < 40; i++ {
			steps = append(steps, step{allocated: 50 * mib, free: 20 * mib, inFlight: 50})
		}
		run(t, steps)
	})
	t.Run("idle between bursts", func(t *testing.T) {
		steps := []step{{allocated: 100 * mib, free: 20 * mib}} // the burst
		n := int(idleRelease / tuneEvery)
		for i := 1; i < n; i++ {
			steps = append(steps, step{free: 20 * mib})
		}
		steps = append(steps, step{free: 20 * mib, want: true})
		run(t, steps)
	})
	t.Run("a burst restarts the idle wait", func(t *testing.T) {
		n := int(idleRelease / tuneEvery)
		var steps []step
		for i := 0; i < n-1; i++ {
			steps = append(steps, step{free: 20 * mib})
		}
		steps = append(steps, step{allocated: 10 * mib, free: 20 * mib}) // load again
		for i := 0; i < n-1; i++ {
			steps = append(steps, step{free: 20 * mib})
		}
		steps = append(steps, step{free: 20 * mib, want: true})
		run(t, steps)
	})
	t.Run("a burst after a quiet second", func(t *testing.T) {
		// Streams that began just before the tick: the second was quiet,
		// the last burst's garbage is still there, and a release would
		// hold up their first events. Once they flow the process is busy;
		// when they sit idle, with none new, the memory goes back.
		run(t, []step{
			{free: 20 * mib},
			{allocated: 200 << 10, busy: 10 * time.Millisecond, started: 50, free: 20 * mib, inFlight: 50},
			{allocated: 100 << 10, busy: 150 * time.Millisecond, free: 20 * mib, inFlight: 50},
			{allocated: 10 << 10, busy: 2 * time.Millisecond, free: 20 * mib, inFlight: 50, want: true},
		})
	})
	t.Run("held streams handed off after a quiet second", func(t *testing.T) {
		// The burst's starts, a quiet second, then its hand-offs
		// (STREAM_HANDOFF_AFTER later): the memory they leave is there
		// only after them, and goes then.
		run(t, []step{
			{allocated: 40 * mib, busy: 400 * time.Millisecond, started: 1000, free: 10 * mib, inFlight: 1000},
			{allocated: 100 << 10, busy: 5 * time.Millisecond, free: 10 * mib, inFlight: 1000, want: true},
			{allocated: 800 << 10, busy: 40 * time.Millisecond, started: 600, free: 13 * mib, inFlight: 1000},
			{allocated: 500 << 10, busy: 30 * time.Millisecond, started: 400, free: 13 * mib, inFlight: 1000},
			{free: 13 * mib, inFlight: 1000, want: true},
		})
	})
	t.Run("new requests among idle streams", func(t *testing.T) {
		run(t, []step{
			{allocated: 40 * mib, free: 30 * mib, inFlight: 1000}, // the burst
			{allocated: 1000, started: 1, free: 30 * mib, inFlight: 1001},
			{allocated: 1000, started: 2, free: 30 * mib, inFlight: 1000},
			{allocated: 1000, free: 30 * mib, inFlight: 1000, want: true},
		})
	})
	t.Run("a request at the end of the idle wait", func(t *testing.T) {
		n := int(idleRelease / tuneEvery)
		var steps []step
		for i := 0; i < n-1; i++ {
			steps = append(steps, step{free: 20 * mib})
		}
		steps = append(steps, step{started: 1, free: 20 * mib}, step{free: 20 * mib, want: true})
		run(t, steps)
	})
	t.Run("little free", func(t *testing.T) {
		run(t, []step{
			{free: freeMemoryThreshold, inFlight: 10},
			{free: freeMemoryThreshold, inFlight: 10},
		})
	})
}

// releaserStep is one tick of a memoryReleaser and what it must decide.
type releaserStep struct {
	allocated uint64        // in the last second
	busy      time.Duration // in the last second
	started   uint64        // requests begun and streams handed off in the last second
	free      uint64
	inFlight  int64
	want      bool
}

// runReleaser ticks a new memoryReleaser through steps, failing at the
// first decision that is not the step's.
func runReleaser(t *testing.T, steps []releaserStep) {
	t.Helper()
	var m memoryReleaser
	var starts uint64
	for i, s := range steps {
		starts += s.started
		if got := m.tick(s.allocated, s.busy, starts, s.free, s.inFlight); got != s.want {
			t.Fatalf("tick %d (allocated %d KiB, busy %v, started %d, free %d MiB, in flight %d) = %v, want %v",
				i, s.allocated>>10, s.busy, s.started, s.free>>20, s.inFlight, got, s.want)
		}
	}
}

// TestGCTuner checks that GOGC is raised only while the process allocates
// fast (small requests under load) or streams start in bursts, by the room
// gcPercent gives, and goes back to 100 gcBusyHold after either.
func TestGCTuner(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, maxGCPercent}, {2 * mib, 800}, {5 * mib, 400}, {8 * mib, 400}, {9 * mib, 200},
		{16 * mib, 200}, {17 * mib, 100}, {500 * mib, 100},
	} {
		if got := gcPercent(c.live); got != c.want {
			t.Errorf("gcPercent(%d MiB) = %d, want %d", c.live/mib, got, c.want)
		}
	}

	var g gcTuner
	if got := g.tick(busyAllocs-1, burstStreams-1, 2*mib); got != 100 {
		t.Fatalf("a light load: GOGC %d, want 100", got)
	}
	if got := g.tick(50*mib, 0, 2*mib); got != 800 {
		t.Fatalf("50 MiB allocated in a second: GOGC %d, want 800", got)
	}
	if got := g.tick(50*mib, 0, 8*mib); got != 400 {
		t.Fatalf("under load, live 8 MiB: GOGC %d, want 400", got)
	}
	// The load stops: raised for gcBusyHold, then 100.
	n := int(gcBusyHold / tuneEvery)
	for i := 1; i < n; i++ {
		if got := g.tick(0, 0, 2*mib); got != 800 {
			t.Fatalf("%d s after the load: GOGC %d, want 800", i, got)
		}
	}
	if got := g.tick(0, 0, 2*mib); got != 100 {
		t.Fatalf("%v after the load: GOGC %d, want 100", gcBusyHold, got)
	}

	// A burst of streams starts, allocating little: raised, and held
	// gcBusyHold after it; streams in flight that no longer start do not
	// hold it.
	if got := g.tick(1*mib, burstStreams, 2*mib); got != 800 {
		t.Fatalf("%d streams started in a second: GOGC %d, want 800", burstStreams, got)
	}
	for i := 1; i < n; i++ {
		if got := g.tick(0, burstStreams-1, 2*mib); got != 800 {
			t.Fatalf("%d s after the burst: GOGC %d, want 800", i, got)
		}
	}
	if got := g.tick(0, burstStreams-1, 2*mib); got != 100 {
		t.Fatalf("%v after the burst, %d streams a second: GOGC %d, want 100", gcBusyHold, burstStreams-1, got)
	}
}

// TestProcsTuner checks when the process gives a processor back (the
// machine has no CPU to spare and the processor is not needed, for
// procsContendAfter or procsTightAfter, after which it waits procsNoRaise
// before taking one again; past two, it fits in fewer, for
// procsQuietAfter) and when it takes one (for procsRaiseAfter CPUs are
// idle, and past two its processors are nearly all busy), one at a time,
// never past 1 or max.
func TestProcsTuner(t *testing.T) {
	type step = procsStep
	run, repeat := runProcsTuner, repeatProcsStep
	then := func(a []step, b ...step) []step { return append(a, b...) }
	t.Run("starts with two, one where the runtime has one", func(t *testing.T) {
		if p := newProcsTuner(8); p.n != 2 || p.max != 8 {
			t.Errorf("newProcsTuner(8) = %+v, want n 2, max 8", p)
		}
		if p := newProcsTuner(1); p.n != 1 {
			t.Errorf("newProcsTuner(1) = %+v, want n 1", p)
		}
	})
	t.Run("light work: one after procsLightAfter, and stays", func(t *testing.T) {
		steps := then(repeat(step{0.01, 3.9, 2, 0}, procsLightAfter-tuneEvery), step{0.01, 3.9, 1, 0})
		run(t, newProcsTuner(4), then(steps, repeat(step{0.01, 3.9, 1, 0}, time.Minute)...))
		// 800 small requests a second: a few in flight at once.
		steps = then(repeat(step{0.4, 1.4, 2, 3}, procsLightAfter-tuneEvery), step{0.4, 1.4, 1, 3})
		run(t, newProcsTuner(2), then(steps, repeat(step{0.3, 1.5, 1, 5}, time.Minute)...))
	})
	t.Run("many in flight keep two, however light", func(t *testing.T) {
		run(t, newProcsTuner(4), repeat(step{0.2, 3.5, 2, 300}, time.Minute)) // hundreds of SSE streams
		run(t, newProcsTuner(2), repeat(step{0.2, 1.5, 2, procsFewStreams}, time.Minute))
	})
	t.Run("light work restarts the wait when requests crowd in", func(t *testing.T) {
		steps := then(repeat(step{0.2, 1.5, 2, 0}, procsLightAfter-tuneEvery), step{0.2, 1.5, 2, 20})
		steps = then(steps, repeat(step{0.2, 1.5, 2, 0}, procsLightAfter-tuneEvery)...)
		run(t, newProcsTuner(2), then(steps, step{0.2, 1.5, 1, 0}))
	})
	t.Run("from one, a crowd takes the second at the next tick", func(t *testing.T) {
		run(t, procsTuner{max: 2, n: 1}, []step{{0.1, 1.8, 1, 2}, {0.1, 1.8, 1, procsFewStreams - 1}, {0.1, 1.8, 2, procsFewStreams}})
	})
	t.Run("from one, a crowd takes the second at once", func(t *testing.T) {
		p := procsTuner{max: 2, n: 1}
		p.tick(0.1, 1.8, 0)
		if n := p.crowd(); n != 2 {
			t.Errorf("crowd() on an idle machine = %d, want 2", n)
		}
		if n := p.crowd(); n != 2 {
			t.Errorf("crowd() at two = %d, want 2", n)
		}
		if p := newProcsTuner(1); p.crowd() != 1 {
			t.Errorf("crowd() where the runtime has one processor = %d, want 1", p.n)
		}
	})
	t.Run("many streams in flight: no lowering for contention", func(t *testing.T) {
		run(t, newProcsTuner(2), repeat(step{0.6, 0.1, 2, 300}, time.Minute))
		run(t, newProcsTuner(2), repeat(step{1.0, 0.3, 2, procsFewStreams}, time.Minute))
	})
	t.Run("after a lowering for contention, a crowd takes the second at once", func(t *testing.T) {
		steps := then(repeat(step{1.25, 0.1, 2, 0}, procsContendAfter-tuneEvery), step{1.25, 0.1, 1, 0})
		steps = then(steps, step{0.9, 0.1, 1, 0}, step{0.6, 0.1, 2, 50})
		run(t, newProcsTuner(2), then(steps, repeat(step{0.9, 0.1, 2, 50}, time.Minute)...))
	})
	t.Run("busy on one with CPUs idle: the second after procsRaiseAfter", func(t *testing.T) {
		steps := then(repeat(step{0.8, 1.0, 1, 4}, procsRaiseAfter-tuneEvery), step{0.8, 1.0, 2, 4})
		run(t, procsTuner{max: 2, n: 1}, then(steps, repeat(step{1.1, 0.7, 2, 4}, time.Minute)...))
	})
	t.Run("saturated machine: one after procsContendAfter, and stays", func(t *testing.T) {
		// Small requests under load: the proxy, its load generator and
		// upstream share 2 CPUs.
		steps := then(repeat(step{1.25, 0.1, 2, 0}, procsContendAfter-tuneEvery), step{1.25, 0.1, 1, 0})
		run(t, newProcsTuner(2), then(steps, repeat(step{0.95, 0.3, 1, 0}, time.Minute)...))
	})
	t.Run("after a lowering, none taken for procsNoRaise however idle the machine", func(t *testing.T) {
		steps := then(repeat(step{1.25, 0.1, 2, 0}, procsContendAfter-tuneEvery), step{1.25, 0.1, 1, 0})
		steps = then(steps, repeat(step{0.9, 0.6, 1, 0}, procsNoRaise-tuneEvery)...)
		run(t, newProcsTuner(2), then(steps, step{0.9, 0.6, 1, 0}, step{0.9, 0.6, 2, 0}))
	})
	t.Run("a machine with little to spare: one after procsTightAfter", func(t *testing.T) {
		steps := then(repeat(step{1.0, 0.3, 2, 0}, procsTightAfter-tuneEvery), step{1.0, 0.3, 1, 0})
		run(t, newProcsTuner(2), then(steps, repeat(step{1.0, 0.4, 1, 0}, time.Minute)...))
	})
	t.Run("the condition must hold", func(t *testing.T) {
		run(t, newProcsTuner(2), []step{{1.25, 0.1, 2, 0}, {1.25, 0.6, 2, 0}, {1.25, 0.1, 2, 0}, {1.25, 0.6, 2, 0}, {1.25, 0.1, 2, 0}})
		run(t, procsTuner{max: 2, n: 1}, []step{{0.9, 0.6, 1, 0}, {0.9, 0.2, 1, 0}, {0.9, 0.6, 1, 0}, {0.9, 0.3, 1, 0}})
	})
	t.Run("using all processors on a saturated machine keeps them", func(t *testing.T) {
		// The proxy alone saturates the machine: lowering would halve it.
		run(t, newProcsTuner(2), repeat(step{1.8, 0.1, 2, 0}, time.Minute))
	})
	t.Run("more than two only when they are all busy and CPUs idle", func(t *testing.T) {
		run(t, procsTuner{max: 3, n: 2}, []step{
			{1.5, 1.4, 2, 0}, {1.6, 1.3, 2, 0}, {1.7, 1.3, 2, 0}, // not busy
			{1.9, 0.3, 2, 0}, {1.9, 0.3, 2, 0}, // busy, no CPU to spare
			{1.8, 1.2, 2, 0}, {1.9, 1.0, 3, 0}, // busy for 2 s with CPUs idle: 3
			{2.9, 0.5, 3, 0}, {3.0, 0.6, 3, 0}, // at max
		})
	})
	t.Run("three stay while two would leave under half a CPU", func(t *testing.T) {
		run(t, procsTuner{max: 4, n: 3}, repeat(step{1.6, 2.4, 3, 0}, time.Minute))
	})
	t.Run("fits in fewer: from three to two after procsQuietAfter, no lower while many are in flight", func(t *testing.T) {
		steps := then(repeat(step{1.2, 2.5, 3, 0}, procsQuietAfter-tuneEvery), step{1.2, 2.5, 2, 0})
		run(t, procsTuner{max: 4, n: 3}, then(steps, repeat(step{0.01, 3.9, 2, 40}, time.Minute)...))
	})
	t.Run("work restarts the quiet wait", func(t *testing.T) {
		steps := then(repeat(step{1.2, 2.5, 3, 0}, procsQuietAfter-tuneEvery), step{2.0, 2.0, 3, 0})
		steps = then(steps, repeat(step{1.2, 2.5, 3, 0}, procsQuietAfter-tuneEvery)...)
		run(t, procsTuner{max: 4, n: 3}, then(steps, step{1.2, 2.5, 2, 0}))
	})
	t.Run("at the default, the runtime's value is the most", func(t *testing.T) {
		p := procsTuner{max: 4, n: 4}
		p.atDefault(3)
		if p.max != 3 || p.n != 3 {
			t.Errorf("after atDefault(3): %+v, want max 3, n 3", p)
		}
	})
	t.Run("never below one", func(t *testing.T) {
		run(t, procsTuner{max: 2, n: 1}, repeat(step{0.2, 0.0, 1, 0}, time.Minute))
	})
}

// procsStep is one tick of a procsTuner: the CPUs the process used and
// the machine's idle CPUs over the last second, and the GOMAXPROCS the
// tuner must answer.
type procsStep struct {
	used, idle float64
	want       int
	peak       int64 // requests in flight at once
}

// runProcsTuner ticks p through steps, failing at the first answer that
// is not the step's.
func runProcsTuner(t *testing.T, p procsTuner, steps []procsStep) {
	t.Helper()
	for i, s := range steps {
		if got := p.tick(s.used, s.idle, s.peak); got != s.want {
			t.Fatalf("tick %d (used %.2f CPUs, %.2f idle, %d in flight): GOMAXPROCS %d, want %d", i, s.used, s.idle, s.peak, got, s.want)
		}
	}
}

// repeatProcsStep returns s once per tuneEvery for d.
func repeatProcsStep(s procsStep, d time.Duration) []procsStep {
	steps := make([]procsStep, int(d/tuneEvery))
	for i := range steps {
		steps[i] = s
	}
	return steps
}

// TestIdleCPUs checks the idle CPUs worked out from two samples of the
// machine's CPU time, and that a period whose counters did not move
// forward gives none.
func TestIdleCPUs(t *testing.T) {
	base := cpuSample{idle: 1000, total: 4000, cpus: 2}
	for _, c := range []struct {
		name      string
		cur       cpuSample
		want      float64
		wantValid bool
	}{
		{"half idle", cpuSample{idle: 1100, total: 4200, cpus: 2}, 1.0, true},
		{"all busy", cpuSample{idle: 1000, total: 4200, cpus: 2}, 0, true},
		{"all idle", cpuSample{idle: 1200, total: 4200, cpus: 2}, 2.0, true},
		{"idle went back", cpuSample{idle: 990, total: 4200, cpus: 2}, 0, false},
		{"total did not move", cpuSample{idle: 1000, total: 4000, cpus: 2}, 0, false},
		{"idle ahead of total", cpuSample{idle: 1500, total: 4200, cpus: 2}, 2.0, true},
	} {
		got, valid := idleCPUs(base, c.cur)
		if valid != c.wantValid || got != c.want {
			t.Errorf("%s: idleCPUs = %.2f, %v; want %.2f, %v", c.name, got, valid, c.want, c.wantValid)
		}
	}
	if _, valid := idleCPUs(cpuSample{}, base); valid {
		t.Error("idleCPUs from no sample: valid, want not")
	}
	// A container throttled by its CPU limit has no CPU to spare, however
	// idle the host.
	prev := cpuSample{idle: 1000, total: 4000, cpus: 2, throttled: 500, hasThrottled: true}
	cur := cpuSample{idle: 1200, total: 4200, cpus: 2, throttled: 900, hasThrottled: true}
	if got, valid := idleCPUs(prev, cur); !valid || got != 0 {
		t.Errorf("throttled: idleCPUs = %.2f, %v; want 0, true", got, valid)
	}
	cur.throttled = 500
	if got, valid := idleCPUs(prev, cur); !valid || got != 2 {
		t.Errorf("not throttled in the period: idleCPUs = %.2f, %v; want 2, true", got, valid)
	}
}

// TestTuneRuntimeProcessors runs the tuning loop on a machine and a load
// it is told about: GOMAXPROCS starts at two, drops to one for light work,
// comes back when streams crowd in, drops to one again once they ended on
// a saturated machine, and stop gives the runtime's default back. The loop ticks
// every millisecond and counts each tick as a second.
func TestTuneRuntimeProcessors(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skip("GOMAXPROCS is 1: nothing to tune")
	}
	var saturated atomic.Bool
	var mu sync.Mutex
	var machine cpuSample
	src := tuneSources{
		machine: func() (cpuSample, bool) {
			mu.Lock()
			defer mu.Unlock()
			machine.cpus, machine.total = 2, machine.total+200 // 2 CPUs, 100 ticks each
			if saturated.Load() {
				machine.idle += 10 // 0.1 CPUs idle
			} else {
				machine.idle += 150
			}
			return machine, true
		},
		process: func() time.Duration { return 0 },
		every:   time.Millisecond,
	}
	load := &testLoad{crowd: make(chan struct{}, 1)}
	stop := tuneRuntimeFrom(src, true, false, true, load)
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("GOMAXPROCS %d at start, want 2", got)
	}
	eventually(t, func() bool { return runtime.GOMAXPROCS(0) == 1 }, "GOMAXPROCS 1 for light work")
	eventually(t, load.oneProc.Load, "the load told that a stream's start is to be signalled")
	load.n.Store(1)
	load.crowd <- struct{}{}
	eventually(t, func() bool { return runtime.GOMAXPROCS(0) == 2 }, "GOMAXPROCS 2 once a stream starts")
	// The tuner tells the load just after it sets GOMAXPROCS.
	eventually(t, func() bool { return !load.oneProc.Load() }, "the load told to stop signalling at two processors")
	// The streams end; the machine is saturated.
	load.n.Store(0)
	saturated.Store(true)
	eventually(t, func() bool { return runtime.GOMAXPROCS(0) == 1 }, "GOMAXPROCS 1 on a saturated machine")
	stop()
	stop = nil
	if got := runtime.GOMAXPROCS(0); got != def && os.Getenv("GOMAXPROCS") == "" {
		t.Errorf("GOMAXPROCS %d after stop, want the default %d", got, def)
	}
}

// TestSetProcsDropsStaleCrowd checks that going down to one processor drops
// a stream's signal left from before (sent while the last raise was under
// way): the tuner then waits on one processor for a new stream, rather than
// raising at once for the old one.
func TestSetProcsDropsStaleCrowd(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("GOMAXPROCS is 1: nothing to tune")
	}
	if os.Getenv("GOMAXPROCS") == "" {
		defer runtime.SetDefaultGOMAXPROCS()
	} else {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	}
	load := &testLoad{crowd: make(chan struct{}, 1)}
	p := procsTuner{max: 2, n: 1}
	load.crowd <- struct{}{}
	setProcs(&p, 1, load)
	if !load.oneProc.Load() {
		t.Fatal("at one processor the load is not told to signal a stream's start")
	}
	select {
	case <-load.crowded():
		t.Error("a signal sent before the lowering is still waiting: the tuner would raise at once")
	default:
	}
	p.n = 2
	setProcs(&p, 2, load)
	if load.oneProc.Load() {
		t.Error("at two processors the load is still told to signal a stream's start")
	}
}

// testLoad is a requestLoad whose requests in flight a test sets.
type testLoad struct {
	n       atomic.Int64
	crowd   chan struct{}
	oneProc atomic.Bool
}

func (l *testLoad) inFlight() int64          { return l.n.Load() }
func (l *testLoad) starts() uint64           { return 0 }
func (l *testLoad) streamStarts() uint64     { return 0 }
func (l *testLoad) peakStreams() int64       { return l.n.Load() }
func (l *testLoad) crowded() <-chan struct{} { return l.crowd }
func (l *testLoad) oneProcessor(on bool)     { l.oneProc.Store(on) }

// TestProxyCrowd checks what the proxy tells the runtime tuner: the
// streams started, the most streams in flight at once since it last
// looked, and a signal when a stream starts while the tuner runs the
// process on one processor (and only then: at two, a signal per stream
// would wake the tuner for nothing).
func TestProxyCrowd(t *testing.T) {
	p := &proxy{crowd: make(chan struct{}, 1)}
	for range procsFewStreams {
		p.enterStream()
	}
	select {
	case <-p.crowded():
		t.Fatalf("a signal with %d streams started while not on one processor", procsFewStreams)
	default:
	}
	p.streams.Add(-(procsFewStreams - 1))
	if got := p.streamStarts(); got != procsFewStreams {
		t.Errorf("streamStarts = %d, want %d", got, procsFewStreams)
	}
	if got := p.peakStreams(); got != procsFewStreams {
		t.Errorf("peakStreams = %d, want %d", got, procsFewStreams)
	}
	if got := p.peakStreams(); got != 1 {
		t.Errorf("peakStreams in a new period = %d, want the 1 in flight", got)
	}
	p.oneProcessor(true)
	p.enterStream()
	select {
	case <-p.crowded():
	default:
		t.Fatal("no signal for a stream started on one processor")
	}
	// Streams starting before the tuner took the signal do not block.
	p.enterStream()
	p.enterStream()
	<-p.crowded()
	p.oneProcessor(false)
	p.enterStream()
	select {
	case <-p.crowded():
		t.Fatal("a signal after the tuner left one processor")
	default:
	}
}

// TestProcessProcessors checks on the real binary that runtime tuning is
// on by default: an idle proxy serves with one processor after
// procsLightAfter (go_sched_gomaxprocs_threads in /metrics); and that,
// meanwhile, RUNTIME_TUNING=off and an operator's GOMAXPROCS each leave
// the value alone.
func TestProcessProcessors(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: GOMAXPROCS is 1 anyway")
	}
	if _, ok := machineCPU(); !ok {
		t.Skip("no /proc/stat: GOMAXPROCS is not tuned here")
	}
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set for the tests: the runtime's default is not known")
	}
	def := strconv.Itoa(runtime.GOMAXPROCS(0))
	bin := buildBinary(t)
	// The tuned proxy maps /s to an upstream whose event stream waits for
	// the test after its first event.
	release := make(chan struct{})
	up := newUpstream(t, heldStream(release, ""))
	tunedDir := t.TempDir()
	if _, _, err := runMap(t, tunedDir, "set", "/s", up.URL); err != nil {
		t.Fatal(err)
	}
	// An empty variable is unset for the runtime and for the proxy: the
	// test's own environment does not count.
	off := startBinary(t, bin, "DATA_DIR="+t.TempDir(), "RUNTIME_TUNING=off", "GOMAXPROCS=", "GOGC=")
	set := startBinary(t, bin, "DATA_DIR="+t.TempDir(), "RUNTIME_TUNING=", "GOMAXPROCS="+def, "GOGC=")
	tuned := startBinary(t, bin, "DATA_DIR="+tunedDir, "RUNTIME_TUNING=", "GOMAXPROCS=", "GOGC=")
	// The tuned proxy's GOMAXPROCS is polled every 100 ms: /metrics itself
	// costs CPU, and the proxy goes to one processor only while it uses
	// under half a CPU, so the polling cannot take it back by itself.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	awaitProcs := func(want string, within time.Duration, when string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for gomaxprocsOf(t, tuned) != want {
			if time.Now().After(deadline) {
				t.Fatalf("GOMAXPROCS still %s %v %s, want %s", gomaxprocsOf(t, tuned), within, when, want)
			}
			<-tick.C
		}
	}
	awaitProcs("1", procsLightAfter+testTimeout, "into an idle proxy's life")
	if got := gomaxprocsOf(t, off); got != def {
		t.Errorf("RUNTIME_TUNING=off: GOMAXPROCS %s, want the runtime's %s", got, def)
	}
	if got := gomaxprocsOf(t, set); got != def {
		t.Errorf("GOMAXPROCS=%s set: GOMAXPROCS %s, want it kept", def, got)
	}

	// One stream starts: the second processor comes back at once, not
	// after a tick or at 16 streams.
	res, err := http.Post("http://"+tuned.addr+"/s/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	defer close(release)
	first := make([]byte, len("data: 1\n\n"))
	if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "data: 1\n\n" {
		t.Fatalf("first event %q, %v", first, err)
	}
	awaitProcs(def, testTimeout, "after a stream started")
}

// TestProcessGCRoom checks on the real binary that a burst of streams
// raises GOGC (go_gc_gogc_percent in /metrics) at the tuner's next tick,
// though the streams allocate little: a test proxy's live heap is a few
// MiB, so the room is gcPercent's most.
func TestProcessGCRoom(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, heldStream(release, ""))
	dir := t.TempDir()
	if _, _, err := runMap(t, dir, "set", "/s", up.URL); err != nil {
		t.Fatal(err)
	}
	proc := startBinary(t, buildBinary(t), "DATA_DIR="+dir, "RUNTIME_TUNING=", "GOGC=")
	if got := metricOf(t, proc, "go_gc_gogc_percent"); got != "100" {
		t.Fatalf("GOGC %s before any stream, want 100", got)
	}
	// A burst is twice burstStreams started at once: unless they take over
	// a second to start, they cross at most one of the tuner's ticks, and
	// one side of it sees burstStreams or more. Should a slow machine
	// spread one over longer, another comes after two ticks.
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	burst := func() {
		var wg sync.WaitGroup
		errs := make(chan error, 2*burstStreams)
		for range 2 * burstStreams {
			wg.Go(func() {
				res, err := client.Post("http://"+proc.addr+"/s/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
				if err != nil {
					errs <- err
					return
				}
				// Held open until the test ends (release, then Cleanup).
				t.Cleanup(func() { res.Body.Close() })
				first := make([]byte, len("data: 1\n\n"))
				if _, err := io.ReadFull(res.Body, first); err != nil {
					errs <- fmt.Errorf("first event %q: %w", first, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	want := strconv.Itoa(maxGCPercent)
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	bursts, last := 0, time.Time{}
	for ; ; <-tick.C {
		got := metricOf(t, proc, "go_gc_gogc_percent")
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC %s after %d bursts of %d streams, want %s", got, bursts, 2*burstStreams, want)
		}
		if time.Since(last) > 2*tuneEvery {
			burst()
			bursts, last = bursts+1, time.Now()
		}
	}
}

// gomaxprocsOf reads go_sched_gomaxprocs_threads from p's /metrics.
func gomaxprocsOf(t *testing.T, p *proxyProcess) string {
	t.Helper()
	return metricOf(t, p, "go_sched_gomaxprocs_threads")
}

// metricOf reads the value of the metric name, which has no labels, from
// p's /metrics.
func metricOf(t *testing.T, p *proxyProcess, name string) string {
	t.Helper()
	res, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", name, b)
	return ""
}

// TestProxyStarts checks what the proxy tells the memory releaser: every
// request it takes, those still in flight and those refused for
// MAX_IN_FLIGHT included (a request to no mapping is not the proxy's),
// and every stream it hands off.
func TestProxyStarts(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, heldStream(release, ""))
	cfg := testConfig(t, nil)
	cfg.MaxInFlight = 1
	s, front := newTestServerConfig(t, cfg, map[string]string{"/s": up.URL})
	held, err := http.Get(front.URL + "/s/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Body.Close()
	res, body := rawGet(t, front.Listener.Addr().String(), "/s/more")
	wantProxyError(t, res, body, http.StatusServiceUnavailable, "overloaded")
	rawGet(t, front.Listener.Addr().String(), "/nowhere")
	want := uint64(2)
	if handedOffAtOnce(s) {
		want++ // the held stream, once its head came
	}
	if got := s.proxy.starts(); got != want {
		t.Errorf("starts = %d after a held stream and a refused request (hand-off at once: %v), want %d", got, handedOffAtOnce(s), want)
	}
}
