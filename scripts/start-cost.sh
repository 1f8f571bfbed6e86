#!/usr/bin/env bash
# start-cost.sh: what a stream's start costs in apiproxy and in the bench
# harness's baseline proxy, side by side on one mock upstream (the harness's
# binary). docs/performance.md, "What the harness can resolve, and a
# stream's start again", has the figures.
#
#   go build -o /tmp/apiproxy . && (cd ../shared/bench && go build -o /tmp/bench .)
#   scripts/start-cost.sh cpu 4    # CPU per short stream, new connections, 4 rounds
#   scripts/start-cost.sh lat 3    # unloaded TTFB and first-event latency, 3 rounds
#   scripts/start-cost.sh perf     # perf record -g of short streams on each proxy
#   scripts/start-cost.sh callees /tmp/start-cost-apiproxy.data 'main.(*proxy).serve'
#
# cpu: per round, REP (10) runs of `bench sse -c C -n 1` (C = 300; each run a
# new client, so new connections), the proxy's CPU clock ticks over them ÷
# streams. lat: `bench sse -c 1 -n 2 -rounds N` (N = 300), one stream at a
# time. perf: the cpu load once per proxy under `perf record -g -F 4000`;
# writes /tmp/start-cost-{baseline,apiproxy}.data and prints each one's
# sample total. callees: the inclusive share of all samples that each direct
# callee of FUNCTION takes. APIPROXY (/tmp/apiproxy) and BENCH (/tmp/bench)
# name the binaries; EXTRA_ENV is added to apiproxy's environment.
set -euo pipefail
APIPROXY=${APIPROXY:-/tmp/apiproxy}
mode=${1:-cpu}

if [ "$mode" = callees ]; then
  perf script -i "$2" -F ip,sym 2>/dev/null | python3 -c '
import collections, sys
parent = sys.argv[1]
stacks, cur = [], []
for line in sys.stdin:
    line = line.strip()
    if not line:
        if cur: stacks.append(cur)
        cur = []
        continue
    parts = line.split(None, 1)
    cur.append(parts[1].rsplit(" (", 1)[0] if len(parts) > 1 else "?")
if cur: stacks.append(cur)
callees, within = collections.Counter(), 0
for st in stacks:  # leaf first
    if parent in st:
        i = st.index(parent)
        within += 1
        callees[st[i - 1] if i > 0 else "<self>"] += 1
print(f"{parent}: {100 * within / max(len(stacks), 1):.2f}% of {len(stacks)} samples")
for name, n in callees.most_common(25):
    print(f"  {100 * n / len(stacks):6.2f}%  {name}")
' "$3"
  exit 0
fi

. "$(dirname "$0")/bench-lib.sh"
UP=127.0.0.1:${UP_PORT:-9400}
start_upstream "$UP"
start_proxies "$UP" "${BASE_PORT:-9401}" \
  "baseline=exec $BENCH baseline -listen {ADDR} -target {UPSTREAM}" \
  "apiproxy=export DATA_DIR=$work LOG_LEVEL=warn; $APIPROXY map set /openai {UPSTREAM} >/dev/null && exec env ${EXTRA_ENV:-} $APIPROXY -listen {ADDR}"
BASE_PORT=${ports[0]} AP_PORT=${ports[1]} base=${procs[0]} ap=${procs[1]}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
C=${C:-300} REP=${REP:-10}
short() { # short PORT: REP runs of C one-event streams, each run on new connections
  for _ in $(seq "$REP"); do
    "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c "$C" -n 1 -interval-ms 1 -rounds 1 -ramp 100ms >/dev/null
  done
}
per_stream() { # per_stream PORT PID: CPU µs per stream over one short load
  local t0 t1 hz
  hz=$(getconf CLK_TCK)
  t0=$(ticks "$2")
  short "$1"
  t1=$(ticks "$2")
  echo "scale=1; ($t1 - $t0) * 1000000 / $hz / ($REP * $C)" | bc
}

case "$mode" in
  cpu)
    short "$BASE_PORT"; short "$AP_PORT" # warm both upstream pools
    for k in $(seq "${2:-4}"); do
      b=$(per_stream "$BASE_PORT" "$base") a=$(per_stream "$AP_PORT" "$ap")
      echo "round $k: baseline $b µs/stream, apiproxy $a µs/stream, ratio $(echo "scale=3; $a / $b" | bc)"
    done ;;
  lat)
    for k in $(seq "${2:-3}"); do
      for t in "baseline:$BASE_PORT" "apiproxy:$AP_PORT"; do
        out=$("$BENCH" sse -url "http://127.0.0.1:${t#*:}/openai" -c 1 -n 2 -interval-ms 1 -rounds "${N:-300}")
        echo "round $k ${t%%:*}: $(echo "$out" | awk '/lat p50/{l=$3} /ttfb p50/{f=$3} END{print "first-event lat p50", l, "ms, ttfb p50", f, "ms"}')"
      done
    done ;;
  perf)
    short "$BASE_PORT"; short "$AP_PORT"
    for t in "baseline:$BASE_PORT:$base" "apiproxy:$AP_PORT:$ap"; do
      IFS=: read -r name port pid <<<"$t"
      perf record -F 4000 -g -p "$pid" -o "/tmp/start-cost-$name.data" -- sleep 600 >/dev/null 2>&1 &
      rec=$!
      sleep 0.5 # perf attaches
      short "$port"
      kill -INT "$rec"
      wait "$rec" || true
      echo "$name: $(perf report -i "/tmp/start-cost-$name.data" --stdio 2>/dev/null | grep -m1 'Event count')"
    done ;;
  *) echo "usage: $0 cpu|lat|perf [ROUNDS] | callees DATA FUNCTION" >&2; exit 2 ;;
esac
