package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Config is everything apiproxy reads from its environment and flags. It is
// built once by loadConfig and never changes afterwards.
type Config struct {
	ListenAddr string // LISTEN_ADDR, default ":" + PORT
	DataDir    string // DATA_DIR, default ./data
	RedisURL   string // API_PROXY_REDIS_URL; empty selects the embedded store
	AdminToken string // ADMIN_TOKEN; empty: generated once and kept in the store
	// StatsToken is STATS_TOKEN: when set (at least 16 characters), GET
	// /stats and /metrics need it or the admin token as a bearer token;
	// empty, they are public (stats_token.go).
	StatsToken string
	// SecretKey is SECRET_KEY: when set (at least 32 characters), the
	// upstream keys of the mappings are stored sealed (secrets.go).
	SecretKey       string
	EnableStats     bool          // ENABLE_STATS, default true
	CORSOrigins     []string      // CORS_ALLOW_ORIGINS, default ["*"]
	LogFormat       string        // LOG_FORMAT: text or json
	LogLevel        string        // LOG_LEVEL: debug, info, warn, error
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 30s

	// TrustedProxies is TRUSTED_PROXIES, default none: the balancers in
	// front whose X-Forwarded-For names the client (clientip.go).
	TrustedProxies trustedProxies
	// MaxInFlight is MAX_IN_FLIGHT, default 10000: proxied requests in
	// flight beyond which new ones get 503 overloaded; 0 means no cap.
	MaxInFlight int64

	// Upstream transport. Zero means no limit for the two timeouts.
	DialTimeout           time.Duration // UPSTREAM_DIAL_TIMEOUT, default 15s
	TLSHandshakeTimeout   time.Duration // UPSTREAM_TLS_TIMEOUT, default 10s
	ResponseHeaderTimeout time.Duration // UPSTREAM_RESPONSE_HEADER_TIMEOUT, default 0 (none)
	UpstreamTimeout       time.Duration // UPSTREAM_TIMEOUT, overall per request, default 0 (none)
	// RetryBodyLimit is RETRY_BODY_LIMIT, default 8 MiB: request bodies up
	// to this size are kept while a request to a mapping with several
	// targets is tried, so that it can be sent again (failover.go); 0
	// keeps none, and only requests without a body fail over.
	RetryBodyLimit int64
	// RequestLog is REQUEST_LOG, default "off": "stdout" or a file path
	// where every request record (requestlog.go) is also written as one
	// JSON line. The store keeps the log either way.
	RequestLog string

	// StreamHandoff is STREAM_HANDOFF, default on: the proxy writes event
	// streams to HTTP/1.1 clients itself (stream.go, upconn.go). Off, every
	// response goes through httputil.ReverseProxy alone.
	StreamHandoff bool
	// StreamHandoffAfter is STREAM_HANDOFF_AFTER, default 2s: an event
	// stream is written through net/http for this long and handed off
	// only if it is still running then (stream_here.go); 0 hands every
	// stream off at once.
	StreamHandoffAfter time.Duration
	// RawIO is RAW_IO, default on: the sockets of client and upstream
	// connections are read and written with raw system calls (rawio.go).
	// Off, net.Conn's.
	RawIO bool

	// RuntimeTuning is RUNTIME_TUNING, default on: the serving process
	// tunes GOMAXPROCS and GOGC by load (runtime.go). Off, the Go
	// runtime's own defaults apply,
	// container-aware GOMAXPROCS included. When on, TuneProcs and TuneGC
	// say which tuner may run: each only while the operator left the
	// runtime's own variable unset.
	RuntimeTuning bool
	// MemoryRelease is MEMORY_RELEASE, default on: the serving process
	// returns free heap memory to the OS once it is quiet (runtime.go),
	// which keeps the RSS of many idle streams low after a burst. It sets
	// no runtime variable.
	MemoryRelease bool
	TuneProcs     bool // GOMAXPROCS unset
	TuneGC        bool // GOGC unset
}

// errShowVersion is what loadConfig returns for -version: the caller prints
// the build information instead of serving.
var errShowVersion = errors.New("version requested")

// loadConfig builds a Config from getenv (os.Getenv in production, a map in
// tests) and the command-line args, which win over the environment. Output
// of -h goes to out; -h returns flag.ErrHelp and -version errShowVersion,
// even when a variable of the environment is invalid.
func loadConfig(getenv func(string) string, args []string, out io.Writer) (Config, error) {
	cfg, envErr := configFromEnv(getenv)
	if err := cfg.parseFlags(args, out); err != nil {
		return cfg, err
	}
	if envErr != nil {
		return cfg, envErr
	}
	return cfg, cfg.validate()
}

// configFromEnv reads the Config's variables through getenv. A variable
// that cannot be parsed keeps its default; the first such error is
// returned with the Config.
func configFromEnv(getenv func(string) string) (Config, error) {
	e := envReader{getenv: getenv}
	cfg := Config{
		ListenAddr:  e.str("LISTEN_ADDR", ":"+e.str("PORT", "8000")),
		DataDir:     e.str("DATA_DIR", "./data"),
		RedisURL:    e.str("API_PROXY_REDIS_URL", ""),
		AdminToken:  e.str("ADMIN_TOKEN", ""),
		StatsToken:  e.str("STATS_TOKEN", ""),
		SecretKey:   e.str("SECRET_KEY", ""),
		EnableStats: e.boolean("ENABLE_STATS", true),
		CORSOrigins: splitOrigins(e.str("CORS_ALLOW_ORIGINS", "*")),
		LogFormat:   e.str("LOG_FORMAT", "text"),
		LogLevel:    e.str("LOG_LEVEL", "info"),

		ShutdownTimeout:       e.duration("SHUTDOWN_TIMEOUT", "30s", true),
		TrustedProxies:        e.trustedProxies("TRUSTED_PROXIES"),
		MaxInFlight:           e.count("MAX_IN_FLIGHT", 10000),
		DialTimeout:           e.duration("UPSTREAM_DIAL_TIMEOUT", "15s", false),
		TLSHandshakeTimeout:   e.duration("UPSTREAM_TLS_TIMEOUT", "10s", false),
		ResponseHeaderTimeout: e.duration("UPSTREAM_RESPONSE_HEADER_TIMEOUT", "0", true),
		UpstreamTimeout:       e.duration("UPSTREAM_TIMEOUT", "0", true),
		RetryBodyLimit:        e.size("RETRY_BODY_LIMIT", "8MiB"),
		RequestLog:            e.str("REQUEST_LOG", "off"),

		StreamHandoff:      e.onOff("STREAM_HANDOFF", true),
		StreamHandoffAfter: e.duration("STREAM_HANDOFF_AFTER", "2s", true),
		RawIO:              e.onOff("RAW_IO", true),
		RuntimeTuning:      e.onOff("RUNTIME_TUNING", true),
		MemoryRelease:      e.onOff("MEMORY_RELEASE", true),
		TuneProcs:          e.str("GOMAXPROCS", "") == "",
		TuneGC:             e.str("GOGC", "") == "",
	}
	return cfg, e.err
}

// envReader reads variables through getenv, trimmed; an empty one takes its
// default. It keeps the first error, naming the variable.
type envReader struct {
	getenv func(string) string
	err    error
}

func (e *envReader) str(key, def string) string {
	if v := strings.TrimSpace(e.getenv(key)); v != "" {
		return v
	}
	return def
}

func (e *envReader) fail(key string, err error) {
	if e.err == nil {
		e.err = fmt.Errorf("%s: %w", key, err)
	}
}

func (e *envReader) boolean(key string, def bool) bool {
	s := e.str(key, strconv.FormatBool(def))
	v, err := strconv.ParseBool(s)
	if err != nil {
		e.fail(key, fmt.Errorf("%q is not a boolean", s))
		return def
	}
	return v
}

func (e *envReader) onOff(key string, def bool) bool {
	v := onOff(def)
	if err := v.Set(e.str(key, v.String())); err != nil {
		e.fail(key, err)
		return def
	}
	return bool(v)
}

func (e *envReader) trustedProxies(key string) trustedProxies {
	var tp trustedProxies
	if err := tp.Set(e.str(key, "")); err != nil {
		e.fail(key, err)
	}
	return tp
}

// count reads a non-negative integer.
func (e *envReader) count(key string, def int64) int64 {
	s := e.str(key, strconv.FormatInt(def, 10))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		e.fail(key, fmt.Errorf("%q is not a whole number of 0 or more", s))
		return def
	}
	return n
}

// size reads a byte count: a whole number, or one followed by KiB, MiB or
// GiB.
func (e *envReader) size(key, def string) int64 {
	s := e.str(key, def)
	n, err := parseSize(s)
	if err != nil {
		e.fail(key, err)
		n, _ = parseSize(def)
	}
	return n
}

// parseSize parses a byte count such as "1048576", "512KiB" or "8MiB".
func parseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("%q is not a size: want a whole number of bytes, or one with KiB, MiB or GiB, up to 1024GiB", s)
	}
	return n * mult, nil
}

func (e *envReader) duration(key, def string, allowZero bool) time.Duration {
	d, err := parseDuration(e.str(key, def), allowZero)
	if err != nil {
		e.fail(key, err)
		d, _ = parseDuration(def, true)
	}
	return d
}

// parseFlags applies the command-line flags to cfg: they win over the
// environment. It returns flag.ErrHelp after printing the usage for -h,
// and errShowVersion for -version.
func (cfg *Config) parseFlags(args []string, out io.Writer) error {
	fs, port, version := cfg.newFlagSet(out)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		return errShowVersion
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	listenSet := false
	fs.Visit(func(f *flag.Flag) { listenSet = listenSet || f.Name == "listen" })
	if *port != "" && !listenSet {
		cfg.ListenAddr = ":" + *port
	}
	return nil
}

// newFlagSet declares the server's flags on cfg: each defaults to cfg's
// value (the environment's, or the built-in default) and its help names
// the variable it stands for. -h prints printUsage to out. port is -port,
// which parseFlags applies unless -listen is given; version is -version.
func (cfg *Config) newFlagSet(out io.Writer) (fs *flag.FlagSet, port *string, version *bool) {
	fs = flag.NewFlagSet("apiproxy", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { printUsage(out, fs) }
	fs.StringVar(&cfg.ListenAddr, "listen", cfg.ListenAddr, "listen `address` (LISTEN_ADDR)")
	port = fs.String("port", "", "listen `port` on all interfaces (PORT); -listen wins")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`dir`ectory of the embedded store and snapshots (DATA_DIR)")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "redis://[:pass@]host:port/db (API_PROXY_REDIS_URL); empty: embedded store")
	fs.StringVar(&cfg.RequestLog, "request-log", cfg.RequestLog, "off, stdout or a file `path`: also write each request record there as a JSON line (REQUEST_LOG)")
	fs.BoolVar(&cfg.EnableStats, "enable-stats", cfg.EnableStats, "collect stats (ENABLE_STATS)")
	fs.Var((*originList)(&cfg.CORSOrigins), "cors-allow-origins", "comma list of allowed browser `origins`, * for any (CORS_ALLOW_ORIGINS)")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json (LOG_FORMAT)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error (LOG_LEVEL)")
	fs.Var((*durationFlag)(&cfg.ShutdownTimeout), "shutdown-timeout", "how long in-flight requests may drain on SIGTERM, a `duration` or seconds (SHUTDOWN_TIMEOUT)")
	fs.Var((*durationFlag)(&cfg.ResponseHeaderTimeout), "upstream-response-header-timeout",
		"wait at most this `duration` for upstream response headers, 0 = no limit (UPSTREAM_RESPONSE_HEADER_TIMEOUT)")
	fs.Var((*onOff)(&cfg.StreamHandoff), "stream-handoff",
		"`on|off`: write event streams to HTTP/1.1 clients with the proxy's own stream writer; off serves every response with httputil.ReverseProxy (STREAM_HANDOFF)")
	fs.Var((*durationFlag)(&cfg.StreamHandoffAfter), "stream-handoff-after",
		"hand off an event stream only once it has run this `duration`, 0 = at once (STREAM_HANDOFF_AFTER)")
	fs.Var((*onOff)(&cfg.RawIO), "raw-io",
		"`on|off`: read and write client and upstream sockets with raw system calls; off leaves them to net.Conn (RAW_IO)")
	fs.Var((*onOff)(&cfg.RuntimeTuning), "runtime-tuning",
		"`on|off`: tune GOMAXPROCS (one processor for light work) and GOGC (room under load); off leaves the Go runtime's defaults alone (RUNTIME_TUNING)")
	fs.Var((*onOff)(&cfg.MemoryRelease), "memory-release",
		"`on|off`: return free heap memory to the OS once the process is quiet (MEMORY_RELEASE)")
	fs.Var(&cfg.TrustedProxies, "trusted-proxies",
		"comma list of `CIDRs` of balancers in front; only their X-Forwarded-For names the client (TRUSTED_PROXIES)")
	fs.Int64Var(&cfg.MaxInFlight, "max-in-flight", cfg.MaxInFlight,
		"proxied requests in flight beyond which new ones get 503 overloaded; 0 = no cap (MAX_IN_FLIGHT)")
	version = fs.Bool("version", false, "print the build information and exit")
	return fs, port, version
}

// validate checks what the parsers could not check alone.
func (cfg *Config) validate() error {
	if _, p, err := net.SplitHostPort(cfg.ListenAddr); err != nil {
		return fmt.Errorf("listen address %q: want host:port or :port", cfg.ListenAddr)
	} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("listen address %q: bad port", cfg.ListenAddr)
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("LOG_FORMAT: %q is not text or json", cfg.LogFormat)
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return err
	}
	if cfg.ShutdownTimeout < 0 || cfg.ResponseHeaderTimeout < 0 || cfg.StreamHandoffAfter < 0 {
		return fmt.Errorf("timeouts must not be negative")
	}
	if _, err := requestLogDest(cfg.RequestLog); err != nil {
		return err
	}
	if cfg.MaxInFlight < 0 {
		return fmt.Errorf("MAX_IN_FLIGHT: must be 0 (no cap) or more")
	}
	if _, err := newSecretBox(cfg.SecretKey); err != nil {
		return fmt.Errorf("SECRET_KEY: %w", err)
	}
	if cfg.AdminToken != "" && len(cfg.AdminToken) < 16 {
		return fmt.Errorf("ADMIN_TOKEN: must be at least 16 characters (or unset to have one generated)")
	}
	if cfg.StatsToken != "" && len(cfg.StatsToken) < 16 {
		return fmt.Errorf("STATS_TOKEN: must be at least 16 characters (or unset to leave the dashboard, /stats and /metrics public)")
	}
	return nil
}

// requestLogDest reads REQUEST_LOG: "" when off (off, false, no or 0, in
// any case), "stdout" (in any case), else the path of a file ("./off"
// names a file of that name). An empty value, or one that turns it on
// without saying where (on, true, yes or 1), is an error.
func requestLogDest(v string) (string, error) {
	v = strings.TrimSpace(v)
	switch strings.ToLower(v) {
	case "off", "false", "no", "0":
		return "", nil
	case "stdout":
		return "stdout", nil
	case "", "on", "true", "yes", "1":
		return "", fmt.Errorf("REQUEST_LOG: %q names no destination: want off, stdout or a file path", v)
	}
	return v, nil
}

// parseDuration reads a Go duration; a bare number is taken as seconds.
func parseDuration(s string, allowZero bool) (time.Duration, error) {
	d, err := parseSeconds(s)
	if err != nil {
		return 0, err
	}
	if d < 0 || (d == 0 && !allowZero) {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	return d, nil
}

// parseSeconds reads a Go duration, or a bare number as seconds, of any
// sign.
func parseSeconds(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseFloat(s, 64)
		if nerr != nil {
			return 0, fmt.Errorf("%q is not a duration such as 30s or 2m", s)
		}
		d = time.Duration(n * float64(time.Second))
	}
	return d, nil
}

// durationFlag is a server flag's duration, read as its variable is: Go
// syntax or a number of seconds (validate refuses a negative one).
type durationFlag time.Duration

func (d *durationFlag) String() string {
	if d == nil {
		return "0s"
	}
	return time.Duration(*d).String()
}

func (d *durationFlag) Set(s string) error {
	v, err := parseSeconds(strings.TrimSpace(s))
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}

// onOff is a switch read from "on" or "off" (or a boolean as
// strconv.ParseBool reads it), as a flag.Value.
type onOff bool

func (v *onOff) String() string {
	if v != nil && *v {
		return "on"
	}
	return "off"
}

func (v *onOff) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on":
		*v = true
		return nil
	case "off":
		*v = false
		return nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not on or off", s)
	}
	*v = onOff(b)
	return nil
}

// originList is CORS_ALLOW_ORIGINS as a flag.Value: Set replaces the list.
type originList []string

func (l *originList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

func (l *originList) Set(s string) error {
	*l = splitOrigins(s)
	return nil
}

// splitOrigins reads a comma list of origins, trimmed, without a trailing
// "/", empty items dropped.
func splitOrigins(s string) []string {
	var origins []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, strings.TrimSuffix(o, "/"))
		}
	}
	return origins
}
