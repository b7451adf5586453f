// File: status_macros.h
//
// TERN_RETURN_IF_ERROR(expr): return the absl::Status of expr if it is not OK.
// TERN_ASSIGN_OR_RETURN(lhs, expr): evaluate an absl::StatusOr, return its
// status on error, otherwise move the value into lhs (which may declare it).
//
// The TERN_ prefix keeps clear of absl's own macros of the same purpose.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TERN_RETURN_IF_ERROR(expr)                  \
  do {                                              \
    ::absl::Status tern_status_ = (expr);           \
    if (!tern_status_.ok()) {                       \
      return tern_status_;                          \
    }                                               \
  } while (false)

#define TERN_STATUS_CONCAT_INNER_(a, b) a##b
#define TERN_STATUS_CONCAT_(a, b) TERN_STATUS_CONCAT_INNER_(a, b)

#define TERN_ASSIGN_OR_RETURN(lhs, expr) \
  TERN_ASSIGN_OR_RETURN_IMPL_(TERN_STATUS_CONCAT_(tern_statusor_, __LINE__), lhs, expr)

#define TERN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  if (!statusor.ok()) {                                 \
    return std::move(statusor).status();                \
  }                                                     \
  lhs = std::move(statusor).value()
