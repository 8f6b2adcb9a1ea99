#!/usr/bin/env bash
# RSS growth per cached balance entry of the release binary (bench only, loopback only).
# The sandbox runs in its own process so only the proxy's memory is measured.
#   cargo build --release && benches/memory.sh          # N=100000 accounts by default
# Prints idle RSS, RSS after N distinct balances were cached, and the growth per entry.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/mono-proxy}
N=${N:-100000}
SB=127.0.0.1:18190; PX=127.0.0.1:18193; AD=127.0.0.1:18194
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
WORK=$(mktemp -d)
cat >"$WORK/proxy.toml" <<TOML
listen = "$PX"
admin_listen = "$AD"
[upstream]
base_url = "http://$SB"
[cache]
ttl = "1h"
[log]
filter = "warn"
TOML
"$BIN" sandbox --listen $SB >"$WORK/sandbox.log" 2>&1 & SBPID=$!
MONO_SEC_KEY=test_sk_sandbox "$BIN" --config "$WORK/proxy.toml" >"$WORK/proxy.log" 2>&1 & PXPID=$!
trap 'kill $SBPID $PXPID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://$AD/healthz" && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$PXPID/status"; }
idle=$(rss)
for i in $(seq 200); do curl -s -o /dev/null "http://$PX/v2/accounts/warm$i/balance"; done
before=$(rss)
# one pass over N distinct ids (the peer harness's wrk script, one thread so ids do not repeat)
BENCH_IDS=$N BENCH_ID_BASE=0 BENCH_THREADS=1 BENCH_MAX_REQS=$N timeout 300 \
    wrk -t1 -c64 -d280s -s /work/shared/bench/wrk/ids.lua "http://$PX" >"$WORK/wrk.txt" 2>&1 || true
sleep 1
after=$(rss)
metrics=$(curl -s "http://$AD/metrics")
entries=$(awk '/^mono_proxy_cache_accounts /{print $2}' <<<"$metrics")
bytes=$(awk '/^mono_proxy_cache_bytes /{print $2}' <<<"$metrics")
echo "idle_rss_kib=$idle rss_after_warmup_kib=$before rss_after_kib=$after entries=$entries cache_bytes=$bytes"
awk -v a="$after" -v b="$before" -v n="$entries" 'BEGIN{printf "rss_growth_per_entry_bytes=%.0f\n", (a-b)*1024/(n-200)}'
