#!/usr/bin/env bash
# make test-deploy: builds the image with Podman and runs tests/deploy against it: the image
# (health, answers bit-identical to the host build, metrics, podman stop under load), three
# replicas behind one DNS name (round_robin, a replica stopped and one killed mid-run), and the
# manifests (kubectl kustomize, schema validation). Needs root (Podman with runc, network
# namespaces) and the host build (make build): its focalctl and focalserve are the reference,
# and its ccache makes the image's compile steps cache hits.
#   tests/deploy/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=FOCALSERVE_BINARY,FOCALCTL_BINARY,CCACHE_DIR,LANG bash "$0" "$@"
fi
source tests/deploy/podman-env.sh
PY=/usr/bin/python3
export FOCAL_IMAGE=localhost/focalserve:latest
export FOCALSERVE_BINARY="${FOCALSERVE_BINARY:-build/server/focalserve}"
export FOCALCTL_BINARY="${FOCALCTL_BINARY:-build/client/cpp/focalctl}"

bash tests/deploy/base-image.sh

# The schema validator's npm packages, as package-lock.json pins them (kept between runs).
validate=tests/deploy/validate
if [ ! -f "$validate/node_modules/.package-lock.json" ] || [ "$validate/package-lock.json" -nt "$validate/node_modules/.package-lock.json" ]; then
  (cd "$validate" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The image, built as deploy/README.md says, plus two mounts: the host's ccache (the compile
# steps hit what `make build` compiled) and, where there is one, the host's CUDA toolkit (so the
# CUDA kernels are compiled as in the host build).
build_flags=(--network host --pull=never --format docker -f deploy/Containerfile -t "$FOCAL_IMAGE"
             -v "$(ccache -k cache_dir):/ccache-host" --build-arg CCACHE_DIR=/ccache-host --build-arg "LANG=${LANG:-}")
if [ -x /usr/local/cuda/bin/nvcc ]; then
  build_flags+=(-v "$(readlink -f /usr/local/cuda):/usr/local/cuda:ro")
fi
start=$(date +%s)
log=$(mktemp /tmp/focal-image-build.XXXXXX.log)
# Bounded: a build that waits on a lock or the network must not hold CI to its limit.
if ! timeout 1500 podman build "${build_flags[@]}" . >"$log" 2>&1; then
  tail -40 "$log"
  echo "deploy: podman build failed or ran past 25 min (log: $log)"
  exit 1
fi
built=$(date +%s)
echo "deploy: image $FOCAL_IMAGE built in $((built - start)) s, $(podman image inspect --format '{{.Size}}' "$FOCAL_IMAGE") bytes;" \
     "$(grep -E '^-- FocalServe CUDA backend' "$log" | sed 's/^-- //'); ccache$(grep -E '^ +Hits:' "$log" | sed 's/  */ /g')"
rm -f "$log"
# Builder layers and images left over from earlier builds (this build's are newer).
podman image prune -f --filter "until=$start" >/dev/null

"$PY" client/python/build_stubs.py --if-stale
set +e
"$PY" -m pytest -q -rs -p no:cacheprovider tests/deploy "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "deploy: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit $rc
