#include "lib/common/ids.h"

#include <atomic>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tern {
namespace {

uint32_t RandomStart() {
  absl::BitGen gen;
  return absl::Uniform<uint32_t>(gen);
}

std::atomic<uint32_t> g_sequence{RandomStart()};

}  // namespace

std::string NewMessageId() {
  const uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())) & 0xffffffffffffULL;
  const uint32_t seq = g_sequence.fetch_add(1, std::memory_order_relaxed);
  return absl::StrCat(absl::Hex(ms, absl::kZeroPad12), absl::Hex(seq, absl::kZeroPad8));
}

int64_t MessageIdUnixMs(absl::string_view id) {
  if (id.size() < 20) {
    return -1;
  }
  uint64_t ms = 0;
  if (!absl::SimpleHexAtoi(id.substr(0, 12), &ms)) {
    return -1;
  }
  return static_cast<int64_t>(ms);
}

std::string NewRandomToken() {
  thread_local absl::BitGen gen;
  return absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16),
                      absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

}  // namespace tern
