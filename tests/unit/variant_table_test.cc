// The variant table (focal/params.h) and what is derived from it (focal/variant_text.h):
// every entry is well formed, its defaults are inside its own ranges and pass validation, and
// the text forms round-trip.
#include <set>
#include <string>

#include "focal/params.h"
#include "focal/variant_text.h"
#include "gtest/gtest.h"

namespace focal {
namespace {

TEST(VariantTable, NamesAreUniqueAndIndexedInTableOrder) {
  std::set<std::string> names;
  int i = 0;
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    const std::string name = Variant<P>::kFacts.name;
    EXPECT_TRUE(names.insert(name).second) << name;
    EXPECT_EQ(VariantIndex(name), i);
    EXPECT_EQ(VariantNameAt(i), name);
    EXPECT_EQ(VariantName(VariantParams{P{}}), name);
    ASSERT_TRUE(DefaultParams(name).has_value());
    EXPECT_EQ(DefaultParams(name)->index(), static_cast<size_t>(i));
    ++i;
  });
  EXPECT_EQ(static_cast<size_t>(i), kNumVariants);
  EXPECT_EQ(VariantIndex("no_such_loss"), -1);
  EXPECT_FALSE(DefaultParams("no_such_loss").has_value());
}

TEST(VariantTable, EveryDefaultIsInsideItsOwnRange) {
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    const P defaults{};
    std::set<std::string> params;
    ForEachParam<P>([&](const auto& param) {
      using T = typename std::decay_t<decltype(param)>::Type;
      SCOPED_TRACE(std::string(Variant<P>::kFacts.name) + "." + param.name);
      EXPECT_TRUE(params.insert(param.name).second) << "parameter named twice";
      EXPECT_NE(std::string(param.description), "");
      if constexpr (std::is_same_v<T, double> || std::is_same_v<T, int64_t>) {
        EXPECT_TRUE(param.range.Contains(static_cast<double>(defaults.*param.member)));
      }
      if constexpr (std::is_enum_v<T>) {
        EXPECT_LT(static_cast<size_t>(defaults.*param.member), param.num_choices);
      }
    });
  });
}

TEST(VariantTable, RangesAreClosedOrHalfOpenAsWritten) {
  const Range smoothing{0, 1, /*high_open=*/true};
  EXPECT_TRUE(smoothing.Contains(0));
  EXPECT_TRUE(smoothing.Contains(0.999));
  EXPECT_FALSE(smoothing.Contains(1));
  EXPECT_FALSE(smoothing.Contains(-1e-300));
  EXPECT_FALSE(smoothing.Contains(std::numeric_limits<double>::quiet_NaN()));
  const Range gamma{0, ParameterLimits::kMaxGamma};
  EXPECT_TRUE(gamma.Contains(ParameterLimits::kMaxGamma));
  EXPECT_FALSE(gamma.Contains(std::numeric_limits<double>::infinity()));
}

TEST(VariantTable, IgnoreIndexIsReadFromWhicheverVariantHasIt) {
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    VariantParams params = P{};
    const bool has = SetParameterFromText(params, "ignore_index", "-100").ok();
    EXPECT_EQ(IgnoreIndex(params).has_value(), has) << Variant<P>::kFacts.name;
    if (has) {
      EXPECT_EQ(*IgnoreIndex(params), -100);
    }
    EXPECT_FALSE(IgnoreIndex(VariantParams{P{}}).has_value()) << "no variant ignores anything by default";
  });
}

TEST(VariantText, DescriptionsFollowTheTable) {
  const auto& variants = DescribeVariants();
  ASSERT_EQ(variants.size(), kNumVariants);
  for (size_t v = 0; v < variants.size(); ++v) {
    EXPECT_EQ(variants[v].name, VariantNameAt(static_cast<int>(v)));
    EXPECT_FALSE(variants[v].summary.empty());
    for (const ParameterDescription& p : variants[v].parameters) {
      SCOPED_TRACE(variants[v].name + "." + p.name);
      EXPECT_FALSE(p.type.empty());
      EXPECT_FALSE(p.default_value.empty());
      EXPECT_EQ(p.flag.find('_'), std::string::npos) << "flags use dashes";
    }
  }
  // The first parameter of the first variant is what the client test reads from server info.
  EXPECT_EQ(variants[0].parameters[0].name, "gamma");
  EXPECT_EQ(variants[0].parameters[0].default_value, "2");
  EXPECT_EQ(variants[0].parameters[0].type, "double in [0, 1000]");
  EXPECT_EQ(VariantNames(", ").find(variants[0].name), 0u);
  ForEachVariant([&](auto tag) {
    using P = typename decltype(tag)::Params;
    EXPECT_EQ(DescribeVariant(VariantParams{P{}}).name, Variant<P>::kFacts.name);
    EXPECT_EQ(NumObjectsVariants().find(Variant<P>::kFacts.name) != std::string::npos,
              Variant<P>::kFacts.num_objects);
  });
}

TEST(VariantText, ParametersAreSetFromTextByTheirType) {
  VariantParams params = SigmoidFocalParams{};
  ASSERT_TRUE(SetParameterFromText(params, "gamma", "0.5").ok());
  ASSERT_TRUE(SetParameterFromText(params, "smoothing_classes", "7").ok());
  ASSERT_TRUE(SetParameterFromText(params, "ignore_index", "255").ok());
  ASSERT_TRUE(SetParameterFromText(params, "input", "Probabilities").ok());
  const auto& p = std::get<SigmoidFocalParams>(params);
  EXPECT_EQ(p.gamma, 0.5);
  EXPECT_EQ(p.smoothing_classes, 7);
  EXPECT_EQ(p.ignore_index, 255);
  EXPECT_EQ(p.input, SigmoidInput::kProbabilities);

  const absl::Status not_a_number = SetParameterFromText(params, "gamma", "two");
  EXPECT_EQ(not_a_number.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_a_number.message().find("gamma is 'two'; expected a number"), absl::string_view::npos);
  EXPECT_NE(SetParameterFromText(params, "smoothing_classes", "2.5").message().find("expected an integer"),
            absl::string_view::npos);
  EXPECT_NE(SetParameterFromText(params, "input", "odds").message().find("expected logits or probabilities"),
            absl::string_view::npos);
  const absl::Status unknown = SetParameterFromText(params, "xent", "1");
  EXPECT_NE(unknown.message().find("has no parameter xent; it takes gamma, alpha"), absl::string_view::npos)
      << unknown;
}

TEST(VariantText, PerClassListsAreSetAsLists) {
  VariantParams params = SoftmaxFocalParams{};
  ASSERT_TRUE(SetParameterList(params, "alpha", {0.2, 0.8}).ok());
  EXPECT_EQ(std::get<SoftmaxFocalParams>(params).alpha, (std::vector<double>{0.2, 0.8}));
  EXPECT_FALSE(SetParameterFromText(params, "alpha", "0.2").ok());
  EXPECT_FALSE(SetParameterList(params, "gamma", {1, 2}).ok());
  EXPECT_FALSE(SetParameterList(params, "nope", {1}).ok());
}

}  // namespace
}  // namespace focal
