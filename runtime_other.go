//go:build !unix

package main

import "time"

// processCPU is not known here; tuneRuntime then judges quiet by
// allocations alone.
func processCPU() time.Duration { return 0 }

// machineCPU is not known here; tuneRuntime then leaves GOMAXPROCS alone.
func machineCPU() (cpuSample, bool) { return cpuSample{}, false }
