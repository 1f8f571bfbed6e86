package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
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

// requestsNow is GET /api/requests?query on front, and whether it
// answered 200 (a store just back may answer 503 a while).
func requestsNow(t testing.TB, front *httptest.Server, query string) (requestsPage, bool) {
	t.Helper()
	res, body := adminRequest(t, front, http.MethodGet, "/api/requests?"+query, "")
	var p requestsPage
	return p, res.StatusCode == http.StatusOK && json.Unmarshal(body, &p) == nil
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
		p, ok := requestsNow(t, front, "")
		if !ok || len(p.Requests) != 7 {
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

// TestRequestLogRedisSpill: records made while Redis is down, by an
// instance stopped before it is back, are not lost: the final flush saves
// them to the spill file, and the next start on the same DATA_DIR writes
// them once Redis is back, and removes the file.
func TestRequestLogRedisSpill(t *testing.T) {
	rs := startRedisServerPersist(t, true)
	up := statusUpstream(t, http.StatusOK, "ok")
	cfg := testConfig(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "API_PROXY_REDIS_URL": rs.url()})
	open := func() Store {
		t.Helper()
		store, err := openStore(context.Background(), cfg, testLogger())
		if err != nil {
			t.Fatalf("openStore: %v", err)
		}
		return store
	}
	s, err := newServer(cfg, testLogger(), open(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	front := httptest.NewServer(s)
	var once sync.Once
	stop := func() { once.Do(func() { front.Close(); s.Close() }) }
	t.Cleanup(stop)
	setMapping(t, s, targetsOf("/a", up.URL))

	rs.kill()
	sendN(t, front, "/a/during", 3)
	eventually(t, func() bool { return s.proxy.active.Load() == 0 }, "the requests to end")
	stop() // as run stops: the final flush fails
	spill := filepath.Join(cfg.DataDir, requestLogSpillFile)
	if _, err := os.Stat(spill); err != nil {
		t.Fatalf("no spill file after a failed final flush: %v", err)
	}

	rs.start()
	_, front2 := newRedisTestServer(t, cfg, open())
	eventually(t, func() bool {
		p, ok := requestsNow(t, front2, "prefix=/a")
		if !ok || len(p.Requests) != 3 {
			return false
		}
		for _, r := range p.Requests {
			if r.Path != "/during" || r.Status != http.StatusOK {
				t.Fatalf("record %+v, want GET /during 200", r)
			}
		}
		return true
	}, "the spilled records to be written by the next start")
	eventually(t, func() bool { _, err := os.Stat(spill); return errors.Is(err, os.ErrNotExist) },
		"the spill file to be removed once its records are written")
}
