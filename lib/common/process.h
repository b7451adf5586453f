// File: process.h
//
// Process-wide settings every Tern service applies first thing in main(),
// before any thread starts.
#pragma once

namespace tern {

// Turns off Abseil's mutex deadlock detector. Debian builds Abseil without
// NDEBUG, which leaves the detector on: every absl::Mutex lock then updates a
// global lock-order graph under its own global lock. gRPC locks absl
// mutexes on every call, so profiles of each service showed it; Tern's tests
// (and TSan/ASan builds) are where lock-order bugs are looked for, not the
// production hot path.
void InitServiceProcess();

}  // namespace tern
