#include "lib/config/logging_setup.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/common/log.h"

namespace tern::config {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class LoggingSetupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern_logging_setup_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::filesystem::remove_all(dir_);
    log::Init("tern", log::Level::kInfo, log::Format::kDefault);
  }
  void Write(const std::string& text) { std::ofstream(dir_ / "log.ini") << text; }
  // What ReloadLogging wrote to stderr.
  std::string Reload() {
    ::testing::internal::CaptureStderr();
    ReloadLogging(ConfigDir(dir_.string()), "queue");
    return ::testing::internal::GetCapturedStderr();
  }

  std::filesystem::path dir_;
};

TEST_F(LoggingSetupTest, AReloadAppliesANewLevelAndFormatAndSaysSo) {
  Write("[main]\nlevel=info\n");
  ASSERT_TRUE(InitLogging(ConfigDir(dir_.string()), "queue").ok());
  EXPECT_FALSE(log::Enabled(log::Level::kDebug));

  Write("[main]\nlevel=debug\nformat=json\n");
  const std::string out = Reload();
  EXPECT_TRUE(log::Enabled(log::Level::kDebug));
  EXPECT_EQ(log::CurrentFormat(), log::Format::kJson);
  EXPECT_THAT(out, HasSubstr(R"("event":"log_settings_changed","file":"log.ini","level":"debug","format":"json")"));

  // Nothing changed: nothing said.
  EXPECT_EQ(Reload(), "");
}

TEST_F(LoggingSetupTest, ABrokenLogIniOnReloadKeepsTheRunningSettings) {
  Write("[main]\nlevel=warn\n");
  ASSERT_TRUE(InitLogging(ConfigDir(dir_.string()), "queue").ok());

  Write("[main]\nlevel=chatty\n");
  const std::string out = Reload();
  EXPECT_EQ(log::CurrentLevel(), log::Level::kWarn);
  EXPECT_THAT(out, HasSubstr("reload_failed"));
  EXPECT_THAT(out, HasSubstr("[main] level"));
  EXPECT_THAT(out, HasSubstr("chatty"));
  EXPECT_THAT(out, Not(HasSubstr("log_settings_changed")));
}

TEST_F(LoggingSetupTest, ABadLogIniStopsTheStartNamingTheKey) {
  Write("[main]\nformat=xml\n");
  absl::Status s = InitLogging(ConfigDir(dir_.string()), "queue");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("log.ini: [main] format"));
}

}  // namespace
}  // namespace tern::config
