package main

import (
	"context"
	"errors"
	"fmt"
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
	cfg     Config
	logger  *slog.Logger
	store   Store
	routes  atomic.Pointer[routeTable]
	proxy   *proxy
	engine  *gin.Engine
	started time.Time

	reloadMu sync.Mutex // serialises route reloads so an older read never wins
	cancel   context.CancelFunc
	wg       sync.WaitGroup // background loops
}

// newServer builds a Server on store and loads the first route snapshot.
// transport is the upstream RoundTripper; nil means newTransport(cfg).
func newServer(cfg Config, logger *slog.Logger, store Store, transport http.RoundTripper) (*Server, error) {
	if transport == nil {
		transport = newTransport(cfg)
	}
	s := &Server{cfg: cfg, logger: logger, store: store, started: time.Now()}
	s.routes.Store(&routeTable{byPrefix: map[string]*route{}})
	s.proxy = newProxy(cfg, logger, transport, &s.routes)
	if err := s.reloadRoutes(context.Background()); err != nil {
		return nil, err
	}
	s.engine = s.newRouter()
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

	e.NoRoute(s.handleProxy)
	return e
}

// ServeHTTP makes the Server the http.Handler of the listener.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	s.engine.ServeHTTP(w, req)
}

func (s *Server) handleProxy(c *gin.Context) {
	raw := http.ResponseWriter(c.Writer)
	if u, ok := c.Writer.(interface{ Unwrap() http.ResponseWriter }); ok {
		raw = u.Unwrap()
	}
	s.proxy.serve(c.Writer, raw, c.Request)
}

func (s *Server) handleHealthz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}

// handleReadyz answers 200 while the store is reachable and 503 with the
// reason otherwise; the proxy keeps routing from its snapshot either way.
func (s *Server) handleReadyz(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.logger.Warn("readiness check failed", "error", err)
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "degraded", "reason": "store unreachable; proxying continues with the last known mappings"})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "mappings": len(s.routes.Load().byPrefix)})
}

func (s *Server) handleRobots(c *gin.Context) {
	c.Data(http.StatusOK, "text/plain; charset=utf-8", []byte("User-agent: *\nDisallow: /\n"))
}

// recovery turns a handler panic into a 500 JSON answer, except
// http.ErrAbortHandler: ReverseProxy panics with it to abort a response
// whose upstream failed mid-body, and net/http must see it to break the
// client connection instead of ending the body cleanly. Gin's own Recovery
// swallows it, so it is not used.
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

// reloadRoutes reads the mappings from the store and publishes a new route
// snapshot. On a store error the previous snapshot stays in place.
func (s *Server) reloadRoutes(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	m, err := s.store.Mappings(ctx)
	if err != nil {
		return fmt.Errorf("load mappings: %w", err)
	}
	t, skipped := newRouteTable(m)
	if len(skipped) > 0 {
		s.logger.Warn("ignoring invalid stored mappings", "prefixes", skipped)
	}
	s.routes.Store(t)
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
}

// watchMappings swaps in a fresh route snapshot whenever the store reports
// a change.
func (s *Server) watchMappings(ctx context.Context) {
	changes := s.store.Changes()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			if err := s.reloadRoutes(ctx); err != nil && ctx.Err() == nil {
				s.logger.Warn("route reload failed; keeping the last mappings", "error", err)
			}
		}
	}
}

// Close stops the background loops and closes the store. It does not stop
// the HTTP server: run does that first, so that requests drain.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	return s.store.Close()
}

// openStore opens the store Config selects: Redis when API_PROXY_REDIS_URL
// is set, else the embedded bbolt store under DATA_DIR.
func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (Store, error) {
	if cfg.RedisURL != "" {
		return nil, errors.New("API_PROXY_REDIS_URL is set but the Redis store is not available in this build")
	}
	return openBoltStore(cfg.DataDir)
}

// run serves until ctx is cancelled, then shuts down gracefully: stop
// accepting, let in-flight requests (streams) drain for up to
// SHUTDOWN_TIMEOUT, cut what remains, stop the loops, close the store.
// ready, if not nil, is called with the bound address once serving.
func run(ctx context.Context, cfg Config, logger *slog.Logger, ready func(net.Addr)) error {
	store, err := openStore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	s, err := newServer(cfg, logger, store, nil)
	if err != nil {
		store.Close()
		return err
	}
	// Listen before serving so that a busy port fails here, at start.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		store.Close()
		return fmt.Errorf("listen on %s: %w", cfg.ListenAddr, err)
	}
	s.Start()
	srv := &http.Server{
		Handler: s,
		// Slow-header (slowloris) protection. No WriteTimeout or
		// ReadTimeout: a generation may stream for an hour.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
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
	logger.Info("shutting down", "drain_timeout", cfg.ShutdownTimeout.String(), "active_requests", s.proxy.active.Load())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("drain timed out; closing remaining connections", "active_requests", s.proxy.active.Load())
		srv.Close()
	}
	if err := s.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	logger.Info("stopped")
	return nil
}

func storeKind(cfg Config) string {
	if cfg.RedisURL != "" {
		return "redis"
	}
	return "embedded"
}
