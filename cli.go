package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/redis/go-redis/v9"
)

const mapUsage = `Usage:
  apiproxy map [-data-dir DIR] [-redis-url URL] list
  apiproxy map [-data-dir DIR] [-redis-url URL] set PREFIX TARGET   create or update
  apiproxy map [-data-dir DIR] [-redis-url URL] rm PREFIX

Edits the mappings of the store the server would use (DATA_DIR or
API_PROXY_REDIS_URL, from the environment or .env). The embedded store is
locked while a server runs on it: use the admin API then.
`

// runMapCommand is `apiproxy map ...`: list and edit mappings on the
// configured store, with the same validation as the admin API.
func runMapCommand(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(getenv, nil, stderr)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("apiproxy map", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, mapUsage) }
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return errors.New("map: missing command")
	}
	want := map[string]int{"list": 1, "set": 3, "rm": 2}
	if n, ok := want[args[0]]; !ok || len(args) != n {
		fs.Usage()
		return fmt.Errorf("map: bad arguments %q", args)
	}
	store, err := openStore(ctx, cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	defer store.Close()

	switch args[0] {
	case "list":
		m, err := store.Mappings(ctx)
		if err != nil {
			return err
		}
		for _, k := range sortedKeys(m) {
			fmt.Fprintf(stdout, "%s\t%s\n", k, m[k])
		}
	case "set":
		prefix, target := args[1], args[2]
		if err := validateMapping(prefix, target); err != nil {
			return err
		}
		err := store.CreateMapping(ctx, prefix, target)
		if errors.Is(err, errMappingExists) {
			err = store.UpdateMapping(ctx, prefix, target)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s -> %s\n", prefix, target)
	case "rm":
		if err := store.DeleteMapping(ctx, args[1]); err != nil {
			return fmt.Errorf("remove %s: %w", args[1], err)
		}
		fmt.Fprintf(stdout, "removed %s\n", args[1])
	}
	return nil
}

const initRedisUsage = `Usage:
  apiproxy init-redis [-force] [-redis-url URL]

Seeds the default mappings into the Redis of API_PROXY_REDIS_URL (from the
environment or .env) or -redis-url. A prefix that already exists keeps its
target unless -force is given. Safe to run again: it only adds what is
missing. Servers on that Redis pick the changes up at once.
`

// runInitRedisCommand is `apiproxy init-redis`, which scripts/init_redis.go
// runs: seed defaultMappings into Redis with the server's own key names,
// and print what happened to each.
func runInitRedisCommand(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(getenv, nil, stderr)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("apiproxy init-redis", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, initRedisUsage) }
	force := fs.Bool("force", false, "overwrite existing prefixes with the default target")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("init-redis: unexpected argument %q", fs.Arg(0))
	}
	if cfg.RedisURL == "" {
		return errors.New("init-redis: API_PROXY_REDIS_URL is not set (environment or .env) and no -redis-url was given")
	}
	opts, err := parseRedisURL(cfg.RedisURL)
	if err != nil {
		return err
	}
	// No snapshot file and no seeding on open: this command is the seeding.
	store := newRedisStore(redis.NewClient(opts), redisKeyPrefix, "", newLogger(cfg, stderr))
	defer store.Close()
	return initRedis(ctx, store, *force, redisDescription(opts), stdout)
}

// initRedis seeds the defaults into store and prints one line per default
// and a summary to out.
func initRedis(ctx context.Context, store *redisStore, force bool, where string, out io.Writer) error {
	res, err := store.initDefaults(ctx, force)
	if err != nil {
		return fmt.Errorf("init-redis: %w", err)
	}
	counts := map[string]int{}
	for _, r := range res {
		counts[r.Action]++
		switch r.Action {
		case "added":
			fmt.Fprintf(out, "added        %s -> %s\n", r.Prefix, r.Target)
		case "unchanged":
			fmt.Fprintf(out, "unchanged    %s -> %s\n", r.Prefix, r.Target)
		case "overwritten":
			fmt.Fprintf(out, "overwritten  %s -> %s (was %s)\n", r.Prefix, r.Target, r.Old)
		case "kept":
			fmt.Fprintf(out, "kept         %s -> %s (default %s; -force overwrites)\n", r.Prefix, r.Old, r.Target)
		}
	}
	fmt.Fprintf(out, "%s hash %s on %s: %d added, %d overwritten, %d kept, %d already set\n",
		"init-redis:", store.key(redisMappingsKey), where, counts["added"], counts["overwritten"], counts["kept"], counts["unchanged"])
	return nil
}
