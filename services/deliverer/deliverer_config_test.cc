#include "services/deliverer/deliverer_config.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "lib/config/queue_targets.h"
#include "services/deliverer/test_certs.h"

namespace tern::deliverer {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("deliverer_config_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    Write("me", "mta.example.test\n");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }

  std::filesystem::path dir_;
};

TEST_F(ConfigTest, DefaultsWhenFilesAreMissing) {
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->queues, (std::vector<std::string>{"127.0.0.1:7070"}));
  EXPECT_TRUE(c->dns_servers.empty());
  EXPECT_EQ(c->mx_port, 25);
  EXPECT_EQ(c->lease_batch, 64u);
  EXPECT_EQ(c->call_batch_wait, std::chrono::milliseconds(5));
  EXPECT_EQ(c->concurrency_max, 10000u);
  EXPECT_EQ(c->connect_timeout, std::chrono::seconds(30));
  EXPECT_FALSE(c->local_mx_ok);
  EXPECT_TRUE(c->enable_tls);
  EXPECT_EQ(c->inet_prefer, InetPrefer::kDefault);
  EXPECT_EQ(c->me, "mta.example.test");
  EXPECT_EQ(c->pool_timeout, std::chrono::seconds(50));
  EXPECT_EQ(c->pool_max_messages, 100u);
  EXPECT_EQ(c->destination_connections_max, 32u);
  EXPECT_EQ(c->tls_failure_ttl, std::chrono::seconds(604800));
  EXPECT_EQ(c->host_flags_refresh, std::chrono::seconds(30));
  EXPECT_EQ(c->unreachable_after, 3u);
  EXPECT_EQ(c->unreachable_backoff, std::chrono::seconds(60));
  EXPECT_TRUE(c->mta_sts);
  EXPECT_EQ(c->mta_sts_timeout, std::chrono::seconds(10));
  EXPECT_EQ(c->mta_sts_port, 443);
  EXPECT_TRUE(c->dane);
  EXPECT_TRUE(c->chunking);
  EXPECT_EQ(c->chunking_failure_ttl, std::chrono::seconds(604800));
  EXPECT_EQ(c->dkim_threads, 2u);
  EXPECT_EQ(c->config_watch, std::chrono::milliseconds(2000));
  EXPECT_EQ(c->timeouts.connect, std::chrono::seconds(30));
  EXPECT_EQ(c->timeouts.banner, std::chrono::seconds(30));
  EXPECT_EQ(c->timeouts.rcpt, std::chrono::seconds(30));
  EXPECT_EQ(c->timeouts.final_dot, std::chrono::seconds(600));
  EXPECT_EQ(c->routes.size(), 0u);
  EXPECT_FALSE(c->tls.reject_unauthorized);
}

TEST_F(ConfigTest, StepTimeoutsDefaultToConnectTimeoutAndCanBeSetEach) {
  Write("outbound.ini", "connect_timeout=7\n");
  Write("tern.ini", "[deliverer]\nrcpt_timeout=120\ndot_timeout=900\npool_timeout=0\npool_max_messages=5\n"
                    "tls_failure_ttl=60\nhost_flags_refresh=5\ndestination_connections_max=0\n"
                    "unreachable_after=0\nunreachable_backoff=300\nmta_sts=false\nmta_sts_timeout=3\n"
                    "mta_sts_port=8443\ndane=false\nchunking=false\nchunking_failure_ttl=0\ndkim_threads=0\n"
                    "config_watch_ms=0\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->timeouts.connect, std::chrono::seconds(7));
  EXPECT_EQ(c->timeouts.mail, std::chrono::seconds(7));
  EXPECT_EQ(c->timeouts.rcpt, std::chrono::seconds(120));
  EXPECT_EQ(c->timeouts.final_dot, std::chrono::seconds(900));
  EXPECT_EQ(c->pool_timeout, std::chrono::seconds(0));
  EXPECT_EQ(c->pool_max_messages, 5u);
  EXPECT_EQ(c->destination_connections_max, 0u);
  EXPECT_EQ(c->tls_failure_ttl, std::chrono::seconds(60));
  EXPECT_EQ(c->host_flags_refresh, std::chrono::seconds(5));
  EXPECT_EQ(c->unreachable_after, 0u);
  EXPECT_EQ(c->unreachable_backoff, std::chrono::seconds(300));
  EXPECT_FALSE(c->mta_sts);
  EXPECT_EQ(c->mta_sts_timeout, std::chrono::seconds(3));
  EXPECT_EQ(c->mta_sts_port, 8443);
  EXPECT_FALSE(c->dane);
  EXPECT_FALSE(c->chunking);
  EXPECT_EQ(c->chunking_failure_ttl, std::chrono::seconds(0));
  EXPECT_EQ(c->dkim_threads, 0u);
  EXPECT_EQ(c->config_watch, std::chrono::milliseconds(0));
}

TEST_F(ConfigTest, ReadsRoutesAndTlsPolicy) {
  Write("outbound_routes.ini", "[example.com]\nhost=smart.example.net:587\n");
  Write("tls.ini", "[outbound]\nno_tls_hosts[]=192.0.2.0/24\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_NE(c->routes.Find("example.com"), nullptr);
  EXPECT_TRUE(c->tls.no_tls_hosts.Matches("192.0.2.9", "", ""));

  Write("outbound_routes.ini", "[example.com]\nhost=bad host\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("outbound_routes.ini"), std::string::npos) << c.status();
}

TEST_F(ConfigTest, ContextsBuiltToCheckTheFilesAreKeptForTheWorker) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Write("outbound_routes.ini", absl::StrCat("[example.com]\nhost=smart.example.net\ntls_cert=", certs.cert,
                                            "\ntls_key=", certs.key, "\n[plain.example]\nhost=other.example.net\n"));
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(c->tls.context, nullptr);
  ASSERT_EQ(c->route_tls.size(), 1u);  // only the route with a certificate of its own
  EXPECT_NE(c->route_tls.at("example.com"), nullptr);
  EXPECT_NE(c->route_tls.at("example.com"), c->tls.context);
}

TEST_F(ConfigTest, ARoutesClientCertificateThatCannotBeLoadedStopsTheStart) {
  Write("outbound_routes.ini", "[example.com]\nhost=smart.example.net\ntls_cert=missing.pem\ntls_key=missing.key\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("outbound_routes.ini [example.com] tls_cert: cannot load " +
                                      (dir_ / "missing.pem").string()),
            std::string::npos)
      << c.status();
}

TEST_F(ConfigTest, ReadsHarakasLegacyOneLineOutboundFiles) {
  Write("outbound.ini", "enable_tls=false\n");
  Write("outbound.concurrency_max", "250\n");
  Write("outbound.enable_tls", "1\n");  // turns it on, as in Haraka
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->concurrency_max, 250u);
  EXPECT_TRUE(c->enable_tls);

  Write("outbound.concurrency_max", "0\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find((dir_ / "outbound.concurrency_max").string()), std::string::npos)
      << c.status();
}

TEST_F(ConfigTest, ReadsKeys) {
  Write("tern.ini", "[deliverer]\nqueue=10.0.0.1:7070\ndns_servers=127.0.0.1:5353, 127.0.0.2\nmx_port=2525\n"
                    "lease_batch=8\ncall_batch_wait_ms=0\ndot_timeout=60\nhealth_listen=\n");
  Write("outbound.ini", "concurrency_max=5\nconnect_timeout=3\nlocal_mx_ok=true\ninet_prefer=v6\nenable_tls=false\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->queues, (std::vector<std::string>{"10.0.0.1:7070"}));
  EXPECT_EQ(c->dns_servers, (std::vector<std::string>{"127.0.0.1:5353", "127.0.0.2"}));
  EXPECT_EQ(c->mx_port, 2525);
  EXPECT_EQ(c->lease_batch, 8u);
  EXPECT_EQ(c->call_batch_wait, std::chrono::milliseconds(0));
  EXPECT_EQ(c->dot_timeout, std::chrono::seconds(60));
  EXPECT_EQ(c->health_listen, "");
  EXPECT_EQ(c->concurrency_max, 5u);
  EXPECT_EQ(c->connect_timeout, std::chrono::seconds(3));
  EXPECT_TRUE(c->local_mx_ok);
  EXPECT_FALSE(c->enable_tls);
  EXPECT_EQ(c->inet_prefer, InetPrefer::kV6);
}

TEST_F(ConfigTest, QueueIsOneAddressOrTheListOfEveryShardInOrder) {
  Write("tern.ini", "[deliverer]\nqueue= queue-1.queue:7070, queue-0.queue:7070 ,[::1]:7070,unix:/run/tern/q.sock\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->queues, (std::vector<std::string>{"queue-1.queue:7070", "queue-0.queue:7070", "[::1]:7070",
                                                 "unix:/run/tern/q.sock"}));
}

TEST_F(ConfigTest, ABadQueueListStopsTheStartNamingTheKeyAndTheEntry) {
  struct Case {
    const char* label;
    std::string value;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"empty", "", "no queue address"},
      {"empty entry", "a:7070,,b:7070", "entry 2 is empty"},
      {"twice", "a:7070, a:7070", "\"a:7070\" is listed twice"},
      {"no port", "a:7070,queue", "\"queue\" is not host:port"},
      {"port 0", "queue:0", "\"queue:0\" is not host:port"},
  };
  for (const Case& t : cases) {
    SCOPED_TRACE(t.label);
    Write("tern.ini", absl::StrCat("[deliverer]\nqueue=", t.value, "\n"));
    auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(c.status().message(), absl::StrCat("tern.ini [deliverer] queue: ", t.reason)))
        << c.status();
  }
}

TEST_F(ConfigTest, ValidateChecksAHandBuiltQueueList) {
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  DelivererConfig config = *c;
  config.queues = {"a:7070", "b:7070"};
  EXPECT_TRUE(config.Validate().ok());
  std::vector<std::string> too_many;
  for (size_t i = 0; i <= config::kMaxQueueShards; ++i) {
    too_many.push_back(absl::StrCat("q", i, ":7070"));
  }
  for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
           {}, {"a:7070", "a:7070"}, {"a:7070,b:7070"}, {" a:7070"}, {"a"}, too_many}) {
    SCOPED_TRACE(absl::StrCat(bad.size(), " shards: ", absl::StrJoin(bad, "|").substr(0, 40)));
    config.queues = bad;
    absl::Status s = config.Validate();
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(absl::StartsWith(s.message(), "tern.ini [deliverer] queue: ")) << s;
  }
}

TEST_F(ConfigTest, BadValuesNameTheKey) {
  Write("outbound.ini", "inet_prefer=ipv9\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("inet_prefer"), std::string::npos) << c.status();

  Write("outbound.ini", "");
  Write("tern.ini", "[deliverer]\nmx_port=70000\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("mx_port"), std::string::npos) << c.status();

  Write("tern.ini", "[deliverer]\ncall_batch_wait_ms=5000\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("call_batch_wait_ms"), std::string::npos) << c.status();

  Write("tern.ini", "[deliverer]\ndestination_connections_max=-1\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("destination_connections_max"), std::string::npos) << c.status();

  Write("tern.ini", "[deliverer]\nunreachable_backoff=0\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("unreachable_backoff"), std::string::npos) << c.status();

  for (const char* bad : {"mta_sts=maybe", "mta_sts_timeout=0", "mta_sts_port=70000", "dane=perhaps",
                          "chunking=sometimes", "chunking_failure_ttl=-1", "dkim_threads=65",
                          "dkim_threads=-1", "config_watch_ms=50", "config_watch_ms=-1"}) {
    Write("tern.ini", absl::StrCat("[deliverer]\n", bad, "\n"));
    c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
    ASSERT_FALSE(c.ok()) << bad;
    const std::string key(bad, std::string(bad).find('='));
    EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status();
  }
}

TEST_F(ConfigTest, DkimIsOffByDefaultAndItsErrorsStopLoading) {
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->dkim.enabled);
  Write("dkim.ini", "[sign]\nenabled=true\n[canon]\nbody=fancy\n");
  c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::StrContains(c.status().message(), "dkim.ini")) << c.status();
}

TEST_F(ConfigTest, AReloadNamesWhereTheSettingsOnlyARestartAppliesChanged) {
  Write("tern.ini", "[deliverer]\nmx_port=2525\n[ingest]\nqueue_timeout_ms=1000\n");
  auto running = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(running.ok()) << running.status();
  // Another service's section, and DKIM (which SIGHUP applies): not named.
  Write("tern.ini", "[deliverer]\nmx_port=2525\n[ingest]\nqueue_timeout_ms=2000\n");
  Write("dkim.ini", "[sign]\nenabled=false\nselector=other\n");
  auto loaded = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(KeepRestartOnlySettings(*running, &*loaded).empty());

  // What a reload applies (outbound.ini, routes, tls.ini, step timeouts):
  // not named either.
  Write("tern.ini", "[deliverer]\nmx_port=2525\nrcpt_timeout=77\nchunking=false\n");
  Write("outbound.ini", "local_mx_ok=true\nconcurrency_max=7\nenable_tls=false\n");
  Write("outbound_routes.ini", "[example.com]\nhost=smart.example.net:587\n");
  Write("tls.ini", "[outbound]\nno_tls_hosts[]=192.0.2.0/24\n");
  loaded = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(KeepRestartOnlySettings(*running, &*loaded).empty());

  Write("tern.ini", "[deliverer]\nmx_port=2526\nqueue=127.0.0.1:7079\ndkim_threads=1\nrcpt_timeout=77\n"
                    "chunking=false\n[tlsrpt]\nenabled=true\n");
  Write("me", "other.example\n");
  loaded = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  DelivererConfig next = *loaded;
  EXPECT_EQ(KeepRestartOnlySettings(*running, &next),
            (std::vector<std::string>{"tern.ini [deliverer] queue", "tern.ini [deliverer] mx_port",
                                      "tern.ini [deliverer] dkim_threads", "tern.ini [tlsrpt]", "me"}));

  // A reload runs with the restart-only settings as they run, the rest as
  // loaded.
  EXPECT_TRUE(KeepRestartOnlySettings(*running, &next).empty());
  EXPECT_EQ(next.mx_port, 2525);
  EXPECT_EQ(next.me, running->me);
  EXPECT_EQ(next.concurrency_max, 7u);
  EXPECT_FALSE(next.enable_tls);
  EXPECT_FALSE(next.chunking);
  EXPECT_EQ(next.timeouts.rcpt, std::chrono::seconds(77));
  EXPECT_NE(next.routes.Find("example.com"), nullptr);
}

TEST_F(ConfigTest, KeepingTheRestartOnlySettingsLeavesNoneOfThemDifferent) {
  // Every restart-only setting changed at once: each is named, and none is
  // left as loaded, or a reload would run with a value the log said waits
  // for a restart.
  auto running = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(running.ok()) << running.status();
  Write("tern.ini",
        "[deliverer]\nqueue=127.0.0.1:7079\ndns_servers=127.0.0.1:5353\nmx_port=2526\nlease_batch=3\n"
        "call_batch_wait_ms=9\nhealth_listen=127.0.0.1:7999\nmetrics_listen=\npool_timeout=3\n"
        "pool_max_messages=3\ndestination_connections_max=3\nunreachable_after=9\nmta_sts=false\n"
        "mta_sts_port=8443\ndkim_threads=0\nconfig_watch_ms=0\n[tlsrpt]\nenabled=true\nflush_seconds=3\n");
  Write("hooks.ini", "[main]\naddress=127.0.0.1:7998\n");
  Write("me", "other.example\n");
  auto loaded = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::vector<std::string> named = KeepRestartOnlySettings(*running, &*loaded);
  EXPECT_EQ(named.size(), 15u) << absl::StrJoin(named, ", ");
  EXPECT_TRUE(KeepRestartOnlySettings(*running, &*loaded).empty());
}

}  // namespace
}  // namespace tern::deliverer
