#!/usr/bin/env bash
# Builds the GPU checks here (CUDA on, sm_90 for the H200), bundles them into the git-ignored
# .gpu/ folder with a run.sh (scripts/gpu-run.sh), for the device tool (see the shared GPU.md):
#
#   scripts/gpu-check.sh                  # build and bundle here (no GPU needed)
#   device run: command "bash .gpu/run.sh", carry [".gpu"], timeout_s 600   # on the lent GPU
#
# run.sh runs, in this order (the most useful figures first, in case the lease runs out): the CUDA
# tests (CUDA vs CPU parity, determinism, OOM), the kernel benchmark against the copy ceiling,
# PyTorch on the same card (eager and torch.compile), then compute-sanitizer memcheck and
# racecheck over the tests (the large and OOM cases filtered out: the sanitizer is ~100x slower).
# Logs go to $OUT (or .gpu/out); a short table prints last. The bundled binaries
# link the CUDA runtime statically; any non-system shared library they load is copied to
# .gpu/lib (the GPU machine has no gRPC/Protobuf/Abseil development files).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-gpu}
TESTS=(cuda_device_test cuda_backend_test)
TOOLS=(cuda_bench)

bash scripts/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFOCAL_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DFOCAL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$BUILD_DIR" --target "${TESTS[@]}" "${TOOLS[@]}"

rm -rf .gpu
mkdir -p .gpu/bin .gpu/lib
cp tests/bench/torch_cuda_compare.py .gpu/
for t in "${TESTS[@]}" "${TOOLS[@]}"; do
  cp "$BUILD_DIR/tests/$t" .gpu/bin/
  # Non-system libraries the binary loads (system ones: libc, libstdc++, libm, libgcc_s, ld.so).
  { ldd "$BUILD_DIR/tests/$t" | awk '/=> \// {print $3}' |
      grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so' || true; } |
    xargs -r -I{} cp -L {} .gpu/lib/
done

cp scripts/gpu-run.sh .gpu/run.sh
chmod +x .gpu/run.sh
du -sh .gpu
echo "bundle ready: on the GPU machine run: bash .gpu/run.sh (carry .gpu, timeout_s 600)"
