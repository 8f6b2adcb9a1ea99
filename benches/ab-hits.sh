#!/usr/bin/env bash
# A/B of proxy binaries on cache hits at 64 connections, alternating rounds against the peer
# harness's upstream (bench only, loopback only).
#
#   benches/ab-hits.sh /tmp/old-mono-proxy /tmp/new-mono-proxy     # ROUNDS=3 DUR=8 by default
#
# Each round starts each binary with benches/peer.toml, warms 100 accounts, runs wrk (2 threads,
# 64 connections, DUR seconds, the harness's ids.lua) and prints req/s and the proxy's CPU ticks.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-/work/shared/bench}
export RUN_DIR=${RUN_DIR:-/dev/shm/mono-bench} LATENCY_MS=${LATENCY_MS:-50}
CTL=$BENCH/peers/ctl.sh
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8}
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
"$CTL" start upstream >/dev/null 2>&1 || { echo "ab-hits: cannot start the harness upstream" >&2; exit 1; }
trap '"$CTL" stop upstream >/dev/null 2>&1' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    MONO_SEC_KEY=test_sk_bench "$bin" --config "$HERE/peer.toml" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/18083) 2>/dev/null && break; sleep 0.1; done
    for k in $(seq 0 99); do
      curl -s -o /dev/null "http://127.0.0.1:18083/v2/accounts/666b166ce06b$(printf %03d "$k")/balance"
    done
    t0=$(ticks $pid)
    rps=$(BENCH_IDS=100 BENCH_THREADS=2 wrk -t2 -c64 -d"${DUR}s" -s "$BENCH/wrk/ids.lua" \
          http://127.0.0.1:18083 2>&1 | awk '/Requests\/sec/ {print $2}')
    t1=$(ticks $pid)
    kill $pid; wait $pid 2>/dev/null
    echo "round $r $bin req/s=$rps cpu_ticks=$((t1 - t0))"
  done
done
