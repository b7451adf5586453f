#include "lib/config/config_watcher.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "lib/metrics/metrics.h"

namespace tern::config {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class ConfigWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tern-config-watch-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Write(const std::string& name, const std::string& text) {
    fs::create_directories(fs::path(dir_ / name).parent_path());
    std::ofstream(dir_ / name) << text;
  }
  uint64_t Print() const { return ConfigWatcher::Fingerprint({dir_.string()}); }

  fs::path dir_;
};

TEST_F(ConfigWatcherTest, FingerprintMovesWithEveryKindOfChangeAndOnlyThen) {
  Write("relay_acl_allow", "127.0.0.1/32\n");
  Write("tls/example.com/cert.pem", "A");
  const uint64_t start = Print();
  EXPECT_EQ(Print(), start);

  Write("relay_acl_allow", "127.0.0.1/32\n10.0.0.0/8\n");  // content
  const uint64_t edited = Print();
  EXPECT_NE(edited, start);

  Write("tls/other.org/cert.pem", "B");  // a new file in a new subdirectory
  const uint64_t added = Print();
  EXPECT_NE(added, edited);

  fs::remove(dir_ / "tls/other.org/cert.pem");  // removed again
  EXPECT_NE(Print(), added);

  // Names starting with "." are not looked at (editor swap files).
  const uint64_t before_swap = Print();
  Write(".relay_acl_allow.swp", "junk");
  EXPECT_EQ(Print(), before_swap);

  // A missing path is a state too: creating it is a change.
  const fs::path absent = dir_ / "absent";
  const uint64_t missing = ConfigWatcher::Fingerprint({absent.string()});
  std::ofstream(absent) << "now";
  EXPECT_NE(ConfigWatcher::Fingerprint({absent.string()}), missing);
}

// How a Kubernetes ConfigMap or Secret volume updates: the files are links
// through `..data`, which is re-pointed at a new directory in one rename.
TEST_F(ConfigWatcherTest, FingerprintFollowsAKubernetesStyleLinkSwap) {
  Write("..2026_11_24_01/tls_cert.pem", "old certificate");
  fs::create_directory_symlink("..2026_11_24_01", dir_ / "..data");
  fs::create_symlink("..data/tls_cert.pem", dir_ / "tls_cert.pem");
  const uint64_t old_cert = Print();

  Write("..2026_11_24_02/tls_cert.pem", "new certificate");  // same size
  EXPECT_EQ(Print(), old_cert);  // written, not yet visible through the links
  fs::create_directory_symlink("..2026_11_24_02", dir_ / "..data_tmp");
  fs::rename(dir_ / "..data_tmp", dir_ / "..data");
  EXPECT_NE(Print(), old_cert);
}

TEST_F(ConfigWatcherTest, ReportsOnceAfterTheFilesStopChanging) {
  Write("smtp.ini", "[main]\n");
  std::atomic<int> calls{0};
  ConfigWatcher watcher({dir_.string()}, 250ms, [&] { ++calls; });
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(calls.load(), 0);  // nothing changed

  // A file rewritten every 10 ms for 700 ms: never still for a whole
  // interval, so no report until the writing stops, then one.
  const auto until = std::chrono::steady_clock::now() + 700ms;
  for (int i = 0; std::chrono::steady_clock::now() < until; ++i) {
    Write("smtp.ini", "[main]\nnodes=" + std::to_string(i) + "\n");
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(calls.load(), 0);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(calls.load(), 1);
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(calls.load(), 1);  // the same state is not reported twice
}

TEST_F(ConfigWatcherTest, WatchesTheNewPathsAfterSetPaths) {
  Write("a/key.pem", "one");
  Write("b/key.pem", "one");
  std::atomic<int> calls{0};
  ConfigWatcher watcher({(dir_ / "a").string()}, 50ms, [&] { ++calls; });
  watcher.SetPaths({(dir_ / "b").string()});
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.load(), 0);  // the switch itself is not a change
  Write("a/key.pem", "two, no longer watched");
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.load(), 0);
  Write("b/key.pem", "two");
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(calls.load(), 1);
}

// What an operator's alert reads: the last reload's result and when the
// config last loaded whole.
TEST(ConfigReloadMetrics, SayWhetherTheLastReloadLoadedAndWhenOneLastDid) {
  auto rendered = [] { return metrics::Registry::Global().Render(); };
  RecordConfigLoaded();
  std::string text = rendered();
  EXPECT_TRUE(absl::StrContains(text, "tern_config_last_reload_successful 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "tern_config_reloads_total{result=\"failed\"} 0\n")) << text;
  EXPECT_FALSE(absl::StrContains(text, "tern_config_last_reload_success_timestamp_seconds 0\n")) << text;

  RecordReload(false);
  text = rendered();
  EXPECT_TRUE(absl::StrContains(text, "tern_config_last_reload_successful 0\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "tern_config_reloads_total{result=\"failed\"} 1\n")) << text;

  RecordReload(true);
  text = rendered();
  EXPECT_TRUE(absl::StrContains(text, "tern_config_last_reload_successful 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "tern_config_reloads_total{result=\"ok\"} 1\n")) << text;
}

}  // namespace
}  // namespace tern::config
