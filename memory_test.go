package main

import (
	"testing"
	"time"
)

// TestMemoryReleaser checks when free memory goes back to the OS: at once
// for quiet in-flight streams, only after idleRelease with nothing in
// flight, never while the process allocates (under load) or when little
// is free.
func TestMemoryReleaser(t *testing.T) {
	const mib = 1 << 20
	type step struct {
		allocated uint64        // in the last second
		busy      time.Duration // in the last second
		free      uint64
		inFlight  int64
		want      bool
	}
	run := func(t *testing.T, steps []step) {
		t.Helper()
		var m memoryReleaser
		for i, s := range steps {
			if got := m.tick(s.allocated, s.busy, s.free, s.inFlight); got != s.want {
				t.Fatalf("tick %d (allocated %d KiB, busy %v, free %d MiB, in flight %d) = %v, want %v",
					i, s.allocated>>10, s.busy, s.free/mib, s.inFlight, got, s.want)
			}
		}
	}
	t.Run("held streams after a burst", func(t *testing.T) {
		run(t, []step{
			{allocated: 40 * mib, free: 30 * mib, inFlight: 1000, want: false}, // the burst itself
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
	t.Run("under load", func(t *testing.T) {
		var steps []step
		for i := 0; i < 40; i++ {
			steps = append(steps, step{allocated: 50 * mib, free: 20 * mib, inFlight: 50})
		}
		run(t, steps)
	})
	t.Run("idle between bursts", func(t *testing.T) {
		steps := []step{{allocated: 100 * mib, free: 20 * mib}} // the burst
		n := int(idleRelease / freeMemoryEvery)
		for i := 1; i < n; i++ {
			steps = append(steps, step{free: 20 * mib})
		}
		steps = append(steps, step{free: 20 * mib, want: true})
		run(t, steps)
	})
	t.Run("a burst restarts the idle wait", func(t *testing.T) {
		n := int(idleRelease / freeMemoryEvery)
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
	t.Run("little free", func(t *testing.T) {
		run(t, []step{
			{free: freeMemoryThreshold, inFlight: 10},
			{free: freeMemoryThreshold, inFlight: 10},
		})
	})
}

// TestGCTuner checks that GOGC is raised only while the process allocates
// fast (small requests under load), by the room gcPercent gives, and goes
// back to 100 gcBusyHold after the load.
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
	if got := g.tick(busyAllocs-1, 2*mib); got != 100 {
		t.Fatalf("a light load: GOGC %d, want 100", got)
	}
	if got := g.tick(50*mib, 2*mib); got != 800 {
		t.Fatalf("50 MiB allocated in a second: GOGC %d, want 800", got)
	}
	if got := g.tick(50*mib, 8*mib); got != 400 {
		t.Fatalf("under load, live 8 MiB: GOGC %d, want 400", got)
	}
	// The load stops: raised for gcBusyHold, then 100.
	n := int(gcBusyHold / freeMemoryEvery)
	for i := 1; i < n; i++ {
		if got := g.tick(0, 2*mib); got != 800 {
			t.Fatalf("%d s after the load: GOGC %d, want 800", i, got)
		}
	}
	if got := g.tick(0, 2*mib); got != 100 {
		t.Fatalf("%v after the load: GOGC %d, want 100", gcBusyHold, got)
	}
}
