#!/usr/bin/env bash
# Instructions per cache hit (or per passthrough, ROUTE=identity) of proxy binaries, by
# callgrind (deterministic, unlike req/s on a shared machine). Bench only, loopback only.
#
#   benches/callgrind-hits.sh /tmp/old-mono-proxy /tmp/new-mono-proxy
#   ROUTE=identity KEEP=/tmp/cg benches/callgrind-hits.sh /tmp/new-mono-proxy
#
# Each binary runs twice under valgrind against the peer harness's upstream, serving N1 and N2
# requests (wrk, 4 connections, 10 accounts); instructions per request = difference / (N2 - N1).
# KEEP=DIR keeps the callgrind profiles there (for callgrind_annotate).
set -u
command -v wrk >/dev/null || { echo "callgrind-hits: needs wrk (apt-get install wrk)" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-/work/shared/bench}
export RUN_DIR=${RUN_DIR:-/dev/shm/mono-bench} LATENCY_MS=${LATENCY_MS:-50}
CTL=$BENCH/peers/ctl.sh
N1=${N1:-2000}
N2=${N2:-12000}
ROUTE=${ROUTE:-balance}
KEEP=${KEEP:-}
"$CTL" start upstream >/dev/null 2>&1 || { echo "callgrind-hits: cannot start the harness upstream" >&2; exit 1; }
trap '"$CTL" stop upstream >/dev/null 2>&1' EXIT
# shellcheck source=callgrind-run.sh
. "$HERE/callgrind-run.sh"
hits() { # n: warm 10 accounts, then n requests over them
  for k in $(seq 0 9); do
    curl -s -o /dev/null "http://127.0.0.1:18083/v2/accounts/666b166ce06b$(printf %03d "$k")/balance"
  done
  BENCH_IDS=10 BENCH_THREADS=1 BENCH_MAX_REQS=$1 BENCH_ROUTE=$ROUTE wrk -t1 -c4 -d120s -s "$BENCH/wrk/ids.lua" \
      http://127.0.0.1:18083 >/dev/null 2>&1
}
for bin in "$@"; do
  a=$(profiled "$bin" "$ROUTE.$N1" hits "$N1"); b=$(profiled "$bin" "$ROUTE.$N2" hits "$N2")
  echo "$bin: $(( (b - a) / (N2 - N1) )) instructions per $ROUTE request ($a at $N1, $b at $N2)"
done
