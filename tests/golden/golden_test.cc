// Parity with PyTorch: the golden files of tests/golden/data (written by generate.py from torch
// and torchvision in float64, with autograd gradients; the catalogue's from restatements of
// ASL, mmdetection and fvcore) against the CPU backend in float32. A file's parameter lines
// are set through the variant table, its weights, scores and normalizer passed as the job's.
//
// Tolerances as in tests/unit/cpu_backend_test.cc (float32 arithmetic against float64): 1e-5
// relative, with an absolute floor of 1e-6 × the case's largest value for per-item losses and
// gradients. The worst errors per variant are printed at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "focal/variant_text.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/test_util.h"

namespace focal {
namespace {

using testing::HostTensor;
using testing::MakeTensor;

/// key → values, as the file has them.
using Record = std::map<std::string, std::vector<std::string>>;

Record ReadRecord(const std::filesystem::path& path) {
  Record record;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string key, value;
    words >> key;
    std::vector<std::string>& values = record[key];
    while (words >> value) values.push_back(value);
  }
  return record;
}

std::vector<double> Doubles(const Record& r, const std::string& key) {
  std::vector<double> out;
  if (auto it = r.find(key); it != r.end()) {
    for (const std::string& v : it->second) out.push_back(std::stod(v));
  }
  return out;
}
Shape ShapeOf(const Record& r, const std::string& key) {
  Shape out;
  for (double d : Doubles(r, key)) out.push_back(static_cast<int64_t>(d));
  return out;
}
std::optional<double> Scalar(const Record& r, const std::string& key) {
  const auto v = Doubles(r, key);
  return v.empty() ? std::nullopt : std::optional<double>(v[0]);
}

/// The keys of a file that are not parameters: the case's inputs and the expected results.
bool IsDataKey(const std::string& key) {
  static const std::set<std::string> kKeys = {
      "variant", "reduction", "normalizer",                                        // the spec
      "logits_dtype", "logits_shape", "logits", "targets_dtype", "targets_shape", "targets",
      "num_objects_shape", "num_objects", "scores_dtype", "scores_shape", "scores",
      "weights_dtype", "weights_shape", "weights",                                  // inputs
      "grad_output_shape", "grad_output", "grad_output_scalar",                     // upstream
      "loss", "count", "losses_shape", "losses", "gradient_shape", "gradient"};     // expected
  return kKeys.count(key) > 0;
}

/// Every other key is a parameter, named as the variant table names it, and set through the
/// table (focal/variant_text.h), so no variant is spelled out here. One exception: the file
/// calls softmax_focal's per-class `alpha` `alpha_vector`, apart from sigmoid_focal's scalar.
absl::StatusOr<LossSpec> SpecOf(const Record& r) {
  const std::string variant = r.at("variant").at(0);
  std::optional<VariantParams> params = DefaultParams(variant);
  if (!params) return absl::InvalidArgumentError("no variant " + variant);
  for (const auto& [key, values] : r) {
    if (IsDataKey(key)) continue;
    const std::string name = key == "alpha_vector" ? "alpha" : key;
    const std::vector<ParameterDescription>& table = DescribeVariant(*params).parameters;
    const auto entry = std::find_if(table.begin(), table.end(),
                                    [&](const ParameterDescription& d) { return d.name == name; });
    absl::Status status;
    if (entry != table.end() && entry->per_class_list) {
      status = SetParameterList(*params, name, Doubles(r, key));
    } else if (values.size() != 1) {
      status = absl::InvalidArgumentError(key + " has " + std::to_string(values.size()) + " values, not one");
    } else {
      status = SetParameterFromText(*params, name, values[0]);  // names an unknown key
    }
    if (!status.ok()) return status;
  }
  LossSpec spec;
  spec.params = *std::move(params);
  const std::string reduction = r.at("reduction").at(0);
  spec.reduction = reduction == "mean" ? Reduction::kMean : reduction == "sum" ? Reduction::kSum : Reduction::kNone;
  spec.normalizer = Scalar(r, "normalizer");
  return spec;
}

/// The float input `key` (with `key`_shape and `key`_dtype float32), when the file has it.
std::optional<HostTensor> FloatInput(const Record& r, const std::string& key) {
  if (!r.count(key)) return std::nullopt;
  if (auto it = r.find(key + "_dtype"); it != r.end()) {
    EXPECT_EQ(it->second.at(0), "float32") << key;
  }
  return MakeTensor(DType::kFloat32, ShapeOf(r, key + "_shape"), Doubles(r, key));
}

struct Worst {
  double loss = 0, item = 0, grad = 0;
  int files = 0;
};
std::map<std::string, Worst>& WorstErrors() {
  static std::map<std::string, Worst> w;
  return w;
}

class PrintWorst : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, w] : WorstErrors()) {
      printf("[golden] %-18s files=%3d  worst |ours - torch| / (|torch| + floor): loss %.2e, "
             "per-item %.2e, gradient %.2e\n", name.c_str(), w.files, w.loss, w.item, w.grad);
    }
  }
};
const auto* const kPrintWorst = ::testing::AddGlobalTestEnvironment(new PrintWorst);

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

/// Checks got against want elementwise; returns the worst scaled error.
double Compare(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  const double floor = 1e-6 * MaxAbs(want) + 1e-30;
  double worst = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double err = std::fabs(got[i] - want[i]);
    worst = std::max(worst, err / (std::fabs(want[i]) + floor));
    EXPECT_LE(err, 1e-5 * std::fabs(want[i]) + floor) << what << "[" << i << "] = " << got[i] << ", torch " << want[i];
  }
  return worst;
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, MatchesTorch) {
  const Record r = ReadRecord(GetParam());
  ASSERT_TRUE(r.count("variant")) << "not a golden file: " << GetParam();
  const std::string variant = r.at("variant").at(0);
  const HostTensor logits = MakeTensor(DType::kFloat32, ShapeOf(r, "logits_shape"), Doubles(r, "logits"));
  const bool index = r.at("targets_dtype").at(0) == "int64";
  const HostTensor targets = MakeTensor(index ? DType::kInt64 : DType::kFloat32, ShapeOf(r, "targets_shape"),
                                        Doubles(r, "targets"));
  const absl::StatusOr<LossSpec> spec = SpecOf(r);
  ASSERT_TRUE(spec.ok()) << spec.status();
  LossJob job;
  job.spec = *spec;
  job.logits = logits.view();
  job.targets = targets.view();
  job.compute_gradient = true;
  job.output_dtype = DType::kFloat32;
  const std::optional<HostTensor> num_objects = FloatInput(r, "num_objects");
  const std::optional<HostTensor> weights = FloatInput(r, "weights");
  const std::optional<HostTensor> scores = FloatInput(r, "scores");
  const std::optional<HostTensor> grad_output = FloatInput(r, "grad_output");
  if (num_objects) job.num_objects = num_objects->view();
  if (weights) job.weights = weights->view();
  if (scores) job.scores = scores->view();
  if (auto w = Scalar(r, "grad_output_scalar")) job.grad_output = *w;
  if (grad_output) job.grad_output = grad_output->view();
  const absl::StatusOr<LossResult> result = CpuBackend().Compute(job);
  ASSERT_TRUE(result.ok()) << result.status();

  Worst& worst = WorstErrors()[variant];
  ++worst.files;
  const double want_loss = Doubles(r, "loss").at(0);
  const std::vector<double> want_items = Doubles(r, "losses");
  const double loss_floor = 1e-6 * MaxAbs(want_items) + 1e-30;
  EXPECT_LE(std::fabs(result->loss - want_loss), 1e-5 * std::fabs(want_loss) + loss_floor)
      << "loss " << result->loss << ", torch " << want_loss;
  worst.loss = std::max(worst.loss, std::fabs(result->loss - want_loss) / (std::fabs(want_loss) + loss_floor));
  EXPECT_EQ(result->count, static_cast<int64_t>(Doubles(r, "count").at(0)));
  if (!want_items.empty()) {
    ASSERT_TRUE(result->losses.has_value());
    EXPECT_EQ(result->losses->shape, ShapeOf(r, "losses_shape"));
    worst.item = std::max(worst.item, Compare(testing::Values(result->losses->view()), want_items, "losses"));
  }
  ASSERT_TRUE(result->gradient.has_value());
  worst.grad = std::max(worst.grad, Compare(testing::Values(result->gradient->view()), Doubles(r, "gradient"), "gradient"));
}

std::vector<std::string> GoldenFiles() {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(FOCAL_GOLDEN_DIR)) {
    if (entry.path().extension() == ".txt") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string TestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = std::filesystem::path(info.param).stem().string();
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Files, Golden, ::testing::ValuesIn(GoldenFiles()), TestName);

TEST(GoldenFiles, ArePresent) { EXPECT_GE(GoldenFiles().size(), 100u); }

}  // namespace
}  // namespace focal
