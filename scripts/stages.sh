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
# the proxies carry batches of N (200) streams in turn, R (3) times. With
# C > 1, a batch is N/C bursts of C streams (`bench sse -c C -rounds 1
# -ramp RAMP`, RAMP 2ms), GAP (0.2 s) apart, each burst on new connections
# as each round of the harness is. A stream's packets on its two
# connections are paired by the stream number the upstream writes in its
# events. From the packets that carry data, per stream: the request
# reaching the proxy (A), the proxy writing the request head to the
# upstream (B) and its body (C), the upstream's response head and first
# event (D), the proxy writing them to the client (E). Prints, per proxy,
# the median and quartiles of B-A (the proxy's request path), C-B, D-C
# (the upstream's time), E-D (the proxy's response path) and E-A, and the
# median of E-A per batch. The upstream, the client and `bench baseline`
# are the harness's binary (BENCH, /tmp/bench).
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
UP_PORT=${UP_PORT:-9420}
UP=127.0.0.1:$UP_PORT
start_upstream "$UP"
start_proxies "$UP" $((UP_PORT + 1)) "$@"
C=${C:-1}
streams() { # streams PORT N: N streams, one at a time on one connection, or in bursts of C on new ones
  if [ "$C" -eq 1 ]; then
    "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c 1 -n 2 -interval-ms 1 -rounds "$2" >/dev/null
    return
  fi
  for _ in $(seq $(($2 / C))); do
    "$BENCH" sse -url "http://127.0.0.1:$1/openai" -c "$C" -n 2 -interval-ms 1 -rounds 1 -ramp "${RAMP:-2ms}" >/dev/null
    sleep "${GAP:-0.2}"
  done
}
for p in "${ports[@]}"; do streams "$p" 50; done # warm the upstream pools
filter="tcp and (tcp[tcpflags] & tcp-push != 0) and (port $UP_PORT$(printf ' or port %s' "${ports[@]}"))"
tcpdump -i lo -n -tt --time-stamp-precision=micro -A -s 600 -l "$filter" >"$work/packets.txt" 2>/dev/null &
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
head = re.compile(r'(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+):')
ident = re.compile(r'chatcmpl-bench-(\d+)')  # the upstream's stream number, in every event
pk = []  # [time, source port, destination port, payload as text]
for line in open(path, errors="replace"):
    m = head.match(line)
    if m:
        pk.append([float(m[1]), int(m[2]), int(m[3]), ""])
    elif pk:
        pk[-1][3] += line.rstrip("\n")
# A stream is followed on each of its two connections until its first event,
# whose stream number then pairs the two.
upreq, clreq = {}, {}  # requests without their first event yet, by connection
upside, clside = {}, {}  # stream number -> (B, C, D) / (proxy port, A, E)
for t, src, dst, text in pk:
    if dst == up:  # proxy to upstream: the request head (B), then its body (C)
        if "POST /" in text:
            upreq[src] = [t, None]
        elif src in upreq and upreq[src][1] is None:
            upreq[src][1] = t
    elif src == up:  # upstream to proxy: the response head and first event (D)
        m = ident.search(text)
        if m and dst in upreq:
            upside[int(m[1])] = (*upreq.pop(dst), t)
    elif dst in ports:  # client to proxy: the request (A)
        if "POST /" in text:
            clreq[(dst, src)] = t
    elif src in ports:  # proxy to client: the first event (E)
        m = ident.search(text)
        if m and (src, dst) in clreq:
            clside[int(m[1])] = (src, clreq.pop((src, dst)), t)
res = {p: [] for p in ports}
batches = {p: [] for p in ports}
last = None
for port, a, e, (b, c, d) in sorted(((*clside[i], upside[i]) for i in clside if i in upside), key=lambda s: s[1]):
    c = c or b  # head and body in one packet
    res[port].append((b - a, c - b, d - c, e - d, e - a))
    if port != last:
        batches[port].append([])
        last = port
    batches[port][-1].append(e - a)
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
