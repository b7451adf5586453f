#include "services/ingest/config.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

// A fresh P-256 key and a self-signed certificate for it, as PEM text, made
// with OpenSSL's API (nothing secret is checked in).
struct PemPair {
  std::string key;
  std::string cert;
};
PemPair MakeCertificate(const std::string& cn, const std::string& san = "") {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> x509(X509_new(), X509_free);
  X509_set_version(x509.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x509.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x509.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x509.get()), 86400);
  X509_set_pubkey(x509.get(), key.get());
  X509_NAME* name = X509_get_subject_name(x509.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x509.get(), name);
  if (!san.empty()) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, san.c_str());
    X509_add_ext(x509.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(x509.get(), key.get(), EVP_sha256());
  auto to_pem = [](auto write) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    write(bio.get());
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<size_t>(len));
  };
  PemPair out;
  out.key = to_pem([&](BIO* bio) { PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr, nullptr); });
  out.cert = to_pem([&](BIO* bio) { PEM_write_bio_X509(bio, x509.get()); });
  return out;
}

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
  EXPECT_EQ(cfg->relay_clientcerts.size(), 0u);
  EXPECT_EQ(cfg->io_threads, 1u);
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(2000));
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
  EXPECT_TRUE(cfg->tls_request_cert);
  EXPECT_FALSE(cfg->tls_reject_unauthorized);
  EXPECT_TRUE(cfg->tls_require_authorized.empty());
  EXPECT_TRUE(cfg->tls_ca_file.empty());
  EXPECT_EQ(cfg->relay_clientcerts.size(), 0u);  // the shipped file is all comments
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(2000));
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
  Write("tern.ini",
        "[ingest]\nqueue=10.0.0.5:7070, 10.0.0.6:7070\nqueue_timeout_ms=1500\nhealth_listen=\nmetrics_listen=\n"
        "config_watch_ms=0\n");
  Write("relay_acl_allow", "192.0.2.0/24\n");
  Write("relay_clientcerts", std::string(64, 'a') + "\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->relay_clientcerts.size(), 1u);
  EXPECT_TRUE(cfg->relay_clientcerts.Allows(std::string(64, 'a'), ""));
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
  EXPECT_EQ(cfg->config_watch, std::chrono::milliseconds(0));
  EXPECT_TRUE(cfg->relay_acl.Allows("192.0.2.7"));
  EXPECT_FALSE(cfg->relay_acl.Allows("127.0.0.1"));  // the file replaces the default
}

TEST_F(ConfigDirFixture, ConfigWatchIsOffOrAtLeastATenthOfASecond) {
  Write("tern.ini", "[ingest]\nconfig_watch_ms=50\n");
  auto cfg = Load();
  ASSERT_FALSE(cfg.ok());
  EXPECT_TRUE(absl::StrContains(cfg.status().message(), "config_watch_ms")) << cfg.status();
}

// The files a change of which reloads ingest: those it reads, in every
// directory of a search path, and key files named from outside it.
TEST(IngestConfig, WatchedPathsCoverEveryFileIngestReads) {
  IngestConfig cfg;
  cfg.tls_key_file = "/etc/letsencrypt/live/mx/privkey.pem";
  cfg.tls_cert_file = "/etc/letsencrypt/live/mx/fullchain.pem";
  const std::vector<std::string> paths = WatchedPaths(config::ConfigDir("/site:/base"), cfg);
  for (const char* want : {"/site/relay_acl_allow", "/base/relay_acl_allow", "/site/tls", "/base/tls.ini",
                           "/base/auth_flat_file.ini", "/site/relay_clientcerts", "/base/me", "/base/smtp.ini",
                           "/base/connection.ini", "/base/tern.ini", "/site/tls_cert.pem", "/base/tls_key.pem",
                           "/etc/letsencrypt/live/mx/privkey.pem",
                           "/etc/letsencrypt/live/mx/fullchain.pem", "/base/outbound.ini",
                           "/site/outbound.received_header", "/base/log.ini", "/base/hooks.ini"}) {
    EXPECT_NE(std::find(paths.begin(), paths.end(), want), paths.end()) << want;
  }
  // Files only other services read are not watched.
  EXPECT_EQ(std::find(paths.begin(), paths.end(), "/base/shaping.ini"), paths.end());
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
      {"client cert bad line", "relay_clientcerts", "# sha1\nab:cd\n", "relay_clientcerts:2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    for (const char* f : {"smtp.ini", "connection.ini", "tern.ini", "relay_acl_allow", "relay_clientcerts"}) {
      std::filesystem::remove(dir_ / f);
    }
    Write(c.file, c.text);
    auto cfg = Load();
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find(c.expect), absl::string_view::npos) << cfg.status();
    if (std::string(c.file) != "relay_acl_allow" && std::string(c.file) != "relay_clientcerts") {
      EXPECT_NE(cfg.status().message().find(c.file), absl::string_view::npos) << cfg.status();
    }
  }
}

// Changed with subdirectory support: subdirectories are read now, and the
// files are parsed at load (to pair keys with certificates), so the test
// writes real PEM instead of placeholder text.
TEST_F(ConfigDirFixture, ReadsHarakasTlsDirectoryOfBundles) {
  std::filesystem::create_directories(dir_ / "tls" / "old");
  const PemPair a = MakeCertificate("a.example");
  const PemPair b = MakeCertificate("b.example");
  const PemPair c = MakeCertificate("c.example");
  Write("tls/b.example.pem", b.key + b.cert);
  Write("tls/a.example.pem", a.cert + a.key);  // either order
  Write("tls/.hidden.pem", "editor swap file");
  Write("tls/old/c.example.pem", c.key + c.cert);
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  // TLS is on with bundles alone (no tls_key.pem / tls_cert.pem).
  EXPECT_TRUE(cfg->tls_enabled());
  EXPECT_TRUE(cfg->tls_cert_file.empty());
  const std::string tls = (dir_ / "tls").string();
  EXPECT_EQ(cfg->tls_sni_certificates, (std::vector<TlsCertificateFiles>{
                                           {tls + "/a.example.pem", tls + "/a.example.pem"},
                                           {tls + "/b.example.pem", tls + "/b.example.pem"},
                                           {tls + "/old/c.example.pem", tls + "/old/c.example.pem"},
                                       }));
}

// Haraka's own test layout (test/config/tls/example.com/) is a key file named
// after the certificate's CN, "_" for "*", beside the certificate file. Tern
// pairs by the key fitting the certificate, so any names and places work.
TEST_F(ConfigDirFixture, PairsKeyAndCertificateFilesOfTheTlsDirectory) {
  std::filesystem::create_directories(dir_ / "tls" / "example.com");
  std::filesystem::create_directories(dir_ / "tls" / "keys");
  std::filesystem::create_directories(dir_ / "tls" / "mx.test");
  const PemPair wildcard = MakeCertificate("*.example.com");
  const PemPair mx = MakeCertificate("mx.test", "DNS:mx.test");
  const PemPair bundle = MakeCertificate("bundle.test");
  Write("tls/example.com/_.example.com.key", wildcard.key);
  Write("tls/example.com/example.com.crt", wildcard.cert);
  Write("tls/keys/private.pem", mx.key);  // another directory, another name
  Write("tls/mx.test/fullchain.pem", mx.cert + bundle.cert);  // a chain after the leaf
  Write("tls/bundle.pem", bundle.key + bundle.cert);
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const std::string tls = (dir_ / "tls").string();
  EXPECT_EQ(cfg->tls_sni_certificates, (std::vector<TlsCertificateFiles>{
                                           {tls + "/bundle.pem", tls + "/bundle.pem"},
                                           {tls + "/example.com/example.com.crt",
                                            tls + "/example.com/_.example.com.key"},
                                           {tls + "/mx.test/fullchain.pem", tls + "/keys/private.pem"},
                                       }));
}

TEST_F(ConfigDirFixture, UnusableFilesInTheTlsDirectoryAreErrorsNamingThem) {
  const PemPair one = MakeCertificate("one.test");
  const PemPair two = MakeCertificate("two.test");
  struct Case {
    const char* label;
    const char* file;
    std::string text;
    const char* expect;
  };
  const Case cases[] = {
      {"key without certificate", "sub/orphan.key", one.key, "a private key without a certificate"},
      {"certificate without key", "sub/lonely.crt", one.cert, "a certificate without its private key"},
      {"neither", "README", "certificates go here\n", "no PEM private key or certificate"},
      {"bad base64", "broken.pem",
       one.cert + "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", "unreadable PEM"},
      {"not a certificate", "junk.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
       "unreadable PEM certificate"},
      {"not a key", "junk.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
       "unreadable PEM private key"},
      {"encrypted key", "secret.key",
       "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n" + one.cert,
       "an encrypted private key"},
      {"bundle with another's key", "mixed.pem", one.key + two.cert, "does not fit"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    std::filesystem::remove_all(dir_ / "tls");
    std::filesystem::create_directories(dir_ / "tls" / "sub");
    Write("tls/good.pem", two.key + two.cert);  // a usable bundle beside it changes nothing
    Write(std::string("tls/") + c.file, c.text);
    auto cfg = Load();
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find((dir_ / "tls" / c.file).string()), absl::string_view::npos)
        << cfg.status();
    EXPECT_NE(cfg.status().message().find(c.expect), absl::string_view::npos) << cfg.status();
  }

  // A link to nothing is an error too, unless its name starts with "." (a
  // Kubernetes secret volume's "..data" is skipped whatever it points to).
  std::filesystem::remove_all(dir_ / "tls");
  std::filesystem::create_directories(dir_ / "tls");
  Write("tls/good.pem", two.key + two.cert);
  std::filesystem::create_symlink(dir_ / "nowhere", dir_ / "tls" / "..data");
  ASSERT_TRUE(Load().ok()) << Load().status();
  std::filesystem::create_symlink(dir_ / "nowhere.pem", dir_ / "tls" / "gone.pem");
  auto cfg = Load();
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find((dir_ / "tls" / "gone.pem").string()), absl::string_view::npos)
      << cfg.status();
}

TEST_F(ConfigDirFixture, ClientCertificateKeysHaveHarakasDefaults) {
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->tls_request_cert);
  EXPECT_FALSE(cfg->tls_reject_unauthorized);
  EXPECT_TRUE(cfg->tls_require_authorized.empty());
  EXPECT_TRUE(cfg->tls_ca_file.empty());  // the system's default CAs
  EXPECT_FALSE(cfg->listen[0].require_client_cert);
}

TEST_F(ConfigDirFixture, RequireAuthorizedPortsAndRejectUnauthorizedPickTheListeners) {
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:25,127.0.0.1:587,127.0.0.1:465\n");
  Write("tls_key.pem", "key");
  Write("tls_cert.pem", "cert");
  const PemPair ca = MakeCertificate("Test CA");
  Write("client-ca.pem", ca.cert);
  Write("tls.ini", "[main]\nrequireAuthorized[]=465\nrequireAuthorized[]=587\nca=client-ca.pem\n");
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->tls_require_authorized, (std::vector<uint16_t>{465, 587}));
  EXPECT_FALSE(cfg->listen[0].require_client_cert);
  EXPECT_TRUE(cfg->listen[1].require_client_cert);
  EXPECT_TRUE(cfg->listen[2].require_client_cert);
  EXPECT_TRUE(cfg->listen[2].implicit_tls);
  EXPECT_EQ(cfg->tls_ca_file, (dir_ / "client-ca.pem").string());

  // Haraka's get_rejectUnauthorized: rejectUnauthorized=true is every port.
  Write("tls.ini", "[main]\nrejectUnauthorized=true\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->tls_reject_unauthorized);
  for (const ListenAddress& l : cfg->listen) {
    EXPECT_TRUE(l.require_client_cert) << l.ToString();
  }

  Write("tls.ini", "[main]\nrequestCert=false\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->tls_request_cert);
  // A plain value is one port, as Haraka takes it.
  Write("tls.ini", "[main]\nrequireAuthorized=25\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->listen[0].require_client_cert);
  EXPECT_FALSE(cfg->listen[1].require_client_cert);
}

TEST_F(ConfigDirFixture, BadClientCertificateSettingsAreErrors) {
  Write("smtp.ini", "[main]\nlisten=127.0.0.1:25,127.0.0.1:587\n");
  Write("tls_key.pem", "key");
  Write("tls_cert.pem", "cert");
  Write("not-a-ca.pem", "no certificate here\n");
  struct Case {
    const char* label;
    const char* text;
    const char* expect;
  };
  const Case cases[] = {
      {"port not a number", "[main]\nrequireAuthorized[]=submission\n", "requireAuthorized: 'submission'"},
      {"port zero", "[main]\nrequireAuthorized[]=0\n", "requireAuthorized: '0'"},
      {"requestCert not boolean", "[main]\nrequestCert=maybe\n", "requestCert"},
      {"rejectUnauthorized not boolean", "[main]\nrejectUnauthorized=sometimes\n", "rejectUnauthorized"},
      {"ca missing", "[main]\nca=missing-ca.pem\n", "missing-ca.pem"},
      {"ca without a certificate", "[main]\nca=not-a-ca.pem\n", "not-a-ca.pem: no PEM"},
      {"required but not requested", "[main]\nrequestCert=false\nrejectUnauthorized=true\n",
       "rejectUnauthorized: needs requestCert=true"},
      {"ports required but not requested", "[main]\nrequestCert=false\nrequireAuthorized[]=587\n",
       "requireAuthorized: needs requestCert=true"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Write("tls.ini", c.text);
    auto cfg = Load();
    ASSERT_FALSE(cfg.ok());
    EXPECT_NE(cfg.status().message().find(c.expect), absl::string_view::npos) << cfg.status();
    EXPECT_NE(cfg.status().message().find("tls.ini"), absl::string_view::npos) << cfg.status();
  }
  // Required on a listener while ingest has no certificate to do TLS with.
  std::filesystem::remove(dir_ / "tls_key.pem");
  std::filesystem::remove(dir_ / "tls_cert.pem");
  Write("tls.ini", "[main]\nrequireAuthorized[]=587\n");
  auto cfg = Load();
  ASSERT_FALSE(cfg.ok());
  EXPECT_NE(cfg.status().message().find("127.0.0.1:587 requires client certificates but no TLS certificate"),
            absl::string_view::npos)
      << cfg.status();
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

TEST_F(ConfigDirFixture, OutboundReceivedHeaderSetsTheCommentOrTurnsTheHeaderOff) {
  auto cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->received_comment, "Tern");
  EXPECT_TRUE(cfg->add_received);

  Write("outbound.ini", "received_header = Example outbound \n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->received_comment, "Example outbound");
  EXPECT_TRUE(cfg->add_received);

  Write("outbound.ini", "received_header=disabled\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->add_received);

  // Haraka's legacy one-line file, when outbound.ini does not set the key.
  Write("outbound.ini", "");
  Write("outbound.received_header", "Legacy outbound\n");
  cfg = Load();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->received_comment, "Legacy outbound");

  for (const char* bad : {"a (nested) comment", "back\\slash", "caf\xc3\xa9"}) {
    Write("outbound.ini", std::string("received_header=") + bad + "\n");
    cfg = Load();
    ASSERT_FALSE(cfg.ok()) << bad;
    EXPECT_NE(cfg.status().message().find("received_header"), std::string::npos) << cfg.status();
  }
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
