#include "services/bouncer/suppression.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::bouncer {
namespace {

using ::testing::HasSubstr;

SuppressionRules Rules(std::vector<std::string> domains, std::vector<std::string> statuses) {
  absl::StatusOr<SuppressionRules> r = SuppressionRules::Create(domains, statuses, "domains", "status");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : SuppressionRules();
}

TEST(SuppressionRules, NoRulesSuppressNothing) {
  SuppressionRules rules = Rules({}, {});
  EXPECT_TRUE(rules.empty());
  EXPECT_FALSE(rules.SuppressesSender("a@example.com"));
  EXPECT_FALSE(rules.SuppressesRecipient("5.1.1", 550));
}

TEST(SuppressionRules, SenderDomainIsExactUnlessItStartsWithADot) {
  SuppressionRules rules = Rules({"Example.COM", ".lists.example.org", ""}, {});
  EXPECT_FALSE(rules.empty());
  EXPECT_TRUE(rules.SuppressesSender("noreply@example.com"));
  EXPECT_TRUE(rules.SuppressesSender("NoReply@EXAMPLE.com"));
  EXPECT_FALSE(rules.SuppressesSender("a@sub.example.com"));
  EXPECT_FALSE(rules.SuppressesSender("a@notexample.com"));
  EXPECT_TRUE(rules.SuppressesSender("a@news.lists.example.org"));
  EXPECT_FALSE(rules.SuppressesSender("a@lists.example.org"));
  EXPECT_FALSE(rules.SuppressesSender("a@xlists.example.org"));
  EXPECT_FALSE(rules.SuppressesSender("no-domain"));
}

TEST(SuppressionRules, StatusPatternsMatchPartsOrWildcards) {
  SuppressionRules rules = Rules({}, {"5.7.*", "4.4.7"});
  EXPECT_TRUE(rules.SuppressesRecipient("5.7.1", 550));
  EXPECT_TRUE(rules.SuppressesRecipient("5.7.26", 550));
  EXPECT_FALSE(rules.SuppressesRecipient("5.1.1", 550));
  EXPECT_TRUE(rules.SuppressesRecipient("4.4.7", 0));
  EXPECT_FALSE(rules.SuppressesRecipient("4.4.70", 0));
}

TEST(SuppressionRules, ReplyCodePatternsUseX) {
  SuppressionRules rules = Rules({}, {"55X", "421"});
  EXPECT_TRUE(rules.SuppressesRecipient("5.0.0", 550));
  EXPECT_TRUE(rules.SuppressesRecipient("5.2.2", 552));
  EXPECT_FALSE(rules.SuppressesRecipient("5.0.0", 554 - 10));
  EXPECT_TRUE(rules.SuppressesRecipient("4.0.0", 421));
  EXPECT_FALSE(rules.SuppressesRecipient("5.0.0", 0));  // no reply, no reply-code match
}

TEST(SuppressionRules, RejectsMalformedEntriesNamingTheKey) {
  struct Case {
    std::vector<std::string> domains;
    std::vector<std::string> statuses;
    const char* key;
  };
  const Case cases[] = {
      {{"exa mple.com"}, {}, "domains"}, {{"a..b"}, {}, "domains"}, {{"@x.com"}, {}, "domains"},
      {{}, {"5.7"}, "status"},           {{}, {"3.1.1"}, "status"},  {{}, {"5xy"}, "status"},
      {{}, {"x50"}, "status"},           {{}, {"5.1.1234"}, "status"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SuppressionRules> r = SuppressionRules::Create(c.domains, c.statuses, "domains", "status");
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.key));
  }
}

}  // namespace
}  // namespace tern::bouncer
