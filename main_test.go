package main

import (
	"context"
	"runtime/debug"
	"strings"
	"testing"
)

// TestRunMainCommands: help and version print to stdout and succeed, like
// -version; a stray argument after them is refused.
func TestRunMainCommands(t *testing.T) {
	getenv := func(string) string { return "" }
	tests := []struct {
		args    []string
		want    []string // in stdout
		wantErr bool
	}{
		{[]string{"help"}, []string{"Usage:", "apiproxy map ", "apiproxy version", "-stream-handoff"}, false},
		{[]string{"version"}, []string{"apiproxy ", "  go        go1."}, false},
		{[]string{"-version"}, []string{"apiproxy ", "  go        go1."}, false},
		{[]string{"help", "me"}, nil, true},
		{[]string{"version", "2"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			err := runMain(context.Background(), getenv, tt.args, &stdout, &stderr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("runMain(%q) = %v, want error %v", tt.args, err, tt.wantErr)
			}
			for _, want := range tt.want {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
		})
	}
}

func TestVersionText(t *testing.T) {
	info := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "apiproxy", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "-trimpath", Value: "true"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	want := "apiproxy v1.2.3\n" +
		"  revision  0123456789abcdef\n" +
		"  time      2026-01-02T03:04:05Z\n" +
		"  modified  true\n" +
		"  go        go1.26.0\n"
	if got := versionText(info); got != want {
		t.Errorf("versionText =\n%s\nwant\n%s", got, want)
	}
	if got := versionText(&debug.BuildInfo{GoVersion: "go1.26.0"}); got != "apiproxy (unknown)\n  go        go1.26.0\n" {
		t.Errorf("versionText without module version or VCS = %q", got)
	}
}
