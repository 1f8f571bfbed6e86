package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// runMap runs `apiproxy map args...` with DATA_DIR=dir and nothing else in
// the environment, and returns its stdout, stderr and error.
func runMap(t testing.TB, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	env := map[string]string{"DATA_DIR": dir}
	var out, errOut bytes.Buffer
	err = runMapCommand(context.Background(), func(k string) string { return env[k] }, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestMapListWithoutStore: list reads, it never creates: where there is no
// store it says which file it looked for and how to get one, and leaves
// the directory as it was.
func TestMapListWithoutStore(t *testing.T) {
	for name, dir := range map[string]string{
		"empty dir":   t.TempDir(),
		"missing dir": filepath.Join(t.TempDir(), "data"),
	} {
		t.Run(name, func(t *testing.T) {
			before, _ := os.ReadDir(dir)
			stdout, _, err := runMap(t, dir, "list")
			if err == nil {
				t.Fatalf("map list without a store succeeded: %q", stdout)
			}
			if !errors.Is(err, errNoStore) {
				t.Errorf("error %v, want errNoStore", err)
			}
			abs, _ := filepath.Abs(filepath.Join(dir, boltFileName))
			for _, want := range []string{abs, "start the server", "map set", "-data-dir"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if after, _ := os.ReadDir(dir); len(after) != len(before) {
				t.Errorf("map list changed the directory: %v, was %v", after, before)
			}
			if _, serr := os.Stat(dir); name == "missing dir" && !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("map list created %s", dir)
			}
		})
	}
}

// TestMapListRedisNeverSeeds: on a Redis database no apiproxy initialised
// (a wrong database number), list refuses and writes nothing; set
// initialises it, and list then shows it.
func TestMapListRedisNeverSeeds(t *testing.T) {
	rs := startRedisServer(t)
	url := "redis://" + rs.addr() + "/3"
	dir := t.TempDir()
	_, _, err := runMap(t, dir, "-redis-url", url, "list")
	if !errors.Is(err, errRedisNotSeeded) || !strings.Contains(err.Error(), "init-redis") {
		t.Errorf("list on an empty database: %v, want errRedisNotSeeded naming init-redis", err)
	}
	db3 := redis.NewClient(&redis.Options{Addr: rs.addr(), DB: 3})
	defer db3.Close()
	if n, err := db3.DBSize(context.Background()).Result(); err != nil || n != 0 {
		t.Errorf("database 3 after list: %d keys, %v; want none", n, err)
	}
	if _, _, err := runMap(t, dir, "-redis-url", url, "set", "/local", "http://127.0.0.1:11434"); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := runMap(t, dir, "-redis-url", url, "list")
	if err != nil || !strings.Contains(stdout, "/local\thttp://127.0.0.1:11434") || !strings.Contains(stdout, "/openai") {
		t.Errorf("list after set: %v\n%s\nwant /local and the defaults", err, stdout)
	}
}

// TestMapSetCreatesStore: set and rm create a store where there is none
// and say so on stderr, once; list then shows it.
func TestMapSetCreatesStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	abs, _ := filepath.Abs(filepath.Join(dir, boltFileName))
	created := "created a new store at " + abs + " with the default mappings"

	stdout, stderr, err := runMap(t, dir, "set", "/local", "http://127.0.0.1:11434")
	if err != nil {
		t.Fatalf("map set: %v", err)
	}
	if stdout != "/local -> http://127.0.0.1:11434\n" {
		t.Errorf("stdout = %q", stdout)
	}
	if !strings.Contains(stderr, created) {
		t.Errorf("stderr = %q, want it to say %q", stderr, created)
	}
	_, stderr, err = runMap(t, dir, "set", "/local", "http://127.0.0.1:8080")
	if err != nil || stderr != "" {
		t.Errorf("second map set: %v, stderr %q; want no error and no message", err, stderr)
	}

	stdout, _, err = runMap(t, dir, "list")
	if err != nil {
		t.Fatalf("map list: %v", err)
	}
	var want strings.Builder
	for _, m := range append(defaultMappings(), newMapping("/local", "http://127.0.0.1:8080")) {
		want.WriteString(m.Prefix + "\t" + m.firstURL() + "\n")
	}
	lines := strings.SplitAfter(want.String(), "\n")
	got := strings.SplitAfter(stdout, "\n")
	if len(got) != len(lines) {
		t.Fatalf("map list = %q, want the defaults and /local", stdout)
	}
	for _, l := range lines {
		if !strings.Contains(stdout, l) {
			t.Errorf("map list lacks %q:\n%s", l, stdout)
		}
	}
	if !strings.HasPrefix(stdout, "/cerebras\thttps://api.cerebras.ai\n") || !strings.HasSuffix(stdout, "/xai\thttps://api.x.ai\n") {
		t.Errorf("map list is not sorted by prefix:\n%s", stdout)
	}

	t.Run("rm", func(t *testing.T) {
		dir := t.TempDir()
		stdout, stderr, err := runMap(t, dir, "rm", "/openai")
		if err != nil || stdout != "removed /openai\n" {
			t.Fatalf("map rm /openai on a missing store = %q, %v", stdout, err)
		}
		if !strings.Contains(stderr, "created a new store at") {
			t.Errorf("stderr = %q, want it to say that a store was created", stderr)
		}
		if _, _, err := runMap(t, dir, "rm", "/openai"); !errors.Is(err, errMappingNotFound) {
			t.Errorf("second map rm /openai = %v, want errMappingNotFound", err)
		}
	})
}

// TestMapSetInvalid: set validates before it opens anything, and names
// the character a prefix may not hold.
func TestMapSetInvalid(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, _, err := runMap(t, dir, "set", "/ü", "https://x.example")
	if err == nil || !strings.Contains(err.Error(), "(found 'ü')") {
		t.Errorf("map set /ü = %v, want a message naming 'ü'", err)
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("an invalid map set created %s", dir)
	}
}

// TestMapSetRefusesSelfLoop: the CLI applies the loop rule with the
// configured listen address (LISTEN_ADDR, here the default :8000).
func TestMapSetRefusesSelfLoop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, _, err := runMap(t, dir, "set", "/loop", "http://127.0.0.1:8000/loop")
	if err == nil || !strings.Contains(err.Error(), "(a loop)") {
		t.Errorf("map set /loop -> own address = %v, want the loop rule", err)
	}
	if _, _, err := runMap(t, dir, "set", "/other", "http://127.0.0.1:8001"); err != nil {
		t.Errorf("map set to another local port: %v", err)
	}
}

// TestMapWhileServerRuns: while another handle holds the bolt file for
// writing (a running server), list and set fail within the lock wait with
// errStoreLocked and the admin API call to make instead.
func TestMapWhileServerRuns(t *testing.T) {
	dir := t.TempDir()
	server, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() }) // after the parallel subtests
	file := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(file, []byte(`{"targets":[{"url":"https://a.example"},{"url":"https://b.example"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"list"}, []string{"admin API", `curl -H "Authorization: Bearer $ADMIN_TOKEN" http://localhost:8000/api/mappings`}},
		{[]string{"set", "/x", "https://x.example"}, []string{"admin API", `-d '{"prefix":"/x","target":"https://x.example"}' http://localhost:8000/api/mappings`, "curl -X PUT"}},
		{[]string{"rm", "/x"}, []string{"admin API", `curl -X DELETE -H "Authorization: Bearer $ADMIN_TOKEN" http://localhost:8000/api/mappings/x`}},
		{[]string{"set", "/y", "https://a.example", "https://b.example", "-balance", "weighted"}, []string{"admin API",
			`-d '{"prefix":"/y","targets":[{"url":"https://a.example","weight":1},{"url":"https://b.example","weight":1}],"balance":"weighted",`,
			`curl -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -d '{"prefix":"/y",`, "http://localhost:8000/api/mappings/y"}},
		{[]string{"set", "/z", "-file", file}, []string{"-d '@" + file + "' http://localhost:8000/api/mappings", "/api/mappings/z"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			_, _, err := runMap(t, dir, tt.args...)
			if !errors.Is(err, errStoreLocked) {
				t.Fatalf("map %s while the file is held = %v, want errStoreLocked", tt.args[0], err)
			}
			for _, w := range append(tt.want, filepath.Join(dir, boltFileName)) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLocalAddr(t *testing.T) {
	for in, want := range map[string]string{
		":8000":          "localhost:8000",
		"0.0.0.0:8000":   "localhost:8000",
		"[::]:9000":      "localhost:9000",
		"127.0.0.1:8001": "127.0.0.1:8001",
		"proxy.lan:80":   "proxy.lan:80",
		"[::1]:8000":     "[::1]:8000",
	} {
		if got := localAddr(in); got != want {
			t.Errorf("localAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// readStore returns the mappings of the embedded store in dir, opened and
// closed again (no server holds it in these tests).
func readStore(t testing.TB, dir string) []Mapping {
	t.Helper()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatalf("openBoltStore: %v", err)
	}
	defer s.Close()
	ms, err := s.Mappings(context.Background())
	if err != nil {
		t.Fatalf("Mappings: %v", err)
	}
	return ms
}

// findMapping returns the mapping of prefix in ms, or fails the test.
func findMapping(t testing.TB, ms []Mapping, prefix string) Mapping {
	t.Helper()
	i := slices.IndexFunc(ms, func(m Mapping) bool { return m.Prefix == prefix })
	if i < 0 {
		t.Fatalf("%s is not stored", prefix)
	}
	return ms[i]
}

// writeFile writes content to a new file in a temporary directory and
// returns its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestMapSetObject: set takes several targets and the options of SPEC §9
// (before or after its arguments, with - or --), or a -file holding the
// mapping object; it stores exactly that mapping, replacing every option
// of an existing one, and list and set show the targets and the options
// that are not at their default. A plain mapping keeps its original line.
func TestMapSetObject(t *testing.T) {
	file := writeFile(t, "m.json", `{"prefix":"/f","targets":[{"url":"https://a.example","weight":2},{"url":"https://b.example"}],"balance":"weighted","retry_on":[]}`)
	noPrefix := writeFile(t, "n.json", `{"targets":[{"url":"https://a.example"}],"stream_idle_timeout":"2m"}`)
	tests := []struct {
		name    string
		args    []string
		want    Mapping
		setLine string // stdout of set
		line    string // of list
	}{
		{"options after the targets",
			[]string{"set", "/multi", "https://a.example", "http://127.0.0.1:11434/v1", "-balance", "weighted", "-weight", "3,1", "-retry-on", "429,503", "-stream-idle-timeout", "30s"},
			Mapping{Prefix: "/multi", Targets: []Target{{URL: "https://a.example", Weight: 3}, {URL: "http://127.0.0.1:11434/v1", Weight: 1}},
				Balance: balanceWeighted, RetryOn: []int{429, 503}, StreamIdleTimeout: 30 * time.Second},
			"/multi -> https://a.example,http://127.0.0.1:11434/v1 balance=weighted weight=3,1 retry-on=429,503 stream-idle-timeout=30s\n",
			"/multi\thttps://a.example,http://127.0.0.1:11434/v1\tbalance=weighted weight=3,1 retry-on=429,503 stream-idle-timeout=30s\n"},
		{"options first, double dashes, no retries",
			[]string{"set", "--retry-on", "", "/two", "--weight=1,1", "https://a.example", "https://b.example"},
			Mapping{Prefix: "/two", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example"}}, RetryOn: []int{}},
			"/two -> https://a.example,https://b.example retry-on=none\n",
			"/two\thttps://a.example,https://b.example\tretry-on=none\n"},
		{"several targets and no option",
			[]string{"set", "/failover", "https://a.example", "https://b.example", "https://c.example"},
			Mapping{Prefix: "/failover", Targets: []Target{{URL: "https://a.example"}, {URL: "https://b.example"}, {URL: "https://c.example"}}},
			"/failover -> https://a.example,https://b.example,https://c.example\n",
			"/failover\thttps://a.example,https://b.example,https://c.example\n"},
		{"one target with an option",
			[]string{"set", "/idle", "https://a.example", "-stream-idle-timeout", "1m30s"},
			Mapping{Prefix: "/idle", Targets: []Target{{URL: "https://a.example"}}, StreamIdleTimeout: 90 * time.Second},
			"/idle -> https://a.example stream-idle-timeout=1m30s\n",
			"/idle\thttps://a.example\tstream-idle-timeout=1m30s\n"},
		{"file with its prefix",
			[]string{"set", "-file", file},
			Mapping{Prefix: "/f", Targets: []Target{{URL: "https://a.example", Weight: 2}, {URL: "https://b.example"}}, Balance: balanceWeighted, RetryOn: []int{}},
			"/f -> https://a.example,https://b.example balance=weighted weight=2,1 retry-on=none\n",
			"/f\thttps://a.example,https://b.example\tbalance=weighted weight=2,1 retry-on=none\n"},
		{"file with the same prefix as the argument",
			[]string{"set", "/f", "-file", file},
			Mapping{Prefix: "/f", Targets: []Target{{URL: "https://a.example", Weight: 2}, {URL: "https://b.example"}}, Balance: balanceWeighted, RetryOn: []int{}},
			"/f -> https://a.example,https://b.example balance=weighted weight=2,1 retry-on=none\n",
			"/f\thttps://a.example,https://b.example\tbalance=weighted weight=2,1 retry-on=none\n"},
		{"file without a prefix",
			[]string{"set", "--file", noPrefix, "/n"},
			Mapping{Prefix: "/n", Targets: []Target{{URL: "https://a.example"}}, StreamIdleTimeout: 2 * time.Minute},
			"/n -> https://a.example stream-idle-timeout=2m0s\n",
			"/n\thttps://a.example\tstream-idle-timeout=2m0s\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			// Over an existing plain mapping: set replaces the whole of it.
			if _, _, err := runMap(t, dir, "set", tt.want.Prefix, "https://old.example"); err != nil {
				t.Fatal(err)
			}
			stdout, _, err := runMap(t, dir, tt.args...)
			if err != nil || stdout != tt.setLine {
				t.Fatalf("map set = %q, %v; want %q", stdout, err, tt.setLine)
			}
			if got, want := storedForm(findMapping(t, readStore(t, dir), tt.want.Prefix)), storedForm(tt.want); got != want {
				t.Errorf("stored %s, want %s", got, want)
			}
			stdout, _, err = runMap(t, dir, "list")
			if err != nil || !strings.Contains(stdout, "\n"+tt.line) {
				t.Errorf("map list = %q, %v; want the line %q", stdout, err, tt.line)
			}
			// Back to the original form: the original line, every option gone.
			stdout, _, err = runMap(t, dir, "set", tt.want.Prefix, "https://plain.example")
			if err != nil || stdout != tt.want.Prefix+" -> https://plain.example\n" {
				t.Errorf("map set of one target = %q, %v", stdout, err)
			}
			if m := findMapping(t, readStore(t, dir), tt.want.Prefix); !m.plain() {
				t.Errorf("after set of one URL, %s = %+v, want a plain mapping", tt.want.Prefix, m)
			}
			if stdout, _, _ := runMap(t, dir, "list"); !strings.Contains(stdout, "\n"+tt.want.Prefix+"\thttps://plain.example\n") {
				t.Errorf("map list = %q, want the original line for %s", stdout, tt.want.Prefix)
			}
		})
	}
}

// TestMapSetObjectInvalid: each wrong argument, option or file is an
// error naming what is wrong, before any store is opened or created.
func TestMapSetObjectInvalid(t *testing.T) {
	var seventeen []string
	for i := range 17 {
		seventeen = append(seventeen, fmt.Sprintf("https://t%d.example", i))
	}
	keyFile := writeFile(t, "key.json", `{"targets":[{"url":"https://a.example","key":"sk-never-printed-1234"}]}`)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"set", "/x"}, "at least one TARGET"},
		{"no prefix", []string{"set"}, "give PREFIX"},
		{"17 targets", append([]string{"set", "/x"}, seventeen...), "targets must hold 1 to 16 targets, not 17"},
		{"second URL bad", []string{"set", "/x", "https://a.example", "ftp://b.example"}, "targets[1].url must use the http or https scheme"},
		{"weights fewer than targets", []string{"set", "/x", "https://a.example", "https://b.example", "-weight", "2"}, "-weight gives 1 weights for 2 targets"},
		{"weight 0", []string{"set", "/x", "https://a.example", "https://b.example", "-weight", "0,1"}, `each weight must be an integer from 1 to 1000 (found "0")`},
		{"weight 1001", []string{"set", "/x", "https://a.example", "-weight", "1001"}, "from 1 to 1000"},
		{"weight not a number", []string{"set", "/x", "https://a.example", "-weight", "two"}, `(found "two")`},
		{"unknown balance", []string{"set", "/x", "https://a.example", "-balance", "random"}, `balance must be "failover" or "weighted"`},
		{"retry-on 302", []string{"set", "/x", "https://a.example", "-retry-on", "429,302"}, "retry_on must hold statuses from 400 to 599 (found 302)"},
		{"retry-on not a status", []string{"set", "/x", "https://a.example", "-retry-on", "5xx"}, `-retry-on: "5xx" is not a status`},
		{"bad duration", []string{"set", "/x", "https://a.example", "-stream-idle-timeout", "soon"}, `-stream-idle-timeout: "soon" is not a duration`},
		{"duration over 24h", []string{"set", "/x", "https://a.example", "-stream-idle-timeout", "25h"}, "stream_idle_timeout must be a duration from 0s to 24h"},
		{"unknown option", []string{"set", "/x", "https://a.example", "-balanse", "weighted"}, "flag provided but not defined: -balanse"},
		{"file and targets", []string{"set", "/x", "https://a.example", "-file", keyFile}, "with -file, give at most PREFIX"},
		{"file and an option", []string{"set", "/x", "-file", keyFile, "-balance", "weighted"}, "-balance with -file: put the options in the file"},
		{"file missing", []string{"set", "/x", "-file", filepath.Join(t.TempDir(), "none.json")}, "no such file"},
		{"file with an unknown field", []string{"set", "-file", writeFile(t, "u.json", `{"prefix":"/x","traget":"https://a.example"}`)}, `unknown field "traget"`},
		{"file with a wrong type", []string{"set", "-file", writeFile(t, "w.json", `{"prefix":"/x","targets":[{"url":"https://a.example","weight":"2"}]}`)}, `field "targets.weight" must be a JSON integer`},
		{"file with trailing data", []string{"set", "-file", writeFile(t, "t.json", `{"prefix":"/x","target":"https://a.example"} {}`)}, "more data after it"},
		{"file not JSON", []string{"set", "-file", writeFile(t, "j.json", `prefix: /x`)}, "is not valid JSON"},
		{"file too large", []string{"set", "-file", writeFile(t, "big.json", `{"prefix":"/x","target":"https://a.example"}`+strings.Repeat(" ", maxAdminBody))}, "must be at most 64 KiB"},
		{"file weight 0", []string{"set", "-file", writeFile(t, "z.json", `{"prefix":"/x","targets":[{"url":"https://a.example","weight":0}]}`)}, "targets[0].weight must be an integer from 1 to 1000"},
		{"file with a key on passthrough", []string{"set", "/x", "-file", keyFile}, `targets[0].key is only allowed with "auth": "keys"`},
		{"file prefix differs", []string{"set", "/y", "-file", writeFile(t, "p.json", `{"prefix":"/x","target":"https://a.example"}`)}, `the prefix in`},
		{"file and no prefix anywhere", []string{"set", "-file", writeFile(t, "np.json", `{"target":"https://a.example"}`)}, "prefix is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			stdout, stderr, err := runMap(t, dir, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("map %q = %v (stdout %q), want an error containing %q", tt.args, err, stdout, tt.want)
			}
			if strings.Contains(err.Error()+stdout+stderr, "sk-never-printed") {
				t.Errorf("the output holds the key: %v %q %q", err, stdout, stderr)
			}
			if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("an invalid map set created %s", dir)
			}
		})
	}
}

// TestMapSetKeepsKeys: like a PUT of the admin API, set keeps the stored
// key of a target that gives none while its URL is unchanged, and the
// listing shows only its hint. The keyed mapping is put into the store
// directly.
func TestMapSetKeepsKeys(t *testing.T) {
	const key = "sk-stored-secret-abcdwxyz"
	dir := t.TempDir()
	s, err := openBoltStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	keyed := Mapping{Prefix: "/k", Auth: authKeys, Targets: []Target{{URL: "https://a.example", Key: key}, {URL: "https://b.example"}}}
	if err := s.CreateMapping(context.Background(), keyed); err != nil {
		t.Fatal(err)
	}
	s.Close()

	stdout, _, err := runMap(t, dir, "list")
	if want := "/k\thttps://a.example,https://b.example\tauth=keys key[0]=…wxyz\n"; err != nil || !strings.Contains(stdout, want) {
		t.Errorf("map list = %q, %v; want the line %q", stdout, err, want)
	}
	if strings.Contains(stdout, "secret") {
		t.Errorf("map list shows the key: %q", stdout)
	}
	// The kept key makes a passthrough mapping, which is refused; the
	// message says how to remove the key, and the store is unchanged.
	_, _, err = runMap(t, dir, "set", "/k", "https://a.example", "https://b.example")
	if err == nil || !strings.Contains(err.Error(), "targets[0].key") || !strings.Contains(err.Error(), `give "key": ""`) {
		t.Errorf("map set leaving the key out = %v, want the kept key refused and how to remove it", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Errorf("the error shows the key: %v", err)
	}
	if got := storedForm(findMapping(t, readStore(t, dir), "/k")); got != storedForm(keyed) {
		t.Errorf("a refused set changed /k to %s", got)
	}
	// "key": "" removes it; a changed URL would drop it.
	clear := writeFile(t, "clear.json", `{"targets":[{"url":"https://a.example","key":""},{"url":"https://b.example"}]}`)
	if _, _, err := runMap(t, dir, "set", "/k", "-file", clear); err != nil {
		t.Fatalf("map set with \"key\": \"\": %v", err)
	}
	if m := findMapping(t, readStore(t, dir), "/k"); m.Targets[0].Key != "" || m.auth() != authPassthrough {
		t.Errorf("after removing the key /k = %+v", m)
	}
}
