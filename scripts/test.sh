#!/usr/bin/env bash
# Runs every test of apiproxy on a fresh Debian machine: installs what the
# tests need when it is missing (redis-server, Chromium, the e2e npm
# packages), starts a throwaway redis-server on a spare loopback port, then
# runs go vet, go test -race, the proxy, stream, fault and shutdown tests
# once more with STREAM_HANDOFF=off (the plain ReverseProxy path must pass
# them too) and with RAW_IO=off (net.Conn's socket I/O), the proxy and
# stream tests without -race (under which rawIO uses syscall.Read and
# Write), the package's
# tests once more with STREAM_HANDOFF_AFTER=0
# (every stream handed off at once), and the browser suite. CI (.ci/run) calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

workdir=$(mktemp -d)
redis_pid=""
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT

# A spare port: ask the kernel for one, then start redis-server on it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$workdir" >"$workdir/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" ping >/dev/null
export APIPROXY_TEST_REDIS_ADDR="127.0.0.1:$port"
# Tests that need Redis or Chromium fail instead of skipping when this is set.
export APIPROXY_TEST_STRICT=1

echo "test.sh: go vet"
go vet ./...
echo "test.sh: go test -race (redis at $APIPROXY_TEST_REDIS_ADDR)"
go test -race -count=1 -timeout 20m ./...
echo "test.sh: proxy, stream, fault and shutdown tests with STREAM_HANDOFF=off"
STREAM_HANDOFF=off go test -race -count=1 -timeout 20m \
  -run '^(TestProxy|TestStream|TestClientCloses|TestFaults|TestShutdown|TestRun)' .
echo "test.sh: proxy, stream, fault and shutdown tests with RAW_IO=off"
RAW_IO=off go test -race -count=1 -timeout 20m \
  -run '^(TestProxy|TestStream|TestClientCloses|TestFaults|TestShutdown|TestRun|TestRawIO)' .
echo "test.sh: proxy, stream and raw I/O tests without the race detector (rawIO's own system calls)"
go test -count=1 -timeout 20m -run '^(TestProxy|TestStream|TestRawIO|TestRawSock)' .
echo "test.sh: every test of the package with STREAM_HANDOFF_AFTER=0 (every stream handed off as its head comes)"
STREAM_HANDOFF_AFTER=0 go test -race -count=1 -timeout 20m .

if [ -f e2e/package.json ]; then
  echo "test.sh: browser tests (e2e/)"
  # npm ci again when package-lock.json changed since the last install
  # (npm writes node_modules/.package-lock.json on every install).
  (cd e2e && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm test)
fi
echo "test.sh: all tests passed"
