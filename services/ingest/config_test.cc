#include "services/ingest/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

class ConfigDirFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("ingest_config_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Write("me", "mx.test\n");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  absl::StatusOr<IngestConfig> Load() { return LoadIngestConfig(config::ConfigDir(dir_.string())); }

  std::filesystem::path dir_;
};

TEST_F(ConfigDirFixture, DefaultsWhenFilesAreMissing) {
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->listen.size(), 1u);
  EXPECT_EQ(cfg->listen[0].ToString(), "127.0.0.1:2525");
  EXPECT_EQ(cfg->me, "mx.test");
  EXPECT_EQ(cfg->max_bytes, 26214400u);
  EXPECT_EQ(cfg->max_line_length, 512u);
  EXPECT_EQ(cfg->max_data_line_length, 992u);
  EXPECT_EQ(cfg->inactivity_timeout, std::chrono::seconds(300));
  EXPECT_EQ(cfg->queues, std::vector<std::string>{"127.0.0.1:7070"});
  EXPECT_EQ(cfg->queue_timeout, std::chrono::milliseconds(30000));
  EXPECT_EQ(cfg->health_listen, "127.0.0.1:7071");
  EXPECT_EQ(cfg->metrics_listen, "127.0.0.1:9471");
  EXPECT_TRUE(cfg->relay_acl.Allows("127.0.0.1"));
  EXPECT_TRUE(cfg->relay_acl.Allows("::1"));
  EXPECT_FALSE(cfg->relay_acl.Allows("192.0.2.1"));
  EXPECT_EQ(cfg->io_threads, 1u);
}

TEST(IngestConfig, ShippedConfigGivesTheDocumentedDefaults) {
  auto cfg = LoadIngestConfig(config::ConfigDir(TERN_SOURCE_DIR "/deploy/config"));
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->listen.size(), 1u);
  EXPECT_EQ(cfg->listen[0].ToString(), "127.0.0.1:2525");
  EXPECT_EQ(cfg->inactivity_timeout, std::chrono::seconds(300));
  EXPECT_EQ(cfg->shutdown_timeout, std::chrono::seconds(30));
  EXPECT_EQ(cfg->io_threads, 1u);
  EXPECT_EQ(cfg->max_bytes, 26214400u);
}

TEST_F(ConfigDirFixture, NodesSetsTheSessionThreads) {
  Write("smtp.ini", "[main]\nnodes=4\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->io_threads, 4u);
  Write("smtp.ini", "[main]\nnodes=cpus\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->io_threads, std::max(1u, std::thread::hardware_concurrency()));
}

TEST_F(ConfigDirFixture, ReadsEveryKey) {
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:25, [::1]:587\ninactivity_timeout=60\n");
  Write("connection.ini", "[max]\nbytes=1048576\nline_length=1000\ndata_line_length=500\n");
  Write("tern.ini", "[ingest]\nqueue=10.0.0.5:7070, 10.0.0.6:7070\nqueue_timeout_ms=1500\nhealth_listen=\nmetrics_listen=\n");
  Write("relay_acl_allow", "192.0.2.0/24\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->listen.size(), 2u);
  EXPECT_EQ(cfg->listen[1].host, "::1");
  EXPECT_EQ(cfg->listen[1].port, 587);
  EXPECT_EQ(cfg->listen[1].ToString(), "[::1]:587");
  EXPECT_EQ(cfg->inactivity_timeout, std::chrono::seconds(60));
  EXPECT_EQ(cfg->max_bytes, 1048576u);
  EXPECT_EQ(cfg->max_line_length, 1000u);
  EXPECT_EQ(cfg->max_data_line_length, 500u);
  EXPECT_EQ(cfg->queues, (std::vector<std::string>{"10.0.0.5:7070", "10.0.0.6:7070"}));
  EXPECT_EQ(cfg->queue_timeout, std::chrono::milliseconds(1500));
  EXPECT_TRUE(cfg->health_listen.empty());
  EXPECT_TRUE(cfg->metrics_listen.empty());
  EXPECT_TRUE(cfg->relay_acl.Allows("192.0.2.7"));
  EXPECT_FALSE(cfg->relay_acl.Allows("127.0.0.1"));  // the file replaces the default
}

TEST_F(ConfigDirFixture, LegacyListenHostAndPortArePrepended) {
  Write("smtp.ini", "[main]\nlisten_host=127.0.0.1\nport=2626\nlisten=127.0.0.1:2525\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->listen.size(), 2u);
  EXPECT_EQ(cfg->listen[0].ToString(), "127.0.0.1:2626");
}

TEST_F(ConfigDirFixture, BadValuesNameTheFileAndKey) {
  struct Case {
    const char* label;
    const char* file;
    const char* text;
    const char* expect;
  };
  const Case cases[] = {
      {"listen hostname", "smtp.ini", "[main]\nlisten=mail.example:25\n", "listen"},
      {"listen no port", "smtp.ini", "[main]\nlisten=127.0.0.1\n", "listen"},
      {"listen bad port", "smtp.ini", "[main]\nlisten=127.0.0.1:70000\n", "listen"},
      {"listen unclosed v6", "smtp.ini", "[main]\nlisten=[::1:25\n", "listen"},
      {"inactivity zero", "smtp.ini", "[main]\ninactivity_timeout=0\n", "inactivity_timeout"},
      {"nodes zero", "smtp.ini", "[main]\nnodes=0\n", "nodes"},
      {"nodes text", "smtp.ini", "[main]\nnodes=many\n", "nodes"},
      {"bytes text", "connection.ini", "[max]\nbytes=big\n", "bytes"},
      {"line_length small", "connection.ini", "[max]\nline_length=100\n", "line_length"},
      {"data_line_length small", "connection.ini", "[max]\ndata_line_length=10\n", "data_line_length"},
      {"queue timeout negative", "tern.ini", "[ingest]\nqueue_timeout_ms=-5\n", "queue_timeout_ms"},
      {"queue shard twice", "tern.ini", "[ingest]\nqueue=q:7070,q:7070\n", "queue: \"q:7070\" is listed twice"},
      {"queue empty entry", "tern.ini", "[ingest]\nqueue=q:7070,\n", "queue: entry 2 is empty"},
      {"acl bad line", "relay_acl_allow", "127.0.0.1/32\nbogus\n", "relay_acl_allow:2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    for (const char* f : {"smtp.ini", "connection.ini", "tern.ini", "relay_acl_allow"}) {
      std::filesystem::remove(dir_ / f);
    }
    Write(c.file, c.text);
    auto cfg = Load();
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find(c.expect), absl::string_view::npos) << cfg.status();
    if (std::string(c.file) != "relay_acl_allow") {
      EXPECT_NE(cfg.status().message().find(c.file), absl::string_view::npos) << cfg.status();
    }
  }
}

TEST_F(ConfigDirFixture, ReadsHarakasTlsDirectoryOfBundles) {
  std::filesystem::create_directories(dir_ / "tls" / "old");
  Write("tls/b.example.pem", "bundle");
  Write("tls/a.example.pem", "bundle");
  Write("tls/.hidden.pem", "editor swap file");
  Write("tls/old/c.example.pem", "not read: a subdirectory");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  // TLS is on with bundles alone (no tls_key.pem / tls_cert.pem).
  EXPECT_TRUE(cfg->tls_enabled());
  EXPECT_TRUE(cfg->tls_cert_file.empty());
  EXPECT_EQ(cfg->tls_sni_bundles,
            (std::vector<std::string>{(dir_ / "tls" / "a.example.pem").string(),
                                      (dir_ / "tls" / "b.example.pem").string()}));
}

TEST(ParseListenList, ParsesIpv4AndIpv6) {
  auto list = ParseListenList("127.0.0.1:25,[::]:0");
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[1].host, "::");
  EXPECT_EQ((*list)[1].port, 0);
  EXPECT_FALSE(ParseListenList("").ok());
  EXPECT_FALSE(ParseListenList("[::1]25").ok());
}

TEST_F(ConfigDirFixture, ReadsWave2KeysWithHarakaDefaults) {
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->tls_enabled());
  EXPECT_FALSE(cfg->auth.enabled());
  EXPECT_TRUE(cfg->haproxy_enabled);
  EXPECT_TRUE(cfg->haproxy_hosts.empty());
  EXPECT_TRUE(cfg->add_received);
  EXPECT_TRUE(cfg->clean_auth_results);
  EXPECT_EQ(cfg->max_header_lines, 1000u);
  EXPECT_EQ(cfg->max_received, 100u);
  EXPECT_EQ(cfg->max_recipients, 1000u);
  EXPECT_EQ(cfg->shutdown_timeout, std::chrono::seconds(30));

  Write("smtp.ini", "[main]\nlisten=127.0.0.1:2525,127.0.0.1:4650\nsmtps_port=4650\nforce_shutdown_timeout=5\n");
  Write("connection.ini",
        "[max]\nrecipients=50\nconnections=10\nconnections_per_ip=3\n"
        "[headers]\nadd_received=false\nclean_auth_results=false\nmax_lines=200\nmax_received=20\n"
        "[haproxy]\nhosts[]=192.0.2.4\nhosts[]=2001:db8::/64\n");
  Write("tls_key.pem", "key");
  Write("tls_cert.pem", "cert");
  Write("auth_flat_file.ini", "[core]\nmethods=PLAIN\n[users]\nalice=x\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->listen[0].implicit_tls);
  EXPECT_TRUE(cfg->listen[1].implicit_tls);
  EXPECT_TRUE(cfg->tls_enabled());
  EXPECT_EQ(cfg->tls_cert_file, (dir_ / "tls_cert.pem").string());
  EXPECT_EQ(cfg->max_recipients, 50u);
  EXPECT_EQ(cfg->max_connections, 10u);
  EXPECT_EQ(cfg->max_connections_per_ip, 3u);
  EXPECT_FALSE(cfg->add_received);
  EXPECT_FALSE(cfg->clean_auth_results);
  EXPECT_EQ(cfg->max_header_lines, 200u);
  EXPECT_EQ(cfg->max_received, 20u);
  ASSERT_EQ(cfg->haproxy_hosts.size(), 2u);
  EXPECT_TRUE(cfg->auth.enabled());
  EXPECT_EQ(cfg->auth.methods, std::vector<std::string>{"PLAIN"});
  EXPECT_EQ(cfg->shutdown_timeout, std::chrono::seconds(5));
}

TEST_F(ConfigDirFixture, SmtpsWithoutCertificateOrHalfACertificateIsAnError) {
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:465\n");
  EXPECT_FALSE(Load().ok());
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:2525\n");
  Write("tls_cert.pem", "cert");
  auto cfg = Load();
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find("tls.ini"), std::string::npos) << cfg.status();
  Write("tls.ini", "[main]\nkey=missing.pem\ncert=tls_cert.pem\n");
  EXPECT_FALSE(Load().ok());
  Write("connection.ini", "[haproxy]\nhosts[]=not-an-ip\n");
  EXPECT_FALSE(Load().ok());
}

}  // namespace
}  // namespace tern::ingest
