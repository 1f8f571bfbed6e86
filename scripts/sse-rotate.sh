#!/usr/bin/env bash
# sse-rotate.sh: SSE event latency and CPU of several proxies, measured in
# rounds whose order changes, so that no proxy always runs in one slot (the
# bench harness's fixed order measures the proxy in the second slot 3-5 %
# slower at p50 when both are the same program; see README, Performance).
# ORDER=shuffle (the default) runs each round in a random order (seeded by
# the round, SEED; the same for every run): a rotation (ORDER=rotate)
# keeps each proxy right after the same other one in every round, and
# that predecessor moves it too (docs/performance.md, "The first event
# under a burst, measured apart (K)": a second baseline read 0.81x the
# first in rotation, 0.98x shuffled). Uses the bench harness's binary for
# the upstream, the baseline and the client.
#
#   go build -o /tmp/apiproxy . && (cd ../shared/bench && go build -o /tmp/bench .)
#   scripts/sse-rotate.sh 16 \
#     'baseline=exec /tmp/bench baseline -listen {ADDR} -target {UPSTREAM}' \
#     'apiproxy=export DATA_DIR=$(mktemp -d) LOG_LEVEL=warn; /tmp/apiproxy map set /openai {UPSTREAM} >/dev/null && exec /tmp/apiproxy -listen {ADDR}'
#
# Streams as the harness's sse-wide (300 streams, 30 events 50 ms apart,
# started over 1 s); C, N, IV and RAMP override (sse: C=50 N=50 IV=20
# RAMP=0s). TOGETHER=1 measures all the proxies at once instead, C/n
# streams each, in every round: the same moment of the machine for all,
# which makes small differences show in fewer rounds, but they compete for
# the CPUs, as they do not in the harness. Prints, per proxy, the median
# over rounds 2.. of its CPU (µs per round, from schedstat), its event latency p50
# and p99, and of the same-round ratios to the first proxy, with how many
# rounds were at or under 1. FIRST=1 reads the streams with the first-event
# client instead (scripts/firstevent, built to $FIRSTEVENT, default
# /tmp/firstevent; not with TOGETHER): its p50 is then the p50 of the
# streams' first events, its p99 that of all events, and each round's
# streams are on new connections, as the harness's are.
# IDLE=SECONDS sleeps that long before each round: with three targets
# and IDLE=2.5 each sees about 5 s between its rounds, as in compare.sh.
set -euo pipefail
ROUNDS=$1
shift
. "$(dirname "$0")/bench-lib.sh"
UP_ADDR=127.0.0.1:${UP_PORT:-9301}
OUT=$work/rounds
start_upstream "$UP_ADDR"
start_proxies "$UP_ADDR" "${FIRST_PORT:-9330}" "$@"
ticks() { cat /proc/$1/task/*/schedstat 2>/dev/null | awk "{s+=\$1} END{printf \"%d\", s/1000}"; }
n=${#names[@]}
sse() { # sse PORT STREAMS: one bench sse round against the proxy on PORT
  if [ -n "${FIRST:-}" ]; then
    "${FIRSTEVENT:-/tmp/firstevent}" -url "http://127.0.0.1:$1/openai" -c "$2" -n "${N:-30}" \
      -interval-ms "${IV:-50}" -ramp "${RAMP:-1s}" 2>&1
    return
  fi
  "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c "$2" -n "${N:-30}" \
    -interval-ms "${IV:-50}" -rounds 1 -ramp "${RAMP:-1s}" 2>&1
}
lat() { awk '/lat p50/{a=$3} /lat p99/{b=$3} /first_p50/{a=$7; b=$5} END{print a, b}' "$@"; }
for r in $(seq "$ROUNDS"); do
  sleep "${IDLE:-0}"
  if [ -n "${TOGETHER:-}" ]; then
    # All proxies at once, C/n streams each: they meet the same moment of
    # a noisy machine, and compete for its CPUs.
    files=() clients=() c0=()
    for k in $(seq 0 $((n - 1))); do
      c0[k]=$(ticks "${procs[$k]}")
      files[k]=$(mktemp)
      sse "${ports[$k]}" $((${C:-300} / n)) >"${files[k]}" &
      clients+=($!)
    done
    wait "${clients[@]}"
    for k in $(seq 0 $((n - 1))); do
      echo "$r ${names[$k]} $(lat "${files[k]}") $(($(ticks "${procs[$k]}") - c0[k]))" >>"$OUT"
      rm -f "${files[k]}"
    done
    continue
  fi
  if [ "${ORDER:-shuffle}" = rotate ]; then
    order=$(seq 0 $((n - 1)) | awk -v r="$r" -v n="$n" '{print (r + $1) % n}')
  else
    order=$(python3 -c "import random; random.seed($r * 7919 + ${SEED:-1}); l = list(range($n)); random.shuffle(l); print(*l)")
  fi
  for k in $order; do
    c0=$(ticks "${procs[$k]}")
    res=$(sse "${ports[$k]}" "${C:-300}")
    c1=$(ticks "${procs[$k]}")
    echo "$r ${names[$k]} $(echo "$res" | lat) $((c1 - c0))" >>"$OUT"
  done
done
python3 - "$OUT" "${names[0]}" <<'PY'
import collections, statistics as st, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, p50, p99, cpu = line.split()
    rows[int(r)][name] = (float(p50), float(p99), float(cpu))
ref, rounds = sys.argv[2], [r for r in rows if r > 1]
for name in rows[1]:
    med = lambda i: st.median(rows[r][name][i] for r in rounds)
    ratio = lambda i: [rows[r][name][i] / rows[r][ref][i] for r in rounds]
    p50, p99 = ratio(0), ratio(1)
    print(f"{name:12s} cpu {med(2):.0f}  p50 {med(0):.3f} ms ({st.median(p50):.3f}x, {sum(x <= 1 for x in p50)}/{len(p50)} <= 1)"
          f"  p99 {med(1):.2f} ms ({st.median(p99):.3f}x, {sum(x <= 1 for x in p99)}/{len(p99)} <= 1)")
PY
