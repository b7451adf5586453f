#include "tools/ternctl/admin_client.h"

#include "gtest/gtest.h"
#include "tern/v1/admin.pb.h"

namespace tern::ternctl {
namespace {

TEST(TernctlFormat, AgesAreShortAndNeverNegative) {
  EXPECT_EQ(FormatAge(-5), "0s");
  EXPECT_EQ(FormatAge(45'000), "45s");
  EXPECT_EQ(FormatAge(12 * 60'000 + 5'000), "12m");
  EXPECT_EQ(FormatAge(3 * 3'600'000 + 5 * 60'000), "3h05m");
  EXPECT_EQ(FormatAge(2 * 86'400'000LL + 4 * 3'600'000), "2d04h");
}

TEST(TernctlFormat, TableAlignsColumnsWithoutTrailingPadding) {
  EXPECT_EQ(FormatTable({{"ID", "STATE"}, {"abc123", "due"}}), "ID      STATE\nabc123  due\n");
}

TEST(TernctlSelector, DurationsAndFiltersBecomeASelector) {
  SelectorOptions o;
  o.ids = {"m1", "m2"};
  o.domain = "example.com";
  o.older_than = "4h";
  o.younger_than = "2d";
  auto sel = BuildSelector(o);
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->message_ids_size(), 2);
  EXPECT_EQ(sel->domain(), "example.com");
  EXPECT_EQ(sel->older_than_ms(), 4 * 3'600'000);
  EXPECT_EQ(sel->younger_than_ms(), 2 * 86'400'000LL);
  o.older_than = "4 weeks";
  EXPECT_FALSE(BuildSelector(o).ok());
}

TEST(TernctlFormat, JsonUsesProtoFieldNamesAndPrintsDefaults) {
  tern::v1::ActionResponse r;
  r.set_matched(3);
  EXPECT_EQ(ToJson(r),
            "{\"matched\":\"3\",\"deliveries_changed\":\"0\",\"needs_confirmation\":false,\"message_ids\":[],"
            "\"undo_token\":\"\",\"undo_until_unix_ms\":\"0\"}\n");
}

}  // namespace
}  // namespace tern::ternctl
