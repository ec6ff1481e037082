#!/usr/bin/python3
"""Compare FocalServe's C++ CPU kernels with PyTorch on this machine.

Run with Debian's interpreter, which has torch, torchvision and numpy:

    /usr/bin/python3 tests/bench/torch_compare.py [--cpu-bench PATH] [--repeats N]
                                                   [--quick] [--shape NAME] [--markdown]

What it measures (forward + backward, float32, random normal logits):

* sigmoid_focal: torchvision.ops.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2,
  reduction='mean') with a float one-hot target t of the same shape
  (docs/variants.md §2).
* softmax_focal: the seed's multi-class focal loss in plain torch, gamma=2, no alpha,
  mean over rows (docs/variants.md §1):
      logp = F.log_softmax(x, dim=1); logpt = logp.gather(1, y.unsqueeze(1)).squeeze(1)
      pt = logpt.exp(); loss = (-(1 - pt) ** gamma * logpt).mean()

Each (shape, variant) gets one warm-up run (--warmup), more while the run still page-faults
(up to --max-warmup, see keep_heap_warm), then the median of --repeats runs timed with
time.perf_counter; elements/s = numel(logits) / seconds. torch runs with
torch.set_num_threads(2), and glibc malloc is told to keep freed memory (--malloc-default
to leave it alone), since fresh-page faults dominate torch's time on this VM otherwise.

With --cpu-bench, the Google Benchmark (1.7) binary is run in the same invocation:
    PATH --benchmark_format=json --benchmark_filter=<regex> --benchmark_min_time=0.2
         --benchmark_repetitions=<--repeats>
and the median over the repetitions of its `<variant>/<shape>` entries (items_per_second =
logits elements per second, real_time), the same statistic as torch's, is set against torch's figures and against `copy/<shape>`, a plain copy of the
same bytes (the memory-bandwidth floor). Names it does not report print as n/a.

* the catalogue (docs/variants.md §5), on the [N, 80] shape only: asymmetric (ASL's form, paper
  defaults), quality_focal and varifocal (mmdetection's forms, quality targets on the one-hot's
  positives), focal_star (fvcore's form) and distribution_focal (mmdetection's form, C = 80
  bins, a random distance per row), each forward + backward of the mean in eager torch.

Targets (from the performance and catalogue issues), printed next to the figures:
    sigmoid_focal >= 15x torchvision, softmax_focal >= 3x torch, the catalogue's elementwise
    variants >= 8x and distribution_focal >= 2x their eager torch,
    our time <= 2.5x the copy floor's time where the kernel is memory-bound.

The SIMD target the C++ side dispatched is printed with the figures; FOCAL_CPU_TARGET=avx2 (or
sse4, scalar) caps it, so that one AVX-512 machine measures the AVX2 kernels too.
"""

import argparse
import ctypes
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    import torchvision
    import torchvision.ops
except ImportError as e:  # the `python3` on PATH has no torch
    sys.exit(f"torch_compare.py: {e}; run it with /usr/bin/python3 (Debian's, with torch)")

THREADS = 2
GAMMA = 2.0
ALPHA = 0.25
CPU_BENCH_MIN_TIME = "0.2"  # per repetition; Google Benchmark 1.7: a plain number of seconds

FULL_SHAPES = [(65536, 80), (4096, 1000), (256, 32768), (8, 19, 512, 512)]
# --quick: the same shapes with N divided by 8 (about 1/8 of the elements each).
QUICK_SHAPES = [(8192, 80), (512, 1000), (32, 32768), (1, 19, 512, 512)]

VARIANTS = ["sigmoid_focal", "softmax_focal", "asymmetric", "quality_focal", "varifocal", "focal_star",
            "distribution_focal"]
# The catalogue (docs/variants.md §5) is measured on the [N, 80] shape only, as its issue asks.
CATALOGUE = {"asymmetric", "quality_focal", "varifocal", "focal_star", "distribution_focal"}
TORCH_NAME = {"sigmoid_focal": "torchvision.ops.sigmoid_focal_loss",
              "softmax_focal": "seed softmax focal (plain torch)",
              "asymmetric": "ASL (Ridnik et al.) in plain torch, gamma_neg=4, gamma_pos=0, clip=0.05",
              "quality_focal": "mmdetection's quality focal loss in plain torch, beta=2",
              "varifocal": "mmdetection's varifocal loss in plain torch, alpha=0.75, gamma=2",
              "focal_star": "fvcore's sigmoid_focal_loss_star, gamma=1",
              "distribution_focal": "mmdetection's distribution focal loss in plain torch, 80 bins"}
# minimum speed-up of ours over torch, per variant
SPEEDUP_TARGET = {"sigmoid_focal": 15.0, "softmax_focal": 3.0, "asymmetric": 8.0, "quality_focal": 8.0,
                  "varifocal": 8.0, "focal_star": 8.0, "distribution_focal": 2.0}


def measured(variant, shape):
    """Whether (variant, shape) is in the comparison: the catalogue only on [N, 80]."""
    return variant not in CATALOGUE or (len(shape) == 2 and shape[1] == 80)
COPY_TARGET = 2.5  # our time / copy time, where memory-bound
WARM_FAULT_LIMIT = 256  # pages (1 MiB): a warm-up run below this counts as steady


def shape_name(shape):
    return "x".join(str(d) for d in shape)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------------- torch side

def keep_heap_warm():
    """Make glibc malloc keep freed memory instead of returning it to the kernel.

    torch's CPU allocator is plain malloc: every temporary of these sizes is a fresh mmap,
    and on this VM the page faults that follow cost more than the arithmetic (the sigmoid
    loss at 8192x80 swings between 5 and 50 ms from run to run, and is ~10x slower than
    steady state at 8x19x512x512). With mmap and trimming off and one arena, the heap stays
    faulted in once the warm-up has grown it to its peak, much as with jemalloc/tcmalloc, and
    the figures are both stable and the faster (conservative) ones for torch.
    --malloc-default skips this. Returns a description of the mode.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
        ok = (libc.mallopt(M_MMAP_MAX, 0) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim
              and libc.mallopt(M_TOP_PAD, 64 << 20) == 1
              and libc.mallopt(M_ARENA_MAX, 1) == 1)
    except (OSError, AttributeError):
        ok = False
    return ("warm heap (glibc mallopt: no mmap, no trim, one arena)" if ok
            else "glibc malloc defaults (mallopt failed)")


class Inputs:
    """Random normal logits (never exactly zero), integer classes along dim 1, their float
    one-hot t, the one-hot's positives at a quality in (0, 1] (q, for quality_focal and
    varifocal), and a distance in [0, C-1] per row (d, for distribution_focal)."""

    def __init__(self, shape, gen):
        self.x = torch.randn(shape, generator=gen, dtype=torch.float32)
        self.x[self.x == 0] = 1e-3  # randn practically never returns 0.0; make sure of it
        c = shape[1]
        y_shape = (shape[0],) + tuple(shape[2:])
        self.y = torch.randint(0, c, y_shape, generator=gen, dtype=torch.int64)
        self.t = torch.zeros(shape, dtype=torch.float32)
        self.t.scatter_(1, self.y.unsqueeze(1), 1.0)
        self.q = self.t * torch.rand(shape, generator=gen).clamp_(min=0.01)
        self.d = torch.rand(y_shape, generator=gen) * (c - 1)
        self.x.requires_grad_(True)


def sigmoid_focal_step(i):
    loss = torchvision.ops.sigmoid_focal_loss(i.x, i.t, alpha=ALPHA, gamma=GAMMA, reduction="mean")
    loss.backward()
    return loss


def softmax_focal_step(i):
    logp = F.log_softmax(i.x, dim=1)
    logpt = logp.gather(1, i.y.unsqueeze(1)).squeeze(1)
    pt = logpt.exp()
    loss = (-(1 - pt) ** GAMMA * logpt).mean()
    loss.backward()
    return loss


# The catalogue as people write it in eager torch (the forms of the reference repositories).

def asymmetric_step(i, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    p = torch.sigmoid(i.x)
    p_neg = (1 - p + clip).clamp(max=1)  # 1 - p_m
    loss_pos = i.t * torch.log(p.clamp(min=1e-8))
    loss_neg = (1 - i.t) * torch.log(p_neg.clamp(min=1e-8))
    pt = p * i.t + (1 - p_neg) * (1 - i.t)
    w = torch.pow(1 - pt, gamma_pos * i.t + gamma_neg * (1 - i.t))
    loss = (-(loss_pos + loss_neg) * w).mean()
    loss.backward()
    return loss


def quality_focal_step(i, beta=2.0):
    p = torch.sigmoid(i.x)
    loss = F.binary_cross_entropy_with_logits(i.x, i.q, reduction="none") * (p - i.q).abs().pow(beta)
    loss = loss.sum() / max(int((i.q > 0).sum()), 1)
    loss.backward()
    return loss


def varifocal_step(i, alpha=0.75, gamma=2.0):
    p = torch.sigmoid(i.x)
    weight = i.q * (i.q > 0).float() + alpha * (p - i.q).abs().pow(gamma) * (i.q <= 0).float()
    loss = (F.binary_cross_entropy_with_logits(i.x, i.q, reduction="none") * weight).mean()
    loss.backward()
    return loss


def focal_star_step(i, gamma=1.0, beta=0.0):
    shifted = i.x * (2 * i.t - 1)
    loss = (-F.logsigmoid(gamma * shifted + beta) / gamma).mean()
    loss.backward()
    return loss


def distribution_focal_step(i):
    left = i.d.long().clamp(max=i.x.shape[1] - 2)
    right = left + 1
    w_left = right.float() - i.d
    w_right = i.d - left.float()
    loss = (F.cross_entropy(i.x, left, reduction="none") * w_left
            + F.cross_entropy(i.x, right, reduction="none") * w_right).mean()
    loss.backward()
    return loss


STEPS = {"sigmoid_focal": sigmoid_focal_step, "softmax_focal": softmax_focal_step,
         "asymmetric": asymmetric_step, "quality_focal": quality_focal_step, "varifocal": varifocal_step,
         "focal_star": focal_star_step, "distribution_focal": distribution_focal_step}


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_torch(step, inputs, repeats, warmup, max_warmup):
    """Warm-up, then the median of `repeats` timed forward+backward runs.

    At least `warmup` warm-up runs; with the warm heap, warm-up goes on (up to `max_warmup`)
    while a run still page-faults in more than WARM_FAULT_LIMIT pages, i.e. while malloc is
    still growing the heap to its steady size. Returns (median seconds, warm-up runs,
    page faults of each timed run, (fastest, slowest) timed run in seconds).
    """
    x = inputs.x

    def one():
        x.grad = None
        f0 = _minor_faults()
        t0 = time.perf_counter()
        loss = step(inputs)
        dt = time.perf_counter() - t0
        faults = _minor_faults() - f0
        if not torch.isfinite(loss) or x.grad is None:
            raise RuntimeError("torch step produced a non-finite loss or no gradient")
        return dt, faults

    n_warm = 0
    while n_warm < max(warmup, max_warmup):
        _, faults = one()
        n_warm += 1
        if n_warm >= warmup and faults <= WARM_FAULT_LIMIT:
            break
    runs = [one() for _ in range(repeats)]
    x.grad = None
    times = [r[0] for r in runs]
    return statistics.median(times), n_warm, [r[1] for r in runs], (min(times), max(times))


def run_torch(shapes, repeats, warmup, max_warmup, log):
    """Returns {(variant, shape_name): seconds}."""
    gen = torch.Generator().manual_seed(20240601)
    res = {}
    for shape in shapes:
        inputs = Inputs(shape, gen)
        n = numel(shape)
        for v in VARIANTS:
            if not measured(v, shape):
                continue
            sec, n_warm, faults, (lo, hi) = time_torch(STEPS[v], inputs, repeats, warmup, max_warmup)
            res[(v, shape_name(shape))] = sec
            log(f"  torch {v:14s} {shape_name(shape):>14s}  {sec * 1e3:9.2f} ms  "
                f"{fmt_rate(n / sec):>6s} elem/s  (runs {lo * 1e3:.2f}..{hi * 1e3:.2f} ms, "
                f"warm-up runs {n_warm}, page faults per timed run {faults})")
        del inputs
        gc.collect()
    return res


# --------------------------------------------------------------------------- C++ side

_TIME_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def cpu_bench_filter(shapes):
    pairs = [f"{v}/{shape_name(s)}" for s in shapes for v in VARIANTS + ["copy"]
             if v == "copy" or measured(v, s)]
    # No end anchor: Google Benchmark may append /real_time, /min_time:... etc.
    # Exact names are matched when parsing.
    return "^(" + "|".join(re.escape(p) for p in pairs) + ")"


def run_cpu_bench(path, shapes, repeats, timeout, log):
    """Runs the C++ benchmark, `repeats` repetitions of each entry (the median is kept, as for
    torch: one run of each side swings by more than the ratios measured on this machine);
    returns {(kind, shape_name): {"ips": .., "real_s": ..}}."""
    cmd = [path, "--benchmark_format=json",
           f"--benchmark_filter={cpu_bench_filter(shapes)}",
           f"--benchmark_min_time={CPU_BENCH_MIN_TIME}",
           f"--benchmark_repetitions={repeats}"]
    log("  $ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"  C++ benchmark failed to run: {e}")
        return {}
    if proc.returncode != 0:
        log(f"  C++ benchmark exited with status {proc.returncode}")
    if proc.stderr.strip():
        for line in proc.stderr.strip().splitlines()[-10:]:
            log("  [stderr] " + line)
    out = proc.stdout
    start = out.find("{")
    if start < 0:
        log("  C++ benchmark printed no JSON on stdout")
        return {}
    try:
        data = json.JSONDecoder().raw_decode(out[start:])[0]
    except ValueError as e:
        log(f"  could not parse the C++ benchmark's JSON: {e}")
        return {}

    context = data.get("context", {})
    log(f"  C++ side: SIMD target {context.get('simd_target', '?')}, "
        f"{context.get('omp_threads', '?')} OpenMP threads, heap {context.get('heap', '?')}")
    wanted = {shape_name(s) for s in shapes}
    samples = {}
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        name = b.get("run_name") or b.get("name", "")
        parts = name.split("/")
        if len(parts) < 2 or parts[0] not in VARIANTS + ["copy"] or parts[1] not in wanted:
            continue
        ips = b.get("items_per_second")
        rt = b.get("real_time")
        unit = _TIME_UNIT.get(b.get("time_unit", "ns"), 1e-9)
        samples.setdefault((parts[0], parts[1]), []).append(
            (float(ips) if ips is not None else None,
             float(rt) * unit if rt is not None else None))
    res = {}
    for key, runs in samples.items():  # median over --benchmark_repetitions, if any
        ips = [r[0] for r in runs if r[0] is not None]
        rts = [r[1] for r in runs if r[1] is not None]
        res[key] = {"ips": statistics.median(ips) if ips else None,
                    "real_s": statistics.median(rts) if rts else None}
    return res


# --------------------------------------------------------------------------- report

def fmt_rate(r):
    if r is None:
        return "n/a"
    r = float(f"{r:.3g}")  # round first, so 999.6M prints as 1G, not 1e+03M
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if r >= div:
            return f"{r / div:.3g}{suf}"
    return f"{r:.3g}"


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}x"


def build_rows(shapes, torch_res, cpp, have_cpp):
    rows = []
    for shape in shapes:
        sn = shape_name(shape)
        n = numel(shape)
        copy = cpp.get(("copy", sn), {})
        for v in VARIANTS:
            if not measured(v, shape):
                continue
            t_sec = torch_res[(v, sn)]
            t_rate = n / t_sec
            ours = cpp.get((v, sn), {})
            o_rate = ours.get("ips")
            ratio = o_rate / t_rate if o_rate else None
            vs_copy = (ours["real_s"] / copy["real_s"]
                       if ours.get("real_s") and copy.get("real_s") else None)
            tgt = SPEEDUP_TARGET[v]
            speed_ok = None if ratio is None else ratio >= tgt
            copy_ok = None if vs_copy is None else vs_copy <= COPY_TARGET
            row = {"shape": sn, "variant": v,
                   "torch_ms": f"{t_sec * 1e3:.2f}",
                   "torch": fmt_rate(t_rate)}
            if have_cpp:
                row.update({
                    "ours": fmt_rate(o_rate),
                    "ratio": fmt_ratio(ratio),
                    "target": f">={tgt:g}x " + ("-" if speed_ok is None
                                                else "ok" if speed_ok else "MISS"),
                    "copy": fmt_rate(copy.get("ips")),
                    "vs_copy": fmt_ratio(vs_copy),
                    "copy_target": f"<={COPY_TARGET:g}x " + ("-" if copy_ok is None
                                                            else "ok" if copy_ok else "over"),
                })
            rows.append(row)
    return rows


COLUMNS = [("shape", "shape"), ("variant", "variant"), ("torch_ms", "torch ms"),
           ("torch", "torch elem/s"), ("ours", "ours elem/s"), ("ratio", "ours/torch"),
           ("target", "target"), ("copy", "copy elem/s"), ("vs_copy", "ours/copy time"),
           ("copy_target", "copy target")]


def print_table(rows, have_cpp, markdown):
    cols = [c for c in COLUMNS if have_cpp or c[0] in ("shape", "variant", "torch_ms", "torch")]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in cols]
    left = {"shape", "variant"}

    def cell(k, s, w):
        return s.ljust(w) if k in left else s.rjust(w)

    print("  ".join(cell(k, h, w) for (k, h), w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(cell(k, r[k], w) for (k, _), w in zip(cols, widths)))
    if markdown:
        print()
        print("| " + " | ".join(h for _, h in cols) + " |")
        print("| " + " | ".join("---" if k in left else "---:" for k, _ in cols) + " |")
        for r in rows:
            print("| " + " | ".join(r[k] for k, _ in cols) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-bench", metavar="PATH",
                    help="the C++ Google Benchmark executable (omit: torch figures only)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed torch runs per case after the warm-up, and repetitions of each "
                         "C++ benchmark; the median of each is kept (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller shapes (N / 8) for a smoke run: "
                         + ", ".join(shape_name(s) for s in QUICK_SHAPES))
    ap.add_argument("--shape", action="append", metavar="NAME",
                    help="measure only this shape (as printed, e.g. 65536x80; repeatable)")
    ap.add_argument("--markdown", action="store_true",
                    help="print the result table as a Markdown table too")
    ap.add_argument("--warmup", type=int, default=1,
                    help="minimum warm-up runs per case (default 1)")
    ap.add_argument("--max-warmup", type=int, default=4,
                    help="with the warm heap, keep warming up (up to this many runs) while a "
                         "warm-up run still page-faults (default 4; set to --warmup for "
                         "exactly that many)")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc malloc as it is (every large torch temporary is a fresh "
                         "mmap, page-faulted on each run); default: keep the heap warm")
    ap.add_argument("--cpu-bench-timeout", type=float, default=900, metavar="SEC",
                    help="give up on the C++ benchmark after SEC seconds (default 900)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.warmup < 0 or args.max_warmup < 0:
        ap.error("--warmup and --max-warmup must be >= 0")
    if args.cpu_bench and not os.access(args.cpu_bench, os.X_OK):
        ap.error(f"--cpu-bench {args.cpu_bench}: not an executable file")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(THREADS)
    alloc = "glibc malloc defaults (--malloc-default)" if args.malloc_default else keep_heap_warm()
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shape:
        unknown = set(args.shape) - {shape_name(s) for s in shapes}
        if unknown:
            ap.error(f"--shape {', '.join(sorted(unknown))}: not one of "
                     + ", ".join(shape_name(s) for s in shapes))
        shapes = [s for s in shapes if shape_name(s) in args.shape]
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"torch.set_num_threads({THREADS}) -> {torch.get_num_threads()} threads "
          f"(os.cpu_count() = {os.cpu_count()})")
    print(f"float32 random normal logits, forward+backward of the mean loss, gamma={GAMMA:g}"
          f" (sigmoid: alpha={ALPHA:g}); warm-up (>= {args.warmup} run(s), more while the heap"
          f" still grows) + median of {args.repeats} runs"
          + ("; --quick shapes" if args.quick else ""))
    print(f"torch allocator: {alloc}")
    for v in VARIANTS:
        print(f"  torch {v}: {TORCH_NAME[v]}")

    log("timing torch ...")
    # Under --malloc-default every run faults, so extra warm-up would buy nothing.
    max_warmup = args.warmup if args.malloc_default else args.max_warmup
    torch_res = run_torch(shapes, args.repeats, args.warmup, max_warmup, log)

    cpp = {}
    if args.cpu_bench:
        log("running the C++ benchmark ...")
        cpp = run_cpu_bench(args.cpu_bench, shapes, args.repeats, args.cpu_bench_timeout, log)
        expected = sum(1 + sum(measured(v, s) for v in VARIANTS) for s in shapes)
        print(f"C++ benchmark: {args.cpu_bench} (median of {args.repeats} repetitions of "
              f"min_time {CPU_BENCH_MIN_TIME} s); "
              f"{len(cpp)} of {expected} expected entries found")
    print()
    print("targets: sigmoid_focal >= 15x torchvision; softmax_focal >= 3x torch; the catalogue's "
          "elementwise variants >= 8x and distribution_focal >= 2x their eager torch; "
          "our time <= 2.5x the copy floor where memory-bound")
    print()
    rows = build_rows(shapes, torch_res, cpp, bool(args.cpu_bench))
    print_table(rows, bool(args.cpu_bench), args.markdown)
    print()
    print(f"total runtime {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
