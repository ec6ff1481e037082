// The variant table (focal/params.h) as people read and write it: descriptions for server info
// and help texts, and parameters set from text (focalctl's flags, string-typed parameters of
// other protocols). Every answer is derived from the table; nothing here names a variant.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "focal/params.h"

namespace focal {

/// One parameter of a variant, described.
struct ParameterDescription {
  std::string name;           ///< the docs/variants.md name, the wire field's name
  std::string type;           ///< "double in [0, 1000]", "repeated double, one per class, ..."
  std::string default_value;  ///< "2", "none", "all ones"
  std::string description;
  std::string flag;           ///< focalctl's flag, without the dashes
  bool per_class_list = false;       ///< a list of one value per class (focalctl reads a file)
  std::vector<std::string> choices;  ///< an enum's values, lowercase; empty for numbers
};

/// One variant, described.
struct VariantDescription {
  std::string name;
  std::string summary;
  bool num_objects = false;  ///< takes the request's num_objects
  std::vector<ParameterDescription> parameters;
};

/// Every variant in table order, built once.
const std::vector<VariantDescription>& DescribeVariants();

/// The description of the variant `params` holds.
const VariantDescription& DescribeVariant(const VariantParams& params);

/// The names of every variant, joined by `separator`.
std::string VariantNames(absl::string_view separator);

/// The names of the variants that take the request's num_objects, joined by ", ".
const std::string& NumObjectsVariants();
/// "quality_focal": the variants that take the request's scores tensor.
const std::string& ScoresVariants();

/// Sets parameter `name` of `params` from text: a number for numeric parameters (an integer
/// for integer ones), one of the choices (any case) for an enum. INVALID_ARGUMENT naming the
/// parameter when the variant has no such parameter, it is a per-class list, or the text does
/// not parse. Ranges are not checked here: ValidateJob checks them for every request.
absl::Status SetParameterFromText(VariantParams& params, absl::string_view name, absl::string_view text);

/// Sets the per-class list parameter `name` of `params`.
absl::Status SetParameterList(VariantParams& params, absl::string_view name, std::vector<double> values);

}  // namespace focal
