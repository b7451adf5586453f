#include "lib/config/queue_targets.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tern::config {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParseQueueTargetsTest, OneAddressIsOneShard) {
  auto t = ParseQueueTargets("127.0.0.1:7070");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*t, ElementsAre("127.0.0.1:7070"));
}

TEST(ParseQueueTargetsTest, CommaSeparatedListKeepsOrderAndTrimsSpaces) {
  auto t = ParseQueueTargets(" queue-0.queue:7070 ,[::1]:7080,unix:/run/tern/q.sock, dns:///queue-2:7070 ");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*t, ElementsAre("queue-0.queue:7070", "[::1]:7080", "unix:/run/tern/q.sock", "dns:///queue-2:7070"));
  EXPECT_EQ(JoinQueueTargets(*t), "queue-0.queue:7070,[::1]:7080,unix:/run/tern/q.sock,dns:///queue-2:7070");
}

TEST(ParseQueueTargetsTest, RefusesEmptyListsAndEntries) {
  EXPECT_THAT(ParseQueueTargets("  ").status().message(), HasSubstr("no queue address"));
  EXPECT_THAT(ParseQueueTargets("a:1,,b:2").status().message(), HasSubstr("entry 2 is empty"));
  EXPECT_THAT(ParseQueueTargets("a:1,").status().message(), HasSubstr("entry 2 is empty"));
}

TEST(ParseQueueTargetsTest, RefusesTheSameShardTwice) {
  EXPECT_THAT(ParseQueueTargets("a:1, a:1").status().message(), HasSubstr("\"a:1\" is listed twice"));
}

TEST(ParseQueueTargetsTest, RefusesAddressesThatAreNotTargets) {
  EXPECT_FALSE(ParseQueueTargets("queue").ok());             // no port
  EXPECT_FALSE(ParseQueueTargets("queue:0").ok());           // port 0 cannot be dialled
  EXPECT_FALSE(ParseQueueTargets("queue:70700").ok());       // port out of range
  EXPECT_FALSE(ParseQueueTargets("my queue:7070").ok());     // space in the host
  EXPECT_FALSE(ParseQueueTargets("[::1:7070").ok());         // unclosed bracket
  EXPECT_FALSE(ParseQueueTargets("unix:").ok());             // scheme with nothing after it
  EXPECT_THAT(ParseQueueTargets("a:1,b").status().message(), HasSubstr("\"b\" is not host:port"));
}

TEST(ParseQueueTargetsTest, RefusesMoreShardsThanTheBound) {
  std::string many;
  for (size_t i = 0; i <= kMaxQueueShards; ++i) {
    many += (i ? "," : "") + std::string("q") + std::to_string(i) + ":7070";
  }
  EXPECT_THAT(ParseQueueTargets(many).status().message(), HasSubstr("more than 64"));
}

TEST(CheckQueueTargetsTest, AHandBuiltListPassesOnlyIfParsingWouldGiveItBack) {
  EXPECT_TRUE(CheckQueueTargets({"q0:7070", "unix:/run/q1.sock"}).ok());
  EXPECT_THAT(CheckQueueTargets({}).message(), HasSubstr("no queue address"));
  EXPECT_THAT(CheckQueueTargets({"q0:7070", "q0:7070"}).message(), HasSubstr("listed twice"));
  EXPECT_THAT(CheckQueueTargets({" q0:7070"}).message(), HasSubstr("spaces or commas around it"));
  EXPECT_THAT(CheckQueueTargets({"q0:7070,q1:7070"}).message(), HasSubstr("spaces or commas around it"));
}

TEST(ReadQueueTargetsTest, PlainLineAndListLinesMakeOneListInFileOrder) {
  auto ini = IniFile::Parse("[deliverer]\nqueue=q0:7070, q1:7070\nqueue[]=q2:7070\nqueue[]=q3:7070,q4:7070\n",
                            "tern.ini");
  ASSERT_TRUE(ini.ok()) << ini.status();
  auto t = ReadQueueTargets(*ini, "deliverer", "127.0.0.1:7070");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(*t, ElementsAre("q0:7070", "q1:7070", "q2:7070", "q3:7070", "q4:7070"));
}

TEST(ReadQueueTargetsTest, DefaultWhenUnsetAndEmptyEntriesStillRefused) {
  auto ini = IniFile::Parse("[ingest]\nqueue=q0:7070,,q1:7070\n[bouncer]\nqueue[]=q0:7070\nqueue[]=q0:7070\n",
                            "tern.ini");
  ASSERT_TRUE(ini.ok()) << ini.status();
  auto d = ReadQueueTargets(*ini, "deliverer", "127.0.0.1:7070");
  ASSERT_TRUE(d.ok());
  EXPECT_THAT(*d, ElementsAre("127.0.0.1:7070"));
  EXPECT_THAT(ReadQueueTargets(*ini, "ingest", "x:1").status().message(), HasSubstr("entry 2 is empty"));
  EXPECT_THAT(ReadQueueTargets(*ini, "bouncer", "x:1").status().message(), HasSubstr("listed twice"));
}

TEST(IsHostPortTest, PortZeroOnlyWhenAllowed) {
  EXPECT_TRUE(IsHostPort("127.0.0.1:0", /*allow_zero=*/true));
  EXPECT_FALSE(IsHostPort("127.0.0.1:0", /*allow_zero=*/false));
  EXPECT_TRUE(IsHostPort("[::1]:25", false));
  EXPECT_FALSE(IsHostPort(":25", false));
}

}  // namespace
}  // namespace tern::config
