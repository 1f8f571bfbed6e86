package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
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
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(stdout, "%s\t%s\n", k, m[k])
		}
	case "set":
		prefix, target := args[1], args[2]
		if err := validatePrefix(prefix); err != nil {
			return err
		}
		if err := validateTarget(target); err != nil {
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
