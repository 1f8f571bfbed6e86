// Command firstevent measures the latency of streamed chat completions'
// first events apart from the rest, through one proxy or several at once.
// An event's latency is its receive time minus the bench upstream's
// bench_sent_ns (the same clock): with 50 streams started together, a
// stream's first event waits behind the other streams' starts, and the
// bench harness's SSE p99 is made of these first events. The starts spread
// over -ramp; with several comma-separated URLs, stream w goes to URL
// w mod len(URLs), so that every proxy meets the same moment of the
// machine. scripts/first-event.sh runs it in rounds; docs/performance.md,
// "The first event of a new connection (I)", has the figures.
//
//	go run ./scripts/firstevent -url http://127.0.0.1:8000/openai -c 50 -n 2
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	urls := flag.String("url", "", "comma-separated base URLs whose /v1/chat/completions streams the bench upstream's events")
	c := flag.Int("c", 50, "streams")
	n := flag.Int("n", 2, "events per stream")
	interval := flag.Int("interval-ms", 20, "between events")
	ramp := flag.Duration("ramp", 20*time.Millisecond, "the starts spread over this long")
	flag.Parse()
	bases := strings.Split(*urls, ",")
	if *urls == "" || *c < 1 {
		log.Fatal("firstevent: -url and -c >= 1 are required")
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *c, DisableCompression: true}
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	first, rest := make([][]float64, len(bases)), make([][]float64, len(bases))
	var wg sync.WaitGroup
	for w := range *c {
		wg.Go(func() {
			time.Sleep(*ramp * time.Duration(w) / time.Duration(*c))
			u := w % len(bases)
			f, r, err := stream(client, bases[u], *n, *interval)
			if err != nil {
				log.Fatal(err)
			}
			mu.Lock()
			first[u] = append(first[u], f...)
			rest[u] = append(rest[u], r...)
			mu.Unlock()
		})
	}
	wg.Wait()
	for u := range bases {
		all := slices.Concat(first[u], rest[u])
		fmt.Printf("%d all_p50 %.3f all_p99 %.3f first_p50 %.3f first_p90 %.3f rest_p50 %.3f rest_p99 %.3f\n", u,
			pct(all, 50), pct(all, 99), pct(first[u], 50), pct(first[u], 90), pct(rest[u], 50), pct(rest[u], 99))
	}
}

// stream reads one stream and returns its first event's latency and the
// others', in milliseconds.
func stream(client *http.Client, base string, n, interval int) (first, rest []float64, err error) {
	body := `{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	url := fmt.Sprintf("%s/v1/chat/completions?events=%d&interval_ms=%d", base, n, interval)
	res, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("%s: status %d", url, res.StatusCode)
	}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("data: {")) {
			continue
		}
		now := time.Now().UnixNano()
		ms := float64(now-field(line, `"bench_sent_ns":`)) / 1e6
		if field(line, `"bench_seq":`) == 0 {
			first = append(first, ms)
		} else {
			rest = append(rest, ms)
		}
	}
	return first, rest, sc.Err()
}

// field returns the integer after key in line, -1 when key is absent.
func field(line []byte, key string) int64 {
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return -1
	}
	b := line[i+len(key):]
	j := 0
	for j < len(b) && '0' <= b[j] && b[j] <= '9' {
		j++
	}
	v, _ := strconv.ParseInt(string(b[:j]), 10, 64)
	return v
}

// pct returns the p-th percentile of x (nearest rank), 0 when x is empty.
func pct(x []float64, p float64) float64 {
	if len(x) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(x))
	return s[int(float64(len(s)-1)*p/100)]
}
