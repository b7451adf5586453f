#include "lib/rpc/reply_summary.h"

#include "gtest/gtest.h"

namespace tern::rpc {
namespace {

TEST(ReplySummary, JoinsCodeEnhancedStatusAndTextLeavingOutMissingParts) {
  tern::v1::RecipientResult r;
  EXPECT_EQ(ReplySummary(r), "");
  r.set_reply_text("connection refused");
  EXPECT_EQ(ReplySummary(r), "connection refused");
  r.set_reply_code(451);
  EXPECT_EQ(ReplySummary(r), "451 connection refused");
  r.set_enhanced_status("4.4.1");
  EXPECT_EQ(ReplySummary(r), "451 4.4.1 connection refused");
}

}  // namespace
}  // namespace tern::rpc
