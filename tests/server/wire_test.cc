// The wire library (focal/wire.h): the table and focal_loss.proto agree, every parameter of
// every variant survives a round trip, per-class lists travel at full precision, and wire
// errors name the field and what it may be.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/ascii.h"
#include "focal/wire.h"

namespace focal::wire {
namespace {

/// A value of `param` other than its default, inside its range.
template <class P, class T>
T NonDefault(const Param<P, T>& param) {
  if constexpr (std::is_same_v<T, double>) {
    for (double v : {0.375, param.range.low + 0.375, param.range.low + 1.5}) {
      if (param.range.Contains(v) && v != P{}.*param.member) return v;
    }
    return param.range.low;
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return param.range.Contains(3) ? 3 : static_cast<int64_t>(param.range.low) + 1;
  } else if constexpr (std::is_same_v<T, bool>) {
    return !(P{}.*param.member);
  } else if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
    return 5;
  } else if constexpr (std::is_same_v<T, std::vector<double>>) {
    return {0.2, 0.7, 1.0 / 3};  // none of them a float32
  } else if constexpr (std::is_same_v<T, std::vector<GammaStep>>) {
    return {{0.2, 5.0}, {0.5, 1.0 / 3}};
  } else {
    static_assert(std::is_enum_v<T>);
    return static_cast<T>(param.num_choices - 1);
  }
}

/// The size of the field `name` of `m` (repeated), read by reflection.
int FieldSize(const google::protobuf::Message& m, const std::string& name) {
  const google::protobuf::FieldDescriptor* f = m.GetDescriptor()->FindFieldByName(name);
  return f ? m.GetReflection()->FieldSize(m, f) : -1;
}

TEST(Wire, TableAndProtoAgree) { EXPECT_TRUE(CheckTable().ok()) << CheckTable(); }

TEST(Wire, EveryParameterOfEveryVariantRoundTrips) {
  ForEachVariant([](auto tag) {
    using P = typename decltype(tag)::Params;
    SCOPED_TRACE(Variant<P>::kFacts.name);
    P params;
    ForEachParam<P>([&](const auto& param) {
      params.*param.member = NonDefault(param);
      EXPECT_NE(params.*param.member, P{}.*param.member) << param.name;
    });
    LossSpec spec{params, Reduction::kNone, 2.5};
    v1::LossSpec message;
    LossSpecToProto(spec, &message);
    const absl::StatusOr<LossSpec> back = LossSpecFromProto(message);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_TRUE(std::holds_alternative<P>(back->params));
    ForEachParam<P>([&](const auto& param) {
      EXPECT_EQ(std::get<P>(back->params).*param.member, params.*param.member) << param.name;
    });
    EXPECT_EQ(back->reduction, Reduction::kNone);
    EXPECT_EQ(back->normalizer, 2.5);

    // An empty message is every default.
    v1::LossSpec empty;
    empty.GetReflection()->MutableMessage(&empty, empty.GetDescriptor()->FindFieldByName(Variant<P>::kFacts.name));
    const absl::StatusOr<LossSpec> defaults = LossSpecFromProto(empty);
    ASSERT_TRUE(defaults.ok()) << defaults.status();
    ForEachParam<P>([&](const auto& param) {
      EXPECT_EQ(std::get<P>(defaults->params).*param.member, P{}.*param.member) << param.name;
    });
    EXPECT_EQ(defaults->reduction, Reduction::kMean);
    EXPECT_FALSE(defaults->normalizer.has_value());
  });
}

TEST(Wire, PerClassListsTravelAsFloat64) {
  SoftmaxFocalParams p;
  p.alpha = {0.2, 0.3};
  LossSpec spec;
  spec.params = p;
  v1::LossSpec message;
  LossSpecToProto(spec, &message);
  EXPECT_EQ(FieldSize(message.softmax_focal(), "alpha"), 0);
  ASSERT_EQ(message.softmax_focal().alpha_f64_size(), 2);
  EXPECT_EQ(message.softmax_focal().alpha_f64(0), 0.2);

  const absl::StatusOr<LossSpec> exact = LossSpecFromProto(message);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(std::get<SoftmaxFocalParams>(exact->params).alpha, (std::vector<double>{0.2, 0.3}));
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the float32 form, on purpose
TEST(Wire, TheFloat32FormIsStillReadAndBothFormsAreAnError) {
  v1::LossSpec message;
  message.mutable_softmax_focal()->add_alpha(0.2f);
  message.mutable_softmax_focal()->add_alpha(0.5f);
  const absl::StatusOr<LossSpec> old = LossSpecFromProto(message);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(std::get<SoftmaxFocalParams>(old->params).alpha, (std::vector<double>{0.2f, 0.5f}));

  message.mutable_softmax_focal()->add_alpha_f64(0.2);
  const absl::StatusOr<LossSpec> both = LossSpecFromProto(message);
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(both.status().message().find("loss.softmax_focal.alpha and loss.softmax_focal.alpha_f64 are both set"),
            std::string::npos)
      << both.status();
}
#pragma GCC diagnostic pop

TEST(Wire, ErrorsNameTheFieldAndItsValues) {
  const auto message = [](const v1::LossSpec& spec) { return std::string(LossSpecFromProto(spec).status().message()); };
  v1::LossSpec spec;
  EXPECT_EQ(message(spec), "loss.variant is not set; expected one of softmax_focal, sigmoid_focal, focal_cosine, "
                           "dynamic_focal, asymmetric, quality_focal, varifocal, focal_star, distribution_focal");
  spec.mutable_sigmoid_focal()->set_input(static_cast<v1::SigmoidInput>(7));
  EXPECT_EQ(message(spec), "loss.sigmoid_focal.input is 7; expected LOGITS or PROBABILITIES");
  spec.mutable_sigmoid_focal()->set_input(v1::PROBABILITIES);
  spec.set_reduction(static_cast<v1::Reduction>(9));
  EXPECT_EQ(message(spec), "loss.reduction is 9; expected MEAN, SUM or NONE");
  spec.set_reduction(v1::SUM);
  const absl::StatusOr<LossSpec> good = LossSpecFromProto(spec);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(std::get<SigmoidFocalParams>(good->params).input, SigmoidInput::kProbabilities);

  EXPECT_EQ(DTypeFromProto(0, "targets.dtype").status().message(), "targets.dtype is not set");
  EXPECT_EQ(DTypeFromProto(42, "logits.dtype").status().message(), "logits.dtype is 42, not a known DataType");
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64, DType::kInt32, DType::kInt64,
                  DType::kUInt8}) {
    EXPECT_EQ(*DTypeFromProto(ToProto(t), "t"), t);
    EXPECT_EQ(v1::DataType_Name(ToProto(t)), absl::AsciiStrToUpper(DTypeName(t)));
  }
}

TEST(Wire, TensorsMoveTheirBytes) {
  HostTensor t = HostTensor::Float64({2, 3}, std::vector<double>{1, 2, 3, 4, 5, 6});
  const char* bytes = t.bytes.data();
  v1::Tensor message;
  TensorToProto(std::move(t), &message);
  EXPECT_EQ(message.dtype(), v1::FLOAT64);
  EXPECT_EQ(message.shape_size(), 2);
  EXPECT_EQ(message.data().data(), bytes);  // moved, not copied

  const absl::StatusOr<TensorView> view = TensorViewFromProto(message, "logits");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->data, bytes);
  EXPECT_EQ(view->shape, (Shape{2, 3}));

  absl::StatusOr<HostTensor> back = TensorFromProto(v1::Tensor(message), "gradient");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToDoubles(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  const char* copy = back->bytes.data();
  v1::Tensor again;
  TensorToProto(*back, &again);  // a copy: `back` keeps its bytes
  EXPECT_EQ(back->bytes.data(), copy);
  EXPECT_EQ(again.data(), message.data());

  message.mutable_data()->resize(40);
  const absl::StatusOr<HostTensor> short_one = TensorFromProto(std::move(message), "gradient");
  EXPECT_EQ(short_one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_one.status().message().find("gradient.data has 40 bytes"), std::string::npos) << short_one.status();
}

// A field this build does not define, anywhere in a request, is refused with where it was: a
// newer client's parameter (or input tensor) would otherwise be ignored without a word.
TEST(Wire, FieldsThisServerDoesNotDefineAreRefusedWhereverTheyAre) {
  v1::ComputeRequest request;
  request.mutable_loss()->mutable_softmax_focal()->set_gamma(2);
  request.mutable_logits()->set_dtype(v1::FLOAT32);
  EXPECT_TRUE(RejectUnknownFields(request, "").ok());

  auto refused = [](const v1::ComputeRequest& r) { return std::string(RejectUnknownFields(r, "").message()); };
  v1::ComputeRequest top = request;
  top.GetReflection()->MutableUnknownFields(&top)->AddVarint(999, 1);
  EXPECT_NE(refused(top).find("the request has field number 999"), std::string::npos) << refused(top);
  EXPECT_EQ(RejectUnknownFields(top, "").code(), absl::StatusCode::kInvalidArgument);

  v1::ComputeRequest param = request;
  v1::SoftmaxFocal* softmax = param.mutable_loss()->mutable_softmax_focal();
  softmax->GetReflection()->MutableUnknownFields(softmax)->AddFixed64(77, 0);
  EXPECT_NE(refused(param).find("loss.softmax_focal has field number 77, which this server's focal.v1.SoftmaxFocal"),
            std::string::npos)
      << refused(param);

  v1::ComputeRequest tensor = request;
  v1::Tensor* logits = tensor.mutable_logits();
  logits->GetReflection()->MutableUnknownFields(logits)->AddLengthDelimited(12, "x");
  EXPECT_NE(refused(tensor).find("logits has field number 12"), std::string::npos) << refused(tensor);

  // Parsed from bytes, as the server gets them: field 999 (varint) appended to a valid request.
  std::string bytes = request.SerializeAsString() + std::string("\xb8\x3e\x01", 3);
  v1::ComputeRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_NE(refused(parsed).find("has field number 999"), std::string::npos) << refused(parsed);
}

}  // namespace
}  // namespace focal::wire
