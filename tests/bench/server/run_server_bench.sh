#!/usr/bin/env bash
# Server benchmark: focalserve against GetServerInfo (the RPC floor), a byte-echo gRPC server
# (the transport ceiling) and the minimal Python/torch gRPC server it replaces, side by side
# on loopback, with the same load generator for all.
#
#   tests/bench/server/run_server_bench.sh [FOCALSERVE]        (default build/server/focalserve)
#
# Needs focal_loadgen and focal_echo_server, built with the server:
#   ninja -C build focalserve focal_loadgen focal_echo_server
# and Debian's /usr/bin/python3 (grpcio, numpy, torch, torchvision) for the baseline.
#
# Environment (all optional):
#   BENCH_BUILD_DIR  build tree holding tests/bench/server/{focal_loadgen,focal_echo_server}
#                    (default: the one holding FOCALSERVE, i.e. FOCALSERVE/../..)
#   SMALL_S=10 LARGE_S=15      measured seconds per small / large run
#   SMALL_WARMUP_S=2 LARGE_WARMUP_S=3   warm-up seconds before each run (not measured)
#   ROUNDS=1         repeat every run this many times, interleaved; the table shows medians
#   WARM_HEAP=1      give every process glibc's "keep freed memory" policy (see below); 0: defaults
#   FOCALSERVE_ARGS  extra focalserve flags, e.g. "--max-concurrent=2"
#   STRICT=0         1: exit 1 when a target is missed
#   OUT_DIR          where logs and JSON results go (default: a fresh mktemp -d)
#
# Cases (float32 logits, sigmoid_focal, MEAN, with the gradient):
#   small  [64,80]      concurrency 8, SMALL_S:  focalserve Compute, focalserve GetServerInfo,
#                                                 baseline Compute (float one-hot targets), and
#                                                 the same computation as KServe v2 ModelInfer
#   large  [262144,80]  concurrency 2, LARGE_S:  with class-index targets, focalserve Compute
#                       against an echo of the same request (80 MiB each way); with float
#                       one-hot targets (160 MiB in, 80 MiB out), focalserve against the
#                       baseline, which only takes float targets; and ModelInfer of the
#                       index-target request beside its Compute.
# Throughput is counted in request + response bytes for every case.
#
# Heap: on this kind of VM a freshly mapped page faults in at well under 1 GB/s, which swamps
# every large case (a 160 MiB request lands in fresh pages on every call otherwise). With
# WARM_HEAP=1 (the default) every process started here, the load generator included, gets the
# policy of tests/bench/torch_compare.py through GLIBC_TUNABLES: no mmap, no trim, 64 MiB top
# pad, one arena. focalserve sets the first three itself (KeepFreedMemoryInProcess); the single
# arena matters too, because gRPC's threads otherwise allocate from per-thread arenas whose
# large blocks are still fresh mappings. Large runs are primed with one call per worker first.
#
# Everything listens on 127.0.0.1 port 0; every process started here is stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
FOCALSERVE="${1:-$REPO/build/server/focalserve}"
[[ "$FOCALSERVE" = /* ]] || FOCALSERVE="$PWD/$FOCALSERVE"
BENCH_BUILD_DIR="${BENCH_BUILD_DIR:-$(cd "$(dirname "$FOCALSERVE")/.." 2>/dev/null && pwd || echo "$REPO/build")}"
LOADGEN="$BENCH_BUILD_DIR/tests/bench/server/focal_loadgen"
ECHO_SERVER="$BENCH_BUILD_DIR/tests/bench/server/focal_echo_server"
PY=/usr/bin/python3
STUBS="$REPO/build/python-stubs"
SMALL_S="${SMALL_S:-10}"
LARGE_S="${LARGE_S:-15}"
SMALL_WARMUP_S="${SMALL_WARMUP_S:-2}"
LARGE_WARMUP_S="${LARGE_WARMUP_S:-3}"
ROUNDS="${ROUNDS:-1}"
WARM_HEAP="${WARM_HEAP:-1}"
STRICT="${STRICT:-0}"
FOCALSERVE_ARGS="${FOCALSERVE_ARGS:-}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/focal-server-bench.XXXXXX)}"
mkdir -p "$OUT_DIR"

die() { echo "run_server_bench.sh: $*" >&2; exit 1; }
for f in "$FOCALSERVE" "$LOADGEN" "$ECHO_SERVER"; do
  [[ -x "$f" ]] || die "$f is missing; build it: ninja -C build focalserve focal_loadgen focal_echo_server"
done
[[ -x "$PY" ]] || die "$PY (Debian's, with grpcio and torch) is missing"

# torch_compare.py's keep_heap_warm() (mallopt) as glibc tunables.
HEAP_TUNABLES="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
HEAP_TUNABLES+=":glibc.malloc.top_pad=67108864:glibc.malloc.arena_max=1"
heap_env() {  # the environment assignment every started process gets
  if [[ "$WARM_HEAP" = 1 ]]; then
    echo "GLIBC_TUNABLES=$HEAP_TUNABLES"
  else
    echo "FOCAL_BENCH_HEAP=default"
  fi
}

# --- processes -----------------------------------------------------------------------------
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logs to OUT_DIR/NAME.log, waits (60 s at most)
# for its `listening on HOST:PORT` line and sets ADDR to HOST:PORT.
start() {
  local name="$1"; shift
  local log="$OUT_DIR/$name.log"
  env "$@" >"$log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do
    ADDR="$(grep -o -m1 'listening on [^ ]*' "$log" 2>/dev/null | awk '{print $3}' || true)"
    [[ -n "$ADDR" ]] && { echo "  $name: $ADDR (pid $pid, log $log)"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "$name exited before listening"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "$name did not print 'listening on' within 60 s"
}

# --- Python stubs (git-ignored build folder; regenerated when the proto is newer) -----------
PROTO="$REPO/proto/focal/v1/focal_loss.proto"
if [[ ! -f "$STUBS/focal/v1/focal_loss_pb2_grpc.py" || "$PROTO" -nt "$STUBS/focal/v1/focal_loss_pb2.py" ]]; then
  mkdir -p "$STUBS"
  protoc --python_out="$STUBS" --grpc_python_out="$STUBS" \
    --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin -I "$REPO/proto" "$PROTO"
  echo "generated Python stubs in $STUBS"
fi

echo "FocalServe server benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, heap: $([[ $WARM_HEAP = 1 ]] && echo warm || echo glibc defaults))"
echo "results in $OUT_DIR"
# shellcheck disable=SC2086  # FOCALSERVE_ARGS is a list of flags
start focalserve "$(heap_env)" "$FOCALSERVE" --listen=127.0.0.1:0 --metrics-listen= $FOCALSERVE_ARGS
FOCAL_ADDR="$ADDR"
start echo_server "$(heap_env)" "$ECHO_SERVER" --listen 127.0.0.1:0
ECHO_ADDR="$ADDR"
start torch_baseline "$(heap_env)" "$PY" "$REPO/tests/bench/server/torch_baseline_server.py" \
  --listen 127.0.0.1:0 --stubs "$STUBS"
BASE_ADDR="$ADDR"
grep -m1 'listening on' "$OUT_DIR/focalserve.log" | sed 's/^/  /'

# --- runs ----------------------------------------------------------------------------------
SMALL=(--shape "64,80" --variant sigmoid_focal --gradient 1 --reduction mean --concurrency 8)
# The same one call at a time: latency without queueing for the 2 cores.
SMALL1=(--shape "64,80" --variant sigmoid_focal --gradient 1 --reduction mean --concurrency 1)
LARGE=(--shape "262144,80" --variant sigmoid_focal --gradient 1 --reduction mean --concurrency 2)
# "80 MiB each way": logits plus class-index targets in (80 + 2 MiB), the gradient out (80 MiB);
# the echo of that request moves the same bytes. The baseline only takes float targets, so it
# is compared with focalserve on LARGE.
LARGE_INDEX=("${LARGE[@]}" --targets index)

# run CASE ROUND TARGET RPC SECONDS WARMUP ARGS...: one loadgen run, its JSON line kept.
run() {
  local case="$1" round="$2" target="$3" rpc="$4" seconds="$5" warmup="$6"; shift 6
  local log="$OUT_DIR/$case.$round.log"
  echo "--- $case (round $round): --rpc $rpc --target $target $* --duration $seconds"
  # The bound: the run, its warm-up, and two call timeouts for the calls still in flight.
  if ! env "$(heap_env)" timeout $((${seconds%.*} + ${warmup%.*} + 300)) "$LOADGEN" --target "$target" \
      --rpc "$rpc" --duration "$seconds" --warmup "$warmup" --timeout 120 "$@" >"$log" 2>&1; then
    echo "    (loadgen exited non-zero; see $log)"
  fi
  grep -E '^ *(first response|bytes per call|completed|errors by code|throughput|latency)' "$log" | sed 's/^ */    /' || true
  grep -E "focal_loadgen: " "$log" | grep -v 'rpc=' | sed 's/^/    /' || true
  tail -n 1 "$log" | grep '^{' >"$OUT_DIR/$case.$round.json" || rm -f "$OUT_DIR/$case.$round.json"
}

# prime TARGET RPC ARGS...: one call per worker, untimed (first-touch of the big buffers).
prime() {
  local target="$1" rpc="$2"; shift 2
  env "$(heap_env)" timeout 600 "$LOADGEN" --target "$target" --rpc "$rpc" --duration 0.01 \
    --warmup 0 --timeout 300 "$@" >/dev/null 2>&1 || true
}

echo
echo "== small: [64,80] float32 sigmoid_focal + gradient, concurrency 8 (and 1), ${SMALL_S} s each =="
for round in $(seq "$ROUNDS"); do
  run small_focal_compute "$round" "$FOCAL_ADDR" compute "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL[@]}"
  run small_focal_info "$round" "$FOCAL_ADDR" info "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL[@]}"
  run small_focal_infer "$round" "$FOCAL_ADDR" infer "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL[@]}"
  run small_baseline_compute "$round" "$BASE_ADDR" compute "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL[@]}"
  run small1_focal_compute "$round" "$FOCAL_ADDR" compute "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL1[@]}"
  run small1_focal_infer "$round" "$FOCAL_ADDR" infer "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL1[@]}"
  run small1_focal_info "$round" "$FOCAL_ADDR" info "$SMALL_S" "$SMALL_WARMUP_S" "${SMALL1[@]}"
done

echo
echo "== large: [262144,80] float32 sigmoid_focal + gradient, concurrency 2, ${LARGE_S} s each =="
echo "   (priming each server with one untimed call per worker)"
prime "$FOCAL_ADDR" compute "${LARGE_INDEX[@]}"
prime "$FOCAL_ADDR" infer "${LARGE_INDEX[@]}"
prime "$ECHO_ADDR" echo "${LARGE_INDEX[@]}"
prime "$FOCAL_ADDR" compute "${LARGE[@]}"
prime "$BASE_ADDR" compute "${LARGE[@]}"
for round in $(seq "$ROUNDS"); do
  run large_focal_compute_index "$round" "$FOCAL_ADDR" compute "$LARGE_S" "$LARGE_WARMUP_S" "${LARGE_INDEX[@]}"
  run large_focal_infer_index "$round" "$FOCAL_ADDR" infer "$LARGE_S" "$LARGE_WARMUP_S" "${LARGE_INDEX[@]}"
  run large_echo "$round" "$ECHO_ADDR" echo "$LARGE_S" "$LARGE_WARMUP_S" "${LARGE_INDEX[@]}"
  run large_focal_compute "$round" "$FOCAL_ADDR" compute "$LARGE_S" "$LARGE_WARMUP_S" "${LARGE[@]}"
  run large_baseline_compute "$round" "$BASE_ADDR" compute "$LARGE_S" "$LARGE_WARMUP_S" "${LARGE[@]}"
done

# --- summary -------------------------------------------------------------------------------
echo
"$PY" - "$OUT_DIR" "$STRICT" <<'PYEOF'
import glob, json, os, statistics, sys

out_dir, strict = sys.argv[1], sys.argv[2] == "1"
CASES = [
    ("small_focal_compute", "small", "focalserve", "Compute"),
    ("small_focal_info", "small", "focalserve", "GetServerInfo"),
    ("small_focal_infer", "small", "focalserve", "ModelInfer"),
    ("small_baseline_compute", "small", "torch baseline", "Compute"),
    ("small1_focal_compute", "small, concurrency 1", "focalserve", "Compute"),
    ("small1_focal_info", "small, concurrency 1", "focalserve", "GetServerInfo"),
    ("small1_focal_infer", "small, concurrency 1", "focalserve", "ModelInfer"),
    ("large_focal_compute_index", "large, index targets", "focalserve", "Compute"),
    ("large_focal_infer_index", "large, index targets", "focalserve", "ModelInfer"),
    ("large_echo", "large, index targets", "echo server", "Echo"),
    ("large_focal_compute", "large, float targets", "focalserve", "Compute"),
    ("large_baseline_compute", "large, float targets", "torch baseline", "Compute"),
]
FIELDS = ("rps", "mb_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms")

results = {}
for case, *_ in CASES:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out_dir, f"{case}.*.json")))]
    runs = [r for r in runs if r.get("ok", 0) > 0]
    if runs:
        merged = {f: statistics.median(r[f] for r in runs) for f in FIELDS}
        merged["ok"] = sum(r["ok"] for r in runs)
        merged["errors"] = sum(r["errors"] for r in runs)
        merged["rounds"] = len(runs)
        merged["bytes"] = runs[0]["request_bytes"] + runs[0]["response_bytes"]
        results[case] = merged

print("| size | server | rpc | bytes/call | calls | errors | req/s | MB/s | p50 ms | p90 ms | p99 ms | max ms |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for case, size, server, rpc in CASES:
    r = results.get(case)
    if r is None:
        print(f"| {size} | {server} | {rpc} | – | 0 | – | – | – | – | – | – | – |")
        continue
    print(f"| {size} | {server} | {rpc} | {r['bytes']:,} | {r['ok']} | {r['errors']} | "
          f"{r['rps']:.1f} | {r['mb_per_s']:.1f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
          f"{r['p99_ms']:.3f} | {r['max_ms']:.3f} |")

def get(case, field):
    r = results.get(case)
    return None if r is None else r[field]

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

TARGETS = [
    ("small, concurrency 1: Compute p50 / GetServerInfo p50 (focalserve)",
     ratio(get("small1_focal_compute", "p50_ms"), get("small1_focal_info", "p50_ms")), "<=", 1.5, "x"),
    ("small, concurrency 8: Compute p50 / GetServerInfo p50 (focalserve)",
     ratio(get("small_focal_compute", "p50_ms"), get("small_focal_info", "p50_ms")), "<=", 1.5, "x"),
    ("large (80 MiB each way): Compute MB/s / echo MB/s",
     ratio(get("large_focal_compute_index", "mb_per_s"), get("large_echo", "mb_per_s")), ">=", 0.8, "%"),
    ("small: focalserve req/s / baseline req/s",
     ratio(get("small_focal_compute", "rps"), get("small_baseline_compute", "rps")), ">=", 5.0, "x"),
    ("small: focalserve p99 / baseline p99",
     ratio(get("small_focal_compute", "p99_ms"), get("small_baseline_compute", "p99_ms")), "<=", 0.2, "x"),
    ("large: focalserve MB/s / baseline MB/s",
     ratio(get("large_focal_compute", "mb_per_s"), get("large_baseline_compute", "mb_per_s")), ">=", 2.0, "x"),
    # The Open Inference Protocol costs no more than focal.v1 for the same computation.
    ("small, concurrency 8: ModelInfer req/s / Compute req/s",
     ratio(get("small_focal_infer", "rps"), get("small_focal_compute", "rps")), ">=", 0.9, "x"),
    ("small, concurrency 8: ModelInfer p50 / Compute p50",
     ratio(get("small_focal_infer", "p50_ms"), get("small_focal_compute", "p50_ms")), "<=", 1.1, "x"),
    ("small, concurrency 1: ModelInfer req/s / Compute req/s",
     ratio(get("small1_focal_infer", "rps"), get("small1_focal_compute", "rps")), ">=", 0.9, "x"),
    ("small, concurrency 1: ModelInfer p50 / Compute p50",
     ratio(get("small1_focal_infer", "p50_ms"), get("small1_focal_compute", "p50_ms")), "<=", 1.1, "x"),
    ("large: ModelInfer req/s / Compute req/s",
     ratio(get("large_focal_infer_index", "rps"), get("large_focal_compute_index", "rps")), ">=", 0.9, "x"),
    ("large: ModelInfer p50 / Compute p50",
     ratio(get("large_focal_infer_index", "p50_ms"), get("large_focal_compute_index", "p50_ms")), "<=", 1.1, "x"),
]
print()
print("| target | measured | wanted | |")
print("| --- | ---: | ---: | --- |")
missed = 0
for name, value, op, want, unit in TARGETS:
    fmt = (lambda v: f"{v * 100:.0f}%") if unit == "%" else (lambda v: f"{v:.2f}x")
    if value is None:
        ok, shown = False, "n/a"
    else:
        ok = value <= want if op == "<=" else value >= want
        shown = fmt(value)
    missed += not ok
    print(f"| {name} | {shown} | {op} {fmt(want)} | {'ok' if ok else 'MISS'} |")
json.dump({"results": results, "targets": [
    {"name": n, "value": v, "op": o, "want": w} for n, v, o, w, _ in TARGETS]},
    open(os.path.join(out_dir, "summary.json"), "w"), indent=1)
print(f"\n{missed} target(s) missed; summary.json in {out_dir}")
sys.exit(1 if strict and missed else 0)
PYEOF
