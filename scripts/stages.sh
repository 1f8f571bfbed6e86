#!/usr/bin/env bash
# stages.sh: where a stream's start spends its time, in apiproxy and in the
# bench harness's baseline proxy, read from the loopback packets (tcpdump),
# so that nothing in either process is slowed by the measurement.
# docs/performance.md, "A stream's start, packet by packet", has figures.
#
#   go build -o /tmp/apiproxy . && (cd ../shared/bench && go build -o /tmp/bench .)
#   apt-get install -y tcpdump
#   scripts/stages.sh            # 3 batches of 200 one-at-a-time streams per proxy
#   R=2 N=100 EXTRA_ENV='RAW_IO=off' scripts/stages.sh
#
# Each stream is a `bench sse -c 1 -n 2` request (keep-alive, one at a
# time), the proxies in alternating batches. From the packets that carry
# data, per stream: the request reaching the proxy (A), the proxy writing
# the request head to the upstream (B) and its body (C), the upstream's
# response head and first event (D), the proxy writing them to the client
# (E). Prints the median and quartiles of B-A (the proxy's request path),
# C-B, D-C (the upstream's time), E-D (the proxy's response path) and E-A.
# APIPROXY (/tmp/apiproxy) and BENCH (/tmp/bench) name the binaries;
# EXTRA_ENV is added to apiproxy's environment.
set -euo pipefail
BENCH=${BENCH:-/tmp/bench} APIPROXY=${APIPROXY:-/tmp/apiproxy}
UP_PORT=${UP_PORT:-9420} BASE_PORT=${BASE_PORT:-9421} AP_PORT=${AP_PORT:-9422}
UP=127.0.0.1:$UP_PORT
pids=() dir=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$BENCH" upstream -addr "$UP" >/dev/null 2>&1 &
pids+=($!)
"$BENCH" wait -url "http://$UP/small" -timeout 10s
"$BENCH" baseline -listen "127.0.0.1:$BASE_PORT" -target "http://$UP" >/dev/null 2>&1 &
pids+=($!)
DATA_DIR=$dir LOG_LEVEL=warn "$APIPROXY" map set /openai "http://$UP" >/dev/null 2>&1
env DATA_DIR="$dir" LOG_LEVEL=warn ${EXTRA_ENV:-} "$APIPROXY" -listen "127.0.0.1:$AP_PORT" >/dev/null 2>&1 &
pids+=($!)
streams() { "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c 1 -n 2 -interval-ms 1 -rounds "$2" >/dev/null; }
for port in "$BASE_PORT" "$AP_PORT"; do
  "$BENCH" wait -url "http://127.0.0.1:$port/openai/small" -timeout 30s
  streams "$port" 50 # warm the upstream pools
done
tcpdump -i lo -n -tt --time-stamp-precision=micro -l \
  "tcp and (port $UP_PORT or port $BASE_PORT or port $AP_PORT) and (tcp[tcpflags] & tcp-push != 0)" \
  >"$dir/packets.txt" 2>/dev/null &
td=$!
"$BENCH" wait -url "http://$UP/small" -timeout 10s # tcpdump attaches meanwhile
sleep 1
for _ in $(seq "${R:-3}"); do
  for port in "$BASE_PORT" "$AP_PORT"; do streams "$port" "${N:-200}"; done
done
sleep 0.5
kill "$td"
wait "$td" 2>/dev/null || true
python3 - "$dir/packets.txt" "$UP_PORT" "$BASE_PORT" "$AP_PORT" <<'EOF'
import re, statistics, sys
path, up, base, ap = sys.argv[1], *map(int, sys.argv[2:])
pat = re.compile(r'(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): .* length (\d+)')
pk = [(float(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in map(pat.match, open(path)) if m]
res = {base: [], ap: []}
for i, (a, src, dst, n) in enumerate(pk):
    if dst not in res or n < 200:  # not a stream's request to a proxy
        continue
    b = c = d = e = None
    for t, s2, d2, _ in pk[i + 1:i + 12]:
        if d2 == up and b is None: b = t
        elif d2 == up and c is None: c = t
        elif s2 == up and d is None: d = t
        elif s2 == dst and e is None: e = t; break
    if None not in (b, c, d, e):
        res[dst].append((b - a, c - b, d - c, e - d, e - a))
names = ["request path (B-A)", "head to body (C-B)", "upstream (D-C)", "response path (E-D)", "total (E-A)"]
for port, name in ((base, "baseline"), (ap, "apiproxy")):
    v = res[port]
    print(f"{name}: {len(v)} streams, µs: median [quartiles]")
    for k, label in enumerate(names):
        xs = sorted(x[k] * 1e6 for x in v)
        if xs:
            print(f"  {label:20s} {statistics.median(xs):6.1f} [{xs[len(xs) // 4]:.1f}-{xs[3 * len(xs) // 4]:.1f}]")
EOF
