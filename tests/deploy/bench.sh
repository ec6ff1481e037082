#!/usr/bin/env bash
# What the container costs: the same focal_loadgen runs against the host build's focalserve, the
# image with the host's network (the container itself), and the image behind a published port
# (Podman's port forwarding, as `podman run -p` users get), interleaved, ROUNDS times.
#   tests/deploy/bench.sh          (root; after tests/deploy/run.sh built the image)
# Environment: SMALL_S=5 LARGE_S=8 ROUNDS=2. Prints one line per run and a median table.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/deploy/podman-env.sh
IMAGE=${FOCAL_IMAGE:-localhost/focalserve:latest}
LOADGEN=build/tests/bench/server/focal_loadgen
SMALL_S=${SMALL_S:-5} LARGE_S=${LARGE_S:-8} ROUNDS=${ROUNDS:-2}
out=$(mktemp -d /tmp/focal-deploy-bench.XXXXXX)
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

host_port=$(free_port) net_port=$(free_port)
build/server/focalserve --listen=127.0.0.1:$host_port --metrics-listen= --backend=cpu >"$out/host.log" 2>&1 &
host_pid=$!
podman rm -f -t 0 focal-bench-hostnet focal-bench-published >/dev/null 2>&1 || true
podman run -d --no-healthcheck --name focal-bench-hostnet --network host "$IMAGE" --listen=127.0.0.1:$net_port --metrics-listen= --backend=cpu >/dev/null
podman run -d --no-healthcheck --name focal-bench-published -p 127.0.0.1::50051 "$IMAGE" --metrics-listen= --backend=cpu >/dev/null
cleanup() { kill "$host_pid" 2>/dev/null || true; podman rm -f -t 0 focal-bench-hostnet focal-bench-published >/dev/null 2>&1 || true; }
trap cleanup EXIT
sleep 2
declare -A targets=([host]=127.0.0.1:$host_port [container-hostnet]=127.0.0.1:$net_port
                    [container-published]=$(podman port focal-bench-published 50051/tcp | head -1))
echo "deploy bench ($(date -u +%FT%TZ), $(nproc) CPUs; results in $out)"
for round in $(seq "$ROUNDS"); do
  for where in host container-hostnet container-published; do
    t=${targets[$where]}
    "$LOADGEN" --target "$t" --rpc compute --concurrency 8 --duration "$SMALL_S" --warmup 1 --shape 64,80 --gradient 1 \
      | tail -1 >"$out/small-$where-$round.json"
    "$LOADGEN" --target "$t" --rpc compute --concurrency 2 --duration "$LARGE_S" --warmup 2 --shape 262144,80 \
      --targets index --gradient 1 | tail -1 >"$out/large-$where-$round.json"
    echo "  round $round $where: small $(grep -o "\"rps\":[0-9.]*" "$out/small-$where-$round.json" | cut -d: -f2) req/s," \
         "large $(grep -o '"mb_per_s":[0-9.]*' "$out/large-$where-$round.json" | cut -d: -f2) MB/s"
  done
done
/usr/bin/python3 - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
print("\n| server | small [64,80] conc. 8: req/s | p50 ms | large [262144,80] conc. 2: MB/s | p50 ms |")
print("| --- | ---: | ---: | ---: | ---: |")
for where in ("host", "container-hostnet", "container-published"):
    small = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/small-{where}-*.json"))]
    large = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/large-{where}-*.json"))]
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    print(f"| {where} | {med(small, 'rps'):.0f} | {med(small, 'p50_ms'):.3f} | {med(large, 'mb_per_s'):.0f} | {med(large, 'p50_ms'):.1f} |")
PY
