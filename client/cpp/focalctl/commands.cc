#include "focalctl/commands.h"

#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "focal/npy.h"
#include "focal/status_macros.h"
#include "focal/validate.h"
#include "focal/variant_text.h"

namespace focal::ctl {
namespace {

/// `text` kept for the life of the program: FlagSpec holds plain pointers.
const char* Keep(std::string text) {
  static auto* kept = new std::deque<std::string>;
  kept->push_back(std::move(text));
  return kept->back().c_str();
}


constexpr const char* kExitCodes =
    "exit codes:\n"
    "  0  success\n"
    "  1  the RPC failed (the server's status code and message are printed), a file could not be\n"
    "     read or written, or (health) the server is not SERVING\n"
    "  2  usage error: unknown or malformed flag, missing required flag\n";


using Clock = std::chrono::steady_clock;

double MillisSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

/// The request's optional per-batch tensors: the flag that names each file (compute) or glob
/// (eval), its dtype flag `<flag>-dtype`, and the variants it applies to (null: every one).
struct ExtraInput {
  const char* flag;
  std::optional<HostTensor> ComputeCall::*member;
  bool VariantFacts::*takes;
  const std::string& (*takers)();
};
const std::string& EveryVariant() {
  static const std::string* every = new std::string("every variant");
  return *every;
}
constexpr ExtraInput kExtraInputs[] = {
    {"num-objects", &ComputeCall::num_objects, &VariantFacts::num_objects, NumObjectsVariants},
    {"weights", &ComputeCall::weights, nullptr, EveryVariant},
    {"scores", &ComputeCall::scores, &VariantFacts::scores, ScoresVariants},
};

/// A flag of kExtraInputs set for a variant that does not take it.
absl::Status CheckExtraInputs(const Flags& flags, const LossSpec& spec) {
  for (const ExtraInput& in : kExtraInputs) {
    if (flags.Has(in.flag) && in.takes && !(FactsOf(spec.params).*in.takes)) {
      return absl::InvalidArgumentError(absl::StrCat("--", in.flag, " applies to ", in.takers(), " only"));
    }
    const std::string dtype_flag = absl::StrCat(in.flag, "-dtype");
    if (flags.Has(dtype_flag)) RETURN_IF_ERROR(ParseDType(dtype_flag, flags.Get(dtype_flag)).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot read the file"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// Reads a tensor from a .npy named by `flag`; `dtype_flag` reinterprets or converts it.
absl::StatusOr<HostTensor> LoadTensor(const std::string& path, const char* flag, const Flags& flags,
                                      const char* dtype_flag) {
  std::optional<DType> as;
  if (dtype_flag != nullptr && flags.Has(dtype_flag)) as = *ParseDType(dtype_flag, flags.Get(dtype_flag));
  absl::StatusOr<HostTensor> t = ReadNpyTensor(path, as);
  if (!t.ok()) {
    std::string message = absl::StrCat("--", flag, " ", t.status().message());
    if (absl::StrContains(message, "'<u2'") && dtype_flag != nullptr) {
      absl::StrAppend(&message, " (pass --", dtype_flag, " bfloat16)");
    }
    return absl::Status(t.status().code(), message);
  }
  return t;
}

absl::Status WriteOutput(const std::string& path, const char* flag, const HostTensor& t) {
  absl::Status status = WriteNpyTensor(path, t);
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("--", flag, " ", status.message()));
  if (t.dtype == DType::kBFloat16) {
    std::fprintf(stderr, "focalctl: %s holds bfloat16 as raw '<u2' bits (NumPy has no bfloat16): read it with "
                         "np.load(f).view(ml_dtypes.bfloat16)\n", path.c_str());
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// info

int RunInfo(const Flags& flags) {
  absl::StatusOr<ClientSetup> setup = ParseClientFlags(flags);
  if (!setup.ok()) return UsageError("info", setup.status());
  const std::string target = setup->options.target;
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(*std::move(setup));
  if (!client.ok()) return Failure("info", client.status());
  absl::StatusOr<ServerInfoOutput> info = (*client)->ServerInfo();
  if (!info.ok()) return Failure("info", info.status());
  auto dtypes = [](const std::vector<DType>& list) {
    std::vector<std::string> names;
    for (DType t : list) names.push_back(DTypeName(t));
    return absl::StrJoin(names, ", ");
  };
  std::printf("focalserve %s at %s\n", info->version.c_str(), target.c_str());
  std::printf("backend        %s\n", info->backend.c_str());
  std::printf("devices        %s\n", info->devices.empty() ? "none" : absl::StrJoin(info->devices, ", ").c_str());
  std::printf("limits         %lld bytes per message, %lld logits elements and %lld classes per request, "
              "%d requests at once\n",
              static_cast<long long>(info->max_message_bytes), static_cast<long long>(info->max_elements),
              static_cast<long long>(info->max_classes), info->max_concurrent_requests);
  std::printf("logits dtypes  %s\n", dtypes(info->logits_dtypes).c_str());
  std::printf("target dtypes  %s\n", dtypes(info->target_dtypes).c_str());
  std::printf("variants\n");
  for (const ServerInfoOutput::Variant& v : info->variants) {
    std::printf("  %s\n", v.name.c_str());
    for (const ServerInfoOutput::Parameter& p : v.parameters) {
      std::printf("    %-18s %-30s default %-10s %s\n", p.name.c_str(), p.type.c_str(), p.default_value.c_str(),
                  p.description.c_str());
    }
  }
  return kExitOk;
}

// ------------------------------------------------------------------------------------------
// health

int RunHealth(const Flags& flags) {
  absl::StatusOr<ClientSetup> setup = ParseClientFlags(flags);
  if (!setup.ok()) return UsageError("health", setup.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(*std::move(setup));
  if (!client.ok()) return Failure("health", client.status());
  absl::StatusOr<ServingStatus> status = (*client)->Health(flags.Get("service"));
  if (!status.ok()) return Failure("health", status.status());
  std::printf("%s\n", ServingStatusName(*status));
  return *status == ServingStatus::kServing ? kExitOk : kExitFailure;
}

// ------------------------------------------------------------------------------------------
// compute

/// --shared-memory: a region of this host's shared memory made and registered for the call, the
/// logits and targets put there and the gradient and NONE's losses placed there for the server
/// to write (docs/shared-memory.md). The places' dtypes and shapes are the ones the server's own
/// validation derives (focal/validate.h), so its errors are the server's too.
absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> MoveIntoSharedMemory(const Client& client, ComputeCall& call) {
  const LossJob job = JobFor(call);
  ASSIGN_OR_RETURN(const JobPlan plan, ValidateJob(job));
  // Each tensor at a 64-byte boundary: aligned for every dtype, no two in one cache line.
  const auto rounded = [](uint64_t n) { return (n + 63) / 64 * 64; };
  const uint64_t targets_at = rounded(call.logits.bytes.size());
  const uint64_t gradient_at = targets_at + rounded(call.targets.bytes.size());
  const uint64_t gradient_bytes = call.compute_gradient ? rounded(plan.num_elements * DTypeSize(plan.output_dtype)) : 0;
  const uint64_t losses_at = gradient_at + gradient_bytes;
  const bool none = call.loss.reduction == Reduction::kNone;
  const uint64_t size = std::max<uint64_t>(
      losses_at + (none ? rounded(plan.num_items * DTypeSize(plan.output_dtype)) : 0), 64);
  ASSIGN_OR_RETURN(std::unique_ptr<SharedMemoryRegion> region, client.CreateSharedMemory(size));
  ASSIGN_OR_RETURN(call.shared_logits, region->Put(call.logits, 0));
  ASSIGN_OR_RETURN(call.shared_targets, region->Put(call.targets, targets_at));
  call.logits = HostTensor();
  call.targets = HostTensor();
  if (call.compute_gradient) {
    ASSIGN_OR_RETURN(call.gradient_output, region->Place(plan.output_dtype, job.logits.shape, gradient_at));
  }
  if (none) {
    ASSIGN_OR_RETURN(call.losses_output, region->Place(plan.output_dtype, plan.item_shape, losses_at));
  }
  return region;
}

int RunCompute(const Flags& flags) {
  const std::string cmd = "compute";
  absl::StatusOr<ClientSetup> setup = ParseClientFlags(flags);
  if (!setup.ok()) return UsageError(cmd, setup.status());
  ComputeCall call;
  {
    absl::StatusOr<LossSpec> spec = ParseLossSpec(flags, /*with_reduction=*/true);
    if (!spec.ok()) return UsageError(cmd, spec.status());
    call.loss = *std::move(spec);
  }
  for (const char* required : {"logits", "targets"}) {
    if (absl::StatusOr<std::string> v = flags.Require(required); !v.ok()) return UsageError(cmd, v.status());
  }
  for (const char* flag : {"logits-dtype", "targets-dtype"}) {
    if (flags.Has(flag)) {
      if (absl::StatusOr<DType> t = ParseDType(flag, flags.Get(flag)); !t.ok()) return UsageError(cmd, t.status());
    }
  }
  if (absl::Status s = CheckExtraInputs(flags, call.loss); !s.ok()) return UsageError(cmd, s);
  if (flags.Has("losses-out") && call.loss.reduction != Reduction::kNone) {
    return UsageError(cmd, absl::InvalidArgumentError(
                               "--losses-out needs --reduction none (only NONE returns per-item losses)"));
  }
  if (flags.Has("gradient-dtype")) {
    absl::StatusOr<DType> t = ParseDType("gradient-dtype", flags.Get("gradient-dtype"));
    if (!t.ok()) return UsageError(cmd, t.status());
    call.gradient_dtype = *t;
  }
  {
    absl::StatusOr<std::optional<double>> w = flags.GetDouble("grad-output");
    if (!w.ok()) return UsageError(cmd, w.status());
    if (*w) call.grad_output = **w;
  }
  call.compute_gradient = flags.Has("grad-out");
  call.allow_non_finite = flags.Has("allow-non-finite");
  call.request_id = flags.Get("request-id");

  // Files, then the call: failures from here on.
  if (absl::Status s = LoadClassAlpha(flags, call.loss); !s.ok()) return Failure(cmd, s);
  {
    absl::StatusOr<HostTensor> t = LoadTensor(flags.Get("logits"), "logits", flags, "logits-dtype");
    if (!t.ok()) return Failure(cmd, t.status());
    call.logits = *std::move(t);
  }
  {
    absl::StatusOr<HostTensor> t = LoadTensor(flags.Get("targets"), "targets", flags, "targets-dtype");
    if (!t.ok()) return Failure(cmd, t.status());
    call.targets = *std::move(t);
  }
  for (const ExtraInput& in : kExtraInputs) {
    if (!flags.Has(in.flag)) continue;
    absl::StatusOr<HostTensor> t = LoadTensor(flags.Get(in.flag), in.flag, flags, absl::StrCat(in.flag, "-dtype").c_str());
    if (!t.ok()) return Failure(cmd, t.status());
    call.*in.member = *std::move(t);
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(*std::move(setup));
  if (!client.ok()) return Failure(cmd, client.status());
  std::unique_ptr<SharedMemoryRegion> region;
  if (flags.Has("shared-memory")) {
    absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> made = MoveIntoSharedMemory(**client, call);
    if (!made.ok()) return Failure(cmd, made.status());
    region = *std::move(made);
  }
  const Clock::time_point start = Clock::now();
  absl::StatusOr<ComputeOutput> out = (*client)->Compute(call);
  const double millis = MillisSince(start);
  if (!out.ok()) return Failure(cmd, out.status());
  // Results the server wrote into the region, read out like those of the answer.
  for (auto [shared, result] : {std::pair{&out->shared_gradient, &out->gradient}, {&out->shared_losses, &out->losses}}) {
    if (!*shared) continue;
    if (!region) {
      return Failure(cmd, absl::InternalError("the server answered with a shared-memory result the call did not ask for"));
    }
    absl::StatusOr<HostTensor> read = region->Read(**shared);
    if (!read.ok()) return Failure(cmd, read.status());
    *result = *std::move(read);
  }

  if (flags.Has("grad-out")) {
    if (!out->gradient) return Failure(cmd, absl::InternalError("the server returned no gradient"));
    if (absl::Status s = WriteOutput(flags.Get("grad-out"), "grad-out", *out->gradient); !s.ok()) return Failure(cmd, s);
  }
  if (flags.Has("losses-out")) {
    if (!out->losses) return Failure(cmd, absl::InternalError("the server returned no per-item losses"));
    if (absl::Status s = WriteOutput(flags.Get("losses-out"), "losses-out", *out->losses); !s.ok()) return Failure(cmd, s);
  }
  // %.17g: the printed loss reads back as the very double the server computed.
  std::printf("loss     %.17g\n", out->loss);
  std::printf("count    %lld\n", static_cast<long long>(out->count));
  std::printf("backend  %s\n", out->backend.c_str());
  std::printf("time     %.3f ms round trip (server: queue %lld us, compute %lld us)\n", millis,
              static_cast<long long>(out->queue_micros), static_cast<long long>(out->compute_micros));
  if (region) {
    std::printf("shared   region %s, %llu bytes (tensors and results not in the messages)\n", region->name().c_str(),
                static_cast<unsigned long long>(region->size()));
  }
  if (out->gradient) {
    std::printf("gradient %s %s -> %s\n", DTypeName(out->gradient->dtype), ShapeString(out->gradient->shape).c_str(),
                flags.Get("grad-out").c_str());
  }
  if (out->losses && flags.Has("losses-out")) {
    std::printf("losses   %s %s -> %s\n", DTypeName(out->losses->dtype), ShapeString(out->losses->shape).c_str(),
                flags.Get("losses-out").c_str());
  }
  return kExitOk;
}

// ------------------------------------------------------------------------------------------
// eval

/// The files a glob matches, sorted; NOT_FOUND naming the flag when none does.
absl::StatusOr<std::vector<std::string>> Glob(const std::string& pattern, const char* flag) {
  glob_t g{};
  const int rc = glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) files.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  globfree(&g);
  if (files.empty()) return absl::NotFoundError(absl::StrCat("--", flag, " '", pattern, "' matches no file"));
  std::sort(files.begin(), files.end());
  return files;
}

/// Progress on stderr: a bar redrawn in place on a terminal, one plain line per batch otherwise.
class Progress {
 public:
  Progress(size_t total, bool bar) : total_(total), bar_(bar), start_(Clock::now()) {}

  void Batch(size_t done, const std::string& file) {
    const double seconds = MillisSince(start_) / 1000.0;
    if (!bar_) {
      std::fprintf(stderr, "batch %zu/%zu %s\n", done, total_, file.c_str());
      return;
    }
    constexpr size_t kWidth = 30;
    const size_t filled = total_ == 0 ? kWidth : done * kWidth / total_;
    std::fprintf(stderr, "\r[%s%s] %zu/%zu batches  %.1fs", std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), done, total_, seconds);
    std::fflush(stderr);
  }

  void End() {
    if (bar_) std::fputc('\n', stderr);
  }

 private:
  size_t total_;
  bool bar_;
  Clock::time_point start_;
};

/// Writes `text` to `path` (--json).
absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary);
  file << text;
  file.close();
  if (!file) return absl::UnavailableError(absl::StrCat("--json ", path, ": cannot write the file"));
  return absl::OkStatus();
}

/// --gamma-sweep 0,0.5,1,2 --pt-bins N --calibration-bins N: Evaluate's analyses.
absl::StatusOr<EvaluateOptions> ParseEvaluateOptions(const Flags& flags) {
  EvaluateOptions o;
  if (flags.Has("gamma-sweep")) {
    for (absl::string_view item : absl::StrSplit(flags.Get("gamma-sweep"), ',', absl::SkipWhitespace())) {
      double g;
      if (!absl::SimpleAtod(item, &g)) {
        return absl::InvalidArgumentError(absl::StrCat("--gamma-sweep holds '", item, "', not a number"));
      }
      o.gamma_sweep.push_back(g);
    }
  }
  ASSIGN_OR_RETURN(const std::optional<int64_t> pt_bins, flags.GetInt("pt-bins", 1));
  ASSIGN_OR_RETURN(const std::optional<int64_t> bins, flags.GetInt("calibration-bins", 1));
  // Range checks are the server's (its message names the field); the cast only needs int.
  o.pt_bins = static_cast<int>(std::min<int64_t>(pt_bins.value_or(0), INT32_MAX));
  o.calibration_bins = static_cast<int>(std::min<int64_t>(bins.value_or(0), INT32_MAX));
  return o;
}

/// The sweep as a table: the dataset's loss at each γ with the loss's own α (sigmoid_focal:
/// α S⁺ + (1-α) S⁻, none when α < 0; softmax_focal: Σ_c α_c S_c, ones when absent).
void PrintSweep(const SweepOutput& s, const LossSpec& spec) {
  const size_t C = static_cast<size_t>(s.classes);
  std::vector<double> positive(C, 1.0), negative(C, 1.0);
  std::string alpha_text = "none";
  if (const auto* p = std::get_if<SigmoidFocalParams>(&spec.params); p && p->alpha >= 0) {
    positive.assign(C, p->alpha);
    negative.assign(C, 1 - p->alpha);
    alpha_text = absl::StrCat(p->alpha);
  } else if (const auto* q = std::get_if<SoftmaxFocalParams>(&spec.params); q && q->alpha.size() == C) {
    positive = q->alpha;
    alpha_text = "per class (--class-alpha)";
  }
  int64_t items = 0;
  for (int64_t n : s.positive_counts) items += n;
  for (int64_t n : s.negative_counts) items += n;
  std::printf("\ngamma sweep: the dataset's loss at each gamma, alpha %s\n%-10s %22s %22s\n", alpha_text.c_str(),
              "gamma", "total", "mean");
  for (size_t k = 0; k < s.gammas.size(); ++k) {
    double total = 0;
    for (size_t c = 0; c < C; ++c) {
      total += positive[c] * s.positive_sums[k * C + c];
      if (!s.negative_sums.empty()) total += negative[c] * s.negative_sums[k * C + c];
    }
    std::printf("%-10g %22.10g %22.10g\n", s.gammas[k], total, items > 0 ? total / static_cast<double>(items) : 0.0);
  }
}

int RunEval(const Flags& flags) {
  const std::string cmd = "eval";
  absl::StatusOr<ClientSetup> setup = ParseClientFlags(flags);
  if (!setup.ok()) return UsageError(cmd, setup.status());
  absl::StatusOr<LossSpec> spec = ParseLossSpec(flags, /*with_reduction=*/false);
  if (!spec.ok()) return UsageError(cmd, spec.status());
  for (const char* required : {"logits", "targets"}) {
    if (absl::StatusOr<std::string> v = flags.Require(required); !v.ok()) return UsageError(cmd, v.status());
  }
  for (const char* flag : {"logits-dtype", "targets-dtype"}) {
    if (flags.Has(flag)) {
      if (absl::StatusOr<DType> t = ParseDType(flag, flags.Get(flag)); !t.ok()) return UsageError(cmd, t.status());
    }
  }
  if (absl::Status s = CheckExtraInputs(flags, *spec); !s.ok()) return UsageError(cmd, s);
  if (absl::Status s = LoadClassAlpha(flags, *spec); !s.ok()) return Failure(cmd, s);

  absl::StatusOr<std::vector<std::string>> logits = Glob(flags.Get("logits"), "logits");
  if (!logits.ok()) return Failure(cmd, logits.status());
  absl::StatusOr<std::vector<std::string>> targets = Glob(flags.Get("targets"), "targets");
  if (!targets.ok()) return Failure(cmd, targets.status());
  // Each optional input's files, paired with the logits in sorted order (empty when not given).
  std::vector<std::vector<std::string>> extras(std::size(kExtraInputs));
  std::string counts = absl::StrCat("--logits matches ", logits->size(), " files and --targets ", targets->size());
  bool paired = logits->size() == targets->size();
  for (size_t k = 0; k < std::size(kExtraInputs); ++k) {
    const char* flag = kExtraInputs[k].flag;
    if (!flags.Has(flag)) continue;
    absl::StatusOr<std::vector<std::string>> files = Glob(flags.Get(flag), flag);
    if (!files.ok()) return Failure(cmd, files.status());
    extras[k] = *std::move(files);
    absl::StrAppend(&counts, " and --", flag, " ", extras[k].size());
    paired = paired && extras[k].size() == logits->size();
  }
  if (!paired) {
    return Failure(cmd, absl::InvalidArgumentError(
                            absl::StrCat(counts, "; batches are paired in sorted order, so the counts must be equal")));
  }

  absl::StatusOr<EvaluateOptions> options = ParseEvaluateOptions(flags);
  if (!options.ok()) return UsageError(cmd, options.status());

  if (!setup->timeout_given) setup->options.stream_deadline = absl::InfiniteDuration();
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(*std::move(setup));
  if (!client.ok()) return Failure(cmd, client.status());

  Progress progress(logits->size(), isatty(STDERR_FILENO) == 1);
  size_t next = 0;
  const Clock::time_point start = Clock::now();
  // One batch is read from disk only when the stream is ready for it.
  absl::StatusOr<EvaluateOutput> out = (*client)->Evaluate([&](ComputeCall& batch) -> absl::StatusOr<bool> {
    if (next > 0) progress.Batch(next, (*logits)[next - 1]);
    if (next == logits->size()) return false;
    batch.loss = *spec;
    ASSIGN_OR_RETURN(batch.logits, LoadTensor((*logits)[next], "logits", flags, "logits-dtype"));
    ASSIGN_OR_RETURN(batch.targets, LoadTensor((*targets)[next], "targets", flags, "targets-dtype"));
    for (size_t k = 0; k < std::size(kExtraInputs); ++k) {
      if (extras[k].empty()) continue;
      const ExtraInput& in = kExtraInputs[k];
      ASSIGN_OR_RETURN(batch.*in.member,
                       LoadTensor(extras[k][next], in.flag, flags, absl::StrCat(in.flag, "-dtype").c_str()));
    }
    batch.request_id = (*logits)[next];
    ++next;
    return true;
  }, *options);
  progress.End();
  const double millis = MillisSince(start);
  if (!out.ok()) return Failure(cmd, out.status());

  std::printf("batches  %lld\n", static_cast<long long>(out->batches));
  std::printf("count    %lld\n", static_cast<long long>(out->count));
  std::printf("total    %.17g\n", out->total_loss);
  std::printf("mean     %.17g\n", out->mean);
  std::printf("backend  %s\n", out->backend.c_str());
  std::printf("time     %.3f ms (server: compute %lld us, queue %lld us)\n", millis,
              static_cast<long long>(out->compute_micros), static_cast<long long>(out->queue_micros));
  std::printf("\n%-8s %12s %22s %22s\n", "class", "count", "loss sum", "mean");
  for (size_t c = 0; c < out->class_counts.size(); ++c) {
    const int64_t n = out->class_counts[c];
    if (n == 0) continue;
    const double sum = c < out->class_loss_sums.size() ? out->class_loss_sums[c] : 0.0;
    std::printf("%-8zu %12lld %22.10g %22.10g\n", c, static_cast<long long>(n), sum, sum / static_cast<double>(n));
  }
  if (out->sweep) PrintSweep(*out->sweep, *spec);
  if (out->calibration) {
    const CalibrationOutput& c = *out->calibration;
    std::printf("\ncalibration (%d bins): ECE %.6f  MCE %.6f  accuracy %.6f  NLL %.6f  Brier %.6f  over %lld items\n",
                c.bins, c.ece, c.mce, c.accuracy, c.nll, c.brier, static_cast<long long>(c.count));
  }
  if (flags.Has("json")) {
    absl::StatusOr<std::string> json = EvaluationJson(*out);
    if (!json.ok()) return Failure(cmd, json.status());
    if (absl::Status written = WriteFile(flags.Get("json"), *json); !written.ok()) return Failure(cmd, written);
    std::printf("\njson     %s\n", flags.Get("json").c_str());
  }
  return kExitOk;
}

const std::vector<FlagSpec> kGlobalFlags = {
    {"target", "ADDR", "server: host:port, ipv4:h:p,h:p,... or dns:///name:port (default 127.0.0.1:50051)"},
    {"tls-ca", "FILE", "PEM CA bundle that signed the server's certificate: use TLS"},
    {"tls-cert", "FILE", "PEM client certificate (mutual TLS; with --tls-key)"},
    {"tls-key", "FILE", "PEM private key of --tls-cert"},
    {"tls-server-name", "NAME", "name the server certificate must carry, when not the target's host"},
    {"token-file", "FILE", "file with a bearer token, sent as 'authorization: Bearer <token>'"},
    {"timeout", "DURATION", "deadline per call: 30s, 500ms, 2m or plain seconds (default 60s; eval: none)"},
};

std::vector<FlagSpec> Concat(std::initializer_list<std::vector<FlagSpec>> lists) {
  std::vector<FlagSpec> out;
  for (const auto& list : lists) out.insert(out.end(), list.begin(), list.end());
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------

std::vector<FlagSpec> LossFlags() {
  // One flag per parameter name of the variant table; its help says, per variant that takes
  // it, what it means and its default. Built once: FlagSpec points into these strings.
  struct Flag {
    std::string name, value;
    std::vector<std::string> uses;
  };
  static const auto* specs = [] {
    auto* flags = new std::vector<Flag>{{"variant", "NAME", {absl::StrCat(VariantNames(" | "), " (required)")}}};
    for (const VariantDescription& variant : DescribeVariants()) {
      for (const ParameterDescription& p : variant.parameters) {
        auto it = std::find_if(flags->begin(), flags->end(), [&](const Flag& f) { return f.name == p.flag; });
        if (it == flags->end()) {
          const char* value = p.per_class_list ? "FILE" : !p.choices.empty() ? "KIND" : "X";
          it = flags->insert(flags->end(), Flag{p.flag, value, {}});
        }
        std::string use = p.description;
        if (p.per_class_list) absl::StrAppend(&use, ": a float .npy of length C");
        if (!p.choices.empty()) absl::StrAppend(&use, ": ", absl::StrJoin(p.choices, " | "));
        absl::StrAppend(&use, " (default ", absl::AsciiStrToLower(p.default_value), ")");
        it->uses.push_back(absl::StrCat(variant.name, ": ", use));
      }
    }
    auto* out = new std::vector<FlagSpec>;
    auto* help = new std::vector<std::string>;  // kept alive with the specs
    help->reserve(flags->size());
    for (const Flag& f : *flags) {
      help->push_back(absl::StrJoin(f.uses, "; "));
      out->push_back({f.name.c_str(), f.value.c_str(), help->back().c_str()});
    }
    return out;
  }();
  return *specs;
}

std::vector<FlagSpec> ReductionFlags() {
  return {
      {"reduction", "R", "mean | sum | none (default mean)"},
      {"normalizer", "D", "divide by D instead of the count under mean (RetinaNet's num_pos)"},
  };
}

absl::StatusOr<DType> ParseDType(const std::string& flag, const std::string& name) {
  static const auto* names = new std::map<std::string, DType>{
      {"float32", DType::kFloat32}, {"float16", DType::kFloat16}, {"bfloat16", DType::kBFloat16},
      {"float64", DType::kFloat64}, {"int32", DType::kInt32},     {"int64", DType::kInt64},
      {"uint8", DType::kUInt8}};
  const auto it = names->find(absl::AsciiStrToLower(name));
  if (it == names->end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", name, " is not a dtype (float32, float16, bfloat16, float64, int32, int64, uint8)"));
  }
  return it->second;
}

absl::StatusOr<LossSpec> ParseLossSpec(const Flags& flags, bool with_reduction) {
  ASSIGN_OR_RETURN(const std::string variant, flags.Require("variant"));
  std::optional<VariantParams> params = DefaultParams(variant);
  if (!params) {
    return absl::InvalidArgumentError(
        absl::StrCat("--variant=", variant, " is not a variant (", VariantNames(", "), ")"));
  }
  const VariantDescription& described = DescribeVariant(*params);
  for (const FlagSpec& f : LossFlags()) {
    const std::string name = f.name;
    if (name == "variant" || !flags.Has(name)) continue;
    const auto p = std::find_if(described.parameters.begin(), described.parameters.end(),
                                [&](const ParameterDescription& d) { return d.flag == name; });
    if (p == described.parameters.end()) {
      std::vector<std::string> takes;
      for (const ParameterDescription& d : described.parameters) takes.push_back("--" + d.flag);
      return absl::InvalidArgumentError(absl::StrCat("--", name, " does not apply to ", variant, " (it takes ",
                                                     absl::StrJoin(takes, ", "), ")"));
    }
    if (p->per_class_list) continue;  // a file: LoadClassAlpha reads it once the connection is set up
    if (absl::Status s = SetParameterFromText(*params, p->name, flags.Get(name)); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", flags.Get(name), ": ", s.message()));
    }
  }
  LossSpec spec;
  spec.params = std::move(*params);
  if (with_reduction) {
    const std::string reduction = absl::AsciiStrToLower(flags.Get("reduction", "mean"));
    if (reduction == "mean") {
      spec.reduction = Reduction::kMean;
    } else if (reduction == "sum") {
      spec.reduction = Reduction::kSum;
    } else if (reduction == "none") {
      spec.reduction = Reduction::kNone;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--reduction=", flags.Get("reduction"), " is not mean, sum or none"));
    }
    ASSIGN_OR_RETURN(spec.normalizer, flags.GetDouble("normalizer"));
  }
  return spec;
}

absl::Status LoadClassAlpha(const Flags& flags, LossSpec& spec) {
  const VariantDescription& described = DescribeVariant(spec.params);
  for (const ParameterDescription& p : described.parameters) {
    if (!p.per_class_list || !flags.Has(p.flag)) continue;
    ASSIGN_OR_RETURN(const HostTensor list, LoadTensor(flags.Get(p.flag), p.flag.c_str(), flags, nullptr));
    // Floats (α) or integers (class_counts, as NumPy's bincount gives them): values either way.
    if (list.shape.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", p.flag, " ", flags.Get(p.flag), ": holds ",
                                                     DTypeName(list.dtype), " ", ShapeString(list.shape),
                                                     "; expected a 1-D array of length C"));
    }
    RETURN_IF_ERROR(SetParameterList(spec.params, p.name, list.ToDoubles()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClientSetup> ParseClientFlags(const Flags& flags) {
  ClientSetup setup;
  setup.options.target = flags.Get("target", setup.options.target);
  if (setup.options.target.empty()) return absl::InvalidArgumentError("--target is empty");
  setup.tls_ca_file = flags.Get("tls-ca");
  setup.tls_cert_file = flags.Get("tls-cert");
  setup.tls_key_file = flags.Get("tls-key");
  setup.token_file = flags.Get("token-file");
  setup.options.tls_server_name = flags.Get("tls-server-name");
  if (setup.tls_cert_file.empty() != setup.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  ASSIGN_OR_RETURN(const std::optional<absl::Duration> timeout, flags.GetDuration("timeout"));
  if (timeout) {
    setup.options.deadline = *timeout;
    setup.options.stream_deadline = *timeout;
    setup.timeout_given = true;
  }
  return setup;
}

absl::StatusOr<std::unique_ptr<Client>> Connect(ClientSetup setup) {
  if (!setup.tls_ca_file.empty()) {
    ASSIGN_OR_RETURN(setup.options.tls_root_certs_pem, ReadTextFile(setup.tls_ca_file, "tls-ca"));
  }
  if (!setup.tls_cert_file.empty()) {
    ASSIGN_OR_RETURN(setup.options.tls_client_cert_pem, ReadTextFile(setup.tls_cert_file, "tls-cert"));
    ASSIGN_OR_RETURN(setup.options.tls_client_key_pem, ReadTextFile(setup.tls_key_file, "tls-key"));
  }
  if (!setup.token_file.empty()) {
    ASSIGN_OR_RETURN(const std::string token, ReadTextFile(setup.token_file, "token-file"));
    setup.options.bearer_token = std::string(absl::StripAsciiWhitespace(token));
    if (setup.options.bearer_token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--token-file ", setup.token_file, ": the file holds no token"));
    }
  }
  return Client::Create(std::move(setup.options));
}

int UsageError(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "focalctl %s: %.*s\nrun 'focalctl %s --help' for usage\n", command.c_str(),
               static_cast<int>(status.message().size()), status.message().data(), command.c_str());
  return kExitUsage;
}

int Failure(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "focalctl %s: %s: %.*s\n", command.c_str(), absl::StatusCodeToString(status.code()).c_str(),
               static_cast<int>(status.message().size()), status.message().data());
  return kExitFailure;
}

const std::vector<FlagSpec>& GlobalFlags() { return kGlobalFlags; }

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"info", "the server's version, backend, limits, dtypes and variants", "info [flags]",
       "Prints the server's version, backend, devices, limits, dtypes and variants with their parameters\n"
       "(GetServerInfo).",
       {}, RunInfo},
      {"health", "the server's grpc.health.v1 status", "health [--service NAME] [flags]",
       "Asks grpc.health.v1.Health/Check and prints the status; exits 0 only when it is SERVING.",
       {{"service", "NAME", "service to ask about (default: the whole server)"}}, RunHealth},
      {"compute", "one batch from .npy files: loss, gradient, per-item losses",
       "compute --variant NAME --logits FILE --targets FILE [flags]",
       "Computes one batch (Compute) from NumPy .npy files and prints loss, count, backend and time. With\n"
       "--grad-out the gradient with respect to the logits is written as .npy; with --reduction none,\n"
       "--losses-out writes the per-item losses.\n\n"
       ".npy files: format 1.0-3.0, C order, dtypes <f4 <f2 <f8 <i4 <i8 |u1. NumPy has no bfloat16: a file of\n"
       "raw bfloat16 bits is stored as '<u2' (ml_dtypes: x.view(np.uint16)) and read as bfloat16 only with\n"
       "--logits-dtype bfloat16 (or --targets-dtype); a '<u2' file is never taken for bfloat16 silently.\n"
       "--logits-dtype float16|bfloat16|float32|float64 also converts a floating file before sending it.\n"
       "Outputs keep the wire dtype; bfloat16 outputs are written as '<u2' bits the same way.",
       Concat({LossFlags(), ReductionFlags(),
               {{"logits", "FILE", "logits .npy: [N, C, d1..dk] for class-indexed variants (required)"},
                {"targets", "FILE", "targets .npy: int class indices, or floats shaped like the logits (required)"},
                {"num-objects", "FILE", Keep(absl::StrCat(NumObjectsVariants(), ": float .npy [N] of objects per row"))},
                {"weights", "FILE", "float .npy of per-item loss weights, shaped like the NONE losses"},
                {"scores", "FILE", Keep(absl::StrCat(ScoresVariants(), " with class-index targets: float .npy of the "
                                                     "target class's quality, shaped like the targets"))},
                {"logits-dtype", "DTYPE", "send the logits as DTYPE ('<u2' files: bfloat16 bits)"},
                {"targets-dtype", "DTYPE", "send float targets as DTYPE ('<u2' files: bfloat16 bits)"},
                {"num-objects-dtype", "DTYPE", "send num_objects as DTYPE"},
                {"weights-dtype", "DTYPE", "send the weights as DTYPE"},
                {"scores-dtype", "DTYPE", "send the scores as DTYPE"},
                {"grad-out", "FILE", "compute the gradient w.r.t. the logits and write it here (.npy)"},
                {"losses-out", "FILE", "with --reduction none: write the per-item losses here (.npy)"},
                {"gradient-dtype", "DTYPE", "dtype of the gradient and losses: the logits' (default) or float32"},
                {"grad-output", "W", "upstream gradient, a scalar (default 1)"},
                {"allow-non-finite", nullptr, "let NaN/Inf inputs propagate instead of being rejected"},
                {"request-id", "ID", "request id, echoed and named in the server's log on failure"},
                {"shared-memory", nullptr,
                 "same host: logits, targets, gradient and losses through a POSIX shared-memory region "
                 "(the server needs --shared-memory=on)"}}}),
       RunCompute},
      {"eval", "a dataset of .npy batches through Evaluate: totals and per-class table",
       "eval --variant NAME --logits GLOB --targets GLOB [flags]",
       "Streams a dataset of .npy batches through one Evaluate call and prints the exact totals and a per-class\n"
       "table (by target class; variants whose items are single logits: by class channel). Files matching each\n"
       "glob are paired in sorted order; one batch is in memory at a time. Progress goes to stderr: a bar on a\n"
       "terminal, one line per batch otherwise. Quote the globs so the shell does not expand them.",
       Concat({LossFlags(),
               {{"logits", "GLOB", "logits .npy files, e.g. 'batches/*_logits.npy' (required)"},
                {"targets", "GLOB", "targets .npy files, as many as logits (required)"},
                {"num-objects", "GLOB", Keep(absl::StrCat(NumObjectsVariants(), ": num_objects .npy files, as many as logits"))},
                {"weights", "GLOB", "per-item loss weights .npy files, as many as logits"},
                {"scores", "GLOB", Keep(absl::StrCat(ScoresVariants(), ": scores .npy files, as many as logits"))},
                {"logits-dtype", "DTYPE", "send the logits as DTYPE ('<u2' files: bfloat16 bits)"},
                {"targets-dtype", "DTYPE", "send float targets as DTYPE ('<u2' files: bfloat16 bits)"},
                {"num-objects-dtype", "DTYPE", "send num_objects as DTYPE"},
                {"weights-dtype", "DTYPE", "send the weights as DTYPE"},
                {"scores-dtype", "DTYPE", "send the scores as DTYPE"},
                {"gamma-sweep", "LIST", "softmax_focal, sigmoid_focal: gamma values to sweep in the same pass, e.g. 0,0.5,1,2,3,5"},
                {"pt-bins", "N", "p_t bins of the sweep's loss mass (default 20)"},
                {"calibration-bins", "N", "softmax_focal, sigmoid_focal: reliability histogram bins, ECE, accuracy, NLL, Brier (15 is usual)"},
                {"json", "FILE", "write the whole answer as JSON (the input of python3 -m focalserve.report)"}}}),
       RunEval},
      {"bench", "load test: latency percentiles and requests/s, like ghz",
       "bench --variant NAME [--concurrency N] [--duration D] [--shape DIMS] [flags]",
       "Load test: N workers send Compute calls of random inputs back to back for D, then prints the latency\n"
       "distribution (p50, p90, p99, max), requests per second and the status codes, like ghz. Exits 1 when\n"
       "any call failed.",
       Concat({LossFlags(), ReductionFlags(),
               {{"concurrency", "N", "calls in flight at once (default 4)"},
                {"duration", "D", "how long to run: 10s, 1m, ... (default 10s)"},
                {"shape", "DIMS", "logits shape, comma-separated (default 64,80)"},
                {"dtype", "DTYPE", "logits dtype: float32, float16, bfloat16, float64 (default float32)"},
                {"gradient", nullptr, "ask for the gradient too"}}}),
       RunBench},
  };
  return *commands;
}

std::string MainHelp() {
  std::string out =
      "usage: focalctl [global flags] COMMAND [flags]\n\n"
      "Command-line client of focalserve (focal.v1.FocalLossService).\n\ncommands:\n";
  for (const Command& c : Commands()) {
    absl::StrAppend(&out, "  ", absl::StrFormat("%-9s", c.name), c.summary, "\n");
  }
  absl::StrAppend(&out, "\nglobal flags:\n", FlagHelp(GlobalFlags()), "\n",
                  "'focalctl COMMAND --help' describes a command and its flags.\n\n", kExitCodes);
  return out;
}

std::string CommandHelp(const Command& command) {
  std::string out = absl::StrCat("usage: focalctl ", command.synopsis, "\n\n", command.description, "\n");
  if (!command.flags.empty()) absl::StrAppend(&out, "\nflags:\n", FlagHelp(command.flags));
  absl::StrAppend(&out, "\nglobal flags:\n", FlagHelp(GlobalFlags()), "\n", kExitCodes);
  return out;
}

}  // namespace focal::ctl
