package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxRequestTarget is the longest request target (path and query) the
	// proxy forwards; longer ones get 414 uri_too_long.
	maxRequestTarget = 16 << 10
	// bulkBufferSize is the copy buffer of bodies that are not event
	// streams. Each read is one write (and flush) to the client, so a
	// buffer larger than io.Copy's 32 KiB makes fewer system calls and a
	// faster download. 60 KiB, not 64: the kernel builds TCP segments of at
	// most 64 KiB headers included, so a 64 KiB write goes out as a full
	// segment and a tiny one, one more packet (and wake-up of the peer)
	// per write, which made downloads slower than with 32 KiB
	// (docs/performance.md). It is pooled and held only while a body is
	// copied.
	bulkBufferSize = 60 << 10
	// streamBufferSize is the copy buffer of event streams (SSE, NDJSON).
	// Such a stream spends most of its life idle inside Read while holding
	// its buffer; an event is a few hundred bytes, so 2 KiB is plenty (a
	// burst larger than that takes one more read), and idle streams hold
	// a sixteenth of what io.Copy's 32 KiB buffer would.
	streamBufferSize = 2 << 10
	// headerFlushDelay bounds how long the response headers of a
	// known-length body wait to be sent together with its first bytes. Most
	// upstreams send both at once, and one write instead of two is what makes
	// small requests cheaper than a flush-every-write proxy.
	headerFlushDelay = 2 * time.Millisecond
)

// proxy is the streaming reverse proxy behind every mapped prefix. It wraps
// httputil.ReverseProxy: one ReverseProxy value per pooled proxyRequest, so
// that the copy buffer can be chosen per response (see BufferPool) and the
// hooks reach per-request state without allocating. Safe for concurrent use.
type proxy struct {
	transport http.RoundTripper
	logger    *slog.Logger
	errorLog  *log.Logger // ReverseProxy's own messages, at debug level
	cors      corsPolicy
	timeout   time.Duration // overall per-request limit; 0 means none
	routes    *atomic.Pointer[routeTable]
	observe   func(*requestRecord) // called once per finished request; may be nil
	// maxInFlight is MAX_IN_FLIGHT: past it, serve answers 503 overloaded;
	// 0 means no cap. trusted is TRUSTED_PROXIES (see rewrite).
	maxInFlight int64
	trusted     trustedProxies
	// retryBodyLimit is RETRY_BODY_LIMIT (failover.go); states keeps the
	// targets' cooldowns across route tables.
	retryBodyLimit int64
	states         *targetStates
	// keys are the proxy keys that callers of a keys mapping show (auth.go).
	keys *atomic.Pointer[keyTable]
	// limiter enforces the limits of mappings and keys (limiter.go).
	limiter limiter

	// streamHandoff is STREAM_HANDOFF: event streams to HTTP/1.1 clients
	// are handed off (stream.go) and may read the upstream socket
	// themselves (upconn.go). When it is false every response goes
	// through ReverseProxy alone, and the fields below stay unused.
	streamHandoff bool
	// handoffAfter is STREAM_HANDOFF_AFTER: a stream is written through
	// net/http (stream_here.go) and handed off only once it has run this
	// long; 0 hands it off as its head comes.
	handoffAfter time.Duration
	// recycle gives the connections of handed-off streams back to the
	// server (nil: they are closed at the end, announced with
	// "Connection: close"); cancelling base cuts them at the end of a
	// shutdown (nil: never). newServer sets both.
	recycle *connRecycler
	base    context.Context
	// watcher watches the clients of handed-off streams, and the upstreams
	// of raw ones, from one goroutine for all (watch_linux.go); close
	// stops it. nil where epoll is not available: each stream then reads
	// its client connection from a goroutine of its own.
	watcher *clientWatcher
	// watchFailed logs, once, that the watcher stopped.
	watchFailed sync.Once
	handedOff   atomic.Int64 // streams handed off so far
	rawStreams  atomic.Int64 // streams that read the upstream socket themselves (upconn.go), handed off or not
	// cutting is set when a shutdown's drain time is up and the requests
	// still running are cut: a client connection closed then is not a
	// client that left (499).
	cutting atomic.Bool

	requests    sync.Pool // *proxyRequest
	bulkBufs    sync.Pool // *[]byte of bulkBufferSize
	streamBufs  sync.Pool // *[]byte of streamBufferSize
	gzipReaders sync.Pool // *gzip.Reader, to read the usage of gzip-encoded JSON
	// active counts the requests in flight, handed-off streams included;
	// begun counts every request taken (the memory releaser reads it,
	// runtime.go).
	// streams counts those of them that are streams (event streams,
	// upgraded connections), streamsBegun every stream that started (the
	// GC room, runtime.go); peak is the most streams at once since the
	// runtime tuner last looked. oneProc is set while the tuner runs the
	// process on one processor, and crowd then tells it that a stream
	// started (runtime.go).
	active       atomic.Int64
	begun        atomic.Uint64
	streams      atomic.Int64
	streamsBegun atomic.Uint64
	peak         atomic.Int64
	oneProc      atomic.Bool
	crowd        chan struct{}
}

// enterStream counts a response that turned out to be a stream.
func (p *proxy) enterStream() {
	p.streamsBegun.Add(1)
	n := p.streams.Add(1)
	for {
		peak := p.peak.Load()
		if n <= peak || p.peak.CompareAndSwap(peak, n) {
			break
		}
	}
	if p.oneProc.Load() {
		select {
		case p.crowd <- struct{}{}:
		default:
		}
	}
}

// The proxy is the runtime tuner's requestLoad.
func (p *proxy) inFlight() int64          { return p.active.Load() }
func (p *proxy) starts() uint64           { return p.begun.Load() + uint64(p.handedOff.Load()) }
func (p *proxy) streamStarts() uint64     { return p.streamsBegun.Load() }
func (p *proxy) peakStreams() int64       { return p.peak.Swap(p.streams.Load()) }
func (p *proxy) crowded() <-chan struct{} { return p.crowd }
func (p *proxy) oneProcessor(on bool)     { p.oneProc.Store(on) }

// requestRecord is what the proxy tells its observer about one finished
// request. It is only valid during the observer call.
type requestRecord struct {
	Prefix   string
	Status   int // upstream status, or the proxy's own; 499 when the client left first
	ProxyErr string
	Start    time.Time
	TTFB     time.Duration // until the first body byte (or headers, for empty bodies); 0 if none
	Duration time.Duration
	BytesIn  int64
	BytesOut int64
	// Usage is the token usage read from the response body as it passed
	// (usage.go); Usage.Known is false when there was none, or when stats
	// are off.
	Usage tokenUsage
	// Tries are the tries of the mapping's targets, in order (failover.go);
	// empty when no upstream was tried (the proxy refused the request).
	Tries []targetTry
	// KeyID is the id of the proxy key the caller showed on a keys
	// mapping (SPEC §10), "" when none was recognised.
	KeyID string
	// Limit is the limit that refused the request (limitRPM, limitTPM,
	// limitConcurrency) when ProxyErr is "rate_limited"; "" otherwise.
	Limit string
	// What the request log (requestlog.go) keeps of the request besides:
	// its method, its escaped path after the prefix without the query,
	// whether the response was an event stream, the name of the key
	// KeyID, and the client's address (clientIP; invalid when the
	// connection has none, a Unix socket).
	Method  string
	Path    string
	Stream  bool
	KeyName string
	Client  netip.Addr
}

// newTransport returns the upstream transport, tuned for many long streams
// to a few hosts: a large keep-alive pool, HTTP/2 to TLS upstreams, bounded
// dial and TLS handshake, and no overall or response-header timeout unless
// configured (a generation may stream for an hour). With the stream
// hand-off on, the connections it dials are upConns (upconn.go), which raw
// streams read themselves; with RAW_IO, they read and write with raw system
// calls (rawio.go).
func newTransport(cfg Config) *http.Transport {
	dial := (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext
	if raw := cfg.RawIO && canRawIO; cfg.StreamHandoff || raw {
		dial = dialUp(dial, cfg.StreamHandoff, raw)
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   cfg.TLSHandshakeTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		// Never add Accept-Encoding nor decode: bodies pass as the upstream
		// sent them, compressed or not.
		DisableCompression: true,
		// Every connection keeps both buffers for its life, streams idle
		// included. 2 KiB holds a typical API response head (and a small
		// JSON body) or request head in one syscall; reads into the bulk
		// copy buffer bypass them.
		ReadBufferSize:  2 << 10,
		WriteBufferSize: 2 << 10,
		// An upstream's response head may be as large as a client's request
		// head (newHTTPServer's MaxHeaderBytes), not net/http's default of
		// 10 MiB, which every upstream answering at once could make each
		// request hold (issue 14). Past it the answer is 502
		// upstream_bad_response (classifyUpstreamError).
		MaxResponseHeaderBytes: 1 << 20,
	}
}

// newProxy returns the proxy of one Server. newServer then sets what the
// stream hand-off needs when it is on: base, recycle, and the watcher
// (startWatcher).
func newProxy(cfg Config, logger *slog.Logger, transport http.RoundTripper, routes *atomic.Pointer[routeTable]) *proxy {
	p := &proxy{
		transport:     transport,
		logger:        logger,
		errorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		cors:          newCORSPolicy(cfg.CORSOrigins),
		timeout:       cfg.UpstreamTimeout,
		routes:        routes,
		streamHandoff: cfg.StreamHandoff,
		handoffAfter:  cfg.StreamHandoffAfter,
		maxInFlight:   cfg.MaxInFlight,
		trusted:       cfg.TrustedProxies,

		retryBodyLimit: cfg.RetryBodyLimit,
		states:         newTargetStates(),
		crowd:          make(chan struct{}, 1),
	}
	p.bulkBufs.New = func() any { b := make([]byte, bulkBufferSize); return &b }
	p.streamBufs.New = func() any { b := make([]byte, streamBufferSize); return &b }
	p.requests.New = func() any { return p.newRequest() }
	return p
}

// startWatcher starts the watcher of handed-off streams (a goroutine, and
// on Linux an epoll set), which close stops. It starts with the server
// rather than at the first hand-off, so that its goroutine is part of the
// server from its start, like its other loops, and not one that appears
// under load. Where it cannot start, streams watch their clients with a
// read each.
func (p *proxy) startWatcher() {
	w, err := newClientWatcher()
	if err != nil {
		p.logger.Warn("no shared watcher of handed-off streams: each watches its client from a goroutine of its own", "error", err)
	}
	p.watcher = w
}

// close stops what startWatcher started. A handed-off stream still
// running then sees its client leave only at its next write; Server.Close
// cuts such streams first.
func (p *proxy) close() {
	p.watcher.close()
}

// proxyRequest is the per-request state of one proxied call, pooled. Its
// ReverseProxy's hooks are method values bound once, when the pooled value is
// made, so serving a request allocates nothing for them.
type proxyRequest struct {
	p     *proxy
	rp    httputil.ReverseProxy
	w     proxyWriter
	body  responseBody
	in    *http.Request
	route *route
	rest  string // escaped path after the prefix, as received
	// target is the route's target being tried. order holds the targets
	// in the order to try them, for a route that fails over (planTries);
	// tries records the tries so far. Both use the arrays below.
	target   *routeTarget
	order    []*routeTarget
	tries    []targetTry
	orderBuf [maxTargets]*routeTarget
	triesBuf [maxTargets]targetTry
	// keep keeps the request body for a retry; idle watches the current
	// try for stream_idle_timeout. nil when not used (failover.go).
	keep *bodyKeeper
	idle *idleWatch
	// forwarded is set once the request goes to ReverseProxy: one not
	// forwarded (refused by the proxy) has no tries.
	forwarded bool
	// key is the caller's proxy key on a keys mapping (auth.go); ticket
	// the request's hold on its limits (limiter.go), released by finish.
	key    *ProxyKey
	ticket *limitTicket
	// reqBody is the wrapped request body of unknown length; nil if none.
	reqBody *countingBody

	streaming bool    // the response is an event stream: small buffer, may be handed off
	inStreams bool    // counted in the proxy's streams: an event stream or an upgrade
	buf       *[]byte // the copy buffer handed out by Get
	rec       requestRecord

	// cancelUp cancels the upstream request's own context, which a request
	// that may be handed off gets (see serve); nil otherwise. stopParent
	// stops the client's context from cancelling it.
	cancelUp      context.CancelCauseFunc
	stopParent    func() bool
	cancelTimeout context.CancelFunc
	st            streamState
	// up is the plain-TCP upstream connection the request got (trace's
	// GotConn), for a request that may be handed off; nil otherwise.
	up *upConn
	// here is an event stream that modifyResponse left for serve to write
	// through net/http (serveHere) once ReverseProxy has returned. Where
	// net/http then formats the stream's head (chunkWriter.writeHeader,
	// nearly 3 KiB of frame), the stack is a little over 1 KiB shallower,
	// and with writeHead's 1 KiB it stays within the 8 KiB a new
	// connection's goroutine has by then: growing it, a copy of the stack
	// to 16 KiB, would delay the first event (docs/performance.md, "The
	// first event of a new connection").
	here  *http.Response
	trace httptrace.ClientTrace
}

func (p *proxy) newRequest() *proxyRequest {
	pr := &proxyRequest{p: p}
	pr.rp = httputil.ReverseProxy{
		Rewrite:        pr.rewrite,
		Transport:      p.transport,
		BufferPool:     pr,
		ErrorLog:       p.errorLog,
		ModifyResponse: pr.modifyResponse,
		ErrorHandler:   pr.handleError,
		// 0: known-length bodies are flushed per write by proxyWriter, and
		// ReverseProxy itself flushes event streams and unknown-length
		// bodies after every write.
		FlushInterval: 0,
	}
	pr.w.pr = pr
	pr.trace.GotConn = pr.gotConn
	pr.w.timer = time.AfterFunc(time.Hour, pr.w.flushHeaders)
	pr.w.timer.Stop()
	pr.body.pr = pr
	pr.st.onEvent = pr.clientEvent
	return pr
}

// lookup returns the route for req and the escaped rest of its path, or nil
// when no mapping matches.
func (p *proxy) lookup(req *http.Request) (*route, string) {
	return p.routes.Load().match(requestPath(req))
}

// targetRefusal returns why a request that matched a mapping is not forwarded:
// the status, code and message of the error it gets; status 0 when it is
// forwarded.
func targetRefusal(req *http.Request, rest string) (status int, code, msg string) {
	if len(req.RequestURI) > maxRequestTarget {
		return http.StatusRequestURITooLong, "uri_too_long", uriTooLongMsg
	}
	if msg := badPath(rest); msg != "" {
		return http.StatusBadRequest, "bad_path", msg
	}
	return 0, "", ""
}

// uriTooLongMsg is the message of a 414 uri_too_long, mapped or not.
var uriTooLongMsg = fmt.Sprintf("request target is longer than %d bytes", maxRequestTarget)

// handleUnrouted answers a request that reached no route at all: 414 when
// its target is too long to proxy, else 404 no_mapping.
func (p *proxy) handleUnrouted(w http.ResponseWriter, req *http.Request) {
	if len(req.RequestURI) > maxRequestTarget {
		writeError(w, http.StatusRequestURITooLong, "uri_too_long", uriTooLongMsg)
		return
	}
	writeError(w, http.StatusNotFound, "no_mapping", "no mapping for path "+truncate(req.URL.Path, 200))
}

// serve proxies req to rt's upstream; rest is the escaped path after the
// prefix, as lookup returned it. w is the net/http ResponseWriter itself,
// not a router's wrapper: 1xx responses, Hijack and full duplex reach it
// directly.
func (p *proxy) serve(w http.ResponseWriter, req *http.Request, rt *route, rest string) {
	refused, code, msg := targetRefusal(req, rest)
	if refused == 0 && p.cors.isPreflight(req) {
		p.cors.preflight(w, req)
		return
	}
	// Without full duplex, net/http closes the request body once the first
	// response bytes are flushed; a Transport still sending it then aborts
	// the upstream connection mid-stream ("use of closed network
	// connection"): a short stream's answer often starts while its request
	// is still being sent.
	_ = http.NewResponseController(w).EnableFullDuplex()
	if req.Body != nil && req.Body != http.NoBody {
		// A body the proxy answers without reading (a refusal, an upstream
		// that cannot be reached) must be closed before the handler
		// returns: under full duplex, net/http otherwise panics reading
		// the connection's next request ("invalid concurrent Body.Read
		// call", golang/go#68560) and drops the connection
		// (TestUnreadBodyKeepsConnection).
		defer req.Body.Close()
	}
	if req.TransferEncoding != nil && req.ProtoMajor == 1 {
		// net/http reads a request carrying both Content-Length and
		// Transfer-Encoding by its chunked framing and silently drops the
		// Content-Length, so we cannot tell such a request from a plain
		// chunked one. Closing the connection after any chunked request
		// means bytes smuggled after the body are never run as a second
		// request (RFC 9112 §6.1).
		w.Header().Set("Connection", "close")
	}

	pr := p.requests.Get().(*proxyRequest)
	pr.in, pr.route, pr.rest, pr.reqBody = req, rt, rest, nil
	pr.w.reset(w)
	pr.rec = requestRecord{Prefix: rt.prefix, Start: time.Now(), BytesIn: max(req.ContentLength, 0),
		Method: req.Method, Path: rest}
	pr.rec.Client, _ = p.trusted.clientIP(req)
	pr.streaming = false
	pr.tries = pr.triesBuf[:0]
	if rt.multi || rt.idle > 0 {
		// The failover loop is the Transport (failover.go); a mapping
		// with one target and no idle timeout never enters it.
		pr.rp.Transport = pr
		pr.planTries()
		pr.target = pr.order[0]
	} else {
		pr.rp.Transport = p.transport
		pr.target = rt.targets[0]
	}
	p.begun.Add(1)
	n := p.active.Add(1)
	if refused != 0 {
		// Refused, but proxied: it matched a mapping, so it is recorded
		// (SPEC §12), its path cut short if it was too long.
		pr.rec.Status, pr.rec.ProxyErr, pr.rec.Path = refused, code, truncate(rest, 200)
		writeError(w, refused, code, msg)
		pr.finish(true)
		return
	}
	if p.maxInFlight > 0 && n > p.maxInFlight {
		// A loop through another instance (which validation cannot see)
		// or a flood would otherwise hold descriptors and memory until the
		// process fails for everyone, /healthz included (issue 14).
		pr.rec.Status, pr.rec.ProxyErr = http.StatusServiceUnavailable, "overloaded"
		writeError(w, http.StatusServiceUnavailable, "overloaded",
			fmt.Sprintf("the proxy has %d requests in flight, its limit (MAX_IN_FLIGHT); retry later", p.maxInFlight))
		pr.finish(true)
		return
	}
	if rt.keys && !pr.checkKey() || !pr.admitLimits() {
		pr.finish(true)
		return
	}
	// A route with an idle timeout keeps its responses under
	// ReverseProxy, whose reads the timeout watches (touchIdle).
	handOff := p.mayHandOff(w, req) && rt.idle == 0
	if req.Body != nil && req.Body != http.NoBody && (req.ContentLength < 0 || handOff) {
		// The Transport may read the body from its own goroutine after
		// ServeHTTP returns, so this counter is not pooled.
		pr.reqBody = &countingBody{ReadCloser: req.Body}
		req.Body = pr.reqBody
	}
	ctx := req.Context()
	if handOff {
		// A handed-off stream outlives the handler, whose return cancels
		// req's context: the upstream request gets a context of its own,
		// cancelled with req's until the hand-off, by the stream after.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(context.WithoutCancel(ctx))
		pr.cancelUp = cancel
		// The callback may run after this request ended and pr went back
		// to the pool (stop lost the race): it holds only this request's
		// own values.
		inCtx := req.Context()
		pr.stopParent = context.AfterFunc(inCtx, func() { cancel(context.Cause(inCtx)) })
		if rt.multi || pr.target.scheme == "http" {
			ctx = httptrace.WithClientTrace(ctx, &pr.trace)
		}
	}
	if p.timeout > 0 {
		ctx, pr.cancelTimeout = context.WithTimeout(ctx, p.timeout)
	}
	if ctx != req.Context() {
		req = req.WithContext(ctx)
	}
	completed := false
	defer func() {
		if completed && pr.st.conn != nil {
			go pr.stream() // it records the request and recycles pr
			return
		}
		pr.finish(completed)
	}()
	pr.forwarded = true
	pr.rp.ServeHTTP(&pr.w, req)
	if res := pr.here; res != nil {
		pr.here = nil
		pr.serveHere(res)
	}
	completed = true
}

// gotConn is the trace hook that learns the upstream connection of a
// request that may be handed off, and arms it (upconn.go).
func (pr *proxyRequest) gotConn(info httptrace.GotConnInfo) {
	pr.up = nil
	if c, ok := info.Conn.(*upConn); ok {
		c.arm()
		pr.up = c
	}
}

// finish records a request that ended and puts pr back in the pool.
// completed is false when ReverseProxy aborted the response (the upstream
// or the client failed mid-body); pr is then dropped, since the Transport
// may still hold parts of it.
func (pr *proxyRequest) finish(completed bool) {
	p := pr.p
	pr.w.stop()
	if pr.stopParent != nil {
		pr.stopParent()
		pr.cancelUp(nil)
	}
	if pr.cancelTimeout != nil {
		pr.cancelTimeout()
	}
	pr.rec.Duration = time.Since(pr.rec.Start)
	if pr.reqBody != nil {
		pr.rec.BytesIn = pr.reqBody.n.Load()
	}
	if !completed && pr.idle != nil && pr.idle.fired.Load() && len(pr.tries) > 0 {
		// Cut after the head: the client's connection was broken.
		pr.rec.ProxyErr = "upstream_idle_timeout"
		pr.tries[len(pr.tries)-1].Outcome = tryError
	}
	pr.endTry()
	if t := pr.ticket; t != nil {
		// The response ended (or the client left, or the proxy gave up):
		// its tokens count against tpm, its concurrency slots free.
		if pr.rec.Usage.Known {
			t.addTokens(pr.rec.Usage.Tokens[tokTotal])
		}
		t.release()
	}
	if !completed && pr.rec.ProxyErr == "" {
		pr.rec.ProxyErr = "aborted"
		if pr.in.Context().Err() != nil && !p.cutting.Load() {
			pr.rec.Status = 499
		}
	}
	if len(pr.tries) == 0 && pr.forwarded {
		// One target, tried once: it failed as SPEC §9 counts failures.
		o := tryOK
		if upstreamFailure(pr.rec.ProxyErr) || pr.route.retries(pr.rec.Status) && pr.rec.ProxyErr == "" {
			o = tryError
		}
		pr.tries = append(pr.tries, targetTry{Outcome: o})
	}
	pr.rec.Tries = pr.tries
	pr.rec.Stream = pr.streaming
	if p.observe != nil {
		p.observe(&pr.rec)
	}
	if pr.inStreams {
		p.streams.Add(-1)
		pr.inStreams = false
	}
	// Only once observed: shutdown waits for active to reach 0 before
	// the final stats flush (run).
	p.active.Add(-1)
	if completed {
		pr.in, pr.route, pr.reqBody = nil, nil, nil
		pr.target, pr.keep, pr.forwarded = nil, nil, false
		pr.key, pr.ticket = nil, nil
		clear(pr.orderBuf[:len(pr.order)])
		pr.order, pr.rec.Tries = nil, nil
		pr.cancelUp, pr.stopParent, pr.cancelTimeout = nil, nil, nil
		pr.up, pr.here = nil, nil
		pr.st.reset()
		pr.w.reset(nil)
		p.requests.Put(pr)
	}
}

// requestPath returns the path of req exactly as the client sent it, still
// escaped (the request target up to "?"), so that "%2F" stays "%2F".
func requestPath(req *http.Request) string {
	u := req.RequestURI
	if len(u) == 0 || u[0] != '/' {
		// absolute-form ("GET http://host/path") or HTTP/2: use the parsed URL.
		return req.URL.EscapedPath()
	}
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	return u
}

// badPath returns why the escaped rest of a request path may not be
// forwarded, or "" if it may. Bytes that the request line cannot carry
// raw (controls, spaces) net/http refuses itself with a plain 400 before
// any handler runs; this catches what it lets through:
//   - dot segments, plain or percent-encoded, with "/", "%2F", "%5C" or
//     "\" around them, or with a ";" parameter ("..;x", which Tomcat and
//     Jetty read as ".."): SPEC §3.2;
//   - a raw "#": not valid in a request target (RFC 9112 §3.2), and an
//     upstream would drop what follows while we routed on all of it.
//
// Everything else passes exactly as received (SPEC §3.2), never decoded:
// percent-encoded bytes, %00 and %0D%0A included, raw backslashes and raw
// non-ASCII bytes. None of them can change the upstream host (see
// rewrite), and what they mean is the upstream's to decide.
func badPath(rest string) string {
	if hasDotSegment(rest) {
		return `path must not contain "." or ".." segments`
	}
	if strings.IndexByte(rest, '#') >= 0 {
		return `path must not contain a raw "#" (encode it as %23)`
	}
	return ""
}

var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// rewrite points the outgoing request at pr.target (pointAt) and passes
// the headers a transparent proxy passes.
func (pr *proxyRequest) rewrite(r *httputil.ProxyRequest) {
	out := r.Out
	pr.pointAt(out.URL, pr.target)
	out.Host = ""
	out.URL.RawQuery = r.In.URL.RawQuery
	out.URL.ForceQuery = r.In.URL.ForceQuery
	if up, ok := out.Header["Upgrade"]; ok && !(len(up) == 1 && strings.EqualFold(up[0], "websocket")) {
		// Only WebSocket is tunnelled (SPEC §3.7). An h2c upgrade would
		// open an HTTP/2 connection to the upstream on which the client
		// could send any request, dot segments included, unseen by the
		// proxy ("h2c smuggling"); without its Upgrade the request goes
		// as a plain one.
		delete(out.Header, "Upgrade")
		delete(out.Header, "Connection")
	}
	// ReverseProxy puts back "TE: trailers" when the client sent it (for
	// gRPC); TE is hop-by-hop all the same (RFC 9110 §10.1.4, SPEC §3.3),
	// so it goes.
	delete(out.Header, "Te")
	// A request's trailers are read with the end of its body, into
	// r.In.Trailer; Out's is a copy made before, which the Transport
	// would send with the names announced and no values. The same map
	// is read by the goroutine that read the body's end, after it.
	out.Trailer = r.In.Trailer
	// Rewrite mode drops these; a transparent proxy passes them as received
	// and adds none of its own. The X-Forwarded-For of a trusted balancer
	// (TRUSTED_PROXIES) is the exception: it was written for this proxy
	// alone, to name the client (clientIP), and passing it on would tell
	// the AI provider every client's address. From any other peer it is
	// the client's own header and passes as received.
	dropXFF := pr.p.trusted.peerTrusted(r.In)
	for _, k := range forwardingHeaders {
		if v, ok := r.In.Header[k]; ok && !(dropXFF && k == "X-Forwarded-For") {
			out.Header[k] = v
		}
	}
	if pr.route.keys {
		// The caller's proxy key never leaves; the target's own key
		// goes in its place (SPEC §10).
		stripCredentials(out)
		addTargetKey(out, pr.target.key, pr.target.authStyle)
	}
}

// pointAt points u, an outgoing request's URL, at target t: its scheme,
// host and base path followed by the rest of the request's path. The path
// goes through URL.Opaque, which the Transport writes to the request line
// as it is: the bytes after the prefix arrive exactly as the client sent
// them.
func (pr *proxyRequest) pointAt(u *url.URL, t *routeTarget) {
	u.Scheme = t.scheme
	u.Host = t.host
	path := t.rawPath + pr.rest
	if strings.HasPrefix(path, "//") {
		// An Opaque starting with "//" would be sent in absolute form with
		// whatever follows as its authority; Path keeps it a plain path.
		// net/url sends RawPath only if it is a valid encoding of Path, and
		// re-escapes Path otherwise, which would turn a received "%2F" into
		// "/" (found by FuzzRouteUpstream). rawPathOf makes it valid by
		// encoding the few bytes net/url will not send raw (`"`, `{`,
		// non-ASCII, ...) and keeps every escape as received.
		raw := rawPathOf(path)
		p, err := url.PathUnescape(raw)
		if err != nil {
			// Cannot happen: net/http refused invalid escapes.
			p = t.path + strings.TrimPrefix(pr.in.URL.Path, pr.route.prefix)
		}
		u.Opaque, u.Path, u.RawPath = "", p, raw
		return
	}
	if path == "" {
		path = "/"
	}
	u.Opaque, u.Path, u.RawPath = path, "", ""
}

// rawPathOf returns the escaped path p with the bytes that net/url does not
// accept raw in URL.RawPath (see url.URL.EscapedPath) percent-encoded; its
// escapes, and every byte RFC 3986 allows in a path, are kept.
func rawPathOf(p string) string {
	const hex = "0123456789ABCDEF"
	var b []byte // nil until a byte needs encoding
	for i := 0; i < len(p); i++ {
		c := p[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~!$&'()*+,;=:@[]/%", c) >= 0 {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(p)+8), p[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	if b == nil {
		return p
	}
	return string(b)
}

// modifyResponse runs once the upstream's headers are in: it picks the
// copy buffer and the flushing, and wraps the body to count it.
func (pr *proxyRequest) modifyResponse(res *http.Response) error {
	pr.rec.Status = res.StatusCode
	h := res.Header
	pr.streaming = isEventStream(h["Content-Type"])
	if (pr.streaming || res.StatusCode == http.StatusSwitchingProtocols) && !pr.inStreams {
		pr.inStreams = true
		pr.p.enterStream()
	}
	// ReverseProxy flushes SSE and unknown-length bodies itself (its
	// flushInterval); every other body, an NDJSON stream sent with a
	// Content-Length included, is flushed per write here.
	pr.w.flushEach = res.ContentLength >= 0 && !isSSE(h["Content-Type"])
	pr.w.bodyAtHand = res.ContentLength == 0 || pr.up != nil && pr.up.bodyAtHand()
	// A 101's body is the upgraded connection: ReverseProxy needs it to
	// stay an io.ReadWriteCloser to tunnel a WebSocket, so it is not wrapped.
	if res.Body != nil && res.Body != http.NoBody && res.StatusCode != http.StatusSwitchingProtocols {
		pr.body.reset(res)
		res.Body = &pr.body
		if pr.canServeHere(res) {
			if pr.reqBody == nil || pr.reqBody.drained.Load() {
				// serve writes it once ReverseProxy has returned (see
				// here). ReverseProxy closes res.Body on this error, and
				// fails the request body's reads once it returns: the
				// request body must have been sent.
				pr.here = res
				res.Body = http.NoBody
				return errServedHere
			}
			return pr.serveHere(res)
		}
		if pr.canHandOff(res) && pr.handOff(res) {
			// ReverseProxy closes res.Body on this error; the stream
			// goroutine reads the real one (pr.body).
			res.Body = http.NoBody
			return errHandedOff
		}
	}
	return nil
}

// Get implements httputil.BufferPool: a small buffer for event streams,
// which idle most of their life, a large one for bulk bodies. ReverseProxy
// calls it once per response, after modifyResponse.
func (pr *proxyRequest) Get() []byte {
	if pr.streaming {
		pr.buf = pr.p.streamBufs.Get().(*[]byte)
	} else {
		pr.buf = pr.p.bulkBufs.Get().(*[]byte)
	}
	return *pr.buf
}

// Put implements httputil.BufferPool. Pools hold *[]byte so that putting a
// buffer back does not allocate.
func (pr *proxyRequest) Put([]byte) {
	if len(*pr.buf) == streamBufferSize {
		pr.p.streamBufs.Put(pr.buf)
	} else {
		pr.p.bulkBufs.Put(pr.buf)
	}
	pr.buf = nil
}

// handleError answers a request that got no upstream response.
func (pr *proxyRequest) handleError(rw http.ResponseWriter, req *http.Request, err error) {
	if err == errHandedOff {
		return
	}
	if pr.in.Context().Err() != nil {
		// The client left first; there is nobody to answer. 499 as nginx
		// and Caddy count it, apart from upstream errors; it is a figure
		// for the stats, never a status line: a client that only
		// half-closed would read it. Aborting the handler makes net/http
		// close the connection with nothing written, and serve's deferred
		// finish records the request, once.
		pr.rec.Status, pr.rec.ProxyErr = 499, "client_closed"
		panic(http.ErrAbortHandler)
	}
	if pr.reqBody != nil && pr.reqBody.failed.Load() {
		// The client is still there but its chunked body broke its own
		// framing; the Transport reports that as its own failure.
		pr.rec.Status, pr.rec.ProxyErr = http.StatusBadRequest, "bad_request_body"
		rw.Header().Set("Connection", "close")
		writeError(rw, http.StatusBadRequest, "bad_request_body", "the request body could not be read: its chunked encoding is malformed or it was cut")
		return
	}
	status, code, msg := classifyUpstreamError(err)
	pr.rec.Status, pr.rec.ProxyErr = status, code
	host := pr.target.host
	if pr.p.logger.Enabled(req.Context(), slog.LevelWarn) {
		pr.p.logger.LogAttrs(req.Context(), slog.LevelWarn, "upstream error",
			slog.String("prefix", pr.route.prefix), slog.String("upstream", host),
			slog.String("code", code), slog.String("error", sanitizeError(err)))
	}
	writeError(rw, status, code, fmt.Sprintf("upstream %s: %s", host, msg))
}

// classifyUpstreamError maps a RoundTrip error to the proxy's status, code
// and a short message for the client.
func classifyUpstreamError(err error) (status int, code, msg string) {
	var ne net.Error
	switch {
	case errors.Is(err, errUpstreamIdle):
		return http.StatusGatewayTimeout, "upstream_timeout", "sent nothing for the mapping's stream_idle_timeout"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout(),
		strings.Contains(err.Error(), "timeout awaiting response headers"):
		return http.StatusGatewayTimeout, "upstream_timeout", "timed out"
	case isProtocolError(err):
		return http.StatusBadGateway, "upstream_bad_response", "sent a malformed response"
	}
	reason := "unreachable"
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		reason = "unreachable (connection refused)"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		reason = "closed the connection before answering"
	case errors.As(err, &dnsErr):
		reason = "unreachable (host name not found)"
	case errors.As(err, &certErr):
		reason = "unreachable (TLS certificate not trusted)"
	}
	return http.StatusBadGateway, "upstream_unreachable", reason
}

// protocolErrors are parts of the messages net/http gives for a response
// it could not parse (it has no typed errors for them): a bad status line
// or header line, a bad or repeated Content-Length, an unknown
// Transfer-Encoding, a 101 to a request that asked for no upgrade.
var protocolErrors = []string{
	"malformed", "invalid", "bad Content-Length", "multiple Content-Length",
	"transfer encoding", "tried to switch", "headers exceeded", "bad trailer",
}

// isProtocolError reports whether err says the upstream answered with
// something that is not a valid HTTP response.
func isProtocolError(err error) bool {
	msg := err.Error()
	for _, p := range protocolErrors {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// sanitizeError returns err's text for logs. Transport errors carry no URL
// (ReverseProxy calls RoundTrip, not Client.Do), but a *url.Error-like
// message could hold a query with an API key (Gemini's ?key=), so anything
// after a '?' is cut.
func sanitizeError(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[:i] + "?…"
	}
	return s
}

// upstreamFailure reports whether code, a requestRecord's ProxyErr, says
// the upstream failed (SPEC §9 counts it in the target's errors).
func upstreamFailure(code string) bool {
	switch code {
	case "upstream_unreachable", "upstream_timeout", "upstream_bad_response", "upstream_idle_timeout":
		return true
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
