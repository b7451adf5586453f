#include "lib/rpc/grpc_tls.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/config/config_dir.h"
#include "lib/rpc/server_setup.h"

namespace tern::rpc {
namespace {

// A CA with a server certificate for 127.0.0.1 and a client certificate,
// and a second CA ("rogue") with its own client certificate, made with
// `openssl` once per test binary run.
struct Certs {
  std::string dir;
  bool ok = false;

  static const Certs& Get() {
    static const Certs certs = Make();
    static const struct Cleanup {
      std::string dir;
      ~Cleanup() {
        if (!dir.empty()) std::filesystem::remove_all(dir);
      }
    } cleanup{certs.dir};
    return certs;
  }

  static Certs Make() {
    Certs c;
    char tmpl[] = "/tmp/tern-grpc-tls-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return c;
    c.dir = tmpl;
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    auto ca = [&](const std::string& name) {
      return absl::StrCat("openssl req -x509 ", ec, " -keyout ", name, ".key -out ", name, ".pem -days 2 -subj /CN=",
                          name, " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign && ");
    };
    auto leaf = [&](const std::string& name, const std::string& ca_name, const std::string& san) {
      return absl::StrCat("openssl req ", ec, " -keyout ", name, ".key -out ", name, ".csr -subj /CN=", name,
                          " && printf 'subjectAltName=", san, "\\n' > ", name, ".ext && openssl x509 -req -in ", name,
                          ".csr -CA ", ca_name, ".pem -CAkey ", ca_name, ".key -CAcreateserial -out ", name,
                          ".pem -days 2 -extfile ", name, ".ext && ");
    };
    const std::string script =
        absl::StrCat("cd ", c.dir, " && ", ca("ca"), ca("rogue-ca"), leaf("server", "ca", "IP:127.0.0.1,DNS:queue.test"),
                     leaf("client", "ca", "DNS:client.test"), leaf("rogue", "rogue-ca", "DNS:client.test"),
                     "true > openssl.log 2>&1");
    c.ok = std::system(script.c_str()) == 0;
    return c;
  }
};

class GrpcTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Certs::Get().ok) << "openssl could not make the test certificates";
    std::random_device rd;
    conf_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("grpc_tls_test_", getpid(), "_", rd());
    std::filesystem::create_directories(conf_);
  }
  void TearDown() override {
    SetGrpcTls({});
    std::filesystem::remove_all(conf_);
  }

  void WriteTernIni(const std::string& grpc_section) {
    std::ofstream(conf_ / "tern.ini") << "[grpc]\n" << grpc_section;
  }
  std::string Pem(const std::string& name) const { return Certs::Get().dir + "/" + name; }

  absl::StatusOr<GrpcTlsSettings> Load(bool serves) { return LoadGrpcTls(config::ConfigDir(conf_.string()), serves); }

  // A server with health checking under `server` settings; whether a channel
  // under `client` settings completes its handshake.
  bool Connects(const GrpcTlsSettings& server, const GrpcTlsSettings& client) {
    SetGrpcTls(server);
    grpc::ServerBuilder builder;
    PrepareServerBuilder(builder);
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", ServerCredentials(), &port);
    std::unique_ptr<grpc::Server> srv = builder.BuildAndStart();
    EXPECT_NE(port, 0);
    SetGrpcTls(client);
    auto channel = MakeChannel(absl::StrCat("127.0.0.1:", port));
    const bool connected =
        channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::milliseconds(1500));
    srv->Shutdown(std::chrono::system_clock::now());
    return connected;
  }

  std::filesystem::path conf_;
};

TEST_F(GrpcTlsTest, IsOffWithoutAGrpcSection) {
  std::ofstream(conf_ / "tern.ini") << "[queue]\nlisten=127.0.0.1:7070\n";
  absl::StatusOr<GrpcTlsSettings> s = Load(/*serves=*/true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->enabled);
  EXPECT_TRUE(Connects(*s, *s)) << "plaintext server and client";
}

TEST_F(GrpcTlsTest, NamesTheMissingOrBrokenFile) {
  WriteTernIni("tls=true\n");
  EXPECT_NE(Load(true).status().message().find("tls_ca: required"), std::string::npos) << Load(true).status();

  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", conf_.string(), "/nope.pem\n"));
  EXPECT_NE(Load(true).status().message().find("tls_ca: cannot read"), std::string::npos) << Load(true).status();

  std::ofstream(conf_ / "junk.pem") << "not a certificate\n";
  WriteTernIni("tls=true\ntls_ca=junk.pem\n");  // relative to the config directory
  EXPECT_NE(Load(true).status().message().find("no PEM block"), std::string::npos) << Load(true).status();

  // A server needs its own pair; a client of a queue without client auth does not.
  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", Pem("ca.pem"), "\n"));
  EXPECT_NE(Load(true).status().message().find("tls_cert: required"), std::string::npos) << Load(true).status();
  EXPECT_TRUE(Load(false).ok()) << Load(false).status();

  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", Pem("ca.pem"), "\ntls_cert=", Pem("server.pem"),
                            "\ntls_key=", Pem("client.key"), "\n"));
  EXPECT_NE(Load(true).status().message().find("does not belong"), std::string::npos) << Load(true).status();

  WriteTernIni("tls=maybe\n");
  EXPECT_FALSE(Load(false).ok());
}

TEST_F(GrpcTlsTest, MutualTlsAdmitsOnlyClientsWithACertificateFromTheCa) {
  WriteTernIni(absl::StrCat("tls=true\ntls_client_auth=true\ntls_ca=", Pem("ca.pem"), "\ntls_cert=",
                            Pem("server.pem"), "\ntls_key=", Pem("server.key"), "\n"));
  absl::StatusOr<GrpcTlsSettings> server = Load(true);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(server->client_auth);

  WriteTernIni(absl::StrCat("tls=true\ntls_client_auth=true\ntls_ca=", Pem("ca.pem"), "\ntls_cert=",
                            Pem("client.pem"), "\ntls_key=", Pem("client.key"), "\n"));
  absl::StatusOr<GrpcTlsSettings> client = Load(false);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(Connects(*server, *client));

  GrpcTlsSettings no_cert = *client;
  no_cert.cert_pem.clear();
  no_cert.key_pem.clear();
  EXPECT_FALSE(Connects(*server, no_cert)) << "a client without a certificate";

  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", Pem("ca.pem"), "\ntls_cert=", Pem("rogue.pem"),
                            "\ntls_key=", Pem("rogue.key"), "\n"));
  absl::StatusOr<GrpcTlsSettings> rogue = Load(false);
  ASSERT_TRUE(rogue.ok()) << rogue.status();
  EXPECT_FALSE(Connects(*server, *rogue)) << "a client certificate from another CA";

  EXPECT_FALSE(Connects(*server, GrpcTlsSettings{})) << "a plaintext client";
}

TEST_F(GrpcTlsTest, ClientsVerifyTheQueuesCertificate) {
  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", Pem("ca.pem"), "\ntls_cert=", Pem("server.pem"),
                            "\ntls_key=", Pem("server.key"), "\n"));
  absl::StatusOr<GrpcTlsSettings> server = Load(true);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_FALSE(server->client_auth);

  GrpcTlsSettings client;
  client.enabled = true;
  client.ca_pem = server->ca_pem;
  EXPECT_TRUE(Connects(*server, client)) << "127.0.0.1 is in the certificate";

  client.server_name = "queue.test";
  EXPECT_TRUE(Connects(*server, client)) << "so is queue.test";
  client.server_name = "other.test";
  EXPECT_FALSE(Connects(*server, client)) << "a name the certificate does not carry";

  WriteTernIni(absl::StrCat("tls=true\ntls_ca=", Pem("rogue-ca.pem"), "\n"));
  absl::StatusOr<GrpcTlsSettings> distrustful = Load(false);
  ASSERT_TRUE(distrustful.ok()) << distrustful.status();
  EXPECT_FALSE(Connects(*server, *distrustful)) << "a queue certificate from a CA the client does not trust";
}

}  // namespace
}  // namespace tern::rpc
