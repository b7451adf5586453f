// Tests what CaresResolver reports as `secure` behind a real validating
// resolver: tests/fakes/dnssec_dns.py signs zones with Knot DNS and puts
// dnsmasq --dnssec in front, validating from a root trust anchor. DANE
// (services/deliverer/dane.h) trusts TLSA records only when these flags are
// right, so they are checked against real AD bits, SERVFAILs and
// authenticated denials, not against a server that sets AD by hand.
// Needs python3, knot and dnsmasq-base (scripts/deps.sh).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "gtest/gtest.h"
#include "lib/dns/cares_resolver.h"

extern char** environ;

namespace tern::dns {
namespace {

using namespace std::chrono_literals;

// test. (signed) holds the MX, address and TLSA records; insecure.test. is
// delegated without a DS; bogus.test. is signed but its DS in test. matches
// no key of it, so a validating resolver answers SERVFAIL there.
constexpr char kSignedZone[] =
    "@ MX 10 mx\n"
    "mx A 127.0.0.2\n"
    "mx AAAA ::2\n"
    "_25._tcp.mx TLSA 3 1 1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    "_mta-sts TXT \"v=STSv1; id=signed1;\"\n"
    "v4only A 127.0.0.3\n"
    "implicit.test. A 127.0.0.4\n";
constexpr char kChildZone[] =
    "@ MX 10 mx\n"
    "mx A 127.0.0.5\n"
    "_25._tcp.mx TLSA 3 1 1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

// The fixture's command-line form: prints {"port": P, ...} once the chain
// validates and stops everything it started when its stdin closes.
class DnssecChain {
 public:
  DnssecChain() = default;
  DnssecChain(const DnssecChain&) = delete;
  DnssecChain& operator=(const DnssecChain&) = delete;

  ~DnssecChain() {
    if (to_child_ >= 0) {
      close(to_child_);  // EOF: the fixture stops knotd and dnsmasq and exits
    }
    if (from_child_ >= 0) {
      close(from_child_);
    }
    if (pid_ > 0) {
      for (int i = 0; i < 150 && waitpid(pid_, nullptr, WNOHANG) == 0; ++i) {
        usleep(100'000);
      }
      if (kill(pid_, 0) == 0) {  // still not reaped after 15 s
        kill(pid_, SIGTERM);
        waitpid(pid_, nullptr, 0);
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Writes the zones and starts the fixture; the error, or "" once it
  // printed its resolver's port.
  std::string Start() {
    char tmpl[] = "/tmp/tern-dnssec-test-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return "mkdtemp failed";
    }
    dir_ = tmpl;
    std::vector<std::string> args = {"python3", TERN_SOURCE_DIR "/tests/fakes/dnssec_dns.py"};
    for (const auto& [name, kind, text] : {std::tuple{"test.", "signed", kSignedZone},
                                           std::tuple{"insecure.test.", "unsigned", kChildZone},
                                           std::tuple{"bogus.test.", "bogus", kChildZone}}) {
      const std::string file = absl::StrCat(dir_, "/", name, "zone");
      std::ofstream(file) << text;
      args.push_back("--zone");
      args.push_back(absl::StrCat(name, ":", kind, ":", file));
    }
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
      return "pipe failed";
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, "python3", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    to_child_ = in[1];
    from_child_ = out[0];
    if (rc != 0) {
      pid_ = -1;
      return "could not start python3";
    }
    // One line, within the fixture's own 20 s start timeout and some.
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + 40s;
    while (line.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                              std::chrono::steady_clock::now());
      pollfd pfd{from_child_, POLLIN, 0};
      if (left.count() <= 0 || poll(&pfd, 1, static_cast<int>(left.count())) != 1) {
        return "the fixture printed nothing within 40 s";
      }
      char buf[256];
      const ssize_t n = read(from_child_, buf, sizeof(buf));
      if (n <= 0) {
        return "the fixture exited without printing its ports (its error is on stderr)";
      }
      line.append(buf, static_cast<size_t>(n));
    }
    // {"port": 12345, "auth_port": 23456}
    const size_t at = line.find("\"port\": ");
    const size_t end = at == std::string::npos ? at : line.find_first_of(",}", at);
    if (end == std::string::npos || !absl::SimpleAtoi(line.substr(at + 8, end - at - 8), &port_)) {
      return "unexpected output: " + line;
    }
    return "";
  }

  int port() const { return port_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  int port_ = 0;
};

class DnssecResolverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    chain_ = new DnssecChain();
    start_error_ = chain_->Start();
  }

  static void TearDownTestSuite() {
    delete chain_;
    chain_ = nullptr;
  }

  void SetUp() override {
    ASSERT_EQ(start_error_, "") << "the DNSSEC chain did not start";
    CaresResolver::Options options;
    options.servers = {absl::StrCat("127.0.0.1:", chain_->port())};
    options.timeout = 3000ms;
    auto resolver = CaresResolver::Create(io_.get_executor(), options);
    ASSERT_TRUE(resolver.ok()) << resolver.status();
    resolver_ = std::move(*resolver);
  }

  template <typename Answer, typename Start>
  Answer Await(Start start) {
    std::optional<Answer> answer;
    start([&](Answer a) { answer = std::move(a); });
    io_.restart();
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!answer && std::chrono::steady_clock::now() < deadline) {
      io_.run_for(10ms);
      io_.restart();
    }
    Answer none;
    none.status = LookupStatus::kTempFail;
    none.detail = "test: no answer within 20 s";
    return answer.value_or(std::move(none));
  }

  MxAnswer Mx(const std::string& domain) {
    return Await<MxAnswer>([&](auto done) { resolver_->ResolveMx(domain, std::move(done)); });
  }
  HostAnswer Host(const std::string& name) {
    return Await<HostAnswer>([&](auto done) { resolver_->ResolveHost(name, std::move(done)); });
  }
  TlsaAnswer Tlsa(const std::string& name) {
    return Await<TlsaAnswer>([&](auto done) { resolver_->ResolveTlsa(name, std::move(done)); });
  }

  static inline DnssecChain* chain_ = nullptr;
  static inline std::string start_error_;
  asio::io_context io_;
  std::unique_ptr<CaresResolver> resolver_;
};

TEST_F(DnssecResolverTest, SignedMxAndItsHostAddressesAreSecure) {
  MxAnswer mx = Mx("test");
  ASSERT_EQ(mx.status, LookupStatus::kOk) << mx.detail;
  EXPECT_TRUE(mx.secure);
  EXPECT_FALSE(mx.implicit_mx);
  ASSERT_EQ(mx.hosts.size(), 1u);
  EXPECT_EQ(mx.hosts[0].name, "mx.test");
  EXPECT_EQ(mx.hosts[0].addresses.ipv4, std::vector<std::string>{"127.0.0.2"});
  EXPECT_EQ(mx.hosts[0].addresses.ipv6, std::vector<std::string>{"::2"});
  EXPECT_TRUE(mx.hosts[0].addresses.secure);
}

TEST_F(DnssecResolverTest, SignedHostWithOneFamilyIsSecureThroughItsProvenNodata) {
  // The AAAA lookup gets a NODATA that NSEC records prove: still secure.
  HostAnswer host = Host("v4only.test");
  ASSERT_EQ(host.status, LookupStatus::kOk) << host.detail;
  EXPECT_EQ(host.ipv4, std::vector<std::string>{"127.0.0.3"});
  EXPECT_TRUE(host.ipv6.empty());
  EXPECT_TRUE(host.secure);
}

TEST_F(DnssecResolverTest, ImplicitMxOfASignedNameIsSecure) {
  MxAnswer mx = Mx("implicit.test");
  ASSERT_EQ(mx.status, LookupStatus::kOk) << mx.detail;
  EXPECT_TRUE(mx.implicit_mx);
  EXPECT_TRUE(mx.secure) << "the MX NODATA was proven";
  ASSERT_EQ(mx.hosts.size(), 1u);
  EXPECT_TRUE(mx.hosts[0].addresses.secure);
}

TEST_F(DnssecResolverTest, SignedTlsaRecordsAreSecureAndParsed) {
  TlsaAnswer tlsa = Tlsa("_25._tcp.mx.test");
  ASSERT_EQ(tlsa.status, LookupStatus::kOk) << tlsa.detail;
  EXPECT_TRUE(tlsa.secure);
  std::string digest;
  for (int i = 0; i < 32; ++i) {
    digest.push_back(static_cast<char>(i));
  }
  EXPECT_EQ(tlsa.records, (std::vector<TlsaRecord>{{3, 1, 1, digest}}));
}

TEST_F(DnssecResolverTest, ProvenAbsenceOfTlsaIsSecureAndEmpty) {
  // What lets DANE say "this host has no TLSA records" rather than "could
  // not tell": NXDOMAIN for a name below mx, NODATA at mx itself.
  TlsaAnswer nxdomain = Tlsa("_25._tcp.v4only.test");
  EXPECT_EQ(nxdomain.status, LookupStatus::kNoSuchDomain) << nxdomain.detail;
  EXPECT_TRUE(nxdomain.secure);
  EXPECT_TRUE(nxdomain.records.empty());
  TlsaAnswer nodata = Tlsa("mx.test");
  EXPECT_EQ(nodata.status, LookupStatus::kOk) << nodata.detail;
  EXPECT_TRUE(nodata.secure);
  EXPECT_TRUE(nodata.records.empty());
}

TEST_F(DnssecResolverTest, SignedTxtIsReadLikeAnyOther) {
  TxtAnswer txt = Await<TxtAnswer>([&](auto done) { resolver_->ResolveTxt("_mta-sts.test", std::move(done)); });
  ASSERT_EQ(txt.status, LookupStatus::kOk) << txt.detail;
  EXPECT_EQ(txt.records, std::vector<std::string>{"v=STSv1; id=signed1;"});
}

TEST_F(DnssecResolverTest, UnsignedZoneAnswersButNothingIsSecure) {
  MxAnswer mx = Mx("insecure.test");
  ASSERT_EQ(mx.status, LookupStatus::kOk) << mx.detail;
  EXPECT_FALSE(mx.secure);
  ASSERT_EQ(mx.hosts.size(), 1u);
  EXPECT_EQ(mx.hosts[0].addresses.ipv4, std::vector<std::string>{"127.0.0.5"});
  EXPECT_FALSE(mx.hosts[0].addresses.secure);
  TlsaAnswer tlsa = Tlsa("_25._tcp.mx.insecure.test");
  ASSERT_EQ(tlsa.status, LookupStatus::kOk) << tlsa.detail;
  EXPECT_EQ(tlsa.records.size(), 1u);
  EXPECT_FALSE(tlsa.secure) << "a TLSA record nobody validated must not read as secure";
}

TEST_F(DnssecResolverTest, BogusZoneIsATemporaryFailureNeverAnAnswer) {
  MxAnswer mx = Mx("bogus.test");
  EXPECT_EQ(mx.status, LookupStatus::kTempFail) << mx.detail;
  EXPECT_TRUE(mx.hosts.empty());
  EXPECT_FALSE(mx.secure);
  TlsaAnswer tlsa = Tlsa("_25._tcp.mx.bogus.test");
  EXPECT_EQ(tlsa.status, LookupStatus::kTempFail) << tlsa.detail;
  EXPECT_TRUE(tlsa.records.empty());
  EXPECT_FALSE(tlsa.secure);
  HostAnswer host = Host("mx.bogus.test");
  EXPECT_EQ(host.status, LookupStatus::kTempFail) << host.detail;
  EXPECT_TRUE(host.ipv4.empty());
}

}  // namespace
}  // namespace tern::dns
