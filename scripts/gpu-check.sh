#!/usr/bin/env bash
# Builds the GPU checks here (CUDA on, sm_90 for the H200), bundles them into the git-ignored
# .gpu/ folder with a run.sh, for the device tool (see the shared GPU.md):
#
#   scripts/gpu-check.sh                  # build and bundle here (no GPU needed)
#   device run: command ".gpu/run.sh", carry [".gpu"]   # on the lent GPU machine
#
# run.sh runs the CUDA tests, compute-sanitizer (memcheck, racecheck) over them when the machine
# has it, writes logs to $OUT (or .gpu/out), and prints a short table last. The bundled binaries
# link the CUDA runtime statically; any non-system shared library they load is copied to
# .gpu/lib (the GPU machine has no gRPC/Protobuf/Abseil development files).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-gpu}
TESTS=(cuda_device_test)

bash scripts/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFOCAL_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DFOCAL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$BUILD_DIR" --target "${TESTS[@]}"

rm -rf .gpu
mkdir -p .gpu/bin .gpu/lib
for t in "${TESTS[@]}"; do
  cp "$BUILD_DIR/tests/$t" .gpu/bin/
  # Non-system libraries the binary loads (system ones: libc, libstdc++, libm, libgcc_s, ld.so).
  { ldd "$BUILD_DIR/tests/$t" | awk '/=> \// {print $3}' |
      grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so' || true; } |
    xargs -r -I{} cp -L {} .gpu/lib/
done

cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# On the GPU machine: the CUDA tests, then compute-sanitizer over them; a table last.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/out}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
rows=()
for t in "$here"/bin/*; do
  name="$(basename "$t")"
  "$t" --gtest_output="json:$out/$name.json" > "$out/$name.log" 2>&1
  rc=$?
  summary="$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$out/$name.log" | tr -s ' ' | tr '\n' ' ')"
  rows+=("$name | tests | rc=$rc | $summary")
  if [[ -n "$sanitizer" ]]; then
    for tool in memcheck racecheck; do
      "$sanitizer" --tool "$tool" --error-exitcode 99 "$t" > "$out/$name.$tool.log" 2>&1
      rc=$?
      rows+=("$name | $tool | rc=$rc | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$name.$tool.log" | tail -1)")
    done
  else
    rows+=("$name | sanitizer | skipped | compute-sanitizer not found")
  fi
done
echo
echo "GPU: $(tail -n +2 "$out/nvidia-smi.csv" 2>/dev/null | head -1)"
echo "binary | check | status | summary"
printf '%s\n' "${rows[@]}"
RUN
chmod +x .gpu/run.sh
du -sh .gpu
echo "bundle ready: run .gpu/run.sh on the GPU machine (carry .gpu)"
