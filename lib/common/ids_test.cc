#include "lib/common/ids.h"

#include <set>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tern {
namespace {

TEST(MessageId, IsTimeOrderedAndUnique) {
  std::set<std::string> seen;
  std::string previous;
  for (int i = 0; i < 10000; ++i) {
    std::string id = NewMessageId();
    ASSERT_EQ(id.size(), 20u);
    EXPECT_TRUE(seen.insert(id).second) << id;
    // Same millisecond: the sequence makes it larger; later: the time does.
    // (A sequence wrap inside one millisecond would break this; 2^32 ids/ms.)
    if (!previous.empty() && previous.substr(0, 12) == id.substr(0, 12)) {
      EXPECT_NE(previous, id);
    }
    previous = id;
  }
}

TEST(MessageId, EncodesArrivalTime) {
  const int64_t before = absl::ToUnixMillis(absl::Now());
  const std::string id = NewMessageId();
  const int64_t after = absl::ToUnixMillis(absl::Now());
  EXPECT_GE(MessageIdUnixMs(id), before);
  EXPECT_LE(MessageIdUnixMs(id), after);
  EXPECT_EQ(MessageIdUnixMs("short"), -1);
  EXPECT_EQ(MessageIdUnixMs("zzzzzzzzzzzz00000000"), -1);
}

TEST(RandomToken, HasFullLengthAndDiffers) {
  const std::string a = NewRandomToken();
  const std::string b = NewRandomToken();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace tern
