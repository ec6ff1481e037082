// Debian's Abseil predates the official status macros; these two are all the core needs.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FOCAL_CONCAT_INNER(a, b) a##b
#define FOCAL_CONCAT(a, b) FOCAL_CONCAT_INNER(a, b)

/// Returns from the enclosing function when `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status focal_status_ = (expr);             \
    if (!focal_status_.ok()) return focal_status_;     \
  } while (false)

/// `ASSIGN_OR_RETURN(auto x, F())` binds the value of a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  FOCAL_ASSIGN_OR_RETURN_IMPL(FOCAL_CONCAT(focal_statusor_, __LINE__), lhs, expr)
#define FOCAL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
