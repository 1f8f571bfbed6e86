package main

import (
	"io"
	"net/http"
	"strconv"
	"testing"
)

// TestLimitsThroughProxy: a mapping's rpm and a key's concurrency refuse
// with 429 rate_limited and Retry-After, reach no upstream, and a slot
// frees when its stream ends.
func TestLimitsThroughProxy(t *testing.T) {
	up := statusUpstream(t, http.StatusOK, "ok")
	hold, released := newIdleStreamUpstream(t)
	s, front := newTestServer(t, nil)
	rec := recordRequests(s)
	m := targetsOf("/rpm", up.URL)
	m.Limits.RPM = 2
	setMapping(t, s, m)
	k, secret := testKey("one-at-a-time")
	k.Limits.Concurrency = 1
	setKeys(t, s, k)
	setMapping(t, s, keysMapping("/conc", hold.URL, "sk-up", "bearer"))

	for i := range 3 {
		res, err := front.Client().Get(front.URL + "/rpm/x")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, res)
		res.Body.Close()
		if i < 2 {
			if res.StatusCode != 200 {
				t.Fatalf("request %d: %d, want 200", i, res.StatusCode)
			}
			continue
		}
		wantProxyError(t, res, body, http.StatusTooManyRequests, "rate_limited")
		if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("Retry-After = %q, want 1 to 60 seconds", res.Header.Get("Retry-After"))
		}
	}
	if up.Hits() != 2 {
		t.Errorf("upstream hits = %d, want 2 (the refused request not forwarded)", up.Hits())
	}
	if r := rec.wait(t, 3); r.ProxyErr != "rate_limited" || r.Limit != limitRPM || len(r.Tries) != 0 {
		t.Errorf("record = %q %q (%d tries), want rate_limited rpm and none", r.ProxyErr, r.Limit, len(r.Tries))
	}

	get := func() *http.Response {
		req, _ := http.NewRequest("GET", front.URL+"/conc/stream", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		res, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := get()
	if first.StatusCode != 200 {
		t.Fatalf("first stream: %d", first.StatusCode)
	}
	second := get()
	b := readAll(t, second)
	second.Body.Close()
	wantProxyError(t, second, b, http.StatusTooManyRequests, "rate_limited")
	first.Body.Close() // the client leaves: the stream ends, its slot frees
	waitClosed(t, released, "the held stream to end upstream")
	eventually(t, func() bool {
		res := get()
		defer res.Body.Close()
		if res.StatusCode == 200 {
			go io.Copy(io.Discard, res.Body)
		}
		return res.StatusCode == 200
	}, "the slot to free once the stream ended")
}
