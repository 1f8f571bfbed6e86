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

// machineCPU returns the machine's idle and total CPU time so far, in
// clock ticks summed over its CPUs, and how many CPUs it has, from Linux's
// /proc/stat; ok is false where that is not available.
func machineCPU() (idle, total uint64, cpus int, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	return parseProcStat(b)
}

// parseProcStat reads machineCPU's figures from the text of /proc/stat:
// its first line is "cpu" and the ticks spent in user, nice, system, idle,
// iowait, irq, softirq and steal (then guest time, which user includes),
// and each CPU has a "cpuN" line.
func parseProcStat(b []byte) (idle, total uint64, cpus int, ok bool) {
	line, rest, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, 0, false
	}
	for i, s := range f[1:9] {
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		if len(line) > 3 && bytes.HasPrefix(line, []byte("cpu")) && line[3] >= '0' && line[3] <= '9' {
			cpus++
		}
	}
	return idle, total, cpus, cpus > 0
}
