package main

// keyLastUsed returns the Unix time (seconds) of the last request that
// proxy key id made, 0 if none is known. Safe for concurrent use.
//
// A stub until the per-key attribution (SPEC §10, /stats "keys") lands in
// this file: the keys API shows last_used_at as null meanwhile.
func (st *Stats) keyLastUsed(id string) int64 { return 0 }
