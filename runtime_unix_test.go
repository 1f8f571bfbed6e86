//go:build unix

package main

import "testing"

// TestParseProcStat reads the figures machineCPU takes from /proc/stat and
// a cgroup's cpu.stat.
func TestParseProcStat(t *testing.T) {
	stat := "cpu  4705 356 584 3699176 23 0 60 7 11 0\n" +
		"cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n" +
		"cpu1 1335808 34536 522144 13452128 5850 0 16262 0 0 0\n" +
		"intr 1462898 34 9 0\nctxt 5672383\nbtime 1769375411\nprocesses 16478\ncpus_allowed 0\n"
	s, ok := parseProcStat([]byte(stat))
	want := cpuSample{idle: 3699176 + 23, total: 4705 + 356 + 584 + 3699176 + 23 + 0 + 60 + 7, cpus: 2}
	if !ok || s != want {
		t.Fatalf("parseProcStat = %+v, %v; want %+v, true", s, ok, want)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 3\ncpu0 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\ncpu0 1\n", "cpu 1 2 3 4 5 6 7 8\n"} {
		if _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("parseProcStat(%q) ok, want not", bad)
		}
	}
	cgroup := "usage_usec 4223419\nuser_usec 2977437\nsystem_usec 1245982\nnr_periods 120\nnr_throttled 7\nthrottled_usec 81234\n"
	if usec, ok := parseThrottled([]byte(cgroup)); !ok || usec != 81234 {
		t.Errorf("parseThrottled = %d, %v; want 81234, true", usec, ok)
	}
	if _, ok := parseThrottled([]byte("usage_usec 1\nuser_usec 1\n")); ok {
		t.Error("parseThrottled without throttled_usec: ok, want not")
	}
}
