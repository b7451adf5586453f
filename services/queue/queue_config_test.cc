#include "services/queue/queue_config.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::queue {
namespace {

using ::testing::HasSubstr;

TEST(QueueConfig, ShippedConfigGivesTheDocumentedDefaults) {
  auto cfg = LoadQueueConfig(config::ConfigDir(TERN_SOURCE_DIR "/deploy/config"), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->listen, "127.0.0.1:7070");
  EXPECT_EQ(cfg->metrics_listen, "127.0.0.1:9470");
  EXPECT_EQ(cfg->core.data_dir, "var/queue");
  EXPECT_EQ(cfg->core.lease_seconds, 300);
  EXPECT_EQ(cfg->core.max_lease_seconds, 3600);
  EXPECT_EQ(cfg->core.max_lease_body_bytes, 16u << 20);
  EXPECT_FALSE(cfg->core.disabled);
  EXPECT_FALSE(cfg->core.always_split);
  EXPECT_EQ(cfg->core.retry.intervals_ms(), DefaultTempFailIntervals(13));
  EXPECT_EQ(cfg->core.idempotency_retention_ms, 7 * 86400 * 1000LL);
  EXPECT_EQ(cfg->core.delete_undo_window_ms, 3600 * 1000LL);
  EXPECT_EQ(cfg->core.shaping.defaults().concurrency_max, 0u);
  EXPECT_EQ(cfg->core.wal_prefill_bytes, 64u << 20);
}

class QueueConfigDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("queue_config_test_", getpid(), "_", rd());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }

  std::filesystem::path dir_;
};

TEST_F(QueueConfigDirTest, MissingFilesMeanDefaultsAndTheFlagOverridesDataDir) {
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::string("/srv/q"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.data_dir, "/srv/q");
  EXPECT_EQ(cfg->core.lease_seconds, 300);
}

TEST_F(QueueConfigDirTest, ReadsOutboundKeys) {
  Write("outbound.ini", "[main]\ndisabled=true\nalways_split=yes\ntemp_fail_intervals=1m*2\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->core.disabled);
  EXPECT_TRUE(cfg->core.always_split);
  EXPECT_EQ(cfg->core.retry.intervals_ms(), (std::vector<int64_t>{60000, 60000}));
}

TEST_F(QueueConfigDirTest, AReloadNamesTheChangedSettingsOnlyARestartApplies) {
  Write("tern.ini", "[queue]\nlease_seconds=300\ndestination_concurrency_max=5\n");
  auto running = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(running.ok()) << running.status();
  // What a reload applies (outbound.ini, shaping.ini, the default
  // concurrency) is not named.
  Write("tern.ini", "[queue]\nlease_seconds=300\ndestination_concurrency_max=9\n");
  Write("outbound.ini", "[main]\ntemp_fail_intervals=1m\nalways_split=true\ndisabled=true\n");
  Write("shaping.ini", "[a.example]\nconcurrency_max=2\n");
  auto loaded = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(RestartOnlyChanges(*running, *loaded).empty());
  EXPECT_EQ(loaded->core.shaping.For("a.example").concurrency_max, 2u);
  EXPECT_EQ(loaded->core.shaping.For("b.example").concurrency_max, 9u);

  Write("tern.ini",
        "[queue]\nlease_seconds=120\nlisten=127.0.0.1:7071\nconfig_watch_ms=0\n"
        "[tlsrpt]\nenabled=true\nfrom=tlsrpt@mail.example\n");
  loaded = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->core.lease_seconds, 120);  // applied by a reload: not named
  EXPECT_EQ(RestartOnlyChanges(*running, *loaded),
            (std::vector<std::string>{"tern.ini [queue] listen", "tern.ini [queue] config_watch_ms",
                                      "tern.ini [tlsrpt]"}));
}

TEST_F(QueueConfigDirTest, ConfigWatchDefaultsToTwoSecondsAndRefusesTooShortAPeriod) {
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(2000));
  Write("tern.ini", "[queue]\nconfig_watch_ms=0\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(0));
  Write("tern.ini", "[queue]\nconfig_watch_ms=50\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("[queue] config_watch_ms"));
}

TEST_F(QueueConfigDirTest, ReadsHarakasLegacyOneLineOutboundFiles) {
  // An older Haraka install's config/ keeps these settings in files of their own.
  Write("outbound.disabled", "1\n");
  Write("outbound.temp_fail_intervals", "2m, 10m\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->core.disabled);
  EXPECT_EQ(cfg->core.retry.intervals_ms(), (std::vector<int64_t>{120000, 600000}));

  std::filesystem::remove(dir_ / "outbound.temp_fail_intervals");
  Write("outbound.maxTempFailures", "3\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.retry.intervals_ms(), (std::vector<int64_t>{64000, 128000}));

  Write("outbound.temp_fail_intervals", "2m, soon\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find((dir_ / "outbound.temp_fail_intervals").string()), std::string::npos)
      << cfg.status();
}

TEST_F(QueueConfigDirTest, TheWatcherLooksAtEveryFileAReloadReads) {
  const std::vector<std::string> paths = QueueConfigPaths(config::ConfigDir(dir_.string()));
  for (const char* name : {"tern.ini", "outbound.ini", "shaping.ini", "log.ini", "outbound.disabled",
                           "outbound.temp_fail_intervals", "outbound.maxTempFailures"}) {
    EXPECT_NE(std::find(paths.begin(), paths.end(), (dir_ / name).string()), paths.end()) << name;
  }
}

TEST_F(QueueConfigDirTest, RefusesBadValuesNamingTheKey) {
  Write("tern.ini", "[queue]\nlease_seconds=7200\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("lease_seconds"));

  Write("tern.ini", "[queue]\nmax_lease_body_bytes=lots\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("max_lease_body_bytes"));

  Write("tern.ini", "[queue]\ndestination_concurrency_max=-1\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("destination_concurrency_max"));

  Write("tern.ini", "[queue]\ndestination_concurrency_max=20\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.shaping.defaults().concurrency_max, 20u);

  // shaping.ini refines tern.ini's default per domain and adds rates.
  Write("shaping.ini", "[*]\nrate_max=50/s\n[Slow.Example]\nconcurrency_max=2\nrate_max=600/h\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.shaping.For("other.example").concurrency_max, 20u);
  EXPECT_EQ(cfg->core.shaping.For("other.example").rate.ToString(), "50/s");
  EXPECT_EQ(cfg->core.shaping.For("slow.example").concurrency_max, 2u);
  EXPECT_EQ(cfg->core.shaping.For("slow.example").rate.ToString(), "600/h");
  Write("shaping.ini", "[slow.example]\nrate_max=often\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("shaping.ini: [slow.example] rate_max: 'often'"));
  std::filesystem::remove(dir_ / "shaping.ini");

  Write("tern.ini", "[queue]\nwal_prefill_bytes=-1\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("wal_prefill_bytes"));

  Write("tern.ini", "[queue]\nwal_prefill_bytes=0\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.wal_prefill_bytes, 0u);

  Write("tern.ini", "");
  Write("outbound.ini", "[main]\ntemp_fail_intervals=1w\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(std::string(cfg.status().message()), HasSubstr("temp_fail_intervals: bad item '1w'"));
}

}  // namespace
}  // namespace tern::queue

namespace tern::queue {
namespace {

TEST(QueueConfig, ShippedConfigGivesTheDocumentedDefaultsForWave2Keys) {
  auto cfg = LoadQueueConfig(config::ConfigDir(TERN_SOURCE_DIR "/deploy/config"), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.ambiguous_policy, AmbiguousPolicy::kRedeliver);
  EXPECT_EQ(cfg->core.max_queue_age_ms, 0);
  EXPECT_TRUE(cfg->core.delay_warning_ms.empty());
  EXPECT_EQ(cfg->core.event_retention_ms, 24 * 3600 * 1000LL);
  EXPECT_EQ(cfg->core.event_retention_count, 1000000u);
}

TEST(ParseDurationMs, AcceptsUnitsAndPlainSecondsAndRejectsJunk) {
  EXPECT_EQ(*ParseDurationMs("30s"), 30'000);
  EXPECT_EQ(*ParseDurationMs("90m"), 90 * 60'000);
  EXPECT_EQ(*ParseDurationMs(" 4H "), 4 * 3'600'000);
  EXPECT_EQ(*ParseDurationMs("5d"), 5 * 86'400'000LL);
  EXPECT_EQ(*ParseDurationMs("12"), 12'000);
  EXPECT_EQ(*ParseDurationMs("0"), 0);
  EXPECT_FALSE(ParseDurationMs("").ok());
  EXPECT_FALSE(ParseDurationMs("4w").ok());
  EXPECT_FALSE(ParseDurationMs("-1h").ok());
  EXPECT_FALSE(ParseDurationMs("1.5h").ok());
}

TEST_F(QueueConfigDirTest, IdempotencyRetentionIsADurationAtLeastTheLongestLease) {
  Write("tern.ini", "[queue]\nidempotency_retention=2h\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.idempotency_retention_ms, 2 * 3600 * 1000LL);

  Write("tern.ini", "[queue]\nidempotency_retention=0\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.idempotency_retention_ms, 0);  // forever

  // Shorter than a DSN's lease: the bouncer's retry could send it twice.
  Write("tern.ini", "[queue]\nidempotency_retention=30m\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("idempotency_retention"));

  Write("tern.ini", "[queue]\nidempotency_retention=7 days\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("idempotency_retention"));
}

}  // namespace
}  // namespace tern::queue

namespace tern::queue {
namespace {

TEST_F(QueueConfigDirTest, TlsRptIsOffByDefault) {
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->core.tlsrpt.enabled);
  EXPECT_EQ(cfg->core.tlsrpt.from, "");
}

TEST_F(QueueConfigDirTest, TlsRptDefaultsFollowFrom) {
  Write("tern.ini", "[tlsrpt]\nenabled=true\nfrom=tlsrpt@Mail.Example.com\norganization=\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const TlsRptOptions& t = cfg->core.tlsrpt;
  EXPECT_TRUE(t.enabled);
  EXPECT_EQ(t.from, "tlsrpt@Mail.Example.com");
  EXPECT_EQ(t.organization, "mail.example.com");  // an empty value is the default too
  EXPECT_EQ(t.contact, "tlsrpt@Mail.Example.com");
  EXPECT_EQ(t.submitter, "mail.example.com");
}

TEST_F(QueueConfigDirTest, TlsRptKeysOverrideTheDefaults) {
  Write("tern.ini",
        "[tlsrpt]\nenabled=yes\nfrom=reports@example.net\norganization=Example Ltd\n"
        "contact=https://example.net/tls\nsubmitter=MX.Example.net\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const TlsRptOptions& t = cfg->core.tlsrpt;
  EXPECT_EQ(t.organization, "Example Ltd");
  EXPECT_EQ(t.contact, "https://example.net/tls");
  EXPECT_EQ(t.submitter, "mx.example.net");
}

TEST_F(QueueConfigDirTest, TlsRptEnabledWithoutUsableFromIsAnError) {
  Write("tern.ini", "[tlsrpt]\nenabled=true\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("[tlsrpt] from: required with enabled=true"));

  Write("tern.ini", "[tlsrpt]\nenabled=true\nfrom=not an address\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("[tlsrpt] from: 'not an address'"));

  Write("tern.ini", "[tlsrpt]\nenabled=true\nfrom=a@example.com\nsubmitter=not a domain\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("[tlsrpt] submitter"));

  // RFC 8460 §5.3: the submitter is the contact address's domain.
  Write("tern.ini", "[tlsrpt]\nenabled=true\nfrom=a@mail.example.com\ncontact=ops@example.org\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("[tlsrpt] contact: the domain of 'ops@example.org'"));
  Write("tern.ini", "[tlsrpt]\nenabled=true\nfrom=a@mail.example.com\ncontact=ops@Mail.Example.com\n");
  EXPECT_TRUE(LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt).ok());

  // Off, nothing is needed (the counts are only purged).
  Write("tern.ini", "[tlsrpt]\nenabled=false\n");
  EXPECT_TRUE(LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt).ok());

  Write("tern.ini", "[tlsrpt]\nenabled=maybe\nfrom=a@example.com\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("enabled"));
}

TEST_F(QueueConfigDirTest, DeleteUndoWindowIsADurationAndZeroTurnsItOff) {
  Write("tern.ini", "[queue]\ndelete_undo_window=1d\n");
  auto cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.delete_undo_window_ms, 86400 * 1000LL);

  Write("tern.ini", "[queue]\ndelete_undo_window=0\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->core.delete_undo_window_ms, 0);

  Write("tern.ini", "[queue]\ndelete_undo_window=an hour\n");
  cfg = LoadQueueConfig(config::ConfigDir(dir_.string()), std::nullopt);
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(), HasSubstr("delete_undo_window"));
}

}  // namespace
}  // namespace tern::queue
