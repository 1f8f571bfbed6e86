// Command soak drives a running apiproxy with a mixed load for a fixed
// time and samples its memory and goroutines, to show both stay flat
// (README "Hardening"). The upstream is the shared bench harness's mock
// (`bench upstream`), mapped to -prefix on the proxy:
//
//	bench upstream -addr 127.0.0.1:9400 &
//	ADMIN_TOKEN=soak-admin-token-0123 apiproxy -listen 127.0.0.1:8400 &   # with /openai -> http://127.0.0.1:9400
//	go run ./scripts/soak -proxy http://127.0.0.1:8400 -pid $! -admin-token soak-admin-token-0123 \
//	    -upstream http://127.0.0.1:9400 -duration 10m
//
// Every loop is bounded by -duration; the load is a fixed number of
// workers: small JSON requests, SSE chat streams, large downloads, and one
// admin write per second (create, then delete, a mapping). At the end it
// waits -settle for the proxy to go idle and prints the samples, their
// start, peak and end, and the errors by kind. It exits 1 if any request
// failed.
//
// `soak h2upstream` is a mock upstream over TLS and HTTP/2 for held-stream
// runs (see h2upstream.go).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	proxy, prefix, upstream, adminToken string
	pid                                 int
	duration, sample, settle            time.Duration
	small, sse, big                     int
	bigBytes                            int64
	bigPause                            time.Duration
	events, intervalMS                  int
}

// counters of one kind of request.
type counters struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
}

func (c *counters) fail(format string, args ...any) {
	c.failed.Add(1)
	c.mu.Lock()
	if len(c.firstErrs) < 5 {
		c.firstErrs = append(c.firstErrs, fmt.Sprintf(format, args...))
	}
	c.mu.Unlock()
}

// sample is one reading of the proxy's process.
type sample struct {
	at         time.Duration // since the load started; negative before it
	phase      string        // idle-before, load, idle-after
	rssKiB     int64
	goroutines int64
	active     int64
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "h2upstream" {
		if err := runH2Upstream(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "soak h2upstream:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	flag.StringVar(&c.proxy, "proxy", "http://127.0.0.1:8000", "base URL of the proxy")
	flag.StringVar(&c.prefix, "prefix", "/openai", "mapping prefix of the mock upstream on the proxy")
	flag.StringVar(&c.upstream, "upstream", "", "the mock upstream's base URL, target of the admin writes (required)")
	flag.StringVar(&c.adminToken, "admin-token", "", "the proxy's ADMIN_TOKEN (required)")
	flag.IntVar(&c.pid, "pid", 0, "the proxy's process id, for its RSS (required)")
	flag.DurationVar(&c.duration, "duration", 10*time.Minute, "how long the load runs")
	flag.DurationVar(&c.sample, "sample", 10*time.Second, "sampling interval")
	flag.DurationVar(&c.settle, "settle", 30*time.Second, "idle time after the load before the last sample")
	flag.IntVar(&c.small, "small", 8, "workers sending small JSON requests back to back")
	flag.IntVar(&c.sse, "sse", 50, "workers streaming SSE chat completions back to back")
	flag.IntVar(&c.big, "big", 1, "workers downloading -big-bytes, with -big-pause between downloads")
	flag.Int64Var(&c.bigBytes, "big-bytes", 256<<20, "size of one large download")
	flag.DurationVar(&c.bigPause, "big-pause", 2*time.Second, "pause between two large downloads of a worker")
	flag.IntVar(&c.events, "events", 50, "events per SSE stream")
	flag.IntVar(&c.intervalMS, "interval-ms", 20, "milliseconds between SSE events")
	flag.Parse()
	if c.upstream == "" || c.adminToken == "" || c.pid == 0 {
		fmt.Fprintln(os.Stderr, "soak: -upstream, -admin-token and -pid are required")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.small + c.sse + c.big + 4, DisableCompression: true}}
	base := strings.TrimSuffix(c.proxy, "/") + c.prefix
	var samples []sample
	take := func(at time.Duration, phase string) error {
		s, err := read(client, c, at, phase)
		if err != nil {
			return err
		}
		samples = append(samples, s)
		fmt.Printf("%8s  %-11s  rss %8.1f MiB  goroutines %6d  active %6d\n",
			at.Round(time.Second), phase, float64(s.rssKiB)/1024, s.goroutines, s.active)
		return nil
	}
	if err := take(0, "idle-before"); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	defer cancel()
	var small, sse, big, admin counters
	var wg sync.WaitGroup
	spawn := func(n int, f func()) {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					f()
				}
			}()
		}
	}
	spawn(c.small, func() { doGet(ctx, client, "small", base+"/small", -1, &small) })
	spawn(c.sse, func() { doSSE(ctx, client, base, c, &sse) })
	spawn(c.big, func() {
		doGet(ctx, client, "big", fmt.Sprintf("%s/bytes?n=%d", base, c.bigBytes), c.bigBytes, &big)
		select {
		case <-ctx.Done():
		case <-time.After(c.bigPause):
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		adminLoop(ctx, client, c, &admin)
	}()

	start := time.Now()
	tick := time.NewTicker(c.sample)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			if err := take(time.Since(start), "load"); err != nil {
				fmt.Fprintln(os.Stderr, "soak: sample:", err)
			}
		}
	}
	tick.Stop()
	wg.Wait()
	client.CloseIdleConnections()
	time.Sleep(c.settle) // let the proxy's idle connections and buffers go
	if err := take(time.Since(start), "idle-after"); err != nil {
		return err
	}

	fmt.Println()
	report := func(name string, k *counters) {
		fmt.Printf("%-6s ok %8d  failed %d\n", name, k.ok.Load(), k.failed.Load())
		for _, e := range k.firstErrs {
			fmt.Printf("         %s\n", e)
		}
	}
	report("small", &small)
	report("sse", &sse)
	report("big", &big)
	report("admin", &admin)
	summarise(samples)
	if small.failed.Load()+sse.failed.Load()+big.failed.Load()+admin.failed.Load() > 0 {
		return fmt.Errorf("some requests failed")
	}
	return nil
}

// read takes one sample: RSS from /proc, goroutines and requests in flight
// from the proxy's /stats.
func read(client *http.Client, c config, at time.Duration, phase string) (sample, error) {
	s := sample{at: at, phase: phase}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
	if err != nil {
		return s, fmt.Errorf("read the proxy's memory: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			s.rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	req, err := http.NewRequest(http.MethodGet, strings.TrimSuffix(c.proxy, "/")+"/stats", nil)
	if err != nil {
		return s, fmt.Errorf("GET /stats: %w", err)
	}
	// The admin token opens /stats whether STATS_TOKEN is set or not.
	req.Header.Set("Authorization", "Bearer "+c.adminToken)
	res, err := client.Do(req)
	if err != nil {
		return s, fmt.Errorf("GET /stats: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /stats: status %d", res.StatusCode)
	}
	var v struct {
		Performance struct {
			Goroutines int64 `json:"goroutine_count"`
			Active     int64 `json:"active_requests"`
		} `json:"performance"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		return s, fmt.Errorf("decode /stats: %w", err)
	}
	s.goroutines, s.active = v.Performance.Goroutines, v.Performance.Active
	return s, nil
}

// summarise prints start (first load sample), peak and end (last load
// sample, and after settling) of RSS and goroutines, and one JSON line.
func summarise(samples []sample) {
	var load []sample
	var before, after sample
	for _, s := range samples {
		switch s.phase {
		case "load":
			load = append(load, s)
		case "idle-before":
			before = s
		case "idle-after":
			after = s
		}
	}
	if len(load) == 0 {
		fmt.Println("no load samples")
		return
	}
	peakRSS, peakG := load[0], load[0]
	for _, s := range load {
		if s.rssKiB > peakRSS.rssKiB {
			peakRSS = s
		}
		if s.goroutines > peakG.goroutines {
			peakG = s
		}
	}
	first, last := load[0], load[len(load)-1]
	mib := func(k int64) float64 { return float64(k) / 1024 }
	fmt.Printf("\nRSS MiB:    idle %.1f | load start %.1f, peak %.1f (at %s), end %.1f | idle after %.1f\n",
		mib(before.rssKiB), mib(first.rssKiB), mib(peakRSS.rssKiB), peakRSS.at.Round(time.Second), mib(last.rssKiB), mib(after.rssKiB))
	fmt.Printf("goroutines: idle %d | load start %d, peak %d (at %s), end %d | idle after %d\n",
		before.goroutines, first.goroutines, peakG.goroutines, peakG.at.Round(time.Second), last.goroutines, after.goroutines)
	j, _ := json.Marshal(map[string]any{
		"rss_mib":    map[string]float64{"idle_before": mib(before.rssKiB), "start": mib(first.rssKiB), "peak": mib(peakRSS.rssKiB), "end": mib(last.rssKiB), "idle_after": mib(after.rssKiB)},
		"goroutines": map[string]int64{"idle_before": before.goroutines, "start": first.goroutines, "peak": peakG.goroutines, "end": last.goroutines, "idle_after": after.goroutines},
	})
	fmt.Println(string(j))
}

// doGet fetches url and counts it ok when it answers 200 with a body of
// size bytes, or of any non-zero length when size is -1.
func doGet(ctx context.Context, client *http.Client, what, url string, size int64, k *counters) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			k.fail("%s: %v", what, err)
		}
		return
	}
	n, err := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	switch {
	case ctx.Err() != nil:
	case err != nil || res.StatusCode != http.StatusOK || size < 0 && n == 0 || size >= 0 && n != size:
		k.fail("%s: status %d, %d bytes (want %d; -1: any), %v", what, res.StatusCode, n, size, err)
	default:
		k.ok.Add(1)
	}
}

func doSSE(ctx context.Context, client *http.Client, base string, c config, k *counters) {
	url := fmt.Sprintf("%s/v1/chat/completions?events=%d&interval_ms=%d", base, c.events, c.intervalMS)
	req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(`{"model":"soak","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			k.fail("sse: %v", err)
		}
		return
	}
	defer res.Body.Close()
	events, done := 0, false
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") {
			events++
			if line == "data: [DONE]" {
				done = true
			}
		}
	}
	switch {
	case ctx.Err() != nil:
	case sc.Err() != nil || res.StatusCode != http.StatusOK || !done:
		k.fail("sse: status %d, %d events, done %v, %v", res.StatusCode, events, done, sc.Err())
	default:
		k.ok.Add(1)
	}
}

// adminLoop makes one admin write per second: it creates /soak-N, and
// deletes it on the next tick, so the mapping table stays small.
func adminLoop(ctx context.Context, client *http.Client, c config, k *counters) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	created := ""
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			if created != "" {
				adminCall(context.Background(), client, c, "DELETE", "/api/mappings"+created, "", http.StatusOK, k)
			}
			return
		case <-tick.C:
		}
		if created == "" {
			created = fmt.Sprintf("/soak-%d", n)
			body := fmt.Sprintf(`{"prefix":%q,"target":%q}`, created, c.upstream)
			if !adminCall(ctx, client, c, "POST", "/api/mappings", body, http.StatusCreated, k) {
				created = ""
			}
		} else {
			adminCall(ctx, client, c, "DELETE", "/api/mappings"+created, "", http.StatusOK, k)
			created = ""
		}
	}
}

func adminCall(ctx context.Context, client *http.Client, c config, method, path, body string, want int, k *counters) bool {
	req, _ := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.proxy, "/")+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.adminToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			k.fail("admin %s %s: %v", method, path, err)
		}
		return false
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != want {
		k.fail("admin %s %s: status %d, want %d: %s", method, path, res.StatusCode, want, b)
		return false
	}
	k.ok.Add(1)
	return true
}
