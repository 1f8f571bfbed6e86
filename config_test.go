package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/joho/godotenv"
)

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(func(string) string { return "" }, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"ListenAddr", cfg.ListenAddr, ":8000"},
		{"DataDir", cfg.DataDir, "./data"},
		{"RedisURL", cfg.RedisURL, ""},
		{"AdminToken", cfg.AdminToken, ""},
		{"EnableStats", cfg.EnableStats, true},
		{"CORSOrigins", cfg.CORSOrigins, []string{"*"}},
		{"LogFormat", cfg.LogFormat, "text"},
		{"LogLevel", cfg.LogLevel, "info"},
		{"ShutdownTimeout", cfg.ShutdownTimeout, 30 * time.Second},
		{"DialTimeout", cfg.DialTimeout, 15 * time.Second},
		{"TLSHandshakeTimeout", cfg.TLSHandshakeTimeout, 10 * time.Second},
		{"ResponseHeaderTimeout", cfg.ResponseHeaderTimeout, time.Duration(0)},
		{"UpstreamTimeout", cfg.UpstreamTimeout, time.Duration(0)},
		{"StreamHandoff", cfg.StreamHandoff, true},
		{"RuntimeTuning", cfg.RuntimeTuning, true},
		{"TuneProcs", cfg.TuneProcs, true},
		{"TuneGC", cfg.TuneGC, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(Config) (got, want any)
	}{
		{"PORT", map[string]string{"PORT": "9000"}, nil,
			func(c Config) (any, any) { return c.ListenAddr, ":9000" }},
		{"LISTEN_ADDR wins over PORT", map[string]string{"PORT": "9000", "LISTEN_ADDR": "127.0.0.1:8001"}, nil,
			func(c Config) (any, any) { return c.ListenAddr, "127.0.0.1:8001" }},
		{"-port flag wins over LISTEN_ADDR", map[string]string{"LISTEN_ADDR": "127.0.0.1:8001"}, []string{"-port", "9100"},
			func(c Config) (any, any) { return c.ListenAddr, ":9100" }},
		{"-listen flag wins over -port", map[string]string{"PORT": "9000"}, []string{"-port", "9100", "-listen", "127.0.0.1:9200"},
			func(c Config) (any, any) { return c.ListenAddr, "127.0.0.1:9200" }},
		{"-listen flag wins over env", map[string]string{"LISTEN_ADDR": "127.0.0.1:8001"}, []string{"-listen=:7000"},
			func(c Config) (any, any) { return c.ListenAddr, ":7000" }},
		{"DATA_DIR", map[string]string{"DATA_DIR": "/var/lib/apiproxy"}, nil,
			func(c Config) (any, any) { return c.DataDir, "/var/lib/apiproxy" }},
		{"-data-dir flag wins", map[string]string{"DATA_DIR": "/env"}, []string{"-data-dir", "/flag"},
			func(c Config) (any, any) { return c.DataDir, "/flag" }},
		{"API_PROXY_REDIS_URL", map[string]string{"API_PROXY_REDIS_URL": "redis://:pw@localhost:6379/0"}, nil,
			func(c Config) (any, any) { return c.RedisURL, "redis://:pw@localhost:6379/0" }},
		{"-redis-url flag wins", map[string]string{"API_PROXY_REDIS_URL": "redis://env:6379"}, []string{"-redis-url", "redis://flag:6379"},
			func(c Config) (any, any) { return c.RedisURL, "redis://flag:6379" }},
		{"ENABLE_STATS false", map[string]string{"ENABLE_STATS": "false"}, nil,
			func(c Config) (any, any) { return c.EnableStats, false }},
		{"-enable-stats flag wins", map[string]string{"ENABLE_STATS": "false"}, []string{"-enable-stats=true"},
			func(c Config) (any, any) { return c.EnableStats, true }},
		{"CORS list trimmed", map[string]string{"CORS_ALLOW_ORIGINS": " https://a.example/ , https://b.example,,"}, nil,
			func(c Config) (any, any) { return c.CORSOrigins, []string{"https://a.example", "https://b.example"} }},
		{"-cors-allow-origins flag wins", map[string]string{"CORS_ALLOW_ORIGINS": "https://env.example"}, []string{"-cors-allow-origins", "https://flag.example"},
			func(c Config) (any, any) { return c.CORSOrigins, []string{"https://flag.example"} }},
		{"GOMAXPROCS set: processors not tuned", map[string]string{"GOMAXPROCS": "4"}, nil,
			func(c Config) (any, any) { return [2]bool{c.TuneProcs, c.TuneGC}, [2]bool{false, true} }},
		{"GOGC set: GC not tuned", map[string]string{"GOGC": "200"}, nil,
			func(c Config) (any, any) { return [2]bool{c.TuneProcs, c.TuneGC}, [2]bool{true, false} }},
		{"LOG_FORMAT json", map[string]string{"LOG_FORMAT": "json"}, nil,
			func(c Config) (any, any) { return c.LogFormat, "json" }},
		{"-log-level flag wins", map[string]string{"LOG_LEVEL": "warn"}, []string{"-log-level", "debug"},
			func(c Config) (any, any) { return c.LogLevel, "debug" }},
		{"SHUTDOWN_TIMEOUT duration", map[string]string{"SHUTDOWN_TIMEOUT": "2m"}, nil,
			func(c Config) (any, any) { return c.ShutdownTimeout, 2 * time.Minute }},
		{"SHUTDOWN_TIMEOUT bare seconds", map[string]string{"SHUTDOWN_TIMEOUT": "45"}, nil,
			func(c Config) (any, any) { return c.ShutdownTimeout, 45 * time.Second }},
		{"SHUTDOWN_TIMEOUT zero allowed", map[string]string{"SHUTDOWN_TIMEOUT": "0"}, nil,
			func(c Config) (any, any) { return c.ShutdownTimeout, time.Duration(0) }},
		{"-shutdown-timeout flag wins", map[string]string{"SHUTDOWN_TIMEOUT": "2m"}, []string{"-shutdown-timeout", "5s"},
			func(c Config) (any, any) { return c.ShutdownTimeout, 5 * time.Second }},
		{"duration flags take bare seconds", nil, []string{"-shutdown-timeout", "30", "-upstream-response-header-timeout", "1.5", "-stream-handoff-after", "0"},
			func(c Config) (any, any) {
				return [3]time.Duration{c.ShutdownTimeout, c.ResponseHeaderTimeout, c.StreamHandoffAfter},
					[3]time.Duration{30 * time.Second, 1500 * time.Millisecond, 0}
			}},
		{"UPSTREAM_RESPONSE_HEADER_TIMEOUT", map[string]string{"UPSTREAM_RESPONSE_HEADER_TIMEOUT": "90s"}, nil,
			func(c Config) (any, any) { return c.ResponseHeaderTimeout, 90 * time.Second }},
		{"UPSTREAM_DIAL_TIMEOUT", map[string]string{"UPSTREAM_DIAL_TIMEOUT": "3s"}, nil,
			func(c Config) (any, any) { return c.DialTimeout, 3 * time.Second }},
		{"ADMIN_TOKEN of 16 characters", map[string]string{"ADMIN_TOKEN": "0123456789abcdef"}, nil,
			func(c Config) (any, any) { return c.AdminToken, "0123456789abcdef" }},
		{"values are trimmed", map[string]string{"PORT": " 9000 ", "LOG_FORMAT": " json "}, nil,
			func(c Config) (any, any) { return c.ListenAddr + " " + c.LogFormat, ":9000 json" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(func(k string) string { return tt.env[k] }, tt.args, io.Discard)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if got, want := tt.check(cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

// TestLoadConfigSwitches: STREAM_HANDOFF, RUNTIME_TUNING and
// MEMORY_RELEASE take on or off (or a boolean), and their flags win.
func TestLoadConfigSwitches(t *testing.T) {
	tests := []struct {
		name            string
		env             map[string]string
		args            []string
		handoff, tuning bool
		release         bool
	}{
		{"defaults", nil, nil, true, true, true},
		{"STREAM_HANDOFF off", map[string]string{"STREAM_HANDOFF": "off"}, nil, false, true, true},
		{"STREAM_HANDOFF false", map[string]string{"STREAM_HANDOFF": "false"}, nil, false, true, true},
		{"-stream-handoff flag wins", map[string]string{"STREAM_HANDOFF": "off"}, []string{"-stream-handoff", "on"}, true, true, true},
		{"-stream-handoff=off", nil, []string{"-stream-handoff=off"}, false, true, true},
		{"RUNTIME_TUNING off", map[string]string{"RUNTIME_TUNING": "OFF"}, nil, true, false, true},
		{"-runtime-tuning flag wins", map[string]string{"RUNTIME_TUNING": "off"}, []string{"-runtime-tuning=on"}, true, true, true},
		{"MEMORY_RELEASE off", map[string]string{"MEMORY_RELEASE": "off"}, nil, true, true, false},
		{"-memory-release flag wins", map[string]string{"MEMORY_RELEASE": "off"}, []string{"-memory-release=on"}, true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(func(k string) string { return tt.env[k] }, tt.args, io.Discard)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if cfg.StreamHandoff != tt.handoff || cfg.RuntimeTuning != tt.tuning || cfg.MemoryRelease != tt.release {
				t.Errorf("StreamHandoff %v, RuntimeTuning %v, MemoryRelease %v; want %v, %v, %v",
					cfg.StreamHandoff, cfg.RuntimeTuning, cfg.MemoryRelease, tt.handoff, tt.tuning, tt.release)
			}
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // substring
	}{
		{"ENABLE_STATS not a boolean", map[string]string{"ENABLE_STATS": "maybe"}, nil, "ENABLE_STATS"},
		{"SHUTDOWN_TIMEOUT not a duration", map[string]string{"SHUTDOWN_TIMEOUT": "soon"}, nil, "SHUTDOWN_TIMEOUT"},
		{"SHUTDOWN_TIMEOUT negative", map[string]string{"SHUTDOWN_TIMEOUT": "-5s"}, nil, "SHUTDOWN_TIMEOUT"},
		{"UPSTREAM_DIAL_TIMEOUT zero", map[string]string{"UPSTREAM_DIAL_TIMEOUT": "0"}, nil, "UPSTREAM_DIAL_TIMEOUT"},
		{"UPSTREAM_TLS_TIMEOUT bad", map[string]string{"UPSTREAM_TLS_TIMEOUT": "10 s"}, nil, "UPSTREAM_TLS_TIMEOUT"},
		{"UPSTREAM_TIMEOUT bad", map[string]string{"UPSTREAM_TIMEOUT": "x"}, nil, "UPSTREAM_TIMEOUT"},
		{"LOG_FORMAT unknown", map[string]string{"LOG_FORMAT": "xml"}, nil, "LOG_FORMAT"},
		{"LOG_LEVEL unknown", map[string]string{"LOG_LEVEL": "loud"}, nil, "LOG_LEVEL"},
		{"PORT not a number", map[string]string{"PORT": "http"}, nil, "bad port"},
		{"PORT out of range", map[string]string{"PORT": "70000"}, nil, "bad port"},
		{"LISTEN_ADDR without port", map[string]string{"LISTEN_ADDR": "localhost"}, nil, "listen address"},
		{"-port flag out of range", nil, []string{"-port", "-1"}, "bad port"},
		{"ADMIN_TOKEN too short", map[string]string{"ADMIN_TOKEN": "short-token"}, nil, "ADMIN_TOKEN"},
		{"ADMIN_TOKEN of 15 characters", map[string]string{"ADMIN_TOKEN": "0123456789abcde"}, nil, "at least 16"},
		{"STREAM_HANDOFF not a switch", map[string]string{"STREAM_HANDOFF": "maybe"}, nil, "STREAM_HANDOFF"},
		{"RUNTIME_TUNING not a switch", map[string]string{"RUNTIME_TUNING": "auto"}, nil, "RUNTIME_TUNING"},
		{"MEMORY_RELEASE not a switch", map[string]string{"MEMORY_RELEASE": "sometimes"}, nil, "MEMORY_RELEASE"},
		{"-stream-handoff without a value", nil, []string{"-stream-handoff"}, "stream-handoff"},
		{"-runtime-tuning not a switch", nil, []string{"-runtime-tuning", "2"}, "not on or off"},
		{"invalid variable with valid flags", map[string]string{"SHUTDOWN_TIMEOUT": "soon"}, []string{"-log-level", "debug"}, "SHUTDOWN_TIMEOUT"},
		{"unknown flag", nil, []string{"-nope"}, "nope"},
		{"stray argument", nil, []string{"serve"}, "unexpected argument"},
		{"negative flag timeout", nil, []string{"-shutdown-timeout", "-1s"}, "negative"},
		{"negative flag timeout in seconds", nil, []string{"-shutdown-timeout", "-1"}, "negative"},
		{"flag timeout not a duration", nil, []string{"-stream-handoff-after", "soon"}, "not a duration"},
		{"REQUEST_LOG on", map[string]string{"REQUEST_LOG": "On"}, nil, "REQUEST_LOG"},
		{"-request-log empty", nil, []string{"-request-log", ""}, "REQUEST_LOG"},
		{"negative header timeout flag", nil, []string{"-upstream-response-header-timeout", "-1s"}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(func(k string) string { return tt.env[k] }, tt.args, io.Discard)
			if err == nil {
				t.Fatalf("loadConfig succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestEnvExample: .env.example loads as it is, and with every commented
// setting ("# NAME=value") uncommented: each line holds its value alone.
func TestEnvExample(t *testing.T) {
	b, err := os.ReadFile(".env.example")
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^# ([A-Z_]+=.*)$`)
	var asIs, all []string
	for _, line := range strings.Split(string(b), "\n") {
		asIs = append(asIs, line)
		if m := setting.FindStringSubmatch(line); m != nil {
			line = m[1]
		}
		all = append(all, line)
	}
	for name, text := range map[string]string{"as is": strings.Join(asIs, "\n"), "uncommented": strings.Join(all, "\n")} {
		env, err := godotenv.Unmarshal(text)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := loadConfig(func(k string) string { return env[k] }, nil, io.Discard); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestLoadConfigHelp: -h prints the usage (the subcommands, then every
// flag) and returns flag.ErrHelp, and -version returns errShowVersion,
// even when a variable of the environment is invalid.
func TestLoadConfigHelp(t *testing.T) {
	badEnv := func(k string) string {
		if k == "SHUTDOWN_TIMEOUT" {
			return "soon"
		}
		return ""
	}
	var out strings.Builder
	_, err := loadConfig(badEnv, []string{"-h"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("loadConfig(-h) = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"Usage:", "apiproxy [flags]", "apiproxy map ", "apiproxy init-redis", "apiproxy healthcheck",
		"apiproxy version", "apiproxy help", "-listen", "-stream-handoff", "-runtime-tuning", "-version"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := loadConfig(badEnv, []string{"-version"}, io.Discard); !errors.Is(err, errShowVersion) {
		t.Errorf("loadConfig(-version) = %v, want errShowVersion", err)
	}
}

// TestFlagsNameTheirVariable walks every flag of the server: its help must
// name the environment variable it overrides, one that configFromEnv
// reads, unless the flag has no variable (those are listed here).
func TestFlagsNameTheirVariable(t *testing.T) {
	noVariable := map[string]bool{"version": true}
	read := map[string]bool{}
	cfg, err := configFromEnv(func(k string) string { read[k] = true; return "" })
	if err != nil {
		t.Fatal(err)
	}
	fs, _, _ := cfg.newFlagSet(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		if noVariable[f.Name] {
			return
		}
		named := ""
		for _, word := range strings.FieldsFunc(f.Usage, func(r rune) bool {
			return !(r == '_' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) {
			if read[word] {
				named = word
				break
			}
		}
		if named == "" {
			t.Errorf("-%s: help %q names no environment variable", f.Name, f.Usage)
		}
	})
}

// TestConfigEdgeLimits: TRUSTED_PROXIES and MAX_IN_FLIGHT from the
// environment and the flags, and the errors naming what is wrong.
func TestConfigEdgeLimits(t *testing.T) {
	load := func(env map[string]string, args ...string) (Config, error) {
		return loadConfig(func(k string) string { return env[k] }, args, io.Discard)
	}
	cfg, err := load(nil)
	if err != nil || cfg.MaxInFlight != 10000 || len(cfg.TrustedProxies) != 0 {
		t.Errorf("defaults: MaxInFlight %d, TrustedProxies %v, err %v; want 10000, none", cfg.MaxInFlight, cfg.TrustedProxies, err)
	}
	cfg, err = load(map[string]string{"MAX_IN_FLIGHT": "0", "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7"})
	if err != nil || cfg.MaxInFlight != 0 || cfg.TrustedProxies.String() != "10.0.0.0/8,192.0.2.7/32" {
		t.Errorf("env: MaxInFlight %d, TrustedProxies %v, err %v", cfg.MaxInFlight, cfg.TrustedProxies.String(), err)
	}
	cfg, err = load(map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8"}, "-max-in-flight", "7", "-trusted-proxies", "fd00::/8")
	if err != nil || cfg.MaxInFlight != 7 || cfg.TrustedProxies.String() != "fd00::/8" {
		t.Errorf("flags: MaxInFlight %d, TrustedProxies %v, err %v", cfg.MaxInFlight, cfg.TrustedProxies.String(), err)
	}
	for _, tt := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8,lb"}, nil, `TRUSTED_PROXIES: "lb"`},
		{map[string]string{"MAX_IN_FLIGHT": "-1"}, nil, "MAX_IN_FLIGHT"},
		{map[string]string{"MAX_IN_FLIGHT": "lots"}, nil, "MAX_IN_FLIGHT"},
		{nil, []string{"-max-in-flight", "-5"}, "MAX_IN_FLIGHT"},
		{nil, []string{"-trusted-proxies", "10.0.0.0/40"}, `"10.0.0.0/40"`},
	} {
		if _, err := load(tt.env, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("env %v args %v: error %v, want one naming %s", tt.env, tt.args, err, tt.want)
		}
	}
}
