#!/usr/bin/env bash
# Builds the GPU checks here (CUDA on, sm_90 for the H200), bundles them into the git-ignored
# .gpu/ folder with a run.sh, for the device tool (see the shared GPU.md):
#
#   scripts/gpu-check.sh                  # build and bundle here (no GPU needed)
#   device run: command ".gpu/run.sh", carry [".gpu"]   # on the lent GPU machine
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

cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# On the GPU machine: tests, kernel benchmark, PyTorch comparison, sanitizers; a table last.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/out}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
rows=()
summary() { grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$1" | tr -s ' ' | tr '\n' ' '; }
for name in cuda_device_test cuda_backend_test; do
  timeout 300 "$here/bin/$name" --gtest_output="json:$out/$name.json" > "$out/$name.log" 2>&1
  rows+=("$name | tests | rc=$? | $(summary "$out/$name.log")")
done
timeout 180 "$here/bin/cuda_bench" --json "$out/cuda_bench.json" > "$out/cuda_bench.log" 2>&1
rows+=("cuda_bench | benchmark | rc=$? | $(head -1 "$out/cuda_bench.log")")
if [[ -s "$out/cuda_bench.json" ]]; then
  timeout 300 python3 "$here/torch_cuda_compare.py" --ours "$out/cuda_bench.json" --json "$out/compare.json" \
    > "$out/torch_compare.log" 2>&1
  rows+=("torch_cuda_compare | benchmark | rc=$? | see torch_compare.log")
fi
# Under the sanitizer: everything but the big, the out-of-memory and the concurrency cases.
filter='-*LargeClasses*:*OutOfMemory*:*Concurrent*'
if [[ -n "$sanitizer" ]]; then
  for tool in memcheck racecheck; do
    for name in cuda_device_test cuda_backend_test; do
      timeout 150 "$sanitizer" --tool "$tool" --error-exitcode 99 "$here/bin/$name" --gtest_filter="$filter" \
        > "$out/$name.$tool.log" 2>&1
      rc=$?
      rows+=("$name | $tool | rc=$rc | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$name.$tool.log" | tail -1)")
    done
  done
else
  rows+=("all | sanitizer | skipped | compute-sanitizer not found")
fi
echo
cat "$out/cuda_bench.log" 2>/dev/null
tail -n 25 "$out/torch_compare.log" 2>/dev/null | grep -E '^\||copy ceiling'
echo
echo "GPU: $(tail -n +2 "$out/nvidia-smi.csv" 2>/dev/null | head -1)"
echo "binary | check | status | summary"
printf '%s\n' "${rows[@]}"
RUN
chmod +x .gpu/run.sh
du -sh .gpu
echo "bundle ready: run .gpu/run.sh on the GPU machine (carry .gpu)"
