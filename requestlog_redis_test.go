package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// sendN sends n GET requests to url through front and reads each answer.
func sendN(t testing.TB, front *httptest.Server, url string, n int) {
	t.Helper()
	for range n {
		res, err := front.Client().Get(front.URL + url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
}

// TestRequestLogRedisFleet: a request served by instance A shows in
// instance B's GET /api/requests: one stream for the fleet.
func TestRequestLogRedisFleet(t *testing.T) {
	rs := startRedisServer(t)
	up := statusUpstream(t, http.StatusOK, logUsageJSON, "Content-Type", "application/json")
	a, frontA, _ := newServerOnRedis(t, rs)
	_, frontB, _ := newServerOnRedis(t, rs)
	setMapping(t, a, targetsOf("/a", up.URL))
	sendN(t, frontA, "/a/from-a", 3)
	eventually(t, func() bool {
		p := getRequests(t, frontB, "prefix=/a")
		return len(p.Requests) == 3 && p.Requests[0].Path == "/from-a" && p.Requests[0].Model == "gpt-4o"
	}, "A's records to show on B")
}

// TestRequestLogRedisOutage: records made while Redis is down wait in the
// queue and are written, all of them, in order, once it is back.
func TestRequestLogRedisOutage(t *testing.T) {
	rs := startRedisServerPersist(t, true) // the records before the outage outlive it
	up := statusUpstream(t, http.StatusOK, "ok")
	s, front, _ := newServerOnRedis(t, rs)
	setMapping(t, s, targetsOf("/a", up.URL))
	sendN(t, front, "/a/before", 2)
	eventually(t, func() bool { return len(getRequests(t, front, "").Requests) == 2 }, "the first records in Redis")

	rs.kill()
	sendN(t, front, "/a/during", 5) // routed from memory while the store is down
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	if err := s.reqlog.flush(context.Background()); err == nil {
		t.Fatal("a flush with Redis down succeeded")
	}
	// 5, or 7 when the write of the first two landed but its reply was
	// lost (a loaded machine): they wait too, and the store takes them
	// once (redisLogWriteScript).
	if n := s.reqlog.queues[0].waiting(); n != 5 && n != 7 {
		t.Fatalf("got %d records waiting during the outage, want 5", n)
	}
	res, body := adminRequest(t, front, http.MethodGet, "/api/requests", "")
	wantProxyError(t, res, body, http.StatusServiceUnavailable, "store_unavailable")

	rs.start()
	eventually(t, func() bool {
		// The first reads after the restart may still find the store
		// unreachable (503): go-redis reconnects in its own time.
		res, body := adminRequest(t, front, http.MethodGet, "/api/requests", "")
		var p requestsPage
		if res.StatusCode != http.StatusOK || json.Unmarshal(body, &p) != nil || len(p.Requests) != 7 {
			return false
		}
		for i, r := range p.Requests {
			want := "/during"
			if i >= 5 {
				want = "/before"
			}
			if r.Path != want {
				t.Fatalf("record %d: got path %q, want %q (newest first)", i, r.Path, want)
			}
		}
		return true
	}, "the queued records to be written once Redis is back")
	if n := s.reqlog.dropped(); n != 0 {
		t.Errorf("got %d records dropped, want 0", n)
	}
}
