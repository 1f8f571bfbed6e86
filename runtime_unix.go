//go:build unix

package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) the process has used
// so far; 0 if it is not known.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns the machine's CPU time so far, from Linux's
// /proc/stat, and the time the process's cgroup v2 CPU limit throttled it,
// from /sys/fs/cgroup/cpu.stat where there is one; ok is false, and the
// sample zero, where /proc/stat is not available.
func machineCPU() (s cpuSample, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, false
	}
	if s, ok = parseProcStat(b); !ok {
		return s, false
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/cpu.stat"); err == nil {
		s.throttled, s.hasThrottled = parseThrottled(b)
	}
	return s, true
}

// parseProcStat reads machineCPU's figures from the text of /proc/stat:
// its first line is "cpu" and the ticks spent in user, nice, system, idle,
// iowait, irq, softirq and steal (then guest time, which user includes),
// and each CPU has a "cpuN" line.
func parseProcStat(b []byte) (s cpuSample, ok bool) {
	line, rest, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return s, false
	}
	for i, field := range f[1:9] {
		v, err := strconv.ParseUint(string(field), 10, 64)
		if err != nil {
			return cpuSample{}, false
		}
		s.total += v
		if i == 3 || i == 4 { // idle, iowait
			s.idle += v
		}
	}
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		if len(line) > 3 && bytes.HasPrefix(line, []byte("cpu")) && line[3] >= '0' && line[3] <= '9' {
			s.cpus++
		}
	}
	if s.cpus == 0 {
		return cpuSample{}, false
	}
	return s, true
}

// parseThrottled reads the "throttled_usec" line of a cgroup v2 cpu.stat.
func parseThrottled(b []byte) (usec uint64, ok bool) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		if v, found := bytes.CutPrefix(line, []byte("throttled_usec ")); found {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
