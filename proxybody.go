package main

// The proxy's wrappers around one request's bytes: proxyWriter, the
// ResponseWriter ReverseProxy writes to (flushing, the header flush delay);
// responseBody, the upstream body (byte counts, the usage tee); and
// countingBody, the request body (byte counts, the client's own framing
// errors).

import (
	"compress/gzip"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// proxyWriter is the ResponseWriter handed to ReverseProxy. For bodies of
// known length it flushes after every write (each chunk reaches the client
// as it is read) and sends the headers with the first chunk, or after
// headerFlushDelay if the body is slow to come. When the body's first
// bytes are known to be in already (bodyAtHand), no timer is armed: the
// first write follows the headers without waiting for the upstream.
type proxyWriter struct {
	pr        *proxyRequest
	rw        http.ResponseWriter // net/http's own
	flushEach bool
	// bodyAtHand is set by modifyResponse when the body's first bytes came
	// with the head (upConn stashed them) or there is no body to wait for:
	// then no timer is armed, since arming one due in 2 ms, the earliest of
	// its P, wakes a thread sleeping in the network poller
	// (docs/performance.md).
	bodyAtHand bool
	timer      *time.Timer
	// bodyStarted is set by the first Write or Flush; only the handler's
	// goroutine touches it.
	bodyStarted bool

	mu            sync.Mutex // held while flushing, so the timer never races a Write
	headerPending atomic.Bool
	// interimSent is set once a 1xx other than 100 Continue went to the
	// client: the request is not retried after it (failover.go).
	interimSent bool
}

func (w *proxyWriter) reset(rw http.ResponseWriter) {
	w.rw, w.flushEach, w.bodyAtHand, w.bodyStarted, w.interimSent = rw, false, false, false, false
	w.headerPending.Store(false)
}

func (w *proxyWriter) Header() http.Header { return w.rw.Header() }

// Unwrap lets http.ResponseController reach Hijack for WebSocket upgrades.
func (w *proxyWriter) Unwrap() http.ResponseWriter { return w.rw }

func (w *proxyWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// 1xx (100 Continue, 103 Early Hints) pass on as they come; the
		// final status follows.
		w.interimSent = w.interimSent || code != http.StatusContinue
		w.rw.WriteHeader(code)
		return
	}
	// The proxy's own headers go in here, after ReverseProxy copied the
	// upstream's: copying them along with res.Header would allocate a new
	// slice for each, while these static values are shared.
	addProxyHeaders(w.rw.Header(), w.pr.p.cors, w.pr.in)
	w.rw.WriteHeader(code)
	if !w.flushEach {
		// Event streams and unknown-length bodies: headers go out now.
		// Writing them here rather than under ReverseProxy's copy loop
		// also keeps the deep header write within the stack the handler
		// already has: one call level deeper and it grows to the next
		// size (a goroutine stack doubles), which every held stream then
		// keeps.
		w.rw.(http.Flusher).Flush()
	}
	if w.pr.rec.TTFB == 0 {
		w.pr.rec.TTFB = time.Since(w.pr.rec.Start)
	}
	if w.flushEach && !w.bodyAtHand {
		w.headerPending.Store(true)
		w.timer.Reset(headerFlushDelay)
	}
}

func (w *proxyWriter) Write(b []byte) (int, error) {
	w.startBody()
	n, err := w.rw.Write(b)
	if w.flushEach && err == nil {
		w.rw.(http.Flusher).Flush()
	}
	return n, err
}

func (w *proxyWriter) Flush() {
	w.startBody()
	w.rw.(http.Flusher).Flush()
}

// startBody cancels, at the first Write or Flush, the pending header flush
// of a known-length body: the headers go out with the body's first bytes.
func (w *proxyWriter) startBody() {
	if !w.bodyStarted {
		w.bodyStarted = true
		if w.flushEach {
			// Taking the lock once waits out a header flush in progress on
			// the timer's goroutine; after it the timer does nothing.
			w.stop()
		}
	}
}

// flushHeaders runs on the timer's goroutine when the body of a
// known-length response is slow to come.
func (w *proxyWriter) flushHeaders() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.headerPending.CompareAndSwap(true, false) {
		w.rw.(http.Flusher).Flush()
	}
}

// stop cancels a pending header flush; after it returns the timer will
// not touch the writer.
func (w *proxyWriter) stop() {
	w.mu.Lock()
	w.headerPending.Store(false)
	w.mu.Unlock()
	w.timer.Stop()
}

// responseBody wraps the upstream body to count its bytes and, when stats
// are on, to read token usage from them as they pass (a tee into
// usageParser, which never changes or holds them back). Pooled with its
// proxyRequest; ReverseProxy closes it before ServeHTTP returns.
type responseBody struct {
	io.ReadCloser
	pr    *proxyRequest
	usage usageParser // reused across requests; see reset
}

// reset wraps res's body for a new response.
func (b *responseBody) reset(res *http.Response) {
	b.ReadCloser = res.Body
	if b.pr.p.observe != nil || b.pr.ticket != nil {
		// The usage counts in the stats, and in tpm (limiter.go).
		b.usage.reset(res.Header)
	} else {
		b.usage.mode = usageOff
	}
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.account(p[:n], err)
	return n, err
}

// account counts bytes read from the body and feeds them to the usage
// parser; err is the read's error. A handed-off stream reads the body
// itself and calls it after writing the bytes to the client, so that the
// parsing delays no event (stream.go).
func (b *responseBody) account(p []byte, err error) {
	b.pr.rec.BytesOut += int64(len(p))
	if b.pr.idle != nil && len(p) > 0 {
		b.pr.touchIdle()
	}
	if b.usage.active() {
		b.usage.feed(p)
		if err != nil && !b.usage.gzipped() {
			b.pr.rec.Usage = b.usage.finish()
		}
	}
}

// Close also ends usage parsing of a body that was not read to its end
// (the client left, or the upstream broke): what was seen counts. A
// gzip-encoded body is decoded here, after ReverseProxy wrote its last
// bytes to the client, so that the decoding delays nothing.
func (b *responseBody) Close() error {
	if b.usage.gzipped() {
		p := b.pr.p
		zr, _ := p.gzipReaders.Get().(*gzip.Reader)
		if zr == nil {
			zr = new(gzip.Reader)
		}
		buf := p.streamBufs.Get().(*[]byte)
		b.pr.rec.Usage = b.usage.finishGzip(zr, *buf)
		p.streamBufs.Put(buf)
		p.gzipReaders.Put(zr)
	} else if b.usage.active() {
		b.pr.rec.Usage = b.usage.finish()
	}
	return b.ReadCloser.Close()
}

// countingBody counts the bytes of a request body (of unknown length, or of
// a request that may be handed off: see drained) and
// remembers whether reading it failed: a chunked body that breaks its own
// framing is the client's fault, not the upstream's (see handleError).
type countingBody struct {
	io.ReadCloser
	n      atomic.Int64
	failed atomic.Bool
	// drained is set once a read returned nothing but io.EOF. The
	// Transport reads so after the end of a body (to check a known length
	// for extra bytes; a chunked body may end that way), and reads no more:
	// the connection may then be hijacked and the handler return
	// (ReverseProxy fails any read after that). net/http has also run its
	// end-of-body hook by then, which starts its background read of the
	// connection, and which Hijack stops.
	drained atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err == io.EOF {
		if n == 0 {
			b.drained.Store(true)
		}
	} else if err != nil {
		b.failed.Store(true)
	}
	return n, err
}
