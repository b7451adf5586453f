// File: fuzz_check.h
//
// Helpers for the libFuzzer targets (tern_fuzz_test in
// cmake/TernHelpers.cmake), which state what a parser promises as checks:
// a check that fails aborts, and libFuzzer reports that as a crash with the
// input that caused it. Header-only: a target compiles the code under test
// from source and links nothing of Tern's.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdlib>

#include "absl/strings/string_view.h"

namespace tern::fuzz {

inline void Check(bool ok) {
  if (!ok) {
    std::abort();
  }
}

// True when `text` holds an ASCII control octet (below 0x20, or DEL). The
// targets' own oracle, written apart from the parsers' helpers they check.
inline bool HasControl(absl::string_view text) {
  for (const char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return true;
    }
  }
  return false;
}

}  // namespace tern::fuzz
