#include "services/bouncer/bouncer_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/bouncer/default_bounce_message.h"

namespace tern::bouncer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class BouncerConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("bouncer_config_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& name, const std::string& text) {
    std::ofstream out(dir_ / name, std::ios::binary);
    out << text;
  }
  config::ConfigDir Dir() const { return config::ConfigDir(dir_.string()); }

  std::filesystem::path dir_;
};

TEST_F(BouncerConfigTest, EmptyDirGivesDocumentedDefaults) {
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_THAT(cfg->queues, ElementsAre("127.0.0.1:7070"));
  EXPECT_EQ(cfg->health_listen, "127.0.0.1:7073");
  EXPECT_EQ(cfg->metrics_listen, "127.0.0.1:9473");
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(2000));
  EXPECT_FALSE(cfg->me.empty());
  EXPECT_EQ(cfg->failed_template.text, kDefaultBounceMessage);
  EXPECT_EQ(cfg->failed_template.origin, "built-in outbound.bounce_message");
  EXPECT_EQ(cfg->delayed_template.text, kDefaultDelayedMessage);
  EXPECT_EQ(cfg->delivered_template.text, kDefaultDeliveredMessage);
  EXPECT_EQ(cfg->max_original_bytes, 1048576);
  EXPECT_EQ(cfg->double_bounce_recipient, "");
  EXPECT_FALSE(cfg->failed_html.has_value());
  EXPECT_FALSE(cfg->image.has_value());
  absl::StatusOr<SuppressionRules> rules = cfg->Suppression();
  ASSERT_TRUE(rules.ok());
  EXPECT_TRUE(rules->empty());
  absl::StatusOr<dsn::DsnTemplates> t = cfg->TemplatesFor(dsn::ReportKind::kFailed);
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->html.has_value());
}

std::string ReadDeployFile(const std::string& name) {
  std::ifstream in(std::string(TERN_SOURCE_DIR) + "/deploy/config/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(BouncerConfigTest, BuiltInTemplatesAreTheDeployDefaults) {
  EXPECT_EQ(ReadDeployFile("outbound.bounce_message"), kDefaultBounceMessage);
  EXPECT_EQ(ReadDeployFile("outbound.bounce_message_delayed"), kDefaultDelayedMessage);
  EXPECT_EQ(ReadDeployFile("outbound.bounce_message_delivered"), kDefaultDeliveredMessage);
}

TEST_F(BouncerConfigTest, DeployConfigDirLoads) {
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(config::ConfigDir(std::string(TERN_SOURCE_DIR) + "/deploy/config"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_THAT(cfg->queues, ElementsAre("127.0.0.1:7070"));
  EXPECT_THAT(cfg->failed_template.origin, HasSubstr("deploy/config/outbound.bounce_message"));
  // Tern ships an HTML alternative for failure DSNs, but no image.
  ASSERT_TRUE(cfg->failed_html.has_value());
  EXPECT_FALSE(cfg->image.has_value());
  absl::StatusOr<dsn::DsnTemplates> t = cfg->TemplatesFor(dsn::ReportKind::kFailed);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(t->html.has_value());
  EXPECT_TRUE(t->html->has_content());
}

TEST_F(BouncerConfigTest, ReadsBounceKeysAndOptionalTemplates) {
  Write("tern.ini",
        "[bouncer]\nmax_original_bytes=2048\ndouble_bounce_recipient=<postmaster@example.com>\n"
        "suppress_sender_domains[]=example.net\nsuppress_sender_domains[]=.lists.example.org\n"
        "suppress_status[]=5.7.*\nsuppress_status[]=55x\n");
  Write("outbound.bounce_message_html", "<p>{recipients}</p>\n<img src=\"cid:logo\">\n");
  Write("outbound.bounce_message_image",
        "Content-Type: image/gif\nContent-ID: <logo>\nContent-Transfer-Encoding: base64\n\n"
        "R0lGODlhAQABAAAAACw=\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->max_original_bytes, 2048);
  EXPECT_EQ(cfg->double_bounce_recipient, "postmaster@example.com");
  absl::StatusOr<SuppressionRules> rules = cfg->Suppression();
  ASSERT_TRUE(rules.ok());
  EXPECT_TRUE(rules->SuppressesSender("x@example.net"));
  EXPECT_TRUE(rules->SuppressesSender("x@a.lists.example.org"));
  EXPECT_TRUE(rules->SuppressesRecipient("5.7.1", 0));
  EXPECT_TRUE(rules->SuppressesRecipient("5.0.0", 554));
  absl::StatusOr<dsn::DsnTemplates> failed = cfg->TemplatesFor(dsn::ReportKind::kFailed);
  ASSERT_TRUE(failed.ok()) << failed.status();
  ASSERT_TRUE(failed->image.has_value());
  EXPECT_EQ(failed->image->content_id(), "logo");
  // No HTML for delays: text only, so the image is not used there.
  absl::StatusOr<dsn::DsnTemplates> delayed = cfg->TemplatesFor(dsn::ReportKind::kDelayed);
  ASSERT_TRUE(delayed.ok());
  EXPECT_FALSE(delayed->html.has_value());
  EXPECT_FALSE(delayed->image.has_value());
}

TEST_F(BouncerConfigTest, RejectsBadBounceKeysNamingThem) {
  struct Case {
    const char* file;
    const char* text;
    const char* error;
  };
  const Case cases[] = {
      {"tern.ini", "[bouncer]\nmax_original_bytes=lots\n", "max_original_bytes"},
      {"tern.ini", "[bouncer]\nmax_original_bytes=-1\n", "max_original_bytes"},
      {"tern.ini", "[bouncer]\ndouble_bounce_recipient=postmaster\n", "double_bounce_recipient"},
      {"tern.ini", "[bouncer]\nsuppress_status[]=5.7\n", "suppress_status"},
      {"tern.ini", "[bouncer]\nsuppress_sender_domains[]=a b\n", "suppress_sender_domains"},
      {"outbound.bounce_message_image", "Content-Type: image/png\n\nAAAA\n", "outbound.bounce_message_image"},
      {"outbound.bounce_message_html", "<p>\xFF</p>\n", "outbound.bounce_message_html"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Write(c.file, c.text);
    absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
    ASSERT_FALSE(cfg.ok());
    EXPECT_THAT(std::string(cfg.status().message()), HasSubstr(c.error));
  }
}

TEST_F(BouncerConfigTest, ReadsKeysMeAndTemplateFiles) {
  Write("tern.ini",
        "[bouncer]\nqueue=queue.internal:7070\nhealth_listen=\nmetrics_listen=0.0.0.0:0\nconfig_watch_ms=0\n");
  Write("me", "mx.example.com\n");
  Write("outbound.bounce_message", "Subject: custom\n\nsorry {recipients}\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_THAT(cfg->queues, ElementsAre("queue.internal:7070"));
  EXPECT_EQ(cfg->health_listen, "");
  EXPECT_EQ(cfg->metrics_listen, "0.0.0.0:0");
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(0));
  EXPECT_EQ(cfg->me, "mx.example.com");
  EXPECT_EQ(cfg->failed_template.text, "Subject: custom\n\nsorry {recipients}\n");
  EXPECT_EQ(&cfg->TemplateFor(dsn::ReportKind::kFailed), &cfg->failed_template);
  EXPECT_EQ(&cfg->TemplateFor(dsn::ReportKind::kDelayed), &cfg->delayed_template);
}

TEST_F(BouncerConfigTest, ReadsEveryQueueShardInOrder) {
  Write("tern.ini",
        "[bouncer]\nqueue= queue-0.queue:7070 , queue-1.queue:7070,[::1]:7071,unix:/run/tern/queue.sock\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_THAT(cfg->queues,
              ElementsAre("queue-0.queue:7070", "queue-1.queue:7070", "[::1]:7071", "unix:/run/tern/queue.sock"));
}

TEST_F(BouncerConfigTest, RejectsBadQueueListsNamingTheKeyAndTheReason) {
  struct Case {
    const char* label;
    const char* text;
    const char* error;
  };
  const Case cases[] = {
      {"no port", "[bouncer]\nqueue=no-port-here\n",
       "tern.ini [bouncer] queue: \"no-port-here\" is not host:port"},
      {"empty", "[bouncer]\nqueue=\n", "tern.ini [bouncer] queue: no queue address"},
      {"empty entry", "[bouncer]\nqueue=a:7070,,b:7070\n", "tern.ini [bouncer] queue: entry 2 is empty"},
      {"twice", "[bouncer]\nqueue=a:7070, a:7070\n", "tern.ini [bouncer] queue: \"a:7070\" is listed twice"},
      {"port 0", "[bouncer]\nqueue=a:7070,b:0\n", "tern.ini [bouncer] queue: \"b:0\""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Write("tern.ini", c.text);
    absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
    ASSERT_FALSE(cfg.ok());
    EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(cfg.status().message()), HasSubstr(c.error));
  }
}

TEST_F(BouncerConfigTest, RejectsBrokenTemplateNamingTheFile) {
  Write("outbound.bounce_message", "Subject: x\nthis is not a header\n\nbody\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("outbound.bounce_message line 2"));
}

TEST(BouncerConfigValidate, RejectsBadMeAndListenAddresses) {
  BouncerConfig cfg;
  cfg.me = "mx.example.com";
  cfg.failed_template.text = cfg.delayed_template.text = cfg.delivered_template.text = "body\n";
  EXPECT_TRUE(cfg.Validate().ok());
  BouncerConfig bad = cfg;
  bad.me = "mx example";
  EXPECT_FALSE(bad.Validate().ok());
  bad = cfg;
  bad.health_listen = "127.0.0.1:99999";
  EXPECT_FALSE(bad.Validate().ok());
  bad = cfg;
  bad.metrics_listen = "no-port";
  EXPECT_FALSE(bad.Validate().ok());
  bad = cfg;
  bad.metrics_listen = "0.0.0.0:0";  // any free port
  EXPECT_TRUE(bad.Validate().ok());
}

TEST(BouncerConfigValidate, QueueShardsMustBeWhatTheIniParserMakes) {
  BouncerConfig cfg;
  cfg.me = "mx.example.com";
  cfg.failed_template.text = cfg.delayed_template.text = cfg.delivered_template.text = "body\n";
  struct Case {
    const char* label;
    std::vector<std::string> queues;
    bool ok;
  };
  const Case cases[] = {
      {"one", {"127.0.0.1:7070"}, true},
      {"two", {"queue-0:7070", "queue-1:7070"}, true},
      {"none", {}, false},
      {"port 0", {"127.0.0.1:0"}, false},
      {"empty entry", {"a:1", ""}, false},
      {"twice", {"a:1", "a:1"}, false},
      {"untrimmed", {" a:1"}, false},
      {"comma inside", {"a:1,b:2"}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    cfg.queues = c.queues;
    absl::Status s = cfg.Validate();
    EXPECT_EQ(s.ok(), c.ok) << s;
    if (!s.ok()) {
      EXPECT_THAT(std::string(s.message()), HasSubstr("tern.ini [bouncer] queue: "));
    }
  }
}

}  // namespace
}  // namespace tern::bouncer
