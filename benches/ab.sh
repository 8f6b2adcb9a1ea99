#!/usr/bin/env bash
# A/B of proxy binaries, alternating rounds against the peer harness's upstream (bench only,
# loopback only): each row is a route (`balance`, cache hits on 100 warmed accounts; `identity`,
# passthrough, never cached) at a number of connections. Prints req/s, p50, the proxy's CPU per
# request (user and system, from /proc) and its context switches per request.
#
#   benches/ab.sh /tmp/old-mono-proxy /tmp/new-mono-proxy      # ROUNDS=2 DUR=4, passthrough at 1 and 64
#   MODES="balance:64 identity:1" benches/ab.sh ...            # route:connections rows
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-/work/shared/bench}
export RUN_DIR=${RUN_DIR:-/dev/shm/mono-bench} LATENCY_MS=${LATENCY_MS:-50}
CTL=$BENCH/peers/ctl.sh
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-4}
MODES=${MODES:-identity:1 identity:64}
command -v wrk >/dev/null || { echo "ab: needs wrk (apt-get install wrk)" >&2; exit 1; }
"$CTL" start upstream >/dev/null 2>&1 || { echo "ab: cannot start the harness upstream" >&2; exit 1; }
trap '"$CTL" stop upstream >/dev/null 2>&1' EXIT
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s}'; }
row() { # pid route conns
  local pid=$1 route=$2 c=$3 t=2 u0 s0 u1 s1 c0 c1 out
  [[ $c == 1 ]] && t=1
  read -r u0 s0 < <(cpu "$pid"); c0=$(switches "$pid")
  out=$(BENCH_ROUTE=$route BENCH_IDS=100 BENCH_THREADS=$t wrk -t$t -c"$c" -d"${DUR}s" --latency \
        -s "$BENCH/wrk/ids.lua" http://127.0.0.1:18083)
  read -r u1 s1 < <(cpu "$pid"); c1=$(switches "$pid")
  awk -v n="$(awk '/requests in/ {print $1}' <<<"$out")" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
      -v p="$(awk '/ 50%/ {print $2}' <<<"$out")" -v r="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
      -v cs=$((c1 - c0)) -v name="$route/c$c" \
      'BEGIN { printf "  %-14s req/s=%8.0f p50=%-9s cpu/req=%6.2fus (user %5.2f sys %5.2f) switches/req=%.2f\n",
               name, r, p, (u + s) * 1e4 / n, u * 1e4 / n, s * 1e4 / n, cs / n }'
}
for r in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    MONO_SEC_KEY=test_sk_bench "$bin" --config "$HERE/peer.toml" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/18083) 2>/dev/null && break; sleep 0.1; done
    for k in $(seq 0 99); do
      curl -s -o /dev/null "http://127.0.0.1:18083/v2/accounts/666b166ce06b$(printf %03d "$k")/balance"
    done
    echo "round $r $bin"
    for m in $MODES; do row "$pid" "${m%:*}" "${m#*:}"; done
    kill $pid; wait $pid 2>/dev/null
  done
done
