#include "lib/hooks/hooks_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "lib/config/config_dir.h"
#include "lib/metrics/metrics.h"

namespace tern::hooks {
namespace {

class HooksConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern_hooks_config_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  absl::StatusOr<HooksConfig> Load() { return LoadHooksConfig(config::ConfigDir(dir_.string())); }

  std::filesystem::path dir_;
};

TEST_F(HooksConfigTest, NoFileMeansNoHooks) {
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->Any());
  EXPECT_FALSE(cfg->Calls(Hook::kGetMx));
  EXPECT_EQ(cfg->timeout, std::chrono::milliseconds(30000));
}

TEST_F(HooksConfigTest, AnAddressAloneCallsEveryHook) {
  Write("hooks.ini", "[main]\naddress=127.0.0.1:7000\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  for (Hook h : {Hook::kQueueOutbound, Hook::kSendEmail, Hook::kGetMx, Hook::kDeferred, Hook::kBounce,
                 Hook::kDelivered}) {
    EXPECT_TRUE(cfg->Calls(h)) << HookName(h);
  }
}

TEST_F(HooksConfigTest, HooksListSelectsSomeAndIgnoresCase) {
  Write("hooks.ini", "[main]\naddress=127.0.0.1:7000\nhooks=get_mx, Bounce\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->Calls(Hook::kGetMx));
  EXPECT_TRUE(cfg->Calls(Hook::kBounce));
  EXPECT_FALSE(cfg->Calls(Hook::kQueueOutbound));
  EXPECT_FALSE(cfg->Calls(Hook::kDelivered));
}

TEST_F(HooksConfigTest, ListedHooksWithoutAnAddressAreNotCalled) {
  Write("hooks.ini", "[main]\nhooks=*\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->Calls(Hook::kGetMx));
}

TEST_F(HooksConfigTest, TimeoutComesFromPluginTimeoutUnlessSet) {
  Write("hooks.ini", "[main]\naddress=127.0.0.1:7000\n");
  Write("plugin_timeout", "5\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->timeout, std::chrono::milliseconds(5000));
  Write("hooks.ini", "[main]\naddress=127.0.0.1:7000\ntimeout_ms=250\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->timeout, std::chrono::milliseconds(250));
}

TEST_F(HooksConfigTest, BadValuesNameFileAndKey) {
  struct Case {
    const char* file;
    const char* text;
    const char* expect;
  };
  for (const Case& c : {
           Case{"hooks.ini", "[main]\naddress=x:1\nhooks=get_mx,queue\n", "unknown hook 'queue'"},
           Case{"hooks.ini", "[main]\naddress=x:1\ntimeout_ms=0\n", "timeout_ms"},
           Case{"hooks.ini", "[main]\naddres=x:1\n", "addres"},
           Case{"hooks.ini", "[hooks]\naddress=x:1\n", "unknown section"},
           Case{"hooks.ini", "[main]\naddress=x:1\ntls_ca=missing.pem\n", "tls=false"},
           Case{"hooks.ini", "[main]\naddress=x:1\ntls=true\ntls_ca=missing.pem\n", "missing.pem"},
           Case{"plugin_timeout", "soon\n", "plugin_timeout"},
       }) {
    std::filesystem::remove(dir_ / "hooks.ini");
    std::filesystem::remove(dir_ / "plugin_timeout");
    Write(c.file, c.text);
    auto cfg = Load();
    ASSERT_FALSE(cfg.ok()) << c.text;
    EXPECT_NE(cfg.status().message().find(c.expect), std::string::npos) << cfg.status();
  }
}

TEST_F(HooksConfigTest, FailuresAreCountedPerHook) {
  LogHookFailure(Hook::kGetMx, "d1", absl::DeadlineExceededError("deadline"), "DNS");
  RecordHookCall(Hook::kGetMx, HookResult::kApplied);
  const std::string text = metrics::Registry::Global().Render();
  EXPECT_NE(text.find("tern_hook_calls_total{hook=\"get_mx\",result=\"failed\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_hook_calls_total{hook=\"get_mx\",result=\"applied\"} 1"), std::string::npos);
}

TEST(CleanHookTextTest, ControlCharactersCannotStartASecondReplyLine) {
  EXPECT_EQ(CleanHookText("  no thanks\r\n250 ok\tnow\x7f "), "no thanks  250 ok now");
}

TEST(CleanHookTextTest, LongTextIsCutAtACharacterBoundary) {
  // "é" is two bytes: a cut at 5 bytes would split the third one.
  EXPECT_EQ(CleanHookText("\xc3\xa9\xc3\xa9\xc3\xa9", 5), "\xc3\xa9\xc3\xa9");
  EXPECT_EQ(CleanHookText(std::string(1000, 'x')).size(), 400u);
}

}  // namespace
}  // namespace tern::hooks
