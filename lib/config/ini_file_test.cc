#include "lib/config/ini_file.h"

#include "gtest/gtest.h"

namespace tern::config {
namespace {

TEST(IniFile, KeysBeforeAnySectionBelongToMain) {
  auto ini = IniFile::Parse("disabled=true\n[other]\nx=1\n", "outbound.ini");
  ASSERT_TRUE(ini.ok()) << ini.status();
  EXPECT_EQ(ini->Get("main", "disabled"), "true");
  EXPECT_EQ(ini->Get("other", "x"), "1");
  EXPECT_FALSE(ini->Get("main", "x").has_value());
}

TEST(IniFile, BracketKeysBuildListsInOrder) {
  auto ini = IniFile::Parse("[outbound]\nno_tls_hosts[]=10.0.0.0/8\nno_tls_hosts[]=mx.example.com\n", "tls.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_EQ(ini->GetList("outbound", "no_tls_hosts"),
            (std::vector<std::string>{"10.0.0.0/8", "mx.example.com"}));
  EXPECT_TRUE(ini->Has("outbound", "no_tls_hosts"));
}

TEST(IniFile, PlainValueListSplitsOnCommas) {
  auto ini = IniFile::Parse("listen=127.0.0.1:25, [::1]:25\n", "smtp.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_EQ(ini->GetList("main", "listen"), (std::vector<std::string>{"127.0.0.1:25", "[::1]:25"}));
}

TEST(IniFile, CommentsAreIgnored) {
  auto ini = IniFile::Parse("; comment\n# another\n[main]\nk=v\n", "x.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_EQ(ini->Keys("main"), std::vector<std::string>{"k"});
}

TEST(IniFile, HarakaBooleanWords) {
  auto ini = IniFile::Parse("a=yes\nb=Off\nc=enabled\nd=0\ne=maybe\n", "x.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_TRUE(*ini->GetBool("main", "a", false));
  EXPECT_FALSE(*ini->GetBool("main", "b", true));
  EXPECT_TRUE(*ini->GetBool("main", "c", false));
  EXPECT_FALSE(*ini->GetBool("main", "d", true));
  EXPECT_TRUE(*ini->GetBool("main", "missing", true));
  auto bad = ini->GetBool("main", "e", false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("x.ini: [main] e: 'maybe'"), std::string::npos) << bad.status();
}

TEST(IniFile, BadIntegerNamesFileKeyAndValue) {
  auto ini = IniFile::Parse("[main]\nconcurrency_max=lots\n", "/etc/tern/outbound.ini");
  ASSERT_TRUE(ini.ok());
  auto v = ini->GetInt("main", "concurrency_max", 100);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("/etc/tern/outbound.ini: [main] concurrency_max: 'lots' is not an integer"),
            std::string::npos)
      << v.status();
  EXPECT_EQ(*ini->GetInt("main", "absent", 100), 100);
}

TEST(IniFile, SyntaxErrorReportsLineNumber) {
  auto ini = IniFile::Parse("[main]\nok=1\nthis line has no equals sign\n", "broken.ini");
  ASSERT_FALSE(ini.ok());
  EXPECT_NE(ini.status().message().find("broken.ini:3"), std::string::npos) << ini.status();
}

TEST(IniFile, UnterminatedSectionIsAnError) {
  EXPECT_FALSE(IniFile::Parse("[main\nk=v\n", "x.ini").ok());
}

TEST(IniFile, MissingFileLoadsEmpty) {
  auto ini = IniFile::Load("/nonexistent/dir/none.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_FALSE(ini->HasSection("main"));
}


TEST(IniFile, LongestLineTheReaderTakesIsParsedWhole) {
  const std::string value(198 - 6, 'x');  // "queue=" + value: 198 characters
  auto f = IniFile::Parse("[ingest]\nqueue=" + value + "\nnext=1\n", "tern.ini");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->GetString("ingest", "queue", ""), value);
  EXPECT_EQ(f->GetString("ingest", "next", ""), "1");
}

TEST(IniFile, OverlongLineIsRefusedNotCutIntoPieces) {
  // Without the check inih would return the first 199 bytes as the value
  // and parse the rest as a line of its own: a shard list losing shards.
  std::string shards;
  for (int i = 0; i < 12; ++i) {
    shards += (i ? "," : "") + std::string("queue-") + std::to_string(i) + ".queue-shards:7070";
  }
  auto f = IniFile::Parse("[deliverer]\r\nqueue=" + shards + "\r\n", "tern.ini");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("tern.ini:2: line is"), absl::string_view::npos) << f.status();
  EXPECT_NE(f.status().message().find("more than the 198"), absl::string_view::npos) << f.status();
}

}  // namespace
}  // namespace tern::config
