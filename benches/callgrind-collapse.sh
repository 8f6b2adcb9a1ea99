#!/usr/bin/env bash
# Instructions per collapsed cold read on a new connection (accept to close) of proxy binaries,
# by callgrind (deterministic, unlike latency on a shared machine). Bench only, loopback only.
#
#   benches/callgrind-collapse.sh /tmp/old-mono-proxy /tmp/new-mono-proxy
#   KEEP=/tmp/cg benches/callgrind-collapse.sh /tmp/new-mono-proxy
#
# Each binary runs twice under valgrind in front of the peer harness's upstream (3 s per call,
# so that every request of a burst joins the one fetch even at valgrind's speed), serving 1 and
# 4 bursts of N (the harness's `burst`: N connections, one GET each, Connection: close);
# instructions per request = difference / (3 * N). KEEP=DIR keeps the profiles.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${BENCH:-/work/shared/bench}
export RUN_DIR=${RUN_DIR:-/dev/shm/mono-bench} LATENCY_MS=3000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/mono-bench-target}
CTL=$BENCH/peers/ctl.sh
N=${N:-200}
KEEP=${KEEP:-}
(cd "$BENCH" && cargo build --release -q) || { echo "callgrind-collapse: cannot build the harness" >&2; exit 1; }
BURST=$CARGO_TARGET_DIR/release/burst
"$CTL" start upstream >/dev/null 2>&1 || { echo "callgrind-collapse: cannot start the harness upstream" >&2; exit 1; }
trap '"$CTL" stop upstream >/dev/null 2>&1' EXIT
# shellcheck source=callgrind-run.sh
. "$HERE/callgrind-run.sh"
bursts() { # k: one warm call, then k bursts of N, each on its own cold account
  curl -s -o /dev/null "http://127.0.0.1:18083/v2/accounts/666b166ce06b000/balance"
  for i in $(seq 1 "$1"); do
    "$BURST" --url "http://127.0.0.1:18083/v2/accounts/777700000$1$i/balance" -n "$N" \
        --timeout-ms 60000 >/dev/null
  done
}
for bin in "$@"; do
  a=$(profiled "$bin" collapse.1 bursts 1); b=$(profiled "$bin" collapse.4 bursts 4)
  echo "$bin: $(( (b - a) / (3 * N) )) instructions per collapsed request on a new connection ($a, $b)"
done
