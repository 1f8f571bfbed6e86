//go:build ignore

// init_redis seeds the default mappings into the Redis of
// API_PROXY_REDIS_URL (read from the environment or the repository's .env):
//
//	go run scripts/init_redis.go          add the defaults that are missing
//	go run scripts/init_redis.go -force   also reset changed ones to the default
//
// It is a thin wrapper around `apiproxy init-redis`, so that the default
// list (defaultMappings in mapping.go) and the Redis key names (redis.go)
// live in one place. Arguments and standard streams pass through, and its
// exit status is the command's.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

func main() {
	root := "."
	// go run compiles this file where it is; its directory's parent is the
	// repository root whatever the working directory.
	if _, file, _, ok := runtime.Caller(0); ok {
		root = filepath.Dir(filepath.Dir(file))
	}
	cmd := exec.Command("go", append([]string{"run", ".", "init-redis"}, os.Args[1:]...)...)
	cmd.Dir = root // main.go reads .env from the working directory
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "init_redis: %v\n", err)
		os.Exit(1)
	}
}
