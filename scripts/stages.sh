#!/usr/bin/env bash
# stages.sh: where a stream's start spends its time in several proxies,
# read from the loopback packets (tcpdump), so that nothing in the proxies
# is slowed by the measurement. docs/performance.md, "A stream's start,
# packet by packet", has figures.
#
#   go build -o /tmp/apiproxy . && (cd ../shared/bench && go build -o /tmp/bench .)
#   apt-get install -y tcpdump
#   scripts/stages.sh \
#     'baseline=exec /tmp/bench baseline -listen {ADDR} -target {UPSTREAM}' \
#     'apiproxy=export DATA_DIR=$(mktemp -d) LOG_LEVEL=warn; /tmp/apiproxy map set /openai {UPSTREAM} >/dev/null && exec /tmp/apiproxy -listen {ADDR}'
#
# Each proxy is given as NAME=CMD, CMD run with bash as sse-rotate.sh runs
# it ({ADDR} and {UPSTREAM} replaced; it must serve /openai/<rest>). Each
# stream is a `bench sse -c 1 -n 2` request (keep-alive, one at a time);
# the proxies carry batches of N (200) streams in turn, R (3) times. From
# the packets that carry data, per stream: the request reaching the proxy
# (A), the proxy writing the request head to the upstream (B) and its body
# (C), the upstream's response head and first event (D), the proxy writing
# them to the client (E). Prints, per proxy, the median and quartiles of
# B-A (the proxy's request path), C-B, D-C (the upstream's time), E-D (the
# proxy's response path) and E-A, and the median of E-A per batch. The
# upstream, the client and `bench baseline` are the harness's binary
# (BENCH, /tmp/bench).
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
UP_PORT=${UP_PORT:-9420}
UP=127.0.0.1:$UP_PORT
start_upstream "$UP"
start_proxies "$UP" $((UP_PORT + 1)) "$@"
streams() { "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c 1 -n 2 -interval-ms 1 -rounds "$2" >/dev/null; }
for p in "${ports[@]}"; do streams "$p" 50; done # warm the upstream pools
filter="tcp and (tcp[tcpflags] & tcp-push != 0) and (port $UP_PORT$(printf ' or port %s' "${ports[@]}"))"
tcpdump -i lo -n -tt --time-stamp-precision=micro -l "$filter" >"$work/packets.txt" 2>/dev/null &
td=$!
sleep 1 # tcpdump attaches
for _ in $(seq "${R:-3}"); do
  for p in "${ports[@]}"; do
    streams "$p" "${N:-200}"
  done
done
sleep 0.5
kill "$td"
wait "$td" 2>/dev/null || true
python3 - "$work/packets.txt" "$UP_PORT" "${ports[*]}" "${names[*]}" <<'EOF'
import re, statistics, sys
path, up = sys.argv[1], int(sys.argv[2])
ports, names = list(map(int, sys.argv[3].split())), sys.argv[4].split()
pat = re.compile(r'(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): .* length (\d+)')
pk = [(float(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in map(pat.match, open(path)) if m]
res = {p: [] for p in ports}
batches = {p: [] for p in ports}
last = None
for i, (a, src, dst, n) in enumerate(pk):
    if dst not in res or n < 200:  # not a stream's request to a proxy
        continue
    b = c = d = e = None
    for t, s2, d2, _ in pk[i + 1:i + 12]:
        if d2 == up and b is None: b = t
        elif d2 == up and c is None: c = t
        elif s2 == up and d is None: d = t
        elif s2 == dst and e is None: e = t; break
    if None in (b, c, d, e):
        continue
    res[dst].append((b - a, c - b, d - c, e - d, e - a))
    if dst != last:
        batches[dst].append([])
        last = dst
    batches[dst][-1].append(e - a)
labels = ["request path (B-A)", "head to body (C-B)", "upstream (D-C)", "response path (E-D)", "total (E-A)"]
for port, name in zip(ports, names):
    v = res[port]
    print(f"{name}: {len(v)} streams, µs: median [quartiles]")
    for k, label in enumerate(labels):
        xs = sorted(x[k] * 1e6 for x in v)
        if xs:
            print(f"  {label:20s} {statistics.median(xs):6.1f} [{xs[len(xs) // 4]:.1f}-{xs[3 * len(xs) // 4]:.1f}]")
    print("  total per batch      " + " ".join(f"{statistics.median(b) * 1e6:.1f}" for b in batches[port]))
EOF
