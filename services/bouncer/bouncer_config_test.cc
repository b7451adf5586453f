#include "services/bouncer/bouncer_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/bouncer/default_bounce_message.h"

namespace tern::bouncer {
namespace {

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
  EXPECT_EQ(cfg->queue, "127.0.0.1:7070");
  EXPECT_EQ(cfg->health_listen, "127.0.0.1:7073");
  EXPECT_EQ(cfg->metrics_listen, "127.0.0.1:9473");
  EXPECT_FALSE(cfg->me.empty());
  EXPECT_EQ(cfg->failed_template.text, kDefaultBounceMessage);
  EXPECT_EQ(cfg->failed_template.origin, "built-in outbound.bounce_message");
  EXPECT_EQ(cfg->delayed_template.text, kDefaultDelayedMessage);
  EXPECT_EQ(cfg->delivered_template.text, kDefaultDeliveredMessage);
}

TEST_F(BouncerConfigTest, BuiltInTemplateIsTheDeployDefault) {
  std::ifstream in(std::string(TERN_SOURCE_DIR) + "/deploy/config/outbound.bounce_message", std::ios::binary);
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), kDefaultBounceMessage);
}

TEST_F(BouncerConfigTest, DeployConfigDirLoads) {
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(config::ConfigDir(std::string(TERN_SOURCE_DIR) + "/deploy/config"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->queue, "127.0.0.1:7070");
  EXPECT_THAT(cfg->failed_template.origin, HasSubstr("deploy/config/outbound.bounce_message"));
}

TEST_F(BouncerConfigTest, ReadsKeysMeAndTemplateFiles) {
  Write("tern.ini", "[bouncer]\nqueue=queue.internal:7070\nhealth_listen=\nmetrics_listen=0.0.0.0:0\n");
  Write("me", "mx.example.com\n");
  Write("outbound.bounce_message", "Subject: custom\n\nsorry {recipients}\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->queue, "queue.internal:7070");
  EXPECT_EQ(cfg->health_listen, "");
  EXPECT_EQ(cfg->metrics_listen, "0.0.0.0:0");
  EXPECT_EQ(cfg->me, "mx.example.com");
  EXPECT_EQ(cfg->failed_template.text, "Subject: custom\n\nsorry {recipients}\n");
  EXPECT_EQ(&cfg->TemplateFor(dsn::ReportKind::kFailed), &cfg->failed_template);
  EXPECT_EQ(&cfg->TemplateFor(dsn::ReportKind::kDelayed), &cfg->delayed_template);
}

TEST_F(BouncerConfigTest, RejectsBadQueueAddressNamingTheKey) {
  Write("tern.ini", "[bouncer]\nqueue=no-port-here\n");
  absl::StatusOr<BouncerConfig> cfg = LoadBouncerConfig(Dir());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("[bouncer] queue"));
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
  bad.queue = "127.0.0.1:0";
  EXPECT_FALSE(bad.Validate().ok());
}

}  // namespace
}  // namespace tern::bouncer
