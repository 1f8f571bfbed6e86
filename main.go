// Command apiproxy is a transparent reverse proxy for AI APIs: it forwards
// /<prefix>/… to the upstream mapped to that prefix, streaming both ways, and
// counts and times every call. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/joho/godotenv"
)

func main() {
	// godotenv.Load never overrides a variable that is already set, so real
	// environment variables win over .env; flags win over both in loadConfig.
	if err := godotenv.Load(); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "apiproxy: read .env: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runMain(ctx, os.Getenv, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "apiproxy: %v\n", err)
		os.Exit(1)
	}
}

// runMain dispatches between serving (the default) and the `map` and
// `init-redis` commands.
func runMain(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "map" {
		return runMapCommand(ctx, getenv, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "init-redis" {
		return runInitRedisCommand(ctx, getenv, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "healthcheck" {
		return runHealthcheck(ctx, getenv, args[1:], stderr)
	}
	cfg, err := loadConfig(getenv, args, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	return run(ctx, cfg, logger, nil)
}

// newLogger builds the process logger: text for people, JSON for collectors.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return l, fmt.Errorf("LOG_LEVEL: %q is not debug, info, warn or error", s)
	}
	return l, nil
}
