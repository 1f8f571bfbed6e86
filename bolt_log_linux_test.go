package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestBoltLogDiskFull: a request log write that the full disk refuses is
// classified as the other writes are (errStoreNotWritable, writeFailure
// set), stores nothing, and lands once there is space again, clearing
// writeFailure.
func TestBoltLogDiskFull(t *testing.T) {
	ctx := context.Background()
	dir := mountTmpfs(t, "1m")
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	filler := fillDisk(t, dir)

	// Far more than the pages bbolt has freed so far, so the write needs
	// pages the disk cannot give.
	recs := testLogRecords(0, requestLogBatch)
	base := time.Now().UnixNano()
	for i := range recs {
		recs[i].ID = fmt.Sprintf("%016x", base+int64(i))
		recs[i].Path = fmt.Sprintf("/v1/chat/completions/%0200d", i)
	}
	err = s.writeLog(ctx, recs)
	if !errors.Is(err, errStoreNotWritable) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writeLog on a full disk = %v, want errStoreNotWritable wrapping ENOSPC", err)
	}
	if werr := s.writeFailure(); !errors.Is(werr, errStoreNotWritable) {
		t.Errorf("writeFailure() after the refused write = %v, want errStoreNotWritable", werr)
	}
	if got, _ := mustReadLog(t, s, logQuery{Limit: 10}); len(got) != 0 {
		t.Errorf("the refused write stored %d records", len(got))
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.writeLog(ctx, recs); err != nil {
		t.Fatalf("writeLog once the space is free: %v", err)
	}
	if werr := s.writeFailure(); werr != nil {
		t.Errorf("writeFailure() after a write landed = %v, want nil", werr)
	}
	if got := readWholeLog(t, s, logQuery{Limit: requestLogMaxLimit}); len(got) != len(recs) {
		t.Errorf("the log holds %d records, want %d", len(got), len(recs))
	}
}
