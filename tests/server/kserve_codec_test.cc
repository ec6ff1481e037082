// The Open Inference Protocol codec (server/kserve_codec.h) as pure functions: requests decode
// into the job focal.v1 decodes from the same request, tensors are views in place, parameters
// arrive exact from every parameter type, limits and errors name what is wrong, and the answer
// moves or copies the result's bytes as its encoding says.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "focal/params.h"
#include "focal/wire.h"
#include "server/codec.h"
#include "server/kserve_codec.h"

namespace focal::server::kserve {
namespace {

using inference::ModelInferRequest;

template <class T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void AddRaw(ModelInferRequest& r, const std::string& name, const char* datatype, std::vector<int64_t> shape,
            std::string bytes) {
  auto* in = r.add_inputs();
  in->set_name(name);
  in->set_datatype(datatype);
  for (int64_t d : shape) in->add_shape(d);
  r.add_raw_input_contents(std::move(bytes));
}

/// softmax_focal on [2, 3] FP32 logits with INT64 targets, raw contents.
ModelInferRequest SoftmaxInfer() {
  ModelInferRequest r;
  r.set_model_name("softmax_focal");
  r.set_id("req-1");
  AddRaw(r, "logits", "FP32", {2, 3}, Bytes(std::vector<float>{0.5f, -1, 2, 3, 0.25f, -0.75f}));
  AddRaw(r, "targets", "INT64", {2}, Bytes(std::vector<int64_t>{2, 0}));
  return r;
}

TEST(KServeCodec, DecodesRawInputsInPlaceWithTheDefaultOutputs) {
  ModelInferRequest r = SoftmaxInfer();
  // A double that 15 significant digits do not carry: set to its last bit.
  const double gamma = std::nextafter(0.1, 1.0);
  (*r.mutable_parameters())["gamma"].set_double_param(gamma);
  (*r.mutable_parameters())["reduction"].set_string_param("SUM");
  const auto call = DecodeInferRequest(r, {});
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->variant, VariantIndex("softmax_focal"));
  EXPECT_EQ(call->job.logits.data, r.raw_input_contents(0).data());  // a view, not a copy
  EXPECT_EQ(call->job.logits.shape, (Shape{2, 3}));
  EXPECT_EQ(call->job.targets.dtype, DType::kInt64);
  EXPECT_EQ(std::get<SoftmaxFocalParams>(call->job.spec.params).gamma, gamma);
  EXPECT_EQ(call->job.spec.reduction, Reduction::kSum);
  EXPECT_TRUE(call->job.compute_gradient);
  EXPECT_EQ(call->outputs, (std::vector<Output>{Output::kLoss, Output::kCount, Output::kGradient}));
  EXPECT_FALSE(call->typed);
}

TEST(KServeCodec, EveryParameterTypeSetsTheSameValue) {
  // double_param, string_param and int64_param of one value decode alike; lists and schedules
  // travel as strings.
  for (int form = 0; form < 3; ++form) {
    ModelInferRequest r = SoftmaxInfer();
    auto& params = *r.mutable_parameters();
    if (form == 0) params["gamma"].set_double_param(3.0);
    if (form == 1) params["gamma"].set_string_param("3");
    if (form == 2) params["gamma"].set_int64_param(3);
    params["alpha"].set_string_param("[0.1, 0.30000000000000004,2]");
    params["gamma_schedule"].set_string_param("0.2:5,0.5:1.5");
    params["ignore_index"].set_int64_param(-100);
    params["normalizer"].set_string_param("4.5");
    const auto call = DecodeInferRequest(r, {});
    ASSERT_TRUE(call.ok()) << call.status();
    const auto& p = std::get<SoftmaxFocalParams>(call->job.spec.params);
    EXPECT_EQ(p.gamma, 3.0);
    EXPECT_EQ(p.alpha, (std::vector<double>{0.1, 0.30000000000000004, 2}));
    EXPECT_EQ(p.gamma_schedule, (std::vector<GammaStep>{{0.2, 5}, {0.5, 1.5}}));
    EXPECT_EQ(p.ignore_index, -100);
    EXPECT_EQ(call->job.spec.normalizer, 4.5);
  }
}

TEST(KServeCodec, DecodesTheJobFocalV1DecodesFromTheSameRequest) {
  ModelInferRequest r;
  r.set_model_name("sigmoid_focal");
  AddRaw(r, "logits", "BF16", {2, 2}, Bytes(std::vector<uint16_t>{0x3f80, 0xbf80, 0x4000, 0x0000}));
  AddRaw(r, "targets", "FP32", {2, 2}, Bytes(std::vector<float>{1, 0, 0, 1}));
  AddRaw(r, "weights", "FP32", {2, 2}, Bytes(std::vector<float>{1, 0.5f, 0, 2}));
  AddRaw(r, "grad_output", "FP64", {1}, Bytes(std::vector<double>{0.7}));
  auto& params = *r.mutable_parameters();
  params["alpha"].set_double_param(-1);
  params["input"].set_string_param("logits");
  params["label_smoothing"].set_double_param(0.05);
  params["allow_non_finite"].set_bool_param(true);
  r.add_outputs()->set_name("loss");
  const auto call = DecodeInferRequest(r, {});
  ASSERT_TRUE(call.ok()) << call.status();

  v1::ComputeRequest v1;
  auto* s = v1.mutable_loss()->mutable_sigmoid_focal();
  s->set_alpha(-1);
  s->set_label_smoothing(0.05);
  v1.mutable_logits()->set_dtype(v1::BFLOAT16);
  v1.mutable_logits()->add_shape(2);
  v1.mutable_logits()->add_shape(2);
  v1.mutable_logits()->set_data(r.raw_input_contents(0));
  v1.mutable_targets()->set_dtype(v1::FLOAT32);
  v1.mutable_targets()->add_shape(2);
  v1.mutable_targets()->add_shape(2);
  v1.mutable_targets()->set_data(r.raw_input_contents(1));
  v1.set_allow_non_finite(true);
  v1.set_grad_output_scalar(0.7);
  const auto expected = DecodeComputeRequest(v1, {});
  ASSERT_TRUE(expected.ok()) << expected.status();
  v1::LossSpec a, b;
  wire::LossSpecToProto(call->job.spec, &a);
  wire::LossSpecToProto(expected->spec, &b);
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << a.DebugString() << b.DebugString();
  EXPECT_EQ(call->job.logits.dtype, DType::kBFloat16);
  EXPECT_EQ(std::get<double>(call->job.grad_output), 0.7);
  EXPECT_TRUE(call->job.allow_non_finite);
  ASSERT_TRUE(call->job.weights.has_value());
  EXPECT_EQ(call->job.weights->data, r.raw_input_contents(2).data());
  EXPECT_FALSE(call->job.compute_gradient);  // only the loss was asked for
}

TEST(KServeCodec, TypedContentsAreViewsOrCheckedNarrowing) {
  ModelInferRequest r;
  r.set_model_name("softmax_focal");
  auto* x = r.add_inputs();
  x->set_name("logits");
  x->set_datatype("FP32");
  x->add_shape(2);
  x->add_shape(2);
  for (float v : {1.f, 2.f, 3.f, 4.f}) x->mutable_contents()->add_fp32_contents(v);
  auto* y = r.add_inputs();
  y->set_name("targets");
  y->set_datatype("UINT8");
  y->add_shape(2);
  y->mutable_contents()->add_uint_contents(1);
  y->mutable_contents()->add_uint_contents(200);
  auto call = DecodeInferRequest(r, {});
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_TRUE(call->typed);
  EXPECT_EQ(call->job.logits.data, r.inputs(0).contents().fp32_contents().data());
  EXPECT_EQ(call->job.logits.size_bytes, 16u);
  ASSERT_EQ(call->job.targets.size_bytes, 2u);
  EXPECT_EQ(static_cast<const uint8_t*>(call->job.targets.data)[0], 1);
  // The narrowed bytes survive moving the call (they live in a list).
  const InferCall moved = std::move(*call);
  EXPECT_EQ(static_cast<const uint8_t*>(moved.job.targets.data)[0], 1);
  EXPECT_EQ(static_cast<const uint8_t*>(moved.job.targets.data)[1], 200);

  y->mutable_contents()->set_uint_contents(0, 256);
  const auto bad = DecodeInferRequest(r, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("input 'targets' is UINT8 but element 0 of its contents is 256"),
            std::string::npos)
      << bad.status();
}

TEST(KServeCodec, LimitsAndHostileShapesAreCheckedBeforeAnythingIsSized) {
  auto expect = [](const ModelInferRequest& r, absl::StatusCode code, const std::string& fragment,
                   RequestLimits limits = {}) {
    const auto call = DecodeInferRequest(r, limits);
    EXPECT_EQ(call.status().code(), code) << call.status();
    EXPECT_NE(call.status().message().find(fragment), std::string::npos) << call.status();
  };
  expect(SoftmaxInfer(), absl::StatusCode::kResourceExhausted, "at most 5 per request (--max-elements)",
         RequestLimits{5});
  RequestLimits classes;
  classes.max_classes = 2;
  expect(SoftmaxInfer(), absl::StatusCode::kResourceExhausted, "(--max-classes)", classes);
  ModelInferRequest r = SoftmaxInfer();
  r.mutable_inputs(0)->set_shape(0, int64_t{1} << 62);
  r.mutable_inputs(0)->set_shape(1, int64_t{1} << 62);
  expect(r, absl::StatusCode::kInvalidArgument, "input 'logits'.shape overflows int64 at dimension 1");
  r.mutable_inputs(0)->set_shape(0, -2);
  expect(r, absl::StatusCode::kInvalidArgument, "input 'logits'.shape[0] is -2; dimensions must be >= 0");
  // 2^62 FP32 elements are 2^64 bytes: a product that wraps to the 0 bytes sent.
  r = SoftmaxInfer();
  r.mutable_inputs(0)->clear_shape();
  r.mutable_inputs(0)->add_shape(int64_t{1} << 62);
  r.set_raw_input_contents(0, "");
  expect(r, absl::StatusCode::kResourceExhausted, "(--max-elements)");
  expect(r, absl::StatusCode::kInvalidArgument, "raw_input_contents[0] has 0", RequestLimits{int64_t{1} << 62});
  r = SoftmaxInfer();
  for (int i = 0; i < 17; ++i) r.mutable_inputs(1)->add_shape(1);
  expect(r, absl::StatusCode::kInvalidArgument, "input 'targets' has 18 dimensions; at most 16");
  r = SoftmaxInfer();
  r.set_model_name("softmax");
  expect(r, absl::StatusCode::kNotFound, "model 'softmax' is not served here; the models are softmax_focal, ");
  r = SoftmaxInfer();
  r.mutable_inputs(1)->set_name("scores");
  expect(r, absl::StatusCode::kInvalidArgument,
         "input 'scores' is not an input of softmax_focal; it takes logits, targets, weights, grad_output");
  r = SoftmaxInfer();
  (*r.mutable_parameters())["xent"].set_double_param(1);
  expect(r, absl::StatusCode::kInvalidArgument,
         "parameter 'xent' is not a parameter of softmax_focal; it takes reduction, normalizer, allow_non_finite, "
         "gamma, alpha");
  r = SoftmaxInfer();
  (*r.mutable_parameters())["reduction"].set_int64_param(1);
  expect(r, absl::StatusCode::kInvalidArgument, "parameter 'reduction' is '1'; expected \"mean\", \"sum\" or \"none\"");
  r = SoftmaxInfer();
  (*r.mutable_parameters())["gamma"];  // present, no value
  expect(r, absl::StatusCode::kInvalidArgument, "parameter 'gamma' has no value");
  r = SoftmaxInfer();
  (*r.mutable_parameters())["gamma"].set_string_param("1'\n" + std::string(300, '7'));
  expect(r, absl::StatusCode::kInvalidArgument, "parameter 'gamma' is '1\\x27\\x0a777");
  expect(r, absl::StatusCode::kInvalidArgument, "...(303 bytes)'; expected a number");
}

TEST(KServeCodec, EncodesRawByMovingAndTypedByCopying) {
  const std::vector<float> g(4096, 0.25f);
  for (bool typed : {false, true}) {
    LossResult result;
    result.loss = 1.25;
    result.count = 9;
    result.backend = "cpu";
    result.gradient = HostTensor::Float32({64, 64}, g);
    const char* gradient_bytes = result.gradient->bytes.data();
    InferCall call;
    call.variant = VariantIndex("sigmoid_focal");
    call.outputs = {Output::kGradient, Output::kLoss, Output::kCount};
    call.typed = typed;
    inference::ModelInferResponse response;
    ASSERT_TRUE(EncodeInferResponse(std::move(result), call, "id-7", &response).ok());
    EXPECT_EQ(response.model_name(), "sigmoid_focal");
    EXPECT_EQ(response.model_version(), "1");
    EXPECT_EQ(response.id(), "id-7");
    EXPECT_EQ(response.parameters().at("backend").string_param(), "cpu");
    ASSERT_EQ(response.outputs_size(), 3);
    EXPECT_EQ(response.outputs(0).name(), "gradient");
    EXPECT_EQ(response.outputs(0).datatype(), "FP32");
    EXPECT_EQ(response.outputs(1).datatype(), "FP64");
    EXPECT_EQ(response.outputs(2).datatype(), "INT64");
    if (!typed) {
      ASSERT_EQ(response.raw_output_contents_size(), 3);
      EXPECT_EQ(response.raw_output_contents(0).data(), gradient_bytes);  // moved, not copied
      EXPECT_EQ(response.raw_output_contents(1), Bytes(std::vector<double>{1.25}));
      EXPECT_EQ(response.raw_output_contents(2), Bytes(std::vector<int64_t>{9}));
    } else {
      EXPECT_EQ(response.raw_output_contents_size(), 0);
      EXPECT_EQ(response.outputs(0).contents().fp32_contents_size(), 4096);
      EXPECT_EQ(response.outputs(1).contents().fp64_contents(0), 1.25);
      EXPECT_EQ(response.outputs(2).contents().int64_contents(0), 9);
    }
  }
}

TEST(KServeCodec, EveryModelDescribesTheInputsItsVariantTakes) {
  for (int v = 0; v < static_cast<int>(kNumVariants); ++v) {
    const VariantFacts& facts = FactsOf(*DefaultParams(VariantNameAt(v)));
    SCOPED_TRACE(facts.name);
    const ModelSpec spec = DescribeModel(v);
    std::vector<std::string> names;
    for (const TensorSpec& t : spec.inputs) names.push_back(t.name);
    std::vector<std::string> expected = {"logits", "targets"};
    if (facts.num_objects) expected.push_back("num_objects");
    expected.push_back("weights");
    if (facts.scores) expected.push_back("scores");
    expected.push_back("grad_output");
    EXPECT_EQ(names, expected);
    EXPECT_FALSE(spec.inputs[0].optional);
    EXPECT_FALSE(spec.inputs[1].optional);
    EXPECT_EQ(spec.inputs[1].dtype, facts.targets == Targets::kClassIndex ? DType::kInt64 : DType::kFloat32);
    const auto metadata = ModelMetadata(v);
    const auto config = ModelConfig(v).config();
    ASSERT_EQ(metadata.inputs_size(), static_cast<int>(spec.inputs.size()));
    ASSERT_EQ(config.input_size(), static_cast<int>(spec.inputs.size()));
    for (size_t i = 0; i < spec.inputs.size(); ++i) {
      EXPECT_EQ(metadata.inputs(static_cast<int>(i)).datatype(), DatatypeName(spec.inputs[i].dtype));
      EXPECT_EQ(inference::DataType_Name(config.input(static_cast<int>(i)).data_type()),
                std::string("TYPE_") + DatatypeName(spec.inputs[i].dtype));
    }
  }
}

}  // namespace
}  // namespace focal::server::kserve
