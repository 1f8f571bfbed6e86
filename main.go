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
	"runtime/debug"
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

// subcommand is a word that, first on the command line, runs something
// other than the server; the rest of the line is its args.
type subcommand struct {
	name, args, summary string
	run                 func(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) error
}

// subcommands lists the subcommands in the order -h shows them.
func subcommands() []subcommand {
	return []subcommand{
		{"map", "list|set|rm ...", "edit the mappings of the configured store", runMapCommand},
		{"init-redis", "[-force] [-redis-url URL]", "seed the default mappings into Redis", runInitRedisCommand},
		{"healthcheck", "", "exit 0 only if this machine's server answers /healthz", runHealthcheck},
		{"version", "", "print the build information (also -version)", runVersion},
		{"help", "", "print this help", runHelp},
	}
}

// runMain runs the subcommand args name, or else serves with args as flags.
func runMain(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		for _, c := range subcommands() {
			if args[0] == c.name {
				return c.run(ctx, getenv, args[1:], stdout, stderr)
			}
		}
	}
	cfg, err := loadConfig(getenv, args, stderr)
	if errors.Is(err, errShowVersion) {
		return runVersion(ctx, getenv, nil, stdout, stderr)
	}
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	return run(ctx, cfg, logger, nil)
}

// printUsage writes the help of the command line: the subcommands, then
// the flags of fs (the server's: Config.newFlagSet).
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %-34s %s\n", "apiproxy [flags]", "serve (flags win over the environment and .env)")
	for _, c := range subcommands() {
		fmt.Fprintf(w, "  %-34s %s\n", strings.TrimSpace("apiproxy "+c.name+" "+c.args), c.summary)
	}
	fmt.Fprintf(w, "\nFlags (each names the environment variable it overrides):\n")
	fs.PrintDefaults()
	// Secrets have no flag: a command line shows in ps and shell history.
	fmt.Fprintf(w, "\nSecrets, read from the environment (or .env) only:\n")
	for _, v := range [][2]string{
		{"ADMIN_TOKEN", "admin API bearer token (>= 16 characters); unset: generated once, printed in the log"},
		{"STATS_TOKEN", "bearer token that /stats and /metrics require (>= 16 characters; the admin token works too); unset: the dashboard, /stats and /metrics are public"},
		{"SECRET_KEY", "seals the upstream keys kept in the store (>= 32 characters)"},
	} {
		fmt.Fprintf(w, "  %s\n    \t%s\n", v[0], v[1])
	}
}

// runHelp is `apiproxy help`: the usage -h prints, on stdout.
func runHelp(_ context.Context, getenv func(string) string, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("help: unexpected argument %q", args[0])
	}
	// The defaults shown are the environment's, as with -h; an invalid
	// variable is reported when serving, not here.
	cfg, _ := configFromEnv(getenv)
	fs, _, _ := cfg.newFlagSet(stdout)
	fs.Usage()
	return nil
}

// runVersion is `apiproxy version` and -version: the build information
// the Go toolchain recorded in the binary.
func runVersion(_ context.Context, _ func(string) string, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("version: unexpected argument %q", args[0])
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("version: the binary carries no build information")
	}
	_, err := io.WriteString(stdout, versionText(info))
	return err
}

// versionText formats info: the module version, then the VCS revision,
// its time and whether the tree was modified when the build recorded them
// (go build inside a git checkout does), and the Go version.
func versionText(info *debug.BuildInfo) string {
	var b strings.Builder
	v := info.Main.Version
	if v == "" {
		v = "(unknown)"
	}
	fmt.Fprintf(&b, "apiproxy %s\n", v)
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			fmt.Fprintf(&b, "  revision  %s\n", s.Value)
		case "vcs.time":
			fmt.Fprintf(&b, "  time      %s\n", s.Value)
		case "vcs.modified":
			fmt.Fprintf(&b, "  modified  %s\n", s.Value)
		}
	}
	fmt.Fprintf(&b, "  go        %s\n", info.GoVersion)
	return b.String()
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
