#include "tools/ternctl/queue_shards.h"

#include <sstream>

#include "CLI/CLI.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/destinations_command.h"
#include "tools/ternctl/stats_command.h"
#include "tools/ternctl/tlsrpt_command.h"

namespace tern::ternctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::vector<std::string> kShards = {"10.0.0.1:7070", "10.0.0.2:7070"};

TEST(QueueShards, OneAddressOrACommaSeparatedList) {
  GlobalOptions g;
  EXPECT_THAT(*QueueShards(g), ElementsAre("127.0.0.1:7070"));
  g.queue = "10.0.0.1:7070, 10.0.0.2:7070";
  EXPECT_THAT(*QueueShards(g), ElementsAre("10.0.0.1:7070", "10.0.0.2:7070"));
  g.queue = "10.0.0.1:7070,,10.0.0.2:7070";
  EXPECT_FALSE(QueueShards(g).ok());
}

TEST(QueueShards, ABadListIsACliValidationError) {
  struct Case {
    const char* label;
    std::vector<std::string> args;  // reversed, as CLI::App::parse takes them
    bool ok;
  };
  const Case cases[] = {
      {"default", {}, true},
      {"one", {"10.0.0.1:7070", "--queue"}, true},
      {"two", {"a:1,b:2", "--queue"}, true},
      {"empty entry", {"a:1,,b:2", "--queue"}, false},
      {"twice", {"a:1,a:1", "--queue"}, false},
      {"no port", {"a", "--queue"}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    CLI::App app;
    GlobalOptions g;
    AddQueueOption(app, g);
    std::vector<std::string> args = c.args;
    if (c.ok) {
      EXPECT_NO_THROW(app.parse(args));
    } else {
      EXPECT_THROW(app.parse(args), CLI::ValidationError);
    }
  }
}

TEST(ShardCursor, BareIdOrIdAtAShardOfTheList) {
  auto bare = ParseShardCursor("00000000000000000abc", kShards);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->after_id, "00000000000000000abc");
  EXPECT_FALSE(bare->shard.has_value());

  auto named = ParseShardCursor(FormatShardCursor("00000000000000000abc", "10.0.0.2:7070"), kShards);
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->after_id, "00000000000000000abc");
  EXPECT_EQ(named->shard, 1u);

  EXPECT_TRUE(ParseShardCursor("", kShards)->after_id.empty());
  EXPECT_THAT(ParseShardCursor("abc@10.0.0.9:7070", kShards).status().message(), HasSubstr("10.0.0.9:7070"));
  EXPECT_FALSE(ParseShardCursor("@10.0.0.1:7070", kShards).ok());
}

TEST(ShardCursor, IdBeforeSortsJustBeforeTheId) {
  EXPECT_EQ(IdBefore("0000000000000000000b"), "0000000000000000000a");
  EXPECT_EQ(IdBefore("00000000000000000010"), "0000000000000000001/");
  EXPECT_LT(IdBefore("00000000000000000010"), "00000000000000000010");
  EXPECT_GT(IdBefore("00000000000000000010"), "0000000000000000000f");
  EXPECT_EQ(IdBefore(std::string("ab\0", 3)), "ab");
}

TEST(WatchFrom, OneNumberForOneQueueOneSeqAtQueuePerShardForSeveral) {
  auto one = ParseWatchFrom("42", {"q:1"});
  ASSERT_TRUE(one.ok());
  EXPECT_THAT(*one, ElementsAre(std::optional<uint64_t>(42)));
  EXPECT_THAT(*ParseWatchFrom("-1", {"q:1"}), ElementsAre(std::nullopt));
  EXPECT_FALSE(ParseWatchFrom("x", {"q:1"}).ok());

  auto two = ParseWatchFrom("7@10.0.0.2:7070", kShards);
  ASSERT_TRUE(two.ok());
  EXPECT_THAT(*two, ElementsAre(std::nullopt, std::optional<uint64_t>(7)));
  EXPECT_THAT(ParseWatchFrom("7", kShards).status().message(), HasSubstr("SEQ@QUEUE"));
  EXPECT_FALSE(ParseWatchFrom("7@10.0.0.2:7070,8@10.0.0.2:7070", kShards).ok());
  EXPECT_FALSE(ParseWatchFrom("7@10.0.0.3:7070", kShards).ok());
}

TEST(ShardJson, NamesTheShardAndAddsMembers) {
  EXPECT_EQ(JsonWithQueue("{\"a\":1}\n", "q:1"), "{\"queue\":\"q:1\",\"a\":1}");
  EXPECT_EQ(JsonWithQueue("{}", "q:1"), "{\"queue\":\"q:1\"}");
  EXPECT_EQ(JsonWithMember("{\"a\":1}\n", "queues", "[]"), "{\"a\":1,\"queues\":[]}");
  EXPECT_EQ(JsonWithMember("{}", "queues", "[]"), "{\"queues\":[]}");
  EXPECT_EQ(JsonFillArray("{\"messages\":[],\"next_cursor\":\"\"}\n", "messages", {"{\"x\":1}", "{\"x\":2}"}),
            "{\"messages\":[{\"x\":1},{\"x\":2}],\"next_cursor\":\"\"}");
}

TEST(SumStats, SumsCountersTakesTheOldestAndAnyPause) {
  tern::v1::StatsResponse a;
  a.set_messages(2);
  a.set_deliveries_held(1);
  a.set_oldest_message_unix_ms(2000);
  a.set_enqueued_total(10);
  tern::v1::StatsResponse b;
  b.set_messages(3);
  b.set_oldest_message_unix_ms(1000);
  b.set_paused(true);
  b.set_enqueued_total(5);
  tern::v1::StatsResponse empty;  // no oldest message: does not make it 0
  const tern::v1::StatsResponse sum = SumStats({a, b, empty});
  EXPECT_EQ(sum.messages(), 5u);
  EXPECT_EQ(sum.deliveries_held(), 1u);
  EXPECT_EQ(sum.oldest_message_unix_ms(), 1000);
  EXPECT_EQ(sum.enqueued_total(), 15u);
  EXPECT_TRUE(sum.paused());
}

TEST(FormatStatsShards, OneRowPerShard) {
  tern::v1::StatsResponse a;
  a.set_messages(2);
  a.set_oldest_message_unix_ms(1'700'000'000'000);
  tern::v1::StatsResponse b;
  b.set_paused(true);
  EXPECT_EQ(FormatStatsShards({{"a:1", a}, {"b:2", b}}, absl::FromUnixMillis(1'700'000'045'000)),
            "QUEUE  MESSAGES  DELIVERIES  DUE  LEASED  DEFERRED  HELD  BOUNCES  CORRUPT  PAUSED  OLDEST\n"
            "a:1    2         0           0    0       0         0     0        0        no      45s\n"
            "b:2    0         0           0    0       0         0     0        0        yes     -\n");
}

TEST(MergeTlsReportsPending, SumsADayAndDomainAcrossShards) {
  tern::v1::ListTlsReportsResponse a;
  auto* p = a.add_pending();
  p->set_day(20414);
  p->set_policy_domain("example.com");
  p->set_successful(5);
  p->set_failed(1);
  p->add_rua("mailto:r@example.com");
  tern::v1::ListTlsReportsResponse b = a;
  b.mutable_pending(0)->add_rua("https://r.example.com/");
  auto* other = b.add_pending();
  other->set_day(20413);
  other->set_policy_domain("example.org");
  other->set_successful(1);
  const tern::v1::ListTlsReportsResponse merged = MergeTlsReportsPending({a, b});
  ASSERT_EQ(merged.pending_size(), 2);
  EXPECT_EQ(merged.pending(0).policy_domain(), "example.org");
  EXPECT_EQ(merged.pending(1).successful(), 10u);
  EXPECT_EQ(merged.pending(1).failed(), 2u);
  EXPECT_THAT(merged.pending(1).rua(), ElementsAre("mailto:r@example.com", "https://r.example.com/"));
  EXPECT_THAT(FormatTlsReportsPendingOnShards(merged, 3, 2), HasSubstr("3 reports pending from 2 queue shards"));
}

TEST(FormatDestinationsOnShards, ARowPerShardAndDestinationBusiestFirst) {
  tern::v1::DestinationsResponse a;
  auto* quiet = a.add_destinations();
  quiet->set_destination("example.com");
  quiet->set_leased(1);
  quiet->set_rate_max("none");
  tern::v1::DestinationsResponse b;
  auto* busy = b.add_destinations();
  busy->set_destination("example.com");
  busy->set_leased(3);
  busy->set_waiting(4);
  busy->set_concurrency_max(3);
  busy->set_concurrency_now(3);
  busy->set_rate_max("none");
  busy->set_backoff_until_unix_ms(1'700'000'060'000);
  busy->set_backoff_reply("421 too many");
  EXPECT_EQ(FormatDestinationsOnShards({{"a:1", a}, {"b:2", b}}, 1'700'000'000'000),
            "QUEUE  DESTINATION  LEASED  WAITING  CONCURRENCY  MAX  RATE  DOMAINS\n"
            "b:2    example.com  3       4        3            3    -\n"
            "a:1    example.com  1       0        -            -    -\n"
            "example.com (queue b:2): backed off to 3 until 2023-11-14T22:14:20Z (1m more) after '421 too many'\n");
  EXPECT_THAT(FormatDestinationsOnShards({{"a:1", {}}, {"b:2", {}}}, 0), HasSubstr("no destination"));
}

}  // namespace
}  // namespace tern::ternctl
