# Sourced by benches/callgrind-*.sh: one profiled run of a proxy binary (bench only).
#
#   profiled BIN NAME DRIVE [ARGS...]
# starts BIN under callgrind with benches/peer.toml (the peer harness's upstream, which the
# caller has started), waits for it to listen, calls DRIVE ARGS... to send its load, stops it and
# prints the instructions it ran. KEEP=DIR keeps the profile as DIR/<bin>.NAME.out.
profiled() {
  local bin=$1 name=$2 out pid
  shift 2
  out=$(mktemp)
  [[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP" && out="$KEEP/$(basename "$bin").$name.out"
  MONO_SEC_KEY=test_sk_bench valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$bin" --config "$(dirname "${BASH_SOURCE[0]}")/peer.toml" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/18083) 2>/dev/null && break; sleep 0.2; done
  "$@"
  kill -INT $pid; wait $pid 2>/dev/null
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
  [[ -n "${KEEP:-}" ]] || rm -f "$out"
}
