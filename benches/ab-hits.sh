#!/usr/bin/env bash
# A/B of proxy binaries on cache hits at 64 connections (bench only, loopback only): benches/ab.sh
# with one row, 8 s per round, 3 rounds.
#
#   benches/ab-hits.sh /tmp/old-mono-proxy /tmp/new-mono-proxy     # ROUNDS=3 DUR=8 by default
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${ROUNDS:-3} DUR=${DUR:-8} MODES="balance:64" exec "$HERE/ab.sh" "$@"
