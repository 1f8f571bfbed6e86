//go:build !unix

package main

import "time"

// processCPU is not known here; manageMemory then judges quiet by
// allocations alone.
func processCPU() time.Duration { return 0 }
