#include "lib/config/outbound_ini.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::config {
namespace {

using ::testing::HasSubstr;

class OutboundIniTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern_outbound_ini_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  absl::StatusOr<IniFile> Load() { return LoadOutboundIni(ConfigDir(dir_.string())); }

  std::filesystem::path dir_;
};

TEST_F(OutboundIniTest, LegacyFilesFillInWhatOutboundIniDoesNotSet) {
  Write("outbound.concurrency_max", "# per worker\n\n 250 \n");
  Write("outbound.temp_fail_intervals", "1m, 5m*2\n");
  Write("outbound.maxTempFailures", "7\n");
  Write("outbound.received_header", "Example outbound\n");
  auto ini = Load();
  ASSERT_TRUE(ini.ok()) << ini.status();
  EXPECT_EQ(ini->GetInt("main", "concurrency_max", 10000).value(), 250);
  EXPECT_EQ(ini->GetString("main", "temp_fail_intervals", ""), "1m, 5m*2");
  EXPECT_EQ(ini->GetInt("main", "maxTempFailures", 13).value(), 7);
  EXPECT_EQ(ini->GetString("main", "received_header", ""), "Example outbound");
}

TEST_F(OutboundIniTest, OutboundIniWinsWhereItSetsTheKey) {
  Write("outbound.ini", "concurrency_max=100\nmaxTempFailures=0\ntemp_fail_intervals=\nreceived_header=Ini\n");
  Write("outbound.concurrency_max", "250\n");
  Write("outbound.maxTempFailures", "7\n");
  Write("outbound.temp_fail_intervals", "1h\n");  // the ini's empty value counts as unset
  Write("outbound.received_header", "Legacy\n");
  auto ini = Load();
  ASSERT_TRUE(ini.ok()) << ini.status();
  EXPECT_EQ(ini->GetInt("main", "concurrency_max", 10000).value(), 100);
  // Haraka would take 7 here (0 is falsy to it); the ini's 0 is kept.
  EXPECT_EQ(ini->GetInt("main", "maxTempFailures", 13).value(), 0);
  EXPECT_EQ(ini->GetString("main", "temp_fail_intervals", ""), "1h");
  EXPECT_EQ(ini->GetString("main", "received_header", ""), "Ini");
}

TEST_F(OutboundIniTest, LegacyBooleanCanOnlyTurnTheSettingOn) {
  Write("outbound.ini", "disabled=false\nenable_tls=false\n");
  Write("outbound.disabled", "1\n");
  Write("outbound.enable_tls", "yes\n");
  auto on = Load();
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->GetBool("main", "disabled", false).value());
  EXPECT_TRUE(on->GetBool("main", "enable_tls", true).value());

  Write("outbound.ini", "disabled=true\n");
  Write("outbound.disabled", "0\n");
  Write("outbound.enable_tls", "false\n");
  auto off = Load();
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_TRUE(off->GetBool("main", "disabled", false).value());
  // Unset in outbound.ini: its default (true) stands; the legacy false does
  // not turn it off.
  EXPECT_FALSE(off->Has("main", "enable_tls"));
}

TEST_F(OutboundIniTest, BadLegacyBooleanNamesItsFile) {
  Write("outbound.disabled", "perhaps\n");
  auto ini = Load();
  ASSERT_FALSE(ini.ok());
  EXPECT_THAT(ini.status().message(), HasSubstr((dir_ / "outbound.disabled").string()));
  EXPECT_THAT(ini.status().message(), HasSubstr("'perhaps' is not a boolean"));
}

TEST_F(OutboundIniTest, ErrorAboutALegacyValueNamesItsFile) {
  Write("outbound.concurrency_max", "lots\n");
  auto ini = Load();
  ASSERT_TRUE(ini.ok()) << ini.status();
  auto conc = ini->GetInt("main", "concurrency_max", 10000);
  ASSERT_FALSE(conc.ok());
  EXPECT_THAT(conc.status().message(), HasSubstr((dir_ / "outbound.concurrency_max").string()));
  EXPECT_THAT(conc.status().message(), HasSubstr("[main] concurrency_max"));
  EXPECT_THAT(conc.status().message(), HasSubstr("'lots' is not an integer"));
}

TEST_F(OutboundIniTest, WatchPathsCoverTheLegacyFiles) {
  const std::vector<std::string> paths = OutboundIniWatchPaths(ConfigDir(dir_.string()));
  for (const char* name : {"outbound.ini", "outbound.disabled", "outbound.enable_tls", "outbound.temp_fail_intervals",
                           "outbound.maxTempFailures", "outbound.concurrency_max", "outbound.received_header"}) {
    EXPECT_NE(std::find(paths.begin(), paths.end(), (dir_ / name).string()), paths.end()) << name;
  }
}

}  // namespace
}  // namespace tern::config
