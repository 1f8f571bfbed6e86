package main

import (
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// newMetricsHandler builds the registry of one Server and the /metrics
// handler serving it. The registry is the Server's own (no global
// registration), so tests can build as many servers as they like.
// Request metrics are this process's since it started; Prometheus sums
// the instances of a fleet. apiproxy_store_writable is there when store
// tracks its writes (writeHealthStore, the embedded store).
func newMetricsHandler(logger *slog.Logger, st *Stats, active func() int64, store Store, logDropped func() int64) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "apiproxy_request_log_dropped_total",
			Help: "Request log records dropped because a sink's queue (10,000) was full: the store was unreachable or slow for too long. Counted per sink (store, REQUEST_LOG).",
		}, func() float64 { return float64(logDropped()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStatsCollector(st),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "apiproxy_active_requests",
			Help: "Proxied requests in flight.",
		}, func() float64 { return float64(active()) }),
	)
	if w, ok := store.(writeHealthStore); ok {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "apiproxy_store_writable",
			Help: "1 while the embedded store's last write landed, 0 after its disk refused one (full, read-only, I/O error); the next write that lands sets it back to 1.",
		}, func() float64 {
			if w.writeFailure() != nil {
				return 0
			}
			return 1
		}))
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// handleMetrics answers GET /metrics in the Prometheus text format.
func (s *Server) handleMetrics(c *gin.Context) {
	s.metrics.ServeHTTP(c.Writer, c.Request)
}

// metricsBuckets are the histogram buckets exposed, as indexes into the
// stats histograms (see histIndex) whose upper bounds are powers of two of
// microseconds: 0.256 ms to 4295 s. Counts at these bounds are exact.
var metricsBuckets = func() []int {
	var b []int
	for k := 6; k <= 30; k++ {
		b = append(b, 4*k+3)
	}
	return b
}()

// statsCollector exposes the counters of a Stats. It reads them at scrape
// time, so the request path pays nothing for metrics: labels come from
// bounded sets only (prefixes, status codes, at most maxModels+1 model
// names and maxTargets target indexes per prefix, the ids of the proxy
// keys the admin made, and the limit names).
type statsCollector struct {
	st                                                    *Stats
	requests, duration, ttfb, tokens, bytesDesc, attempts *prometheus.Desc
	keyRequests, keyTokens                                *prometheus.Desc // statskeys.go
	rateLimited                                           *prometheus.Desc
}

func newStatsCollector(st *Stats) *statsCollector {
	return &statsCollector{
		st: st,
		requests: prometheus.NewDesc("apiproxy_requests_total",
			"Proxied requests by mapping prefix and status code (499: the client left first).",
			[]string{"prefix", "code"}, nil),
		duration: prometheus.NewDesc("apiproxy_request_duration_seconds",
			"Time from receiving a proxied request to the end of its response.",
			[]string{"prefix"}, nil),
		ttfb: prometheus.NewDesc("apiproxy_time_to_first_byte_seconds",
			"Time from receiving a proxied request to the first byte of the response body.",
			[]string{"prefix"}, nil),
		tokens: prometheus.NewDesc("apiproxy_tokens_total",
			"Tokens reported by upstream responses, by prefix, model and kind ("+strings.Join(tokenKinds[:], ", ")+").",
			[]string{"prefix", "model", "kind"}, nil),
		bytesDesc: prometheus.NewDesc("apiproxy_bytes_total",
			"Body bytes proxied, by prefix and direction (in: from clients, out: to clients).",
			[]string{"prefix", "direction"}, nil),
		attempts: prometheus.NewDesc("apiproxy_upstream_attempts_total",
			"Tries of a mapping's targets, by prefix, target (its index in the mapping) and outcome (ok; error: it failed and its answer went to the client; retried: it failed and the next target was tried).",
			[]string{"prefix", "target", "outcome"}, nil),
		keyRequests: prometheus.NewDesc("apiproxy_key_requests_total",
			"Proxied requests made with a proxy key, by the key's id, mapping prefix and status code (499: the client left first).",
			[]string{"key", "prefix", "code"}, nil),
		keyTokens: prometheus.NewDesc("apiproxy_key_tokens_total",
			"Tokens reported by upstream responses to requests made with a proxy key, by the key's id and kind ("+strings.Join(tokenKinds[:], ", ")+").",
			[]string{"key", "kind"}, nil),
		rateLimited: prometheus.NewDesc("apiproxy_rate_limited_total",
			"Requests refused by a limit (429 rate_limited), by mapping prefix, proxy key id (\"\" for a request without one) and limit ("+strings.Join(limitNames[:], ", ")+").",
			[]string{"prefix", "key", "limit"}, nil),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.requests
	ch <- c.duration
	ch <- c.ttfb
	ch <- c.tokens
	ch <- c.bytesDesc
	ch <- c.attempts
	ch <- c.keyRequests
	ch <- c.keyTokens
	ch <- c.rateLimited
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.st
	prefixes := *st.prefixes.Load()
	names := make([]string, 0, len(prefixes))
	for p := range prefixes {
		names = append(names, p)
	}
	sort.Strings(names)

	st.mu.Lock()
	st.drainLocked(st.now()) // fold the histograms in
	type hist struct {
		count   uint64
		sum     float64
		buckets map[float64]uint64
	}
	lat, ttfb := make([]hist, len(names)), make([]hist, len(names))
	for i, p := range names {
		ps := prefixes[p]
		lat[i] = hist{sum: float64(ps.procLatencySum) / 1e6}
		lat[i].count, lat[i].buckets = promBuckets(&ps.procLatency)
		ttfb[i] = hist{sum: float64(ps.procTTFBSum) / 1e6}
		ttfb[i].count, ttfb[i].buckets = promBuckets(&ps.procTTFB)
	}
	st.mu.Unlock()

	for i, p := range names {
		ps := prefixes[p]
		for code := range statusSlots {
			v := ps.codes[code].Load()
			switch {
			case code == 499:
				continue // with the client-closed count, below
			case code == 0:
				v += ps.codes[499].Load()
			}
			if v == 0 {
				continue
			}
			label := strconv.Itoa(code)
			switch code {
			case 0:
				label = "499"
			case statusOther:
				label = "other"
			}
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(v), p, label)
		}
		ch <- prometheus.MustNewConstHistogram(c.duration, lat[i].count, lat[i].sum, lat[i].buckets, p)
		ch <- prometheus.MustNewConstHistogram(c.ttfb, ttfb[i].count, ttfb[i].sum, ttfb[i].buckets, p)
		ch <- prometheus.MustNewConstMetric(c.bytesDesc, prometheus.CounterValue, float64(ps.bytesIn.Load()), p, "in")
		ch <- prometheus.MustNewConstMetric(c.bytesDesc, prometheus.CounterValue, float64(ps.bytesOut.Load()), p, "out")
		c.collectAttempts(ch, ps)
		for l, name := range limitNames {
			if v := ps.rateLimited[l].Load(); v != 0 {
				ch <- prometheus.MustNewConstMetric(c.rateLimited, prometheus.CounterValue, float64(v), p, "", name)
			}
		}

		for _, m := range *ps.modelList.Load() {
			counts := m.tokens.load()
			for k, kind := range tokenKinds {
				if v := counts[k]; v != 0 {
					ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(v), p, m.name, kind)
				}
			}
		}
		counts := ps.noModel.load()
		for k, kind := range tokenKinds {
			if v := counts[k]; v != 0 {
				ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(v), p, "unknown", kind)
			}
		}
	}
	c.collectKeys(ch)
}

// promBuckets turns a stats histogram into cumulative Prometheus buckets
// (upper bound in seconds → count) and the total count.
func promBuckets(h *[histBuckets]int64) (uint64, map[float64]uint64) {
	out := make(map[float64]uint64, len(metricsBuckets))
	var cum int64
	next := 0
	for i, c := range h {
		cum += c
		if next < len(metricsBuckets) && i == metricsBuckets[next] {
			_, hi := histBounds(i)
			out[hi/1e6] = uint64(cum)
			next++
		}
	}
	return uint64(cum), out
}

// collectAttempts sends the tries of each target of ps. A target that was
// tried gets a series for every outcome, zeros included, so that ratios of
// outcomes are defined from its first try on; one never tried gets none.
func (c *statsCollector) collectAttempts(ch chan<- prometheus.Metric, ps *prefixStats) {
	for i := range ps.targets {
		var n [numTryOutcomes]int64
		var tried int64
		for o := range n {
			n[o] = ps.targets[i][o].Load()
			tried |= n[o]
		}
		if tried == 0 {
			continue
		}
		target := strconv.Itoa(i)
		for o, outcome := range tryOutcomes {
			ch <- prometheus.MustNewConstMetric(c.attempts, prometheus.CounterValue, float64(n[o]), ps.prefix, target, outcome)
		}
	}
}

// collectKeys sends the per-key series of /metrics: the requests of each
// key by prefix and code, its tokens by kind, and its refusals by prefix
// and limit, since the process started. Labels are the key's id, never its secret or hash: ids come
// from the keys the admin made, a bounded set.
func (c *statsCollector) collectKeys(ch chan<- prometheus.Metric) {
	keys := *c.st.keys.Load()
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ks := keys[id]
		for kc, n := range *ks.codes.Load() {
			label := strconv.Itoa(kc.code)
			if kc.code == statusOther {
				label = "other"
			}
			ch <- prometheus.MustNewConstMetric(c.keyRequests, prometheus.CounterValue, float64(n.Load()), id, kc.prefix, label)
		}
		counts := ks.tokens.load()
		for k, kind := range tokenKinds {
			if v := counts[k]; v != 0 {
				ch <- prometheus.MustNewConstMetric(c.keyTokens, prometheus.CounterValue, float64(v), id, kind)
			}
		}
		for kl, n := range *ks.limits.Load() {
			ch <- prometheus.MustNewConstMetric(c.rateLimited, prometheus.CounterValue, float64(n.n.Load()), kl.prefix, id, limitNames[kl.limit])
		}
	}
}
