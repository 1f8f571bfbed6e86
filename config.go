package main

import (
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
	ListenAddr      string        // LISTEN_ADDR, default ":" + PORT
	DataDir         string        // DATA_DIR, default ./data
	RedisURL        string        // API_PROXY_REDIS_URL; empty selects the embedded store
	AdminToken      string        // ADMIN_TOKEN; empty: generated once and kept in the store
	EnableStats     bool          // ENABLE_STATS, default true
	CORSOrigins     []string      // CORS_ALLOW_ORIGINS, default ["*"]
	LogFormat       string        // LOG_FORMAT: text or json
	LogLevel        string        // LOG_LEVEL: debug, info, warn, error
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, default 30s

	// Upstream transport. Zero means no limit for the two timeouts.
	DialTimeout           time.Duration // UPSTREAM_DIAL_TIMEOUT, default 15s
	TLSHandshakeTimeout   time.Duration // UPSTREAM_TLS_TIMEOUT, default 10s
	ResponseHeaderTimeout time.Duration // UPSTREAM_RESPONSE_HEADER_TIMEOUT, default 0 (none)
	UpstreamTimeout       time.Duration // UPSTREAM_TIMEOUT, overall per request, default 0 (none)

	// Runtime tuning (runtime.go), each on unless the operator set the
	// Go runtime's own variable.
	TuneProcs bool // GOMAXPROCS unset
	TuneGC    bool // GOGC unset
}

// loadConfig builds a Config from getenv (os.Getenv in production, a map in
// tests) and the command-line args, which win over the environment. Output
// of -h goes to out.
func loadConfig(getenv func(string) string, args []string, out io.Writer) (Config, error) {
	env := func(key, def string) string {
		if v := strings.TrimSpace(getenv(key)); v != "" {
			return v
		}
		return def
	}
	port := env("PORT", "8000")
	cfg := Config{
		ListenAddr: env("LISTEN_ADDR", ":"+port),
		DataDir:    env("DATA_DIR", "./data"),
		RedisURL:   env("API_PROXY_REDIS_URL", ""),
		AdminToken: env("ADMIN_TOKEN", ""),
		LogFormat:  env("LOG_FORMAT", "text"),
		LogLevel:   env("LOG_LEVEL", "info"),
		TuneProcs:  getenv("GOMAXPROCS") == "",
		TuneGC:     getenv("GOGC") == "",
	}
	var err error
	if cfg.EnableStats, err = strconv.ParseBool(env("ENABLE_STATS", "true")); err != nil {
		return cfg, fmt.Errorf("ENABLE_STATS: %q is not a boolean", getenv("ENABLE_STATS"))
	}
	durations := []struct {
		key  string
		def  string
		dst  *time.Duration
		zero bool // whether 0 is allowed
	}{
		{"SHUTDOWN_TIMEOUT", "30s", &cfg.ShutdownTimeout, true},
		{"UPSTREAM_DIAL_TIMEOUT", "15s", &cfg.DialTimeout, false},
		{"UPSTREAM_TLS_TIMEOUT", "10s", &cfg.TLSHandshakeTimeout, false},
		{"UPSTREAM_RESPONSE_HEADER_TIMEOUT", "0", &cfg.ResponseHeaderTimeout, true},
		{"UPSTREAM_TIMEOUT", "0", &cfg.UpstreamTimeout, true},
	}
	for _, d := range durations {
		if *d.dst, err = parseDuration(env(d.key, d.def), d.zero); err != nil {
			return cfg, fmt.Errorf("%s: %w", d.key, err)
		}
	}
	cors := env("CORS_ALLOW_ORIGINS", "*")

	fs := flag.NewFlagSet("apiproxy", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: apiproxy [flags]            serve (flags win over environment and .env)\n"+
			"       apiproxy map list|set|rm ...  edit the mappings of the configured store\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.ListenAddr, "listen", cfg.ListenAddr, "listen `address` (LISTEN_ADDR)")
	portFlag := fs.String("port", "", "listen `port` on all interfaces (PORT); -listen wins")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`dir`ectory of the embedded store and snapshots (DATA_DIR)")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "redis://[:pass@]host:port/db (API_PROXY_REDIS_URL); empty: embedded store")
	fs.BoolVar(&cfg.EnableStats, "enable-stats", cfg.EnableStats, "collect stats (ENABLE_STATS)")
	fs.StringVar(&cors, "cors-allow-origins", cors, "comma list of allowed browser origins, * for any (CORS_ALLOW_ORIGINS)")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json (LOG_FORMAT)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error (LOG_LEVEL)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight requests may drain on SIGTERM (SHUTDOWN_TIMEOUT)")
	fs.DurationVar(&cfg.ResponseHeaderTimeout, "upstream-response-header-timeout", cfg.ResponseHeaderTimeout, "wait at most this for upstream response headers, 0 = no limit")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	listenSet := false
	fs.Visit(func(f *flag.Flag) { listenSet = listenSet || f.Name == "listen" })
	if *portFlag != "" && !listenSet {
		cfg.ListenAddr = ":" + *portFlag
	}

	if _, p, err := net.SplitHostPort(cfg.ListenAddr); err != nil {
		return cfg, fmt.Errorf("listen address %q: want host:port or :port", cfg.ListenAddr)
	} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
		return cfg, fmt.Errorf("listen address %q: bad port", cfg.ListenAddr)
	}
	for _, o := range strings.Split(cors, ",") {
		if o = strings.TrimSpace(o); o != "" {
			cfg.CORSOrigins = append(cfg.CORSOrigins, strings.TrimSuffix(o, "/"))
		}
	}
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return cfg, fmt.Errorf("LOG_FORMAT: %q is not text or json", cfg.LogFormat)
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return cfg, err
	}
	if cfg.ShutdownTimeout < 0 || cfg.ResponseHeaderTimeout < 0 {
		return cfg, fmt.Errorf("timeouts must not be negative")
	}
	if cfg.AdminToken != "" && len(cfg.AdminToken) < 16 {
		return cfg, fmt.Errorf("ADMIN_TOKEN: must be at least 16 characters (or unset to have one generated)")
	}
	return cfg, nil
}

// parseDuration reads a Go duration; a bare number is taken as seconds.
func parseDuration(s string, allowZero bool) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseFloat(s, 64)
		if nerr != nil {
			return 0, fmt.Errorf("%q is not a duration such as 30s or 2m", s)
		}
		d = time.Duration(n * float64(time.Second))
	}
	if d < 0 || (d == 0 && !allowZero) {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	return d, nil
}
