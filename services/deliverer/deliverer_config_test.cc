#include "services/deliverer/deliverer_config.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

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
  EXPECT_EQ(c->queue, "127.0.0.1:7070");
  EXPECT_TRUE(c->dns_servers.empty());
  EXPECT_EQ(c->mx_port, 25);
  EXPECT_EQ(c->lease_batch, 64u);
  EXPECT_EQ(c->concurrency_max, 10000u);
  EXPECT_EQ(c->connect_timeout, std::chrono::seconds(30));
  EXPECT_FALSE(c->local_mx_ok);
  EXPECT_TRUE(c->enable_tls);
  EXPECT_EQ(c->inet_prefer, InetPrefer::kDefault);
  EXPECT_EQ(c->me, "mta.example.test");
}

TEST_F(ConfigTest, ReadsKeys) {
  Write("tern.ini", "[deliverer]\nqueue=10.0.0.1:7070\ndns_servers=127.0.0.1:5353, 127.0.0.2\nmx_port=2525\n"
                    "lease_batch=8\ndot_timeout=60\nhealth_listen=\n");
  Write("outbound.ini", "concurrency_max=5\nconnect_timeout=3\nlocal_mx_ok=true\ninet_prefer=v6\nenable_tls=false\n");
  auto c = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->queue, "10.0.0.1:7070");
  EXPECT_EQ(c->dns_servers, (std::vector<std::string>{"127.0.0.1:5353", "127.0.0.2"}));
  EXPECT_EQ(c->mx_port, 2525);
  EXPECT_EQ(c->lease_batch, 8u);
  EXPECT_EQ(c->dot_timeout, std::chrono::seconds(60));
  EXPECT_EQ(c->health_listen, "");
  EXPECT_EQ(c->concurrency_max, 5u);
  EXPECT_EQ(c->connect_timeout, std::chrono::seconds(3));
  EXPECT_TRUE(c->local_mx_ok);
  EXPECT_FALSE(c->enable_tls);
  EXPECT_EQ(c->inet_prefer, InetPrefer::kV6);
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
}

}  // namespace
}  // namespace tern::deliverer
