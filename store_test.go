package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The Store contract runs over both stores in storecontract_test.go; the
// helpers beside the interface are tested here.

func TestNotify(t *testing.T) {
	ch := make(chan struct{}, 1)
	notify(ch)
	notify(ch) // coalesced with the pending one, never blocks
	if len(ch) != 1 {
		t.Errorf("after two notifies %d signals are pending, want 1", len(ch))
	}
	notify(nil) // a store without Changes: must not block
}

func TestWriteFileAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir")
	path := filepath.Join(dir, "f.json")
	for _, data := range []string{"first\n", "second, longer than the first\n", ""} {
		if err := writeFileAtomic(path, []byte(data)); err != nil {
			t.Fatalf("writeFileAtomic(%q): %v", data, err)
		}
		if got, err := os.ReadFile(path); err != nil || string(got) != data {
			t.Errorf("file holds %q, %v; want %q", got, err, data)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, %v; want 0600 (it may hold the admin token)", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %v, want only f.json (no temporary file left)", entries)
	}
}
