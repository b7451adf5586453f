#include "lib/config/config_dir.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace tern::config {
namespace {

class ConfigDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern_config_dir_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }

  std::filesystem::path dir_;
};

TEST_F(ConfigDirTest, LineSkipsCommentsAndBlankLines) {
  Write("me", "# the host name\n\n  mx.example.com  \nignored\n");
  ConfigDir cfg(dir_.string());
  auto me = cfg.Me();
  ASSERT_TRUE(me.ok());
  EXPECT_EQ(*me, "mx.example.com");
}

TEST_F(ConfigDirTest, MissingMeFallsBackToHostName) {
  ConfigDir cfg(dir_.string());
  auto me = cfg.Me();
  ASSERT_TRUE(me.ok());
  EXPECT_FALSE(me->empty());
}

TEST_F(ConfigDirTest, LinesListsEntries) {
  Write("relay_acl_allow", "127.0.0.1/32\n# office\n10.1.0.0/16\n");
  ConfigDir cfg(dir_.string());
  auto lines = cfg.Lines("relay_acl_allow");
  ASSERT_TRUE(lines.ok());
  EXPECT_EQ(*lines, (std::vector<std::string>{"127.0.0.1/32", "10.1.0.0/16"}));
}

TEST_F(ConfigDirTest, MissingTextIsNulloptNotError) {
  ConfigDir cfg(dir_.string());
  auto t = cfg.Text("outbound.bounce_message");
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->has_value());
}

TEST_F(ConfigDirTest, BrokenIniNamesTheFile) {
  Write("outbound.ini", "[main\n");
  ConfigDir cfg(dir_.string());
  auto ini = cfg.Ini("outbound.ini");
  ASSERT_FALSE(ini.ok());
  EXPECT_NE(ini.status().message().find("outbound.ini"), std::string::npos);
}

TEST_F(ConfigDirTest, SearchPathTakesEachFileFromFirstDirectoryThatHasIt) {
  Write("me", "base.example\n");
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:25\n");
  const auto site = dir_ / "site";
  std::filesystem::create_directories(site);
  std::ofstream(site / "smtp.ini") << "[main]\nlisten=0.0.0.0:2525\n";
  ConfigDir cfg(site.string() + ":" + dir_.string());
  auto ini = cfg.Ini("smtp.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_EQ(ini->Get("main", "listen"), "0.0.0.0:2525");
  EXPECT_EQ(*cfg.Me(), "base.example");
  EXPECT_EQ(cfg.PathOf("absent.ini"), (site / "absent.ini").string());
  EXPECT_EQ(cfg.PathOf("/etc/ssl/ca.pem"), "/etc/ssl/ca.pem");
  // Text() reads it from there too.
  auto text = cfg.Text((dir_ / "me").string());
  ASSERT_TRUE(text.ok() && text->has_value());
  EXPECT_EQ(**text, "base.example\n");
}

TEST(ConfigDirCandidates, ListEveryDirectoryInSearchOrderAndAbsoluteNamesAlone) {
  ConfigDir cfg("/etc/tern-site:/etc/tern");
  EXPECT_EQ(cfg.CandidatePaths("tls.ini"), (std::vector<std::string>{"/etc/tern-site/tls.ini", "/etc/tern/tls.ini"}));
  EXPECT_EQ(cfg.CandidatePaths("/var/lib/certs/key.pem"), (std::vector<std::string>{"/var/lib/certs/key.pem"}));
}

}  // namespace
}  // namespace tern::config
