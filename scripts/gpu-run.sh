#!/usr/bin/env bash
# On the GPU machine: tests, kernel benchmark, PyTorch comparison, sanitizers; a table last.
# scripts/gpu-check.sh copies this file into the .gpu/ bundle as run.sh, next to bin/ and lib/;
# it runs from there (bash .gpu/run.sh), never from scripts/.
# Every step gets at most its cap and what is left of a 540 s deadline (the device tool allows
# 600 s per command), so the table always prints; a step with under 20 s left is skipped.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/out}"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log  # nothing stale from an earlier run
deadline=$((SECONDS + ${FOCAL_GPU_DEADLINE:-540}))
rows=()
# step CAP NAME LOG CMD...: runs CMD with stdout+stderr in LOG under min(CAP, time left).
step() {
  local cap=$1 name=$2 log=$3
  shift 3
  local left=$((deadline - SECONDS))
  if ((left < 20)); then
    echo "skipped: out of time" > "$log"
    rows+=("$name | skipped | out of time")
    return 1
  fi
  timeout -k 5 $((cap < left ? cap : left)) "$@" > "$log" 2>&1
  local rc=$?
  ((rc == 124 || rc == 137)) && rows+=("$name | timed out | after $((cap < left ? cap : left)) s")
  return $rc
}
# Our binaries load the bundled libraries; python3 and torch keep the machine's own.
ours=(env "LD_LIBRARY_PATH=$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
summary() { grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$1" | tr -s ' ' | tr '\n' ' '; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"

for name in cuda_device_test cuda_backend_test; do
  step 150 "$name" "$out/$name.log" "${ours[@]}" "$here/bin/$name" --gtest_output="json:$out/$name.json"
  rows+=("$name | tests rc=$? | $(summary "$out/$name.log")")
done
step 60 cuda_bench "$out/cuda_bench.log" "${ours[@]}" "$here/bin/cuda_bench" --json "$out/cuda_bench.json"
rows+=("cuda_bench | rc=$? | $(head -1 "$out/cuda_bench.log")")
if [[ -s "$out/cuda_bench.json" ]]; then
  step 200 torch_cuda_compare "$out/torch_compare.log" \
    python3 "$here/torch_cuda_compare.py" --ours "$out/cuda_bench.json" --json "$out/compare.json"
  rows+=("torch_cuda_compare | rc=$? | $(grep -c 'torch.compile failed' "$out/torch_compare.log") compile failures")
fi
# Under the sanitizers (~100x slower): the kernel families at their small sizes.
if [[ -n "$sanitizer" ]]; then
  filter='*SoftmaxFocalStrided*:*SigmoidFocalIndexTargets*:*DynamicFocal*:*EmptyInputs*:*IgnoredRows*:*NonFinite*'
  step 90 memcheck "$out/memcheck.log" "${ours[@]}" "$sanitizer" --tool memcheck --error-exitcode 99 \
    "$here/bin/cuda_backend_test" --gtest_filter="$filter"
  rows+=("cuda_backend_test | memcheck rc=$? | $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)")
  step 60 racecheck "$out/racecheck.log" "${ours[@]}" "$sanitizer" --tool racecheck --error-exitcode 99 \
    "$here/bin/cuda_backend_test" --gtest_filter='*SoftmaxFocalStrided*:*IgnoredRows*'
  rows+=("cuda_backend_test | racecheck rc=$? | $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$out/racecheck.log" | tail -1)")
else
  rows+=("all | sanitizer skipped | compute-sanitizer not found")
fi
echo
cat "$out/cuda_bench.log" 2>/dev/null
grep -E '^\||copy ceiling' "$out/torch_compare.log" 2>/dev/null
echo
echo "GPU: $(tail -n +2 "$out/nvidia-smi.csv" 2>/dev/null | head -1)"
echo "binary | check | summary"
printf '%s\n' "${rows[@]}"
