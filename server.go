package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
)

// Server is one apiproxy instance: the router, the proxy, the route
// snapshot and the background loops that keep it fresh. Build it with
// newServer, start its loops with Start, stop them with Close.
type Server struct {
	cfg    Config
	logger *slog.Logger
	store  Store
	routes atomic.Pointer[routeTable]
	keys   atomic.Pointer[keyTable] // the proxy keys (keys.go); nil: none known yet
	// limiterLoop renews the shared limiter's leases and watches Redis
	// (limiter_redis.go); nil for the local limiter.
	limiterLoop func(context.Context)
	proxy       *proxy
	engine      *gin.Engine
	started     time.Time

	reloadMu sync.Mutex // serialises route reloads so an older read never wins
	cancel   context.CancelFunc
	wg       sync.WaitGroup // background loops

	// reloads counts the route reloads that succeeded (tests count them).
	// reloadRetry is signalled when the reload after a local write failed,
	// for watchMappings to retry it.
	reloads     atomic.Int64
	reloadRetry chan struct{}

	// base is the context of every request the Server's http.Server
	// (httpServer) serves, and of handed-off streams (stream.go):
	// cutRequests cancels it, which ends what http.Server.Shutdown cannot,
	// hijacked connections (WebSocket tunnels, streams), at the end of a
	// shutdown. recycler gives the connections of finished handed-off
	// streams back to that http.Server, which serves on it too; nil when
	// STREAM_HANDOFF is off.
	base        context.Context
	cutRequests context.CancelFunc
	recycler    *connRecycler
	// rawIO: the http.Server serves connections that do their I/O with
	// raw system calls (RAW_IO on Linux; listener, rawio.go).
	rawIO bool

	// Admin API (admin.go). adminTokenHash is the SHA-256 of the admin
	// token, nil until it could be read from the store.
	adminTokenHash atomic.Pointer[[sha256.Size]byte]
	adminTokenMu   sync.Mutex // serialises late token resolution
	authFailures   *authLimiter
	// statsTokenHash is the SHA-256 of STATS_TOKEN, nil when it is unset
	// and /stats and /metrics are public (stats_token.go). Never changes.
	statsTokenHash *[sha256.Size]byte

	// self is where this instance receives requests (cfg.ListenAddr, or
	// the bound address when that asks for any port): a mapping pointing
	// there is a loop, refused by the admin API and skipped by routing.
	self selfAddrs

	stats   *Stats       // stats.go; records only when cfg.EnableStats
	reqlog  *serverLog   // the request log (requestlog_server.go)
	metrics http.Handler // GET /metrics (metrics.go)
}

// offlineStore is a Store that keeps a local copy of the mappings and the
// proxy keys for when it cannot be reached: the Redis store's snapshot
// file. offlineMappings returns the mappings sorted by prefix in a slice
// the caller owns, when they were read, and false if there is no copy;
// offlineKeys the keys sorted by id, and false if there is no copy.
type offlineStore interface {
	offlineMappings() (ms []Mapping, readAt time.Time, ok bool)
	offlineKeys() (ks []ProxyKey, ok bool)
}

// watchingStore is a Store whose changes come from outside this process
// and must be listened for: watch runs until ctx is done, signalling
// Changes (the Redis store's Pub/Sub listener).
type watchingStore interface {
	watch(ctx context.Context)
}

// newServer builds a Server on store and loads the first route snapshot.
// transport is the upstream RoundTripper; nil means newTransport(cfg).
// With cfg.StreamHandoff it also starts the watcher of handed-off streams
// (proxy.go), and makes the recycler their connections come back through:
// Close stops both, so a Server that newServer returned must be closed.
func newServer(cfg Config, logger *slog.Logger, store Store, transport http.RoundTripper) (*Server, error) {
	if transport == nil {
		transport = newTransport(cfg)
	}
	s := &Server{cfg: cfg, logger: logger, store: store, started: time.Now(),
		authFailures: newAuthLimiter(store, logger), self: newSelfAddrs(cfg.ListenAddr, net.InterfaceAddrs),
		statsTokenHash: newStatsTokenHash(cfg.StatsToken)}
	s.reloadRetry = make(chan struct{}, 1)
	s.routes.Store(&routeTable{byPrefix: map[string]*route{}})
	s.proxy = newProxy(cfg, logger, transport, &s.routes)
	s.proxy.keys = &s.keys
	// Limits (SPEC §11): shared through Redis, or this instance's own.
	if rs, ok := store.(*redisStore); ok {
		rl := newRedisLimiter(rs.client, rs.keyPrefix, rs.instance, logger)
		s.proxy.limiter, s.limiterLoop = rl, rl.run
	} else {
		s.proxy.limiter = newLocalLimiter()
	}
	if cs, ok := store.(cooldownSharingStore); ok {
		s.proxy.states.share = cs.shareCooldown
		cs.onCooldown(s.proxy.states.apply)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.reloadRoutes(ctx); err != nil {
		// A store that is down at start (Redis) still leaves us its last
		// known mappings, so the proxy starts and routes; watch catches up
		// when the store is back.
		off, ok := store.(offlineStore)
		if !ok || !errors.Is(err, errStoreUnavailable) {
			return nil, err
		}
		// The keys first, as in reloadRoutes. Keys known before the
		// outage keep working; none is known without a snapshot (SPEC
		// §10: fail closed).
		ks, _ := off.offlineKeys()
		s.keys.Store(newKeyTable(ks))
		m, readAt, ok := off.offlineMappings()
		t, _ := newRouteTable(m, s.self, s.proxy.states)
		s.routes.Store(t)
		if ok {
			logger.Warn("store unreachable at start; routing with the local snapshot until it is back",
				"mappings", len(t.byPrefix), "keys", len(ks), "snapshot_time", readAt.UTC().Format(time.RFC3339), "error", err)
		} else {
			logger.Warn("store unreachable at start and no local snapshot; no mappings until it is back", "error", err)
		}
	}
	if _, err := s.resolveAdminToken(ctx); err != nil {
		// The admin API answers 503 and retries on its next call.
		logger.Warn("admin token not available yet; the admin API answers 503 until the store is reachable", "error", err)
	}
	s.stats = newStats(statsConfig{enabled: cfg.EnableStats, store: store, logger: logger,
		active: s.proxy.active.Load, routes: &s.routes, keys: &s.keys, dataDir: cfg.DataDir})
	var err error
	if s.reqlog, err = newServerLog(cfg, store, logger); err != nil {
		return nil, err
	}
	if s.reqlog.store != nil {
		s.stats.recentErrors = s.recentErrors
	}
	switch {
	case s.reqlog.on():
		s.proxy.observe = s.observe
	case cfg.EnableStats:
		s.proxy.observe = s.stats.record
	}
	s.metrics = newMetricsHandler(logger, s.stats, s.proxy.active.Load, store, s.reqlog.dropped)
	s.engine = s.newRouter()
	// Last, once nothing can fail: what Close must stop.
	s.base, s.cutRequests = context.WithCancel(context.Background())
	s.proxy.base = s.base
	s.rawIO = cfg.RawIO && canRawIO
	if cfg.StreamHandoff {
		s.recycler = newConnRecycler()
		s.proxy.recycle = s.recycler
		s.proxy.startWatcher()
	}
	return s, nil
}

// newRouter declares every route in one place. Anything that is not one of
// the server's own routes falls through to the proxy.
func (s *Server) newRouter() *gin.Engine {
	gin.SetMode(gin.ReleaseMode) // Gin's mode is process-wide; release mode only silences its debug output
	e := gin.New()
	// Proxied paths must reach the upstream as sent: no redirects to a
	// "fixed" path, no 405 guessing.
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	e.HandleMethodNotAllowed = false
	e.Use(s.recovery)

	e.GET("/healthz", s.handleHealthz)
	e.HEAD("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
	e.GET("/robots.txt", s.handleRobots)
	// Public unless STATS_TOKEN is set (stats_token.go); the dashboard
	// page below stays public either way: it holds no figures itself.
	e.GET("/stats", s.requireStatsToken, s.handleStats)
	e.GET("/metrics", s.requireStatsToken, s.handleMetrics)

	// Web pages and their embedded assets (static.go).
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		e.Handle(m, "/", s.handleIndex)
		e.Handle(m, "/index.html", s.handleIndex)
		e.Handle(m, "/admin", s.handleAdminPage)
		e.Handle(m, "/static/*filepath", s.handleStatic)
		e.Handle(m, "/favicon.ico", s.handleFavicon)
	}

	// Admin REST API (SPEC §6). The catch-all holds nested prefixes:
	// /api/mappings/a/b and /api/mappings/a%2Fb both name /a/b.
	// refuseCrossOrigin runs first: a call from another site's page is
	// refused before the token is checked or a failure counted.
	api := e.Group("/api/mappings", s.refuseCrossOrigin, s.requireAdmin)
	api.GET("", s.handleListMappings)
	api.POST("", s.handleCreateMapping)
	api.GET("/*prefix", s.handleGetMapping)
	api.PUT("/*prefix", s.handleUpdateMapping)
	api.DELETE("/*prefix", s.handleDeleteMapping)
	for _, m := range []string{http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		api.Handle(m, "", methodNotAllowed("GET, POST"))
	}
	api.OPTIONS("/*prefix", methodNotAllowed("GET, PUT, DELETE"))
	for _, m := range []string{http.MethodPost, http.MethodPatch} {
		api.Handle(m, "/*prefix", methodNotAllowed("GET, PUT, DELETE"))
	}

	// The request log (SPEC §12, requestlog_server.go), behind the same
	// guards.
	e.GET("/api/requests", s.refuseCrossOrigin, s.requireAdmin, s.handleRequests)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		e.Handle(m, "/api/requests", s.refuseCrossOrigin, s.requireAdmin, methodNotAllowed("GET"))
	}

	// Proxy keys (SPEC §10, keys_admin.go), behind the same guards.
	keys := e.Group("/api/keys", s.refuseCrossOrigin, s.requireAdmin)
	keys.GET("", s.handleListKeys)
	keys.POST("", s.handleCreateKey)
	keys.GET("/:id", s.handleGetKey)
	keys.PATCH("/:id", s.handleUpdateKey)
	keys.DELETE("/:id", s.handleDeleteKey)
	for _, m := range []string{http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		keys.Handle(m, "", methodNotAllowed("GET, POST"))
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodOptions} {
		keys.Handle(m, "/:id", methodNotAllowed("GET, PATCH, DELETE"))
	}

	e.NoRoute(s.handleUnrouted)
	return e
}

// ServeHTTP makes the Server the http.Handler of the listener. A request
// under a mapped prefix goes straight to the proxy; Gin routes the rest.
// No mapping can shadow a route of the server's own (validatePrefix refuses
// the reserved prefixes), so this is what a Gin NoRoute handler would do,
// minus Gin's cost on the hot path: Gin's frames would deepen the stack
// every held stream keeps (the response header write is deep, and a
// goroutine stack grows by doubling), and its writer wrapper costs CPU on
// every request.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if rt, rest := s.proxy.lookup(req); rt != nil {
		s.proxy.serve(w, req, rt, rest)
		return
	}
	s.engine.ServeHTTP(w, req)
}

// handleUnrouted answers what neither the server nor a mapping routes.
func (s *Server) handleUnrouted(c *gin.Context) {
	s.proxy.handleUnrouted(c.Writer, c.Request)
}

func (s *Server) handleHealthz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}

// handleReadyz answers 200 while the store is reachable and 503 with the
// reason otherwise; the proxy keeps routing from its snapshot either way.
// A store that is reachable but whose last write its disk refused
// (writeHealthStore) is still ready, since routing needs no write, and
// says so: 200 {"status":"degraded","reason":"store not writable: …"}.
func (s *Server) handleReadyz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.logger.Warn("readiness check failed", "error", err)
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "degraded", "reason": "store unreachable; proxying continues with the last known mappings"})
		return
	}
	n := len(s.routes.Load().byPrefix)
	if w, ok := s.store.(writeHealthStore); ok {
		if err := w.writeFailure(); err != nil {
			c.JSON(http.StatusOK, gin.H{"status": "degraded", "mappings": n,
				"reason": "store not writable: " + notWritableReason(err) + "; admin changes and stats cannot be saved, proxying continues"})
			return
		}
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "mappings": n})
}

func (s *Server) handleRobots(c *gin.Context) {
	c.Data(http.StatusOK, "text/plain; charset=utf-8", []byte("User-agent: *\nDisallow: /\n"))
}

// recovery turns a panic in one of the server's own handlers into a 500
// JSON answer. http.ErrAbortHandler is passed on: it is how a handler asks
// net/http to break the client connection (ReverseProxy uses it for a body
// cut mid-way; the proxy itself runs outside Gin, see ServeHTTP), and Gin's
// own Recovery would swallow it, which is why that one is not used.
func (s *Server) recovery(c *gin.Context) {
	defer func() {
		rec := recover()
		if rec == nil {
			return
		}
		if rec == http.ErrAbortHandler {
			panic(rec)
		}
		s.logger.Error("handler panic", "panic", fmt.Sprint(rec), "path", c.Request.URL.Path, "stack", string(debug.Stack()))
		if !c.Writer.Written() {
			writeError(c.Writer, http.StatusInternalServerError, "internal_error", "internal error")
		}
		c.Abort()
	}()
	c.Next()
}

// reloadRoutes reads the mappings and the proxy keys from the store and
// publishes a new key table and route snapshot. On a store error the
// previous ones stay in place.
func (s *Server) reloadRoutes(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	m, err := s.store.Mappings(ctx)
	if err != nil {
		return fmt.Errorf("load mappings: %w", err)
	}
	// The keys first: a keys mapping that routes before its keys are
	// known refuses every caller, never admits one unchecked.
	keys, err := s.store.Keys(ctx)
	if err != nil {
		return fmt.Errorf("load proxy keys: %w", err)
	}
	s.keys.Store(newKeyTable(keys))
	t, skipped := newRouteTable(m, s.self, s.proxy.states)
	if len(skipped) > 0 {
		s.logger.Warn("ignoring invalid stored mappings", "prefixes", skipped)
		for _, mm := range m {
			if mm.unreadable != "" {
				s.logger.Warn("stored mapping cannot be read", "prefix", mm.Prefix, "reason", mm.unreadable)
			}
		}
	}
	s.routes.Store(t)
	s.reloads.Add(1)
	return nil
}

// Start runs the background loops until Close.
func (s *Server) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchMappings(ctx)
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.stats.run(ctx)
	}()
	if w, ok := s.store.(watchingStore); ok {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			w.watch(ctx)
		}()
	}
	if s.limiterLoop != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.limiterLoop(ctx)
		}()
	}
	s.wg.Go(func() { s.reqlog.run(ctx) })
}

// reloadRetryMax bounds the wait between retries of a failed route reload.
const reloadRetryMax = 30 * time.Second

// watchMappings swaps in a fresh route snapshot whenever the store reports
// a change, or an admin write could not reload (reloadAfterWrite). A
// reload that fails is retried, after 1 s doubling up to reloadRetryMax,
// until one succeeds: the signal that caused it (a Redis reconnect, say)
// may not come again, and go-redis keeps failing fast for a moment after
// Redis is back.
func (s *Server) watchMappings(ctx context.Context) {
	changes := s.store.Changes()
	retry := time.NewTimer(reloadRetryMax)
	retry.Stop()
	defer retry.Stop()
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-s.reloadRetry:
		case <-retry.C:
		}
		if err := s.reloadRoutes(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, time.Second), reloadRetryMax)
			s.logger.Warn("route reload failed; keeping the last mappings", "error", err, "retry_in", backoff.String())
			retry.Reset(backoff)
			continue
		}
		backoff = 0
		retry.Stop()
	}
}

// Close stops the background loops, cuts the requests and handed-off
// streams still running (cutRequests), stops the stream hand-off's watcher
// and recycler, and closes the store. It does not stop the HTTP server:
// run does that first, so that requests drain.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.cutRequests()
	if s.recycler != nil {
		s.recycler.Close()
	}
	s.proxy.close()
	s.stats.close() // the last counts, after the HTTP server drained
	s.reqlog.close()
	return s.store.Close()
}

// openStore opens the store Config selects: Redis when API_PROXY_REDIS_URL
// is set, else the embedded bbolt store under DATA_DIR.
func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (Store, error) {
	var store Store
	var err error
	if cfg.RedisURL != "" {
		store, err = openRedisStore(ctx, cfg, logger)
	} else {
		store, err = openBoltStore(cfg.DataDir)
	}
	if err != nil {
		return nil, err
	}
	return withSecrets(store, cfg)
}

// withSecrets gives store the box of cfg's SECRET_KEY (validated by
// loadConfig).
func withSecrets(store Store, cfg Config) (Store, error) {
	box, err := newSecretBox(cfg.SecretKey)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("SECRET_KEY: %w", err)
	}
	if ss, ok := store.(secretStore); ok {
		ss.useSecrets(box)
	}
	return store, nil
}

// run serves until ctx is cancelled, then shuts down gracefully: stop
// accepting, let in-flight requests (streams) drain for up to
// SHUTDOWN_TIMEOUT, cut what remains, stop the loops, close the store.
// ready, if not nil, is called with the bound address once serving.
//
// Runtime tuning (RUNTIME_TUNING, runtime.go) starts and stops here, not
// in the Server: GOMAXPROCS and GOGC are the process's, and tests run
// several Servers in one process.
func run(ctx context.Context, cfg Config, logger *slog.Logger, ready func(net.Addr)) error {
	store, err := openStore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	if cfg.SecretKey == "" {
		logger.Warn("SECRET_KEY is not set: the upstream keys of mappings are stored as given, in clear; set SECRET_KEY (32 characters or more) to store them encrypted")
	}
	s, err := newServer(cfg, logger, store, nil)
	if err != nil {
		store.Close()
		return err
	}
	// Listen before serving so that a busy port fails here, at start.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		s.Close()
		return fmt.Errorf("listen on %s: %w", cfg.ListenAddr, err)
	}
	if s.self.port == "" {
		// Any port was asked for: the loop check needs the one bound.
		s.self = newSelfAddrs(ln.Addr().String(), net.InterfaceAddrs)
	}
	s.Start()
	// logrotate renames the REQUEST_LOG file and sends SIGHUP: new lines
	// go to a new file at the path. Without a file it is ignored: a
	// SIGHUP (a closed terminal, a postrotate left behind) must not end
	// the process without its graceful stop.
	stopHUP := s.reqlog.reopenOnSIGHUP()
	defer stopHUP()
	if cfg.RuntimeTuning || cfg.MemoryRelease {
		stopTuning := tuneRuntime(cfg.RuntimeTuning && cfg.TuneProcs, cfg.RuntimeTuning && cfg.TuneGC,
			cfg.MemoryRelease, s.proxy)
		defer stopTuning()
	}
	srv := s.httpServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(s.listener(ln)) }()
	if s.recycler != nil {
		// Shutdown closes it with the listener.
		go srv.Serve(s.recycler)
	}
	logger.Info("apiproxy listening", "addr", ln.Addr().String(), "store", storeKind(cfg), "mappings", len(s.routes.Load().byPrefix))
	if ready != nil {
		ready(ln.Addr())
	}

	select {
	case err := <-serveErr:
		s.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.shutdown(srv)
	if err := s.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// shutdown stops srv, which serves s: it stops accepting, lets in-flight
// requests drain for up to SHUTDOWN_TIMEOUT, then cuts what remains and
// waits a moment for it to end, so that every request is in the final
// stats flush (Close).
func (s *Server) shutdown(srv *http.Server) {
	logger := s.logger
	logger.Info("shutting down", "drain_timeout", s.cfg.ShutdownTimeout.String(), "active_requests", s.proxy.active.Load())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("drain timed out; closing remaining connections", "active_requests", s.proxy.active.Load())
		s.proxy.cutting.Store(true)
		srv.Close()
	}
	// Shutdown returns without waiting for hijacked connections (WebSocket
	// tunnels, handed-off streams), and Close before the handlers it cut
	// have returned. Wait for the proxied requests still running until the
	// drain time is up, then cancel them and give them a moment to return.
	if s.waitProxyIdle(shutdownCtx) {
		return
	}
	s.proxy.cutting.Store(true)
	s.cutRequests()
	cutCtx, cancelCut := context.WithTimeout(context.Background(), shutdownCutWait)
	defer cancelCut()
	if !s.waitProxyIdle(cutCtx) {
		logger.Warn("proxied requests still running after the shutdown; they are not in the stats", "active_requests", s.proxy.active.Load())
	}
}

// shutdownCutWait bounds how long run waits, after cancelling the requests
// that outlived SHUTDOWN_TIMEOUT, for their handlers to return.
const shutdownCutWait = 5 * time.Second

// waitProxyIdle waits until no proxied request is in flight (each one
// observed by stats) and reports whether that happened before ctx ended.
func (s *Server) waitProxyIdle(ctx context.Context) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.proxy.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return s.proxy.active.Load() == 0
		case <-tick.C:
		}
	}
	return true
}

// newHTTPServer returns the http.Server that run serves h with. A client
// that takes longer than ReadHeaderTimeout to send its request head
// (slowloris) has its connection closed; one whose head is over
// MaxHeaderBytes gets 431. There is no ReadTimeout or WriteTimeout: a
// request body may upload and a generation may stream for an hour.
func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          log.New(newServerErrorLog(logger), "", 0),
	}
}

// httpServer returns the http.Server that serves s: newHTTPServer's, with
// every request's context derived from s.base, so that cutRequests ends
// what Shutdown cannot (ReverseProxy closes a WebSocket tunnel when its
// request is cancelled). Serve it on s.recycler too when that is not nil.
func (s *Server) httpServer() *http.Server {
	srv := newHTTPServer(s, s.logger)
	srv.BaseContext = func(net.Listener) context.Context { return s.base }
	if s.proxy.streamHandoff {
		// A stream written through net/http writes its events to the
		// socket itself (stream_here.go).
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, clientConnKey{}, c)
		}
	}
	return srv
}

func storeKind(cfg Config) string {
	if cfg.RedisURL != "" {
		return "redis"
	}
	return "embedded"
}
