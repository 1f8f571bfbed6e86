# bench-lib.sh: what the measurement scripts (sse-rotate.sh, start-cost.sh,
# stages.sh) share, sourced by them: the bench harness's mock upstream and
# the proxies under test, all stopped when the script exits, and a
# temporary directory ($work), removed then. BENCH names the harness's
# binary (/tmp/bench).
BENCH=${BENCH:-/tmp/bench}
pids=()
work=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# start_upstream ADDR: the harness's mock upstream on ADDR, once it answers.
start_upstream() {
  "$BENCH" upstream -addr "$1" >/dev/null 2>&1 &
  pids+=($!)
  "$BENCH" wait -url "http://$1/small" -timeout 10s
}

# start_proxies UPSTREAM_ADDR FIRST_PORT NAME=CMD...: runs each CMD with
# bash, {ADDR} (127.0.0.1 and the next port from FIRST_PORT) and {UPSTREAM}
# replaced, and waits until it serves /openai/small. Sets names, ports and
# procs (the PIDs of the bash that ran each CMD: exec the server in CMD).
start_proxies() {
  local up=$1 port=$2 spec name cmd
  shift 2
  names=() ports=() procs=()
  for spec in "$@"; do
    name=${spec%%=*} cmd=${spec#*=}
    cmd=${cmd//\{ADDR\}/127.0.0.1:$port}
    cmd=${cmd//\{UPSTREAM\}/http://$up}
    bash -c "$cmd" >/dev/null 2>&1 &
    pids+=($!) procs+=($!) names+=("$name") ports+=("$port")
    "$BENCH" wait -url "http://127.0.0.1:$port/openai/small" -timeout 30s
    port=$((port + 1))
  done
}
