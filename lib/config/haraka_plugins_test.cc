#include "lib/config/haraka_plugins.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace tern::config {
namespace {

TEST(HarakaPlugins, SaysWhichPluginsTernDoesAndWhichItDoesNotRun) {
  const HarakaPlugins p = ClassifyHarakaPlugins(
      {"relay", "auth/flat_file", "tls", "haraka-plugin-dkim", "queue/smtp_forward", "spamassassin", "dnsbl",
       "rcpt_to.in_host_list", "  max_unrecognized_commands  "});
  EXPECT_EQ(p.handled, (std::vector<std::string>{"relay", "auth/flat_file", "tls", "haraka-plugin-dkim",
                                                 "queue/smtp_forward", "max_unrecognized_commands"}));
  EXPECT_EQ(p.not_run, (std::vector<std::string>{"spamassassin", "dnsbl", "rcpt_to.in_host_list"}));
}

TEST(HarakaPlugins, ReadsThePluginsFileSkippingComments) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("haraka_plugins_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "plugins") << "# the list\nrelay\n\n# spamassassin\nclamd\n";
  auto p = ReadHarakaPlugins(ConfigDir(dir.string()));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->handled, std::vector<std::string>{"relay"});
  EXPECT_EQ(p->not_run, std::vector<std::string>{"clamd"});
  auto listed = HarakaPluginListed(ConfigDir(dir.string()), {"queue/smtp_forward", "clamd"});
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(*listed);
  listed = HarakaPluginListed(ConfigDir(dir.string()), {"spamassassin"});  // commented out
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_FALSE(*listed);
  std::filesystem::remove(dir / "plugins");
  p = ReadHarakaPlugins(ConfigDir(dir.string()));  // no file: nothing to say
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->handled.empty() && p->not_run.empty());
  listed = HarakaPluginListed(ConfigDir(dir.string()), {"relay"});
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_FALSE(*listed);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern::config
