#!/usr/bin/env bash
# Large Compute of two focalserve builds and the byte-echo server, interleaved round by round on
# one machine (the noise here is larger than most changes, so only side-by-side runs compare):
#
#   tests/bench/server/compare_large.sh BEFORE_FOCALSERVE AFTER_FOCALSERVE
#
# Environment: ROUNDS=3, DURATION=8 (seconds per run), CONCURRENCY=2, SHAPE=262144,80,
# BENCH_BUILD_DIR (holding tests/bench/server/{focal_loadgen,focal_echo_server}; default build).
# Each run is focal_loadgen --targets index --gradient 1 --decode 1, so the server's own compute
# time comes back; per run it prints MB/s (request + response), the p50 and, for the servers,
# (p50 - server compute p50) / the echo's p50 of the same round: issue 15's transport measure.
# Every process gets run_server_bench.sh's warm-heap policy; all listen on 127.0.0.1.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
[[ $# -eq 2 ]] || { sed -n 2,12p "${BASH_SOURCE[0]}" >&2; exit 2; }
BEFORE="$1" AFTER="$2"
BUILD="${BENCH_BUILD_DIR:-$REPO/build}"
LOADGEN="$BUILD/tests/bench/server/focal_loadgen"
ECHO_SERVER="$BUILD/tests/bench/server/focal_echo_server"
for f in "$BEFORE" "$AFTER" "$LOADGEN" "$ECHO_SERVER"; do [[ -x "$f" ]] || { echo "compare_large.sh: $f is missing" >&2; exit 1; }; done
export GLIBC_TUNABLES="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:glibc.malloc.top_pad=67108864:glibc.malloc.arena_max=1"
LOGS="$(mktemp -d /tmp/focal-compare.XXXXXX)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

start() {  # start NAME COMMAND...: waits for its "listening on HOST:PORT" line, prints the address
  local name="$1"; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    local address
    address="$(grep -m1 -oE 'listening on [0-9.]+:[0-9]+' "$LOGS/$name.log" | awk '{print $3}' || true)"
    if [[ -n "$address" ]]; then echo "$address"; return; fi
    sleep 0.1
  done
  echo "compare_large.sh: $name did not start (log: $LOGS/$name.log)" >&2; exit 1
}
declare -A address
address[before]="$(start before "$BEFORE" --listen=127.0.0.1:0 --metrics-listen=)"
address[after]="$(start after "$AFTER" --listen=127.0.0.1:0 --metrics-listen=)"
address[echo]="$(start echo "$ECHO_SERVER" --listen 127.0.0.1:0)"

echo "| round | server | MB/s | p50 ms | server compute p50 ms | (p50 - compute) / echo p50 |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for round in $(seq "${ROUNDS:-3}"); do
  for who in echo before after; do
    rpc=compute; [[ $who = echo ]] && rpc=echo
    "$LOADGEN" --target "${address[$who]}" --rpc "$rpc" --shape "${SHAPE:-262144,80}" --targets index --gradient 1 \
      --concurrency "${CONCURRENCY:-2}" --duration "${DURATION:-8}" --warmup 2 --decode 1 2>&1 | tail -n 1 >"$LOGS/$who.$round.json"
  done
  /usr/bin/python3 - "$LOGS" "$round" <<'PY'
import json, sys
logs, round_ = sys.argv[1], sys.argv[2]
runs = {w: json.load(open(f"{logs}/{w}.{round_}.json")) for w in ("echo", "before", "after")}
echo_p50 = runs["echo"]["p50_ms"]
for who, r in runs.items():
    compute = r.get("server_compute_us_p50", 0) / 1000
    ratio = "" if who == "echo" else f"{(r['p50_ms'] - compute) / echo_p50:.2f}x"
    print(f"| {round_} | {who} | {r['mb_per_s']:.0f} | {r['p50_ms']:.1f} | {compute:.1f} | {ratio} |")
PY
done
