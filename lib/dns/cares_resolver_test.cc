// Tests CaresResolver against a real dnsmasq serving test zones on a free
// loopback port (dnsmasq-base must be installed). Two zones are forwarded by
// dnsmasq to upstreams that fail: servfail.test to a scripted upstream that
// answers SERVFAIL to everything, unreachable.test to a closed port.
#include "lib/dns/cares_resolver.h"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "gtest/gtest.h"

extern char** environ;

namespace tern::dns {
namespace {

using namespace std::chrono_literals;

// Binds a UDP socket to 127.0.0.1:0 and returns the fd and the port.
int BindUdp(int* port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return -1;
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

bool UdpPortBusy(int port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool busy = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0;
  close(fd);
  return busy;
}

// True when something on 127.0.0.1:`port` answers a DNS query (MX
// example.test) with NOERROR within `timeout_ms`. Holding the port is not proof that our
// dnsmasq is there: a parallel test may hold it with a silent socket, and our
// dnsmasq then exited or never bound.
bool AnswersDns(int port, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    return false;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  // Header: id 0x7e57, RD, one question; then example.test MX IN.
  const unsigned char query[] = {0x7e, 0x57, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                 7,    'e',  'x',  'a',  'm',  'p',  'l',  'e',  4,    't',  'e',  's',
                                 't',  0,    0x00, 0x0f, 0x00, 0x01};
  bool ok = false;
  if (sendto(fd, query, sizeof(query), 0, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ==
      static_cast<ssize_t>(sizeof(query))) {
    pollfd pfd{fd, POLLIN, 0};
    unsigned char reply[512];
    if (poll(&pfd, 1, timeout_ms) == 1) {
      const ssize_t n = recv(fd, reply, sizeof(reply), 0);
      // Our id, a response, NOERROR (the SERVFAIL upstream of another test
      // answers too, but never with NOERROR).
      ok = n >= 12 && reply[0] == 0x7e && reply[1] == 0x57 && (reply[2] & 0x80) != 0 && (reply[3] & 0x0f) == 0;
    }
  }
  close(fd);
  return ok;
}

// An upstream DNS server on 127.0.0.1:0 that answers every query with
// SERVFAIL (the question echoed, no records), as a broken authoritative
// server or a failing recursive resolver does.
class ServfailUpstream {
 public:
  bool Start() {
    fd_ = BindUdp(&port_);
    if (fd_ < 0) {
      return false;
    }
    thread_ = std::thread([this] { Serve(); });
    return true;
  }

  ~ServfailUpstream() {
    stop_ = true;
    if (thread_.joinable()) {
      thread_.join();
    }
    if (fd_ >= 0) {
      close(fd_);
    }
  }

  int port() const { return port_; }
  int queries() const { return queries_; }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) {
        continue;  // timeout: look at stop_ again
      }
      unsigned char buf[512];
      sockaddr_in from{};
      socklen_t len = sizeof(from);
      const ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 12) {
        continue;
      }
      ++queries_;
      buf[2] = static_cast<unsigned char>(0x80 | (buf[2] & 0x79));  // QR=1, keep opcode and RD
      buf[3] = 0x82;                                                // RA=1, RCODE=2 (SERVFAIL)
      for (int i = 6; i < 12; ++i) {
        buf[i] = 0;  // no answer, authority or additional records
      }
      sendto(fd_, buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

class Dnsmasq {
 public:
  // Arguments added to every dnsmasq started by Start().
  void AddArgs(std::vector<std::string> args) {
    extra_args_.insert(extra_args_.end(), args.begin(), args.end());
  }

  // Starts dnsmasq on a free port with the test zones; retries with another
  // port if the chosen one was taken in between.
  bool Start() {
    for (int attempt = 0; attempt < 10; ++attempt) {
      int probe_port = 0;
      int fd = BindUdp(&probe_port);
      if (fd < 0) {
        continue;
      }
      close(fd);
      if (Spawn(probe_port)) {
        port_ = probe_port;
        return true;
      }
    }
    return false;
  }

  ~Dnsmasq() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }

  int port() const { return port_; }

 private:
  bool Spawn(int port) {
    std::vector<std::string> args = {
        "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        "--listen-address=127.0.0.1", "--bind-interfaces", absl::StrCat("--port=", port), "--log-facility=-",
        "--local-ttl=300",
        // All of .test is answered locally: unknown names are NXDOMAIN.
        "--local=/test/",
        "--mx-host=example.test,mx1.example.test,10", "--mx-host=example.test,mx2.example.test,20",
        "--host-record=mx1.example.test,127.0.0.2,::2", "--host-record=mx2.example.test,127.0.0.3",
        "--mx-host=tie.test,a.tie.test,10", "--mx-host=tie.test,b.tie.test,10", "--mx-host=tie.test,c.tie.test,10",
        "--mx-host=tie.test,first.tie.test,5",
        "--host-record=a.tie.test,127.0.1.1", "--host-record=b.tie.test,127.0.1.2",
        "--host-record=c.tie.test,127.0.1.3", "--host-record=first.tie.test,127.0.1.5",
        "--host-record=implicit.test,127.0.0.5,::5",
        "--mx-host=nullmx.test,.,0",
        // Two TXT records at one name, the first of two character-strings.
        "--txt-record=_mta-sts.example.test,v=STSv1; ,id=2026a;",
        "--txt-record=_mta-sts.example.test,unrelated",
        "--mx-host=ghost.test,nowhere.ghost.test,10",
        "--mx-host=partial.test,nowhere.partial.test,10", "--mx-host=partial.test,ok.partial.test,20",
        "--host-record=ok.partial.test,127.0.0.9",
        "--host-record=hostonly.test,127.0.0.6",
        // An MX host that is an alias of an alias (RFC 7672 §2.2.2).
        "--host-record=real.alias.test,127.0.0.7", "--cname=mid.alias.test,real.alias.test",
        "--cname=mx.alias.test,mid.alias.test",
        // TLSA 3 1 1 <32 octets 0x00..0x1f> and 2 0 2 <1 octet>: RR type 52,
        // RDATA in hex.
        "--dns-rr=_25._tcp.mx1.example.test,52,030101000102030405060708090a0b0c0d0e0f"
        "101112131415161718191a1b1c1d1e1f",
        "--dns-rr=_25._tcp.mx1.example.test,52,020002ff",
    };
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // Keep dnsmasq's log out of the test output unless debugging.
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, "dnsmasq", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      return false;
    }
    // Ready when it answers a query on the port; gone means the port was
    // taken (UDP or TCP: dnsmasq binds both).
    for (int i = 0; i < 100; ++i) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        return false;
      }
      if (UdpPortBusy(port) && AnswersDns(port, 50)) {
        pid_ = pid;
        return true;
      }
      usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return false;
  }

  pid_t pid_ = -1;
  int port_ = 0;
  std::vector<std::string> extra_args_;
};

// A UDP port on 127.0.0.1 with nothing listening (ICMP port unreachable).
int ClosedUdpPort() {
  int port = 0;
  int fd = BindUdp(&port);
  if (fd < 0) {
    return -1;
  }
  close(fd);
  return port;
}

class CaresResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(servfail_.Start()) << "could not start the SERVFAIL upstream";
    const int closed = ClosedUdpPort();
    ASSERT_GT(closed, 0);
    // More specific than --local=/test/, so these zones are forwarded.
    dnsmasq_.AddArgs({absl::StrCat("--server=/servfail.test/127.0.0.1#", servfail_.port()),
                      absl::StrCat("--server=/unreachable.test/127.0.0.1#", closed),
                      // An MX answered locally whose host is in the failing zone.
                      "--mx-host=half.test,mx.servfail.test,10"});
    ASSERT_TRUE(dnsmasq_.Start()) << "could not start dnsmasq";
  }

  std::unique_ptr<CaresResolver> MakeResolver(CaresResolver::Options options = {}) {
    if (options.servers.empty()) {
      options.servers = {absl::StrCat("127.0.0.1:", dnsmasq_.port())};
    }
    options.timeout = 2000ms;
    auto resolver = CaresResolver::Create(io_.get_executor(), options);
    EXPECT_TRUE(resolver.ok()) << resolver.status();
    return resolver.ok() ? std::move(*resolver) : nullptr;
  }

  MxAnswer Mx(MxResolver& resolver, const std::string& domain) {
    std::optional<MxAnswer> result;
    resolver.ResolveMx(domain, [&](MxAnswer a) { result = std::move(a); });
    Run([&] { return result.has_value(); });
    return result.value_or(MxAnswer{LookupStatus::kTempFail, "test: no answer", false, false, {}});
  }

  template <typename Pred>
  void Run(Pred done) {
    io_.restart();
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      io_.run_for(10ms);
      io_.restart();
    }
  }

  static std::vector<std::string> Names(const MxAnswer& a) {
    std::vector<std::string> out;
    for (const auto& h : a.hosts) {
      out.push_back(h.name);
    }
    return out;
  }

  ServfailUpstream servfail_;
  Dnsmasq dnsmasq_;
  asio::io_context io_;
};

TEST_F(CaresResolverTest, SortsMxByPreferenceWithBothFamilies) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "Example.Test.");
  ASSERT_EQ(a.status, LookupStatus::kOk) << a.detail;
  EXPECT_FALSE(a.implicit_mx);
  ASSERT_EQ(Names(a), (std::vector<std::string>{"mx1.example.test", "mx2.example.test"}));
  EXPECT_EQ(a.hosts[0].preference, 10);
  EXPECT_EQ(a.hosts[1].preference, 20);
  EXPECT_EQ(a.hosts[0].addresses.ipv4, (std::vector<std::string>{"127.0.0.2"}));
  EXPECT_EQ(a.hosts[0].addresses.ipv6, (std::vector<std::string>{"::2"}));
  EXPECT_EQ(a.hosts[1].addresses.ipv4, (std::vector<std::string>{"127.0.0.3"}));
  EXPECT_TRUE(a.hosts[1].addresses.ipv6.empty());
}

TEST_F(CaresResolverTest, ShufflesEqualPreferencesOnly) {
  auto resolver = MakeResolver();
  std::set<std::vector<std::string>> orders;
  for (int i = 0; i < 60; ++i) {
    MxAnswer a = Mx(*resolver, "tie.test");
    ASSERT_EQ(a.status, LookupStatus::kOk) << a.detail;
    ASSERT_EQ(a.hosts.size(), 4u);
    EXPECT_EQ(a.hosts[0].name, "first.tie.test");  // preference 5 always first
    orders.insert(Names(a));
  }
  // 3! = 6 orders of the preference-10 hosts; 60 uniform draws miss one with
  // probability about 6 * (5/6)^60 = 1e-4, and all of them stuck on one order
  // (a missing shuffle) is what this really guards against.
  EXPECT_GE(orders.size(), 4u);
}

TEST_F(CaresResolverTest, ImplicitMxWhenNoMxRecords) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "implicit.test");
  ASSERT_EQ(a.status, LookupStatus::kOk) << a.detail;
  EXPECT_TRUE(a.implicit_mx);
  ASSERT_EQ(Names(a), (std::vector<std::string>{"implicit.test"}));
  EXPECT_EQ(a.hosts[0].addresses.ipv4, (std::vector<std::string>{"127.0.0.5"}));
  EXPECT_EQ(a.hosts[0].addresses.ipv6, (std::vector<std::string>{"::5"}));
}

TEST_F(CaresResolverTest, NullMxIsItsOwnStatus) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "nullmx.test");
  EXPECT_EQ(a.status, LookupStatus::kNullMx) << a.detail;
  EXPECT_TRUE(a.hosts.empty());
}

TEST_F(CaresResolverTest, NxdomainIsNoSuchDomain) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "nx.test");
  EXPECT_EQ(a.status, LookupStatus::kNoSuchDomain) << a.detail;
  EXPECT_NE(a.detail.find("NXDOMAIN"), std::string::npos) << a.detail;
}

TEST_F(CaresResolverTest, UnresolvableMxHostIsReportedNotDropped) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "partial.test");
  ASSERT_EQ(a.status, LookupStatus::kOk) << a.detail;
  ASSERT_EQ(Names(a), (std::vector<std::string>{"nowhere.partial.test", "ok.partial.test"}));
  EXPECT_EQ(a.hosts[0].addresses.status, LookupStatus::kNoSuchDomain);
  EXPECT_TRUE(a.hosts[0].addresses.ipv4.empty());
  EXPECT_EQ(a.hosts[1].addresses.ipv4, (std::vector<std::string>{"127.0.0.9"}));
}

TEST_F(CaresResolverTest, ResolveHostGivesBothFamilies) {
  auto resolver = MakeResolver();
  std::optional<HostAnswer> answer;
  resolver->ResolveHost("mx1.example.test", [&](HostAnswer a) { answer = std::move(a); });
  Run([&] { return answer.has_value(); });
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->status, LookupStatus::kOk);
  EXPECT_EQ(answer->ipv4, (std::vector<std::string>{"127.0.0.2"}));
  EXPECT_EQ(answer->ipv6, (std::vector<std::string>{"::2"}));
}

TEST_F(CaresResolverTest, ResolveHostSaysWhereACnameChainEnds) {
  auto resolver = MakeResolver();
  std::optional<HostAnswer> alias;
  std::optional<HostAnswer> plain;
  resolver->ResolveHost("MX.alias.test.", [&](HostAnswer a) { alias = std::move(a); });
  resolver->ResolveHost("real.alias.test", [&](HostAnswer a) { plain = std::move(a); });
  Run([&] { return alias.has_value() && plain.has_value(); });
  ASSERT_TRUE(alias.has_value() && plain.has_value());
  EXPECT_EQ(alias->ipv4, (std::vector<std::string>{"127.0.0.7"}));
  EXPECT_EQ(alias->canonical_name, "real.alias.test");
  EXPECT_EQ(plain->canonical_name, "");
  // From the cache as well.
  std::optional<HostAnswer> again;
  resolver->ResolveHost("mx.alias.test", [&](HostAnswer a) { again = std::move(a); });
  Run([&] { return again.has_value(); });
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->canonical_name, "real.alias.test");
}

TEST_F(CaresResolverTest, ResolveTxtJoinsTheStringsOfEachRecord) {
  auto resolver = MakeResolver();
  auto txt = [&](const std::string& name) {
    std::optional<TxtAnswer> answer;
    resolver->ResolveTxt(name, [&](TxtAnswer a) { answer = std::move(a); });
    Run([&] { return answer.has_value(); });
    return answer.value_or(TxtAnswer{LookupStatus::kTempFail, "test: no answer", {}});
  };
  TxtAnswer found = txt("_MTA-STS.Example.Test.");
  EXPECT_EQ(found.status, LookupStatus::kOk) << found.detail;
  std::vector<std::string> records = found.records;
  std::sort(records.begin(), records.end());
  EXPECT_EQ(records, (std::vector<std::string>{"unrelated", "v=STSv1; id=2026a;"}));

  TxtAnswer nodata = txt("mx1.example.test");  // exists, has no TXT
  EXPECT_EQ(nodata.status, LookupStatus::kOk);
  EXPECT_TRUE(nodata.records.empty());

  TxtAnswer missing = txt("_mta-sts.nowhere.test");
  EXPECT_EQ(missing.status, LookupStatus::kNoSuchDomain);

  TxtAnswer failed = txt("_mta-sts.servfail.test");
  EXPECT_EQ(failed.status, LookupStatus::kTempFail);
  EXPECT_NE(failed.detail.find("TXT lookup for _mta-sts.servfail.test failed"), std::string::npos) << failed.detail;
}

TEST_F(CaresResolverTest, ResolveTlsaParsesEachRecordAndSaysNothingWasValidated) {
  auto resolver = MakeResolver();
  auto tlsa = [&](const std::string& name) {
    std::optional<TlsaAnswer> answer;
    resolver->ResolveTlsa(name, [&](TlsaAnswer a) { answer = std::move(a); });
    Run([&] { return answer.has_value(); });
    TlsaAnswer none;
    none.status = LookupStatus::kTempFail;
    none.detail = "test: no answer";
    return answer.value_or(none);
  };
  TlsaAnswer found = tlsa("_25._tcp.MX1.example.test");
  ASSERT_EQ(found.status, LookupStatus::kOk) << found.detail;
  std::string digest;
  for (int i = 0; i < 32; ++i) {
    digest.push_back(static_cast<char>(i));
  }
  std::vector<TlsaRecord> records = found.records;
  std::sort(records.begin(), records.end(), [](const TlsaRecord& a, const TlsaRecord& b) { return a.usage > b.usage; });
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0], (TlsaRecord{3, 1, 1, digest}));
  EXPECT_EQ(records[1], (TlsaRecord{2, 0, 2, std::string(1, '\xff')}));
  // dnsmasq answers its own data without DNSSEC: nothing here is validated
  // (the validated case is in dnssec_resolver_test, behind a real chain).
  EXPECT_FALSE(found.secure);
  EXPECT_FALSE(Mx(*resolver, "example.test").secure);

  TlsaAnswer nodata = tlsa("_25._tcp.mx2.example.test");
  EXPECT_EQ(nodata.status, LookupStatus::kNoSuchDomain);  // dnsmasq --local: an unknown name
  EXPECT_TRUE(nodata.records.empty());

  TlsaAnswer failed = tlsa("_25._tcp.mx.servfail.test");
  EXPECT_EQ(failed.status, LookupStatus::kTempFail);
  EXPECT_NE(failed.detail.find("TLSA lookup for _25._tcp.mx.servfail.test failed"), std::string::npos)
      << failed.detail;
}

TEST_F(CaresResolverTest, CachesForTtlAndCoalescesConcurrentQueries) {
  auto now = std::chrono::steady_clock::now();
  CaresResolver::Options options;
  options.now = [&now] { return now; };
  auto resolver = MakeResolver(options);
  // Two lookups at once: one MX query and one A + AAAA pair per host.
  std::optional<MxAnswer> a, b;
  resolver->ResolveMx("example.test", [&](MxAnswer x) { a = std::move(x); });
  resolver->ResolveMx("example.test", [&](MxAnswer x) { b = std::move(x); });
  Run([&] { return a.has_value() && b.has_value(); });
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->status, LookupStatus::kOk);
  EXPECT_EQ(Names(*a), Names(*b));
  const uint64_t sent = resolver->queries_sent();
  EXPECT_EQ(sent, 5u);  // MX + 2 hosts x (A, AAAA)
  // Within every TTL (records: dnsmasq --local-ttl=300; the NODATA for
  // mx2's AAAA: its SOA minimum or the 60 s default): from the cache.
  now += 30s;
  EXPECT_EQ(Mx(*resolver, "example.test").status, LookupStatus::kOk);
  EXPECT_EQ(resolver->queries_sent(), sent);
  // After them all: asked again.
  now += 271s;
  EXPECT_EQ(Mx(*resolver, "example.test").status, LookupStatus::kOk);
  EXPECT_EQ(resolver->queries_sent(), 2 * sent);
}

// The composed MX answer is cached as a whole, but only until the first of
// the records it was built from expires; then only that record is asked for.
TEST_F(CaresResolverTest, CachedMxAnswerLastsOnlyAsLongAsItsShortestRecord) {
  auto now = std::chrono::steady_clock::now();
  CaresResolver::Options options;
  options.now = [&now] { return now; };
  auto resolver = MakeResolver(options);
  ASSERT_EQ(Mx(*resolver, "example.test").status, LookupStatus::kOk);
  const uint64_t sent = resolver->queries_sent();
  ASSERT_EQ(sent, 5u);
  // The records live 300 s (--local-ttl) except mx2's AAAA NODATA, which is
  // cached for less: the whole answer must be rebuilt when it lapses.
  int waited = 0;
  while (resolver->queries_sent() == sent && waited < 300) {
    now += 10s;
    waited += 10;
    MxAnswer a = Mx(*resolver, "example.test");
    ASSERT_EQ(a.status, LookupStatus::kOk);
    ASSERT_EQ(Names(a), (std::vector<std::string>{"mx1.example.test", "mx2.example.test"}));
  }
  EXPECT_LT(waited, 300) << "the answer outlived its shortest record";
  EXPECT_GT(resolver->queries_sent(), sent);
  EXPECT_LT(resolver->queries_sent(), 2 * sent) << "records still fresh were asked for again";
}

TEST_F(CaresResolverTest, DoesNotCacheTemporaryFailures) {
  int port = 0;
  int silent = BindUdp(&port);  // a server that never answers
  ASSERT_GE(silent, 0);
  CaresResolver::Options options;
  options.servers = {absl::StrCat("127.0.0.1:", port)};
  options.timeout = 200ms;
  options.tries = 1;
  auto resolver = CaresResolver::Create(io_.get_executor(), options);
  ASSERT_TRUE(resolver.ok());
  MxAnswer a = Mx(**resolver, "example.test");
  EXPECT_EQ(a.status, LookupStatus::kTempFail);
  EXPECT_EQ((*resolver)->cache_size(), 0u);
  close(silent);
}

TEST_F(CaresResolverTest, TimeoutIsTempFail) {
  int port = 0;
  int silent = BindUdp(&port);
  ASSERT_GE(silent, 0);
  CaresResolver::Options options;
  options.servers = {absl::StrCat("127.0.0.1:", port)};
  options.timeout = 200ms;
  options.tries = 1;
  auto resolver = CaresResolver::Create(io_.get_executor(), options);
  ASSERT_TRUE(resolver.ok());
  const auto start = std::chrono::steady_clock::now();
  std::optional<MxAnswer> answer;
  (*resolver)->ResolveMx("example.test", [&](MxAnswer a) { answer = std::move(a); });
  Run([&] { return answer.has_value(); });
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->status, LookupStatus::kTempFail);
  EXPECT_NE(answer->detail.find("example.test"), std::string::npos) << answer->detail;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  close(silent);
}

TEST_F(CaresResolverTest, RefusedIsTempFail) {
  // Outside .test dnsmasq has no upstream (--no-resolv): it refuses.
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "example.com");
  EXPECT_EQ(a.status, LookupStatus::kTempFail) << a.detail;
}

TEST_F(CaresResolverTest, ServfailFromUpstreamIsTempFailAndNotCached) {
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "servfail.test");
  EXPECT_EQ(a.status, LookupStatus::kTempFail) << a.detail;
  EXPECT_NE(a.detail.find("servfail.test"), std::string::npos) << a.detail;
  EXPECT_GE(servfail_.queries(), 1) << "dnsmasq did not forward the zone";
  EXPECT_EQ(resolver->cache_size(), 0u);
  // Asked again, not answered from a cache: the upstream may have recovered.
  const uint64_t sent = resolver->queries_sent();
  EXPECT_EQ(Mx(*resolver, "servfail.test").status, LookupStatus::kTempFail);
  EXPECT_GT(resolver->queries_sent(), sent);
}

TEST_F(CaresResolverTest, ServfailForAnMxHostLeavesThatHostUnresolved) {
  // The MX record is answered, its host's addresses are not: the host stays
  // in the answer with kTempFail, so the deliverer says 4.4.3, not 5.1.2.
  auto resolver = MakeResolver();
  MxAnswer a = Mx(*resolver, "half.test");
  ASSERT_EQ(a.status, LookupStatus::kOk) << a.detail;
  ASSERT_EQ(Names(a), (std::vector<std::string>{"mx.servfail.test"}));
  EXPECT_EQ(a.hosts[0].addresses.status, LookupStatus::kTempFail) << a.hosts[0].addresses.detail;
  EXPECT_TRUE(a.hosts[0].addresses.ipv4.empty());
}

TEST_F(CaresResolverTest, UnreachableUpstreamIsTempFail) {
  // dnsmasq forwards unreachable.test to a closed port and never answers the
  // client: the lookup ends at the resolver's own timeout, as kTempFail.
  CaresResolver::Options options;
  options.tries = 1;
  auto resolver = MakeResolver(options);
  const auto start = std::chrono::steady_clock::now();
  MxAnswer a = Mx(*resolver, "unreachable.test");
  EXPECT_EQ(a.status, LookupStatus::kTempFail) << a.detail;
  EXPECT_NE(a.detail.find("unreachable.test"), std::string::npos) << a.detail;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(resolver->cache_size(), 0u);
}

TEST(CaresResolverCreate, RejectsBadServerList) {
  asio::io_context io;
  CaresResolver::Options options;
  options.servers = {"not an address"};
  auto resolver = CaresResolver::Create(io.get_executor(), options);
  EXPECT_EQ(resolver.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CaresResolverCreate, DestroyWithQueryInFlightDropsCallback) {
  asio::io_context io;
  int port = 0;
  int silent = BindUdp(&port);
  CaresResolver::Options options;
  options.servers = {absl::StrCat("127.0.0.1:", port)};
  auto resolver = CaresResolver::Create(io.get_executor(), options);
  ASSERT_TRUE(resolver.ok());
  bool called = false;
  (*resolver)->ResolveMx("example.test", [&](MxAnswer) { called = true; });
  io.run_for(50ms);
  resolver->reset();
  io.restart();
  io.run_for(50ms);
  EXPECT_FALSE(called);
  close(silent);
}

}  // namespace
}  // namespace tern::dns
