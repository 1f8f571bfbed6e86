package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"list"}, []string{"admin API", `curl -H "Authorization: Bearer $ADMIN_TOKEN" http://localhost:8000/api/mappings`}},
		{[]string{"set", "/x", "https://x.example"}, []string{"admin API", `-d '{"prefix":"/x","target":"https://x.example"}' http://localhost:8000/api/mappings`, "curl -X PUT"}},
		{[]string{"rm", "/x"}, []string{"admin API", `curl -X DELETE -H "Authorization: Bearer $ADMIN_TOKEN" http://localhost:8000/api/mappings/x`}},
	}
	for _, tt := range tests {
		t.Run(tt.args[0], func(t *testing.T) {
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
