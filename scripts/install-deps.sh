#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the benchmarks need: the one list of
# them, which deploy/Containerfile's builder reads too.
#   scripts/install-deps.sh          everything (what `make` targets call)
#   scripts/install-deps.sh build    only what compiling focalserve and focalctl needs
# Idempotent: when everything is already there it checks with dpkg and says nothing.
set -euo pipefail

build_packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config
  # wire API and server stack
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libabsl-dev
  prometheus-cpp-dev
  # compute core
  libhwy-dev
)
test_packages=(
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # the sanitizer build and the fuzzers: clang with its sanitizer and libFuzzer runtimes, and
  # its OpenMP runtime
  clang libclang-rt-14-dev libomp-14-dev
  # TLS tests make their certificates with the openssl command
  openssl
  # python side: golden files, parity, the Python client and the torch baseline
  python3-numpy python3-torch python3-torchvision python3-pytest python3-grpcio python3-yaml
  # the evaluation report: its figures (matplotlib) and its test, a render in headless Chromium
  python3-matplotlib chromium
  # tests/deploy: the image built and run with Podman (as root, with runc) on a base made by
  # debootstrap; replicas in network namespaces (iproute2) behind a DNS name (dnsmasq); the
  # manifests rendered by kubectl kustomize and checked by an npm validator
  podman runc debootstrap iproute2 dnsmasq-base nodejs
)

case "${1:-all}" in
  build) packages=("${build_packages[@]}") ;;
  all) packages=("${build_packages[@]}" "${test_packages[@]}")
       # Any kubectl with kustomize v4+ (kubectl 1.21+) renders the manifests; the machines'
       # image ships one. Debian's kubernetes-client (1.20, kustomize v2) only where there is
       # none, and tests/deploy then says that it is too old.
       command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
       # The machines' Node.js carries its own npm; Debian's npm only where there is none.
       command -v npm >/dev/null 2>&1 || packages+=(npm) ;;
  *) echo "usage: $0 [all|build]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
