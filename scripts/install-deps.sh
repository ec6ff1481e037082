#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need.
# Idempotent: when everything is already there it checks with dpkg and says nothing.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config
  # wire API and server stack
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libabsl-dev
  prometheus-cpp-dev
  # compute core
  libhwy-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # the sanitizer build and the fuzzers: clang with its sanitizer and libFuzzer runtimes, and
  # its OpenMP runtime
  clang libclang-rt-14-dev libomp-14-dev
  # TLS tests make their certificates with the openssl command
  openssl
  # python side: golden files, parity, the Python client and the torch baseline
  python3-numpy python3-torch python3-torchvision python3-pytest python3-grpcio
)

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
