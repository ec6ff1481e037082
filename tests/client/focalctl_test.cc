// focalctl run as a user runs it: .npy files written with focal/npy.h, the command executed,
// its outputs read back and compared with focal::CpuBackend in this process; exit codes and
// --help. Also the .npy reader and writer themselves.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include <sys/stat.h>

#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "focal/npy.h"
#include "tests/client/test_support.h"

#ifndef FOCALCTL_BINARY
#error "FOCALCTL_BINARY must name the focalctl executable"
#endif

namespace focal::client_test {
namespace {

const std::string kFocalctl = FOCALCTL_BINARY;

/// The value printed after `key` at the start of a line of `out` ("loss     0.25" → "0.25").
std::string Field(const std::string& out, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (line.substr(0, key.size() + 1) == key + " ") {
      const absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(key.size()));
      return std::string(rest.substr(0, rest.find(' ')));
    }
  }
  return "";
}

std::string Describe(const RunResult& r) {
  return absl::StrCat("exit ", r.exit_code, "\n--- stdout\n", r.out, "--- stderr\n", r.err);
}

// ------------------------------------------------------------------------------------------
// .npy

TEST(NpyTest, RoundTripsEveryDtype) {
  TempDir dir;
  const std::vector<HostTensor> tensors = {
      HostTensor::Float32({2, 3}, {1, 2, 3, 4, 5, 6.5f}),
      HostTensor::Float16({3}, {0.5f, -2, 65504}),
      HostTensor::Float64({}, {3.25}),
      HostTensor::Int32({4}, {1, -2, 3, 4}),
      HostTensor::Int64({2, 0}, {}),
      HostTensor::UInt8({1, 1, 2}, {7, 255}),
  };
  for (const HostTensor& t : tensors) {
    SCOPED_TRACE(DTypeName(t.dtype));
    const std::string path = dir.File("t.npy");
    ASSERT_TRUE(WriteNpyTensor(path, t).ok());
    const std::string file = ReadFile(path);
    // Version 1.0, and the data starts on a 64-byte boundary as NumPy writes it.
    EXPECT_EQ(file.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
    const size_t header = static_cast<unsigned char>(file[8]) | static_cast<unsigned char>(file[9]) << 8;
    EXPECT_EQ((10 + header) % 64, 0u);
    EXPECT_EQ(file[10 + header - 1], '\n');
    absl::StatusOr<HostTensor> back = ReadNpyTensor(path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->dtype, t.dtype);
    EXPECT_EQ(back->shape, t.shape);
    EXPECT_EQ(back->bytes, t.bytes);
  }
}

TEST(NpyTest, ReadsWhatNumpyWrites) {
  TempDir dir;
  // np.save(f, np.arange(3, dtype='<i8')) with NumPy 1.x, byte for byte.
  std::string header = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  header.append(117 - header.size(), ' ');
  header.push_back('\n');
  std::string file = std::string("\x93NUMPY\x01\x00\x76\x00", 10) + header;
  for (int64_t v : {0, 1, 2}) file.append(reinterpret_cast<const char*>(&v), 8);
  ASSERT_TRUE(WriteFile(dir.File("a.npy"), file));
  absl::StatusOr<HostTensor> t = ReadNpyTensor(dir.File("a.npy"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype, DType::kInt64);
  EXPECT_EQ(t->shape, std::vector<int64_t>{3});
  EXPECT_EQ(t->ToDoubles(), (std::vector<double>{0, 1, 2}));
}

TEST(NpyTest, RejectsWhatItCannotRead) {
  TempDir dir;
  EXPECT_EQ(ReadNpyTensor(dir.File("missing.npy")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteFile(dir.File("text.npy"), "hello"));
  absl::Status s = ReadNpyTensor(dir.File("text.npy")).status();
  EXPECT_NE(s.message().find("text.npy"), absl::string_view::npos) << s;

  ASSERT_TRUE(WriteNpy(dir.File("f.npy"), {"<f4", {2}, std::string(8, '\0')}).ok());
  std::string fortran = ReadFile(dir.File("f.npy"));
  fortran.replace(fortran.find("False"), 5, "True ");
  ASSERT_TRUE(WriteFile(dir.File("fortran.npy"), fortran));
  s = ReadNpyTensor(dir.File("fortran.npy")).status();
  EXPECT_NE(s.message().find("Fortran"), absl::string_view::npos) << s;

  ASSERT_TRUE(WriteNpy(dir.File("big.npy"), {">f4", {1}, std::string(4, '\0')}).ok());
  s = ReadNpyTensor(dir.File("big.npy")).status();
  EXPECT_NE(s.message().find("'>f4'"), absl::string_view::npos) << s;

  ASSERT_TRUE(WriteNpy(dir.File("short.npy"), {"<f4", {3}, std::string(8, '\0')}).ok());
  s = ReadNpyTensor(dir.File("short.npy")).status();
  EXPECT_NE(s.message().find("12 bytes"), absl::string_view::npos) << s;
}

TEST(NpyTest, Uint16IsBFloat16OnlyWhenAskedFor) {
  TempDir dir;
  const HostTensor bf = HostTensor::BFloat16({3}, {1.0f, -0.5f, 3.0f});
  ASSERT_TRUE(WriteNpyTensor(dir.File("bf.npy"), bf).ok());
  EXPECT_NE(ReadFile(dir.File("bf.npy")).find("'<u2'"), std::string::npos);
  absl::Status s = ReadNpyTensor(dir.File("bf.npy")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'<u2'"), absl::string_view::npos) << s;
  absl::StatusOr<HostTensor> t = ReadNpyTensor(dir.File("bf.npy"), DType::kBFloat16);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype, DType::kBFloat16);
  EXPECT_EQ(t->bytes, bf.bytes);
  // A float file converts to bfloat16 with rounding to nearest even.
  ASSERT_TRUE(WriteNpyTensor(dir.File("f.npy"), HostTensor::Float32({3}, {1.0f, -0.5f, 3.0f})).ok());
  t = ReadNpyTensor(dir.File("f.npy"), DType::kBFloat16);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->bytes, bf.bytes);
  // Integers do not convert.
  ASSERT_TRUE(WriteNpyTensor(dir.File("i.npy"), HostTensor::Int64({1}, {1})).ok());
  EXPECT_FALSE(ReadNpyTensor(dir.File("i.npy"), DType::kFloat32).ok());
}

// ------------------------------------------------------------------------------------------
// focalctl without a server

TEST(FocalctlTest, HelpForEveryCommand) {
  RunResult r = RunProgram(kFocalctl, {"--help"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  for (const char* command : {"info", "health", "compute", "eval", "bench"}) {
    EXPECT_NE(r.out.find(absl::StrCat("  ", command, " ")), std::string::npos) << command << "\n" << r.out;
    RunResult help = RunProgram(kFocalctl, {command, "--help"});
    ASSERT_EQ(help.exit_code, 0) << command << "\n" << Describe(help);
    EXPECT_EQ(help.out.rfind(absl::StrCat("usage: focalctl ", command), 0), 0u) << help.out;
    EXPECT_NE(help.out.find("exit codes:"), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("--target"), std::string::npos) << help.out;
  }
  RunResult compute = RunProgram(kFocalctl, {"compute", "-h"});
  for (const char* flag : {"--variant", "--gamma", "--alpha", "--logits", "--targets", "--reduction", "--grad-out",
                           "--losses-out", "--num-objects", "--label-smoothing", "--ignore-index", "--class-alpha",
                           "--xent", "--gradient-dtype", "--logits-dtype", "bfloat16", "--weights", "--scores",
                           "--gamma-neg", "--iou-weighted", "--poly-epsilon", "--class-counts", "--gamma-schedule"}) {
    EXPECT_NE(compute.out.find(flag), std::string::npos) << flag;
  }
  RunResult bench = RunProgram(kFocalctl, {"bench", "--help"});
  for (const char* flag : {"--concurrency", "--duration", "--shape", "--gradient"}) {
    EXPECT_NE(bench.out.find(flag), std::string::npos) << flag;
  }
}

TEST(FocalctlTest, UsageErrorsExitTwoAndNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{}, "no command"},
      {{"frobnicate"}, "unknown command 'frobnicate'"},
      {{"info", "--bogus"}, "--bogus"},
      {{"compute", "--logits", "x.npy", "--targets", "y.npy"}, "--variant is required"},
      {{"compute", "--variant", "softmax_focal", "--targets", "y.npy"}, "--logits is required"},
      {{"compute", "--variant", "nope", "--logits", "x", "--targets", "y"}, "--variant=nope"},
      {{"compute", "--variant", "softmax_focal", "--gamma", "two", "--logits", "x", "--targets", "y"}, "--gamma=two"},
      {{"compute", "--variant", "softmax_focal", "--xent", "1", "--logits", "x", "--targets", "y"}, "--xent"},
      {{"compute", "--variant", "softmax_focal", "--losses-out", "l", "--logits", "x", "--targets", "y"}, "--losses-out"},
      {{"compute", "--variant", "softmax_focal", "--scores", "q", "--logits", "x", "--targets", "y"},
       "--scores applies to quality_focal only"},
      {{"compute", "--variant", "varifocal", "--iou-weighted", "maybe", "--logits", "x", "--targets", "y"},
       "iou_weighted is 'maybe'; expected true or false"},
      {{"compute", "--variant", "softmax_focal", "--gamma-schedule", "0.2", "--logits", "x", "--targets", "y"},
       "threshold:gamma pairs"},
      {{"compute", "--variant", "asymmetric", "--weights-dtype", "int8", "--weights", "w", "--logits", "x",
        "--targets", "y"},
       "--weights-dtype"},
      {{"compute", "--variant", "softmax_focal", "--logits-dtype", "float8", "--logits", "x", "--targets", "y"},
       "--logits-dtype=float8"},
      {{"info", "--timeout", "soon"}, "--timeout=soon"},
      {{"info", "--tls-cert", "c.pem"}, "--tls-cert and --tls-key"},
      {{"bench", "--variant", "sigmoid_focal", "--shape", "64,x"}, "--shape=64,x"},
      {{"bench", "--variant", "sigmoid_focal", "--concurrency", "0"}, "--concurrency"},
      {{"compute", "--variant"}, "--variant needs a value"},
  };
  for (const Case& c : cases) {
    const RunResult r = RunProgram(kFocalctl, c.args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.args, " ") << "\n" << Describe(r);
    EXPECT_NE(r.err.find(c.says), std::string::npos) << absl::StrJoin(c.args, " ") << "\n" << Describe(r);
  }
}

TEST(FocalctlTest, MissingFileExitsOneAndNamesIt) {
  TempDir dir;
  ASSERT_TRUE(WriteNpyTensor(dir.File("y.npy"), HostTensor::Int64({2}, {0, 1})).ok());
  const RunResult r = RunProgram(kFocalctl, {"compute", "--target", "127.0.0.1:1", "--variant", "softmax_focal", "--logits",
                                      dir.File("missing.npy"), "--targets", dir.File("y.npy")});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_NE(r.err.find("--logits " + dir.File("missing.npy")), std::string::npos) << Describe(r);
  const RunResult token = RunProgram(kFocalctl, {"info", "--target", "127.0.0.1:1", "--token-file", dir.File("no-token")});
  EXPECT_EQ(token.exit_code, 1) << Describe(token);
  EXPECT_NE(token.err.find("--token-file"), std::string::npos) << Describe(token);
  const RunResult glob = RunProgram(kFocalctl, {"eval", "--variant", "softmax_focal", "--logits", dir.File("*_nothing.npy"),
                                         "--targets", dir.File("*.npy")});
  EXPECT_EQ(glob.exit_code, 1) << Describe(glob);
  EXPECT_NE(glob.err.find("matches no file"), std::string::npos) << Describe(glob);
}

TEST(FocalctlTest, UnreachableServerExitsOne) {
  TempDir dir;
  ASSERT_TRUE(WriteNpyTensor(dir.File("x.npy"), HostTensor::Float32({2, 2}, {1, 2, 3, 4})).ok());
  ASSERT_TRUE(WriteNpyTensor(dir.File("y.npy"), HostTensor::Int64({2}, {0, 1})).ok());
  // Port 1 on loopback: nothing listens there, the connection is refused at once.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"info"}, {"health"},
        {"compute", "--variant", "softmax_focal", "--logits", dir.File("x.npy"), "--targets", dir.File("y.npy")}}) {
    std::vector<std::string> full = {"--target", "127.0.0.1:1", "--timeout", "5s"};
    full.insert(full.end(), args.begin(), args.end());
    const RunResult r = RunProgram(kFocalctl, full);
    EXPECT_EQ(r.exit_code, 1) << absl::StrJoin(full, " ") << "\n" << Describe(r);
    EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << Describe(r);
  }
}

// ------------------------------------------------------------------------------------------
// focalctl against a server

class FocalctlServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started = StartServer();
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  RunResult Focalctl(std::vector<std::string> args) const {
    args.insert(args.begin(), {"--target", server_->address()});
    return RunProgram(kFocalctl, args, dir_.path());
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }
  void Write(const std::string& name, const HostTensor& t) const {
    ASSERT_TRUE(WriteNpyTensor(Path(name), t).ok()) << name;
  }
  HostTensor Read(const std::string& name, std::optional<DType> as = std::nullopt) const {
    absl::StatusOr<HostTensor> t = ReadNpyTensor(Path(name), as);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : HostTensor();
  }

  static ServerProcess* server_;
  TempDir dir_;
};

ServerProcess* FocalctlServerTest::server_ = nullptr;

TEST_F(FocalctlServerTest, InfoAndHealth) {
  RunResult r = Focalctl({"info"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("backend        cpu"), std::string::npos) << r.out;
  // Every variant of the table with every parameter (focalctl info lists them from the server).
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    EXPECT_NE(r.out.find(Variant<P>::kFacts.name), std::string::npos) << Variant<P>::kFacts.name;
    ForEachParam<P>([&](const auto& param) { EXPECT_NE(r.out.find(param.name), std::string::npos) << param.name; });
  });
  r = Focalctl({"health"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "SERVING\n");
  r = Focalctl({"health", "--service", "no.such.Service"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << Describe(r);
}

TEST_F(FocalctlServerTest, ComputeSigmoidFocalWritesGradientAndLosses) {
  ComputeCall call;
  SigmoidFocalParams p;
  p.gamma = 2;
  p.alpha = 0.25;
  call.loss.params = p;
  call.loss.reduction = Reduction::kNone;
  call.logits = HostTensor::Float32({16, 5}, Normal(80, 1));
  std::vector<float> targets(80);
  for (size_t i = 0; i < targets.size(); ++i) targets[i] = i % 7 == 0 ? 1.0f : 0.0f;
  call.targets = HostTensor::Float32({16, 5}, targets);
  call.compute_gradient = true;
  Write("x.npy", call.logits);
  Write("y.npy", call.targets);

  const RunResult r = Focalctl({"compute", "--variant", "sigmoid_focal", "--gamma", "2", "--alpha", "0.25",
                                "--logits", "x.npy", "--targets", "y.npy", "--reduction", "none", "--grad-out",
                                "g.npy", "--losses-out", "l.npy"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  absl::StatusOr<LossResult> expected = ComputeLocally(call);
  ASSERT_TRUE(expected.ok()) << expected.status();
  double loss = 0;
  ASSERT_TRUE(absl::SimpleAtod(Field(r.out, "loss"), &loss)) << r.out;
  EXPECT_EQ(loss, expected->loss);  // printed with %.17g: the same double
  EXPECT_EQ(Field(r.out, "count"), absl::StrCat(expected->count));
  EXPECT_EQ(Field(r.out, "backend"), "cpu");
  EXPECT_NE(Field(r.out, "time"), "");
  EXPECT_TRUE(SameTensor(*expected->gradient, Read("g.npy")));
  EXPECT_TRUE(SameTensor(*expected->losses, Read("l.npy")));
}

TEST_F(FocalctlServerTest, ComputeEveryVariantMatchesCpuBackend) {
  struct Case {
    std::string name;
    ComputeCall call;
    std::vector<std::string> flags;
  };
  std::vector<Case> cases;
  {
    Case c{"softmax_focal", {}, {"--variant", "softmax_focal", "--gamma", "0.5", "--class-alpha", "a.npy",
                                 "--ignore-index", "2", "--label-smoothing", "0.1", "--reduction", "sum"}};
    SoftmaxFocalParams p;
    p.gamma = 0.5;
    p.alpha = {0.5f, 1.0f, 1.5f, 2.0f};
    p.ignore_index = 2;
    p.label_smoothing = 0.1;
    c.call.loss.params = p;
    c.call.loss.reduction = Reduction::kSum;
    c.call.logits = HostTensor::Float32({3, 4, 2, 2}, Normal(48, 2));
    c.call.targets = HostTensor::Int64({3, 2, 2}, Classes(12, 4, 3));
    Write("a.npy", HostTensor::Float32({4}, std::vector<float>(p.alpha.begin(), p.alpha.end())));
    cases.push_back(std::move(c));
  }
  {
    Case c{"focal_cosine", {}, {"--variant", "focal_cosine", "--alpha", "0.5", "--gamma", "1", "--xent", "0.3"}};
    FocalCosineParams p;
    p.alpha = 0.5;
    p.gamma = 1;
    p.xent = 0.3;
    c.call.loss.params = p;
    c.call.logits = HostTensor::Float64({6, 5}, std::vector<double>(30, 0.1));
    c.call.targets = HostTensor::Int32({6}, std::vector<int32_t>{0, 1, 2, 3, 4, 0});
    cases.push_back(std::move(c));
  }
  {
    Case c{"dynamic_focal", {}, {"--variant", "dynamic_focal", "--gamma", "3", "--num-objects", "n.npy"}};
    c.call.loss.params = DynamicFocalParams{3.0};
    c.call.logits = HostTensor::Float16({4, 6}, Normal(24, 4));
    std::vector<float> t(24, 0.0f);
    t[1] = t[7] = t[20] = 1.0f;
    c.call.targets = HostTensor::Float32({4, 6}, t);
    c.call.num_objects = HostTensor::Float32({4}, {1, 2, 3, 4});
    Write("n.npy", *c.call.num_objects);
    cases.push_back(std::move(c));
  }
  {
    Case c{"asymmetric", {}, {"--variant", "asymmetric", "--gamma-neg", "2", "--clip", "0", "--weights", "w_asl.npy"}};
    AsymmetricParams p;
    p.gamma_neg = 2;
    p.clip = 0;
    c.call.loss.params = p;
    c.call.logits = HostTensor::Float32({3, 4}, Normal(12, 6));
    c.call.targets = HostTensor::Float32({3, 4}, {1, 0, 0, 0.5f, 0, 1, 0, 0, 0, 0, 0, 1});
    c.call.weights = HostTensor::Float32({3, 4}, {1, 0, 2, 1, 1, 1, 0.5f, 1, 3, 1, 1, 0});
    Write("w_asl.npy", *c.call.weights);
    cases.push_back(std::move(c));
  }
  {
    Case c{"quality_focal", {}, {"--variant", "quality_focal", "--beta", "1.5", "--scores", "q.npy"}};
    c.call.loss.params = QualityFocalParams{1.5, std::nullopt};
    c.call.logits = HostTensor::Float32({4, 3}, Normal(12, 7));
    c.call.targets = HostTensor::Int64({4}, {0, 3, 2, 1});  // 3 = background
    c.call.scores = HostTensor::Float32({4}, {0.9f, 0, 0.25f, 1});
    Write("q.npy", *c.call.scores);
    cases.push_back(std::move(c));
  }
  {
    Case c{"varifocal", {}, {"--variant", "varifocal", "--iou-weighted", "false", "--gamma", "1.5"}};
    c.call.loss.params = VarifocalParams{0.75, 1.5, false};
    c.call.logits = HostTensor::Float32({2, 5}, Normal(10, 8));
    c.call.targets = HostTensor::Float32({2, 5}, {0, 0.8f, 0, 0, 0, 0, 0, 0, 0.3f, 0});
    cases.push_back(std::move(c));
  }
  {
    Case c{"focal_star", {}, {"--variant", "focal_star", "--gamma", "2", "--beta", "1", "--alpha", "0.25"}};
    c.call.loss.params = FocalStarParams{2, 1, 0.25, std::nullopt};
    c.call.logits = HostTensor::Float32({3, 3}, Normal(9, 9));
    c.call.targets = HostTensor::Int32({3}, {0, 2, 3});
    cases.push_back(std::move(c));
  }
  {
    Case c{"distribution_focal", {}, {"--variant", "distribution_focal"}};
    c.call.loss.params = DistributionFocalParams{};
    c.call.logits = HostTensor::Float32({4, 17}, Normal(68, 10));
    c.call.targets = HostTensor::Float32({4}, {0, 16, 3.25f, 8});
    cases.push_back(std::move(c));
  }
  {
    Case c{"softmax_options", {}, {"--variant", "softmax_focal", "--gamma", "3", "--gamma-schedule", "0.2:5",
                                   "--poly-epsilon", "1", "--class-counts", "counts.npy"}};
    SoftmaxFocalParams p;
    p.gamma = 3;
    p.gamma_schedule = {{0.2, 5}};
    p.poly_epsilon = 1;
    p.class_counts = {100, 0, 3, 7};
    c.call.loss.params = p;
    c.call.logits = HostTensor::Float32({5, 4}, Normal(20, 11));
    c.call.targets = HostTensor::Int64({5}, {0, 1, 2, 3, 1});
    Write("counts.npy", HostTensor::Float64({4}, p.class_counts));
    cases.push_back(std::move(c));
  }
  for (Case& c : cases) {
    SCOPED_TRACE(c.name);
    c.call.compute_gradient = true;
    Write(c.name + "_x.npy", c.call.logits);
    Write(c.name + "_y.npy", c.call.targets);
    std::vector<std::string> args = {"compute", "--logits", c.name + "_x.npy", "--targets", c.name + "_y.npy",
                                     "--grad-out", c.name + "_g.npy"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const RunResult r = Focalctl(args);
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    absl::StatusOr<LossResult> expected = ComputeLocally(c.call);
    ASSERT_TRUE(expected.ok()) << expected.status();
    double loss = 0;
    ASSERT_TRUE(absl::SimpleAtod(Field(r.out, "loss"), &loss)) << r.out;
    EXPECT_EQ(loss, expected->loss);
    EXPECT_EQ(Field(r.out, "count"), absl::StrCat(expected->count));
    EXPECT_TRUE(SameTensor(*expected->gradient, Read(c.name + "_g.npy")));
  }
}

TEST_F(FocalctlServerTest, ComputeBFloat16TakesTheDtypeFlag) {
  ComputeCall call;
  call.loss.params = SoftmaxFocalParams{};
  call.logits = HostTensor::BFloat16({5, 3}, Normal(15, 5));
  call.targets = HostTensor::Int64({5}, {0, 1, 2, 1, 0});
  call.compute_gradient = true;
  Write("x.npy", call.logits);  // '<u2' bits
  Write("y.npy", call.targets);

  RunResult r = Focalctl({"compute", "--variant", "softmax_focal", "--logits", "x.npy", "--targets", "y.npy"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_NE(r.err.find("--logits-dtype bfloat16"), std::string::npos) << Describe(r);

  r = Focalctl({"compute", "--variant", "softmax_focal", "--logits", "x.npy", "--logits-dtype", "bfloat16",
                "--targets", "y.npy", "--grad-out", "g.npy"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  absl::StatusOr<LossResult> expected = ComputeLocally(call);
  ASSERT_TRUE(expected.ok()) << expected.status();
  double loss = 0;
  ASSERT_TRUE(absl::SimpleAtod(Field(r.out, "loss"), &loss)) << r.out;
  EXPECT_EQ(loss, expected->loss);
  EXPECT_NE(ReadFile(Path("g.npy")).find("'<u2'"), std::string::npos);  // bfloat16 bits
  EXPECT_TRUE(SameTensor(*expected->gradient, Read("g.npy", DType::kBFloat16)));

  // --gradient-dtype float32 writes a plain float32 file.
  r = Focalctl({"compute", "--variant", "softmax_focal", "--logits", "x.npy", "--logits-dtype", "bfloat16",
                "--targets", "y.npy", "--grad-out", "g32.npy", "--gradient-dtype", "float32"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  call.gradient_dtype = DType::kFloat32;
  expected = ComputeLocally(call);
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(SameTensor(*expected->gradient, Read("g32.npy")));
}

TEST_F(FocalctlServerTest, ServerErrorExitsOneWithItsMessage) {
  Write("x.npy", HostTensor::Float32({2, 3}, {1, 2, 3, 4, 5, 6}));
  Write("y.npy", HostTensor::Int64({2}, {0, 3}));
  const RunResult r = Focalctl({"compute", "--variant", "softmax_focal", "--logits", "x.npy", "--targets", "y.npy"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << Describe(r);
  EXPECT_NE(r.err.find("targets[1]"), std::string::npos) << Describe(r);
}

TEST_F(FocalctlServerTest, EvalStreamsBatchesAndPrintsPerClassTable) {
  ASSERT_EQ(mkdir(Path("batches").c_str(), 0700), 0);
  std::vector<ComputeCall> batches;
  for (int i = 0; i < 4; ++i) {
    ComputeCall call;
    call.loss.params = SoftmaxFocalParams{};
    call.logits = HostTensor::Float32({8, 3}, Normal(24, 10 + static_cast<uint32_t>(i)));
    call.targets = HostTensor::Int64({8}, Classes(8, 3, 20 + static_cast<uint32_t>(i)));
    Write(absl::StrCat("batches/", i, "_logits.npy"), call.logits);
    Write(absl::StrCat("batches/", i, "_targets.npy"), call.targets);
    batches.push_back(std::move(call));
  }
  ClientOptions options;
  options.target = server_->address();
  absl::StatusOr<EvaluateOutput> expected = (*Client::Create(options))->Evaluate(batches.begin(), batches.end());
  ASSERT_TRUE(expected.ok()) << expected.status();

  const RunResult r = Focalctl({"eval", "--variant", "softmax_focal", "--logits", "batches/*_logits.npy", "--targets",
                                "batches/*_targets.npy"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Field(r.out, "batches"), "4");
  EXPECT_EQ(Field(r.out, "count"), "32");
  double total = 0;
  ASSERT_TRUE(absl::SimpleAtod(Field(r.out, "total"), &total)) << r.out;
  EXPECT_EQ(total, expected->total_loss);
  EXPECT_NE(r.out.find("class"), std::string::npos);
  for (size_t c = 0; c < 3; ++c) {
    if (expected->class_counts[c] == 0) continue;
    EXPECT_EQ(Field(r.out, absl::StrCat(c)), absl::StrCat(expected->class_counts[c])) << r.out;
  }
  // Not a terminal: one plain progress line per batch, no carriage returns.
  EXPECT_NE(r.err.find("batch 4/4"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
}

TEST_F(FocalctlServerTest, EvalSweepsGammaAndCalibratesAndWritesTheReportsJson) {
  ASSERT_EQ(mkdir(Path("sweep").c_str(), 0700), 0);
  std::vector<ComputeCall> batches;
  for (int i = 0; i < 3; ++i) {
    ComputeCall call;
    call.loss.params = SoftmaxFocalParams{};
    call.logits = HostTensor::Float32({10, 4}, Normal(40, 50 + static_cast<uint32_t>(i)));
    call.targets = HostTensor::Int64({10}, Classes(10, 4, 60 + static_cast<uint32_t>(i)));
    Write(absl::StrCat("sweep/", i, "_logits.npy"), call.logits);
    Write(absl::StrCat("sweep/", i, "_targets.npy"), call.targets);
    batches.push_back(std::move(call));
  }
  ClientOptions options;
  options.target = server_->address();
  EvaluateOptions analyses;
  analyses.gamma_sweep = {0, 2};
  analyses.calibration_bins = 5;
  std::vector<ComputeCall> copy = batches;
  absl::StatusOr<EvaluateOutput> expected =
      (*Client::Create(options))->Evaluate(BatchSource([&, i = size_t{0}](ComputeCall& b) mutable -> absl::StatusOr<bool> {
        if (i == copy.size()) return false;
        b = copy[i++];
        return true;
      }), analyses);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_TRUE(expected->sweep.has_value() && expected->calibration.has_value());
  const RunResult r = Focalctl({"eval", "--variant", "softmax_focal", "--logits", "sweep/*_logits.npy", "--targets",
                                "sweep/*_targets.npy", "--gamma-sweep", "0,2", "--calibration-bins", "5", "--json",
                                Path("out.json")});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  // The sweep at γ = 2 without α is the evaluation's own total (the default γ), within float32
  // rounding of each item: the row "2  <total>  <mean>".
  double swept = 0;
  const size_t table = r.out.find("gamma sweep");
  ASSERT_NE(table, std::string::npos) << r.out;
  ASSERT_TRUE(absl::SimpleAtod(Field(r.out.substr(table), "2"), &swept)) << r.out;
  EXPECT_NEAR(swept, expected->total_loss, 2e-5 * expected->total_loss);
  EXPECT_NE(r.out.find(absl::StrFormat("calibration (5 bins): ECE %.6f", expected->calibration->ece)), std::string::npos)
      << r.out;
  std::ifstream json(Path("out.json"));
  const std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.rfind("{\"loss\": {\"softmax_focal\"", 0), 0u) << text.substr(0, 200);
  EXPECT_NE(text.find("\"sweep\":{\"gammas\":[0,2]"), std::string::npos) << text.substr(0, 400);
  EXPECT_NE(text.find("\"calibration\":{\"bins\":5"), std::string::npos);

  const RunResult bad = Focalctl({"eval", "--variant", "softmax_focal", "--logits", "sweep/*_logits.npy", "--targets",
                                  "sweep/*_targets.npy", "--gamma-sweep", "0,x"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--gamma-sweep holds 'x', not a number"), std::string::npos) << bad.err;
}

TEST_F(FocalctlServerTest, EvalCarriesWeightsAndScoresPerBatch) {
  ASSERT_EQ(mkdir(Path("qfl").c_str(), 0700), 0);
  std::vector<ComputeCall> batches;
  for (int i = 0; i < 3; ++i) {
    ComputeCall call;
    call.loss.params = QualityFocalParams{};
    call.logits = HostTensor::Float32({6, 4}, Normal(24, 30 + static_cast<uint32_t>(i)));
    call.targets = HostTensor::Int64({6}, Classes(6, 5, 40 + static_cast<uint32_t>(i)));  // 4 = background
    call.scores = HostTensor::Float32({6}, {0.5f, 1, 0.25f, 0.75f, 0.1f, 0.9f});
    call.weights = HostTensor::Float32({6, 4}, std::vector<float>(24, 0.5f + static_cast<float>(i)));
    for (const char* part : {"logits", "targets", "scores", "weights"}) {
      const HostTensor& t = std::string(part) == "logits"    ? call.logits
                            : std::string(part) == "targets" ? call.targets
                            : std::string(part) == "scores"  ? *call.scores
                                                             : *call.weights;
      Write(absl::StrCat("qfl/", i, "_", part, ".npy"), t);
    }
    batches.push_back(std::move(call));
  }
  ClientOptions options;
  options.target = server_->address();
  absl::StatusOr<EvaluateOutput> expected = (*Client::Create(options))->Evaluate(batches.begin(), batches.end());
  ASSERT_TRUE(expected.ok()) << expected.status();
  RunResult r = Focalctl({"eval", "--variant", "quality_focal", "--logits", "qfl/*_logits.npy", "--targets",
                          "qfl/*_targets.npy", "--scores", "qfl/*_scores.npy", "--weights", "qfl/*_weights.npy"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  double total = 0;
  ASSERT_TRUE(absl::SimpleAtod(Field(r.out, "total"), &total)) << r.out;
  EXPECT_EQ(total, expected->total_loss);
  EXPECT_EQ(Field(r.out, "count"), absl::StrCat(expected->count));
  r = Focalctl({"eval", "--variant", "quality_focal", "--logits", "qfl/*_logits.npy", "--targets", "qfl/*_targets.npy",
                "--scores", "qfl/0_scores.npy"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_NE(r.err.find("and --scores 1; batches are paired"), std::string::npos) << Describe(r);
}

TEST_F(FocalctlServerTest, BenchRunsEveryVariant) {
  ForEachVariant([&](auto tag) {
    const char* name = Variant<typename decltype(tag)::Params>::kFacts.name;
    const RunResult r = Focalctl({"bench", "--variant", name, "--duration", "0.2s", "--shape", "8,5", "--gradient"});
    EXPECT_EQ(r.exit_code, 0) << name << "\n" << Describe(r);
  });
}

TEST_F(FocalctlServerTest, BenchPrintsLatencyPercentiles) {
  const RunResult r = Focalctl({"bench", "--variant", "sigmoid_focal", "--concurrency", "2", "--duration", "1s",
                                "--shape", "16,8", "--gradient"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  for (const char* line : {"Requests/sec:", "p50", "p90", "p99", "max", "[OK]"}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  }
}

}  // namespace
}  // namespace focal::client_test

// ------------------------------------------------------------------------------------------
// focalctl compute --shared-memory, against a server on this host that takes it

namespace focal::client_test {
namespace {

TEST(FocalctlSharedMemoryTest, GivesTheAnswersFilesOfTheMessagesAndSaysWhenTheServerTakesNone) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = StartServer({"--shared-memory=on"});
  ASSERT_TRUE(server.ok()) << server.status();
  TempDir dir;
  std::vector<float> targets(6 * 80);
  for (size_t i = 0; i < targets.size(); ++i) targets[i] = i % 11 == 0 ? 1.0f : 0.0f;
  ASSERT_TRUE(WriteNpyTensor(dir.File("x.npy"), HostTensor::Float32({6, 80}, Normal(6 * 80, 2))).ok());
  ASSERT_TRUE(WriteNpyTensor(dir.File("y.npy"), HostTensor::Float32({6, 80}, targets)).ok());
  const auto run = [&](const std::string& address, const std::string& suffix, bool shared) {
    std::vector<std::string> args = {"--target", address, "compute", "--variant", "sigmoid_focal", "--logits",
                                      "x.npy", "--targets", "y.npy", "--reduction", "none", "--gradient-dtype",
                                      "float32", "--grad-out", "g" + suffix + ".npy", "--losses-out",
                                      "l" + suffix + ".npy"};
    if (shared) args.push_back("--shared-memory");
    return RunProgram(kFocalctl, args, dir.path());
  };
  const RunResult plain = run((*server)->address(), "plain", false);
  ASSERT_EQ(plain.exit_code, 0) << Describe(plain);
  const RunResult shared = run((*server)->address(), "shared", true);
  ASSERT_EQ(shared.exit_code, 0) << Describe(shared);
  EXPECT_EQ(Field(shared.out, "loss"), Field(plain.out, "loss"));
  EXPECT_NE(Field(shared.out, "shared"), "") << shared.out;  // it did go through a region
  EXPECT_EQ(Field(plain.out, "shared"), "") << plain.out;
  for (const char* name : {"g", "l"}) {
    const absl::StatusOr<HostTensor> a = ReadNpyTensor(dir.File(absl::StrCat(name, "plain.npy")));
    const absl::StatusOr<HostTensor> b = ReadNpyTensor(dir.File(absl::StrCat(name, "shared.npy")));
    ASSERT_TRUE(a.ok() && b.ok()) << name;
    EXPECT_EQ(a->shape, b->shape) << name;
    EXPECT_EQ(a->bytes, b->bytes) << name;  // bit for bit
  }
  // The region went with the call: the server lists none.
  ClientOptions options;
  options.target = (*server)->address();
  EXPECT_TRUE((*Client::Create(options))->ListSharedMemory()->empty());

  absl::StatusOr<std::unique_ptr<ServerProcess>> without = StartServer();
  ASSERT_TRUE(without.ok()) << without.status();
  const RunResult refused = run((*without)->address(), "refused", true);
  EXPECT_EQ(refused.exit_code, 1) << Describe(refused);
  EXPECT_NE(refused.err.find("--shared-memory=on"), std::string::npos) << Describe(refused);
}

}  // namespace
}  // namespace focal::client_test
