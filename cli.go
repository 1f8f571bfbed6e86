package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const mapUsage = `Usage:
  apiproxy map [-data-dir DIR] [-redis-url URL] list
  apiproxy map [-data-dir DIR] [-redis-url URL] set PREFIX TARGET [TARGET...] [options]
  apiproxy map [-data-dir DIR] [-redis-url URL] set [PREFIX] -file mapping.json
  apiproxy map [-data-dir DIR] [-redis-url URL] rm PREFIX

set creates a mapping or replaces the whole of an existing one: an option
left out takes its default. Its targets are tried in their order (SPEC §9).
Options of set, before or after its arguments:
  -balance failover|weighted  how the first try picks a target (failover)
  -weight N,N,...             one weight per target, 1-1000 (1 each)
  -retry-on 429,503           statuses that try the next target
                              (429,500,502,503,504; '' for none)
  -stream-idle-timeout 30s    cut a response whose upstream sends nothing
                              for that long (0s: never)
  -file mapping.json          the mapping as a JSON object, as the admin API
                              takes it; its prefix, if any, must be PREFIX's

Lists and edits the mappings of the store the server would use (DATA_DIR or
API_PROXY_REDIS_URL, from the environment or .env). list only reads an
embedded store that exists; set and rm create one, with the default
mappings, if there is none yet. The embedded store is locked while a server
runs on it: use the admin API then.
`

// mapCommand is one `apiproxy map` command: its name and arguments.
type mapCommand struct {
	name   string // "list", "set" or "rm"
	prefix string // of set and rm
	// Of set: the mapping (valid), which of its targets gave a key (the
	// others keep a stored one: Mapping.keepKeys), and its -file.
	mapping   Mapping
	givenKeys []bool
	file      string
}

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
	cmd := mapCommand{name: args[0]}
	self := newSelfAddrs(cfg.ListenAddr, net.InterfaceAddrs)
	switch {
	case cmd.name == "list" && len(args) == 1:
	case cmd.name == "rm" && len(args) == 2:
		cmd.prefix = args[1]
	case cmd.name == "set":
		if err := cmd.parseSet(args[1:], stderr); err != nil {
			return fmt.Errorf("map set: %w", err)
		}
		if err := cmd.mapping.validate(self); err != nil {
			return fmt.Errorf("map set: %w", err)
		}
	default:
		fs.Usage()
		return fmt.Errorf("map: bad arguments %q", args)
	}
	store, err := openMapStore(ctx, cfg, cmd, stderr)
	if err != nil {
		return err
	}
	defer store.Close()

	switch cmd.name {
	case "list":
		ms, err := store.Mappings(ctx)
		if errors.Is(err, errRedisNotSeeded) {
			return fmt.Errorf("map list: %w: start the server on it, which writes the default mappings, or run `apiproxy init-redis`; if -redis-url (API_PROXY_REDIS_URL) names another database than the fleet's, give the right one", errRedisNotSeeded)
		}
		if err != nil {
			return err
		}
		for _, m := range ms {
			fmt.Fprintf(stdout, "%s\t%s\n", m.Prefix, describeTargets(m, "\t"))
		}
	case "set":
		m := cmd.mapping
		err := store.CreateMapping(ctx, m)
		if errors.Is(err, errMappingExists) {
			err = updateKeepingKeys(ctx, store, m, cmd.givenKeys, self)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s -> %s\n", m.Prefix, describeTargets(m, " "))
	case "rm":
		if err := store.DeleteMapping(ctx, cmd.prefix); err != nil {
			return fmt.Errorf("remove %s: %w", cmd.prefix, err)
		}
		fmt.Fprintf(stdout, "removed %s\n", cmd.prefix)
	}
	return nil
}

// parseSet reads the arguments of `map set` into c: PREFIX and target
// URLs with options, or -file with an optional PREFIX. Options may come
// before, between or after the other arguments. The mapping is not
// validated yet; an error names the option at fault.
func (c *mapCommand) parseSet(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("apiproxy map set", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, mapUsage) }
	balance := fs.String("balance", "", "failover or weighted")
	weights := fs.String("weight", "", "one weight per target, comma-separated")
	retryOn := fs.String("retry-on", "", "statuses that try the next target, comma-separated")
	idle := fs.String("stream-idle-timeout", "", "cut a silent upstream response after this long")
	fs.StringVar(&c.file, "file", "", "the mapping as a JSON object")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if args = fs.Args(); len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	var options []string
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "file" {
			options = append(options, "-"+f.Name)
		}
	})
	if c.file != "" {
		if len(options) > 0 {
			return fmt.Errorf("%s with -file: put the options in the file", strings.Join(options, ", "))
		}
		if len(pos) > 1 {
			return fmt.Errorf("with -file, give at most PREFIX (the targets are in the file), not %q", pos)
		}
		if len(pos) == 1 {
			c.prefix = pos[0]
		}
		return c.readFile()
	}
	if len(pos) < 2 {
		fs.Usage()
		return errors.New("give PREFIX and at least one TARGET URL (or -file mapping.json)")
	}
	c.prefix = pos[0]
	m := Mapping{Prefix: pos[0], Balance: *balance}
	for _, u := range pos[1:] {
		m.Targets = append(m.Targets, Target{URL: u})
	}
	if *weights != "" {
		ws := strings.Split(*weights, ",")
		if len(ws) != len(m.Targets) {
			return fmt.Errorf("-weight gives %d weights for %d targets: give one per target, in their order", len(ws), len(m.Targets))
		}
		for i, w := range ws {
			n, err := strconv.Atoi(strings.TrimSpace(w))
			if err != nil || n < 1 || n > maxWeight {
				return fmt.Errorf("-weight: each weight must be an integer from 1 to %d (found %q)", maxWeight, w)
			}
			m.Targets[i].Weight = n
		}
	}
	if slices.Contains(options, "-retry-on") {
		m.RetryOn = []int{} // '' is none
		for s := range strings.SplitSeq(*retryOn, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			n, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("-retry-on: %q is not a status such as 503", s)
			}
			m.RetryOn = append(m.RetryOn, n)
		}
	}
	if *idle != "" {
		d, err := time.ParseDuration(*idle)
		if err != nil {
			return fmt.Errorf("-stream-idle-timeout: %q is not a duration such as 30s or 2m", *idle)
		}
		m.StreamIdleTimeout = d
	}
	c.mapping, c.givenKeys = m, make([]bool, len(m.Targets))
	return nil
}

// readFile reads c.file, a mapping object as the admin API takes it (and
// as strictly), into c.mapping. Its prefix, if any, must be c.prefix when
// one was given, and is c.prefix otherwise.
func (c *mapCommand) readFile() error {
	f, err := os.Open(c.file)
	if err != nil {
		return err
	}
	defer f.Close()
	var o mappingObject
	// As the admin API: at most maxAdminBody bytes (one more shows that
	// the file is larger).
	data, err := io.ReadAll(io.LimitReader(f, maxAdminBody+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", c.file, err)
	}
	if len(data) > maxAdminBody {
		return fmt.Errorf("file %s must be at most %d KiB", c.file, maxAdminBody>>10)
	}
	if err := decodeJSON(bytes.NewReader(data), &o, "file "+c.file); err != nil {
		return err
	}
	switch {
	case c.prefix == "":
		c.prefix = o.Prefix
	case o.Prefix != "" && o.Prefix != c.prefix:
		return fmt.Errorf("the prefix in %s (%q) differs from the argument (%q)", c.file, truncate(o.Prefix, 200), c.prefix)
	}
	o.Prefix = c.prefix
	if err := validatePrefix(o.Prefix); err != nil {
		return err
	}
	m, err := o.mapping()
	if err != nil {
		return err
	}
	c.mapping, c.givenKeys = m, make([]bool, len(m.Targets))
	for i, t := range o.Targets {
		c.givenKeys[i] = t.Key != nil
	}
	return nil
}

// updateKeepingKeys replaces the stored mapping of m.Prefix with m, whose
// targets that gave no key (givenKeys) keep their stored keys where the URL
// is unchanged, as a PUT of the admin API does.
func updateKeepingKeys(ctx context.Context, store Store, m Mapping, givenKeys []bool, self selfAddrs) error {
	ms, err := store.Mappings(ctx)
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(ms, func(old Mapping) bool { return old.Prefix == m.Prefix }); i >= 0 {
		m.keepKeys(ms[i], givenKeys)
		if err := m.validate(self); err != nil {
			return fmt.Errorf(`map set: %w; a target that leaves "key" out keeps its stored key while its URL is unchanged: give "key": "" to remove it`, err)
		}
	}
	return store.UpdateMapping(ctx, m)
}

// describeTargets is how the CLI shows m's targets: the URL of a plain
// mapping alone (the original listing), else the URLs comma-separated,
// then sep and the options that are not at their default. Never a key.
func describeTargets(m Mapping, sep string) string {
	if m.unreadable != "" {
		return "(cannot be read: " + m.unreadable + ")"
	}
	if len(m.Targets) == 0 {
		return "(a stored object this version cannot read: see the server log)"
	}
	out := strings.Join(m.urls(), ",")
	if m.plain() {
		return out
	}
	var opts []string
	if m.balance() != balanceFailover {
		opts = append(opts, "balance="+m.balance())
	}
	if slices.ContainsFunc(m.Targets, func(t Target) bool { return t.weight() != 1 }) {
		var ws []string
		for _, t := range m.Targets {
			ws = append(ws, strconv.Itoa(t.weight()))
		}
		opts = append(opts, "weight="+strings.Join(ws, ","))
	}
	if !slices.Equal(m.retryOn(), defaultRetryOn) {
		var rs []string
		for _, r := range m.retryOn() {
			rs = append(rs, strconv.Itoa(r))
		}
		opts = append(opts, "retry-on="+cmp.Or(strings.Join(rs, ","), "none"))
	}
	if m.StreamIdleTimeout != 0 {
		opts = append(opts, "stream-idle-timeout="+m.StreamIdleTimeout.String())
	}
	if m.auth() != authPassthrough {
		opts = append(opts, "auth="+m.auth())
	}
	for i, t := range m.Targets {
		if t.AuthStyle != "" {
			opts = append(opts, fmt.Sprintf("auth-style[%d]=%s", i, t.AuthStyle))
		}
		if t.Key != "" {
			opts = append(opts, fmt.Sprintf("key[%d]=%s", i, keyHint(t.Key)))
		}
	}
	if l := m.Limits; l != (Limits{}) {
		opts = append(opts, fmt.Sprintf("limits=rpm:%d,tpm:%d,concurrency:%d", l.RPM, l.TPM, l.Concurrency))
	}
	if len(opts) == 0 {
		return out
	}
	return out + sep + strings.Join(opts, " ")
}

// openMapStore opens the store of a map command. An embedded store is opened for reading only by
// list, which refuses to create one where there is none (a typo in
// -data-dir would otherwise list a fresh store's defaults as if they were
// the server's); set and rm create it and say so on stderr. A store locked
// by a running server is refused with the admin API call to make instead.
func openMapStore(ctx context.Context, cfg Config, cmd mapCommand, stderr io.Writer) (Store, error) {
	if cfg.RedisURL != "" {
		s, err := openRedisStore(ctx, cfg, newLogger(cfg, stderr))
		if err != nil {
			return nil, err
		}
		// list only reads, as it does an embedded store.
		s.listOnly = cmd.name == "list"
		return withSecrets(s, cfg)
	}
	path := boltPath(cfg.DataDir)
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if cmd.name == "list" {
		s, err := openBoltStoreReadOnly(cfg.DataDir)
		switch {
		case errors.Is(err, errNoStore):
			return nil, fmt.Errorf("map list: %w: looked for %s (DATA_DIR is %s); start the server once, which creates it with the default mappings, or create it with `apiproxy map set PREFIX TARGET`; if the store is elsewhere, pass -data-dir DIR or set DATA_DIR",
				errNoStore, path, cfg.DataDir)
		case errors.Is(err, errStoreLocked):
			return nil, storeInUseError(cfg, cmd, path)
		case err != nil:
			return nil, err
		}
		return withSecrets(s, cfg)
	}
	_, statErr := os.Stat(path)
	s, err := openBoltStore(cfg.DataDir)
	if errors.Is(err, errStoreLocked) {
		return nil, storeInUseError(cfg, cmd, path)
	}
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		fmt.Fprintf(stderr, "apiproxy: created a new store at %s with the default mappings\n", path)
	}
	return withSecrets(s, cfg)
}

// storeInUseError explains errStoreLocked to a map command: bbolt's file
// lock lets no other process read or write the store while a server has it
// open (a read-only open takes a shared lock, which the server's exclusive
// one excludes), so the change or the listing has to go through that
// server's admin API. The curl line guesses the server's address from
// LISTEN_ADDR or PORT. The body of a set is the original form for a plain
// mapping, the file for -file, else the object (keys shown as key_set
// only; the command line cannot give one anyway).
func storeInUseError(cfg Config, cmd mapCommand, path string) error {
	base := "http://" + localAddr(cfg.ListenAddr)
	const auth = `-H "Authorization: Bearer $ADMIN_TOKEN"`
	var call string
	urlPath := "/" + strings.TrimPrefix(cmd.prefix, "/")
	switch cmd.name {
	case "list":
		call = fmt.Sprintf("curl %s %s/api/mappings", auth, base)
	case "set":
		m := cmd.mapping
		var create, update string
		switch {
		case cmd.file != "":
			create, update = "@"+cmd.file, "@"+cmd.file
		case m.plain():
			create = fmt.Sprintf(`{"prefix":%q,"target":%q}`, m.Prefix, m.firstURL())
			update = fmt.Sprintf(`{"target":%q}`, m.firstURL())
		default:
			// A PUT may repeat the path's prefix: one body serves both.
			o := m.object(false)
			o.Target = ""
			b, _ := json.Marshal(o)
			create, update = string(b), string(b)
		}
		call = fmt.Sprintf("curl %s -d '%s' %s/api/mappings\n  (an existing prefix: curl -X PUT %s -d '%s' %s/api/mappings%s)",
			auth, create, base, auth, update, base, urlPath)
	case "rm":
		call = fmt.Sprintf("curl -X DELETE %s %s/api/mappings%s", auth, base, urlPath)
	}
	return fmt.Errorf("map %s: %w (%s): while a server runs on it, no other process can read or write it; use the server's admin API instead:\n  %s",
		cmd.name, errStoreLocked, path, call)
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
	// A PING first, as the server's start does: a Redis that wants a
	// password says NOAUTH to it, where the seeding script's large
	// request only gets a protocol error.
	if err := store.Ping(ctx); err != nil {
		return fmt.Errorf("init-redis: redis at %s: %w", redisDescription(opts), err)
	}
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
