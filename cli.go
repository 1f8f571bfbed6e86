package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/redis/go-redis/v9"
)

const mapUsage = `Usage:
  apiproxy map [-data-dir DIR] [-redis-url URL] list
  apiproxy map [-data-dir DIR] [-redis-url URL] set PREFIX TARGET   create or update
  apiproxy map [-data-dir DIR] [-redis-url URL] rm PREFIX

Lists and edits the mappings of the store the server would use (DATA_DIR or
API_PROXY_REDIS_URL, from the environment or .env). list only reads an
embedded store that exists; set and rm create one, with the default
mappings, if there is none yet. The embedded store is locked while a server
runs on it: use the admin API then.
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
	var m Mapping
	if args[0] == "set" {
		m = newMapping(args[1], args[2])
		if err := m.validate(newSelfAddrs(cfg.ListenAddr, net.InterfaceAddrs)); err != nil {
			return err
		}
	}
	store, err := openMapStore(ctx, cfg, args, stderr)
	if err != nil {
		return err
	}
	defer store.Close()

	switch args[0] {
	case "list":
		ms, err := store.Mappings(ctx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			fmt.Fprintf(stdout, "%s\t%s\n", m.Prefix, m.firstURL())
		}
	case "set":
		err := store.CreateMapping(ctx, m)
		if errors.Is(err, errMappingExists) {
			err = store.UpdateMapping(ctx, m)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s -> %s\n", m.Prefix, m.firstURL())
	case "rm":
		if err := store.DeleteMapping(ctx, args[1]); err != nil {
			return fmt.Errorf("remove %s: %w", args[1], err)
		}
		fmt.Fprintf(stdout, "removed %s\n", args[1])
	}
	return nil
}

// openMapStore opens the store of a map command (args[0] the command,
// then its arguments). An embedded store is opened for reading only by
// list, which refuses to create one where there is none (a typo in
// -data-dir would otherwise list a fresh store's defaults as if they were
// the server's); set and rm create it and say so on stderr. A store locked
// by a running server is refused with the admin API call to make instead.
func openMapStore(ctx context.Context, cfg Config, args []string, stderr io.Writer) (Store, error) {
	if cfg.RedisURL != "" {
		return openRedisStore(ctx, cfg, newLogger(cfg, stderr))
	}
	path := boltPath(cfg.DataDir)
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if args[0] == "list" {
		s, err := openBoltStoreReadOnly(cfg.DataDir)
		switch {
		case errors.Is(err, errNoStore):
			return nil, fmt.Errorf("map list: %w: looked for %s (DATA_DIR is %s); start the server once, which creates it with the default mappings, or create it with `apiproxy map set PREFIX TARGET`; if the store is elsewhere, pass -data-dir DIR or set DATA_DIR",
				errNoStore, path, cfg.DataDir)
		case errors.Is(err, errStoreLocked):
			return nil, storeInUseError(cfg, args, path)
		case err != nil:
			return nil, err
		}
		return s, nil
	}
	_, statErr := os.Stat(path)
	s, err := openBoltStore(cfg.DataDir)
	if errors.Is(err, errStoreLocked) {
		return nil, storeInUseError(cfg, args, path)
	}
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		fmt.Fprintf(stderr, "apiproxy: created a new store at %s with the default mappings\n", path)
	}
	return s, nil
}

// storeInUseError explains errStoreLocked to a map command: bbolt's file
// lock lets no other process read or write the store while a server has it
// open (a read-only open takes a shared lock, which the server's exclusive
// one excludes), so the change or the listing has to go through that
// server's admin API. The curl line guesses the server's address from
// LISTEN_ADDR or PORT.
func storeInUseError(cfg Config, args []string, path string) error {
	base := "http://" + localAddr(cfg.ListenAddr)
	const auth = `-H "Authorization: Bearer $ADMIN_TOKEN"`
	var call string
	urlPath := ""
	if len(args) > 1 {
		urlPath = "/" + strings.TrimPrefix(args[1], "/")
	}
	switch args[0] {
	case "list":
		call = fmt.Sprintf("curl %s %s/api/mappings", auth, base)
	case "set":
		call = fmt.Sprintf("curl %s -d '{\"prefix\":%q,\"target\":%q}' %s/api/mappings\n  (an existing prefix: curl -X PUT %s -d '{\"target\":%q}' %s/api/mappings%s)",
			auth, args[1], args[2], base, auth, args[2], base, urlPath)
	case "rm":
		call = fmt.Sprintf("curl -X DELETE %s %s/api/mappings%s", auth, base, urlPath)
	}
	return fmt.Errorf("map %s: %w (%s): while a server runs on it, no other process can read or write it; use the server's admin API instead:\n  %s",
		args[0], errStoreLocked, path, call)
}

// localAddr is the host:port at which a server listening on listenAddr is
// reached from this machine: a listener on every interface (":8000",
// "0.0.0.0:8000") is reached at localhost.
func localAddr(listenAddr string) string {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return listenAddr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
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
		prefix, target := r.Default.Prefix, r.Default.firstURL()
		switch r.Action {
		case "added":
			fmt.Fprintf(out, "added        %s -> %s\n", prefix, target)
		case "unchanged":
			fmt.Fprintf(out, "unchanged    %s -> %s\n", prefix, target)
		case "overwritten":
			fmt.Fprintf(out, "overwritten  %s -> %s (was %s)\n", prefix, target, r.Old)
		case "kept":
			fmt.Fprintf(out, "kept         %s -> %s (default %s; -force overwrites)\n", prefix, r.Old, target)
		}
	}
	fmt.Fprintf(out, "%s hash %s on %s: %d added, %d overwritten, %d kept, %d already set\n",
		"init-redis:", store.key(redisMappingsKey), where, counts["added"], counts["overwritten"], counts["kept"], counts["unchanged"])
	return nil
}
