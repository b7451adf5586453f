// Tests MTA-STS: the policy and record grammar, MX matching, discovery and
// caching (with a scripted resolver and fetch), and the HTTPS fetch against
// an in-process TLS server with a certificate from a throwaway CA.

#include "services/deliverer/mta_sts.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/post.hpp"
#include "asio/use_awaitable.hpp"
#include "gtest/gtest.h"
#include "lib/net/connection.h"
#include "services/deliverer/test_certs.h"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;

constexpr char kPolicy[] =
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.backup.example.com\r\nmax_age: 86400\r\n";

TEST(StsPolicyTest, ParsesAnEnforcePolicy) {
  absl::StatusOr<StsPolicy> p = ParseStsPolicy(kPolicy);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->mode, StsMode::kEnforce);
  EXPECT_EQ(p->mx, (std::vector<std::string>{"mx1.example.com", "*.backup.example.com"}));
  EXPECT_EQ(p->max_age, 86400s);
}

TEST(StsPolicyTest, AcceptsBareLfUnknownKeysAndTakesTheFirstOfARepeatedKey) {
  absl::StatusOr<StsPolicy> p =
      ParseStsPolicy("version: STSv1\nmode: testing\nextension: whatever\nmode: enforce\nmx: MX.Example.COM.\n"
                     "max_age:604800\n\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->mode, StsMode::kTesting);
  EXPECT_EQ(p->mx, (std::vector<std::string>{"mx.example.com"}));
  EXPECT_EQ(p->max_age, 604800s);
}

TEST(StsPolicyTest, ModeNoneNeedsNoMx) {
  absl::StatusOr<StsPolicy> p = ParseStsPolicy("version: STSv1\r\nmode: none\r\nmax_age: 0\r\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->mode, StsMode::kNone);
}

TEST(StsPolicyTest, RefusesBrokenPoliciesSayingWhy) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"mode: enforce\nmx: a.b\nmax_age: 1\n", "no version"},
      {"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", "unsupported version"},
      {"version: STSv1\nmx: a.b\nmax_age: 1\n", "no mode"},
      {"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", "unknown mode"},
      {"version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age"},
      {"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n", "max_age"},
      {"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -5\n", "max_age"},
      {"version: STSv1\nmode: enforce\nmax_age: 10\n", "without any mx"},
      {"version: STSv1\nmode: enforce\nmx: bad_host!\nmax_age: 10\n", "mx \"bad_host!\""},
      {"version: STSv1\nmode: enforce\nmx: *.*.a.b\nmax_age: 10\n", "mx"},
      {"<html>not a policy</html>\n", "line 1"},
  };
  for (const auto& [text, why] : cases) {
    absl::StatusOr<StsPolicy> p = ParseStsPolicy(text);
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_NE(p.status().message().find(why), std::string::npos) << text << " -> " << p.status();
  }
}

TEST(StsPolicyTest, WildcardMatchesExactlyOneLabel) {
  StsPolicy p;
  p.mx = {"mx1.example.com", "*.backup.example.com"};
  EXPECT_TRUE(p.MatchesMx("mx1.example.com"));
  EXPECT_TRUE(p.MatchesMx("MX1.Example.Com."));
  EXPECT_TRUE(p.MatchesMx("a.backup.example.com"));
  EXPECT_FALSE(p.MatchesMx("backup.example.com"));
  EXPECT_FALSE(p.MatchesMx("a.b.backup.example.com"));
  EXPECT_FALSE(p.MatchesMx("mx2.example.com"));
  EXPECT_FALSE(p.MatchesMx("evilbackup.example.com"));
  EXPECT_FALSE(p.MatchesMx(""));
}

TEST(StsRecordTest, FindsTheIdOfTheOneStsRecord) {
  EXPECT_EQ(ParseStsRecord({"v=spf1 -all", "v=STSv1; id=20261123T1;"}), "20261123T1");
  EXPECT_EQ(ParseStsRecord({"v=STSv1 ;id=abc ; ext=1"}), "abc");
  EXPECT_EQ(ParseStsRecord({}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=spf1 -all"}), std::nullopt);
  // Two STS records are as good as none (RFC 8461 §3.1).
  EXPECT_EQ(ParseStsRecord({"v=STSv1; id=a;", "v=STSv1; id=b;"}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=STSv10; id=a;"}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=STSv1;"}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=STSv1; id=has-dash;"}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=STSv1; id=123456789012345678901234567890123;"}), std::nullopt);
  EXPECT_EQ(ParseStsRecord({"v=STSv1; junk; id=a"}), std::nullopt);
}

// TXT records by name, and the addresses of any host (for the HTTPS fetch).
class ScriptedResolver : public dns::MxResolver {
 public:
  explicit ScriptedResolver(asio::io_context& io) : io_(io) {}
  void ResolveMx(std::string, MxCallback done) override {
    dns::MxAnswer a;
    a.status = dns::LookupStatus::kTempFail;
    asio::post(io_, [done = std::move(done), a]() mutable { done(std::move(a)); });
  }
  void ResolveHost(std::string host, HostCallback done) override {
    dns::HostAnswer a;
    if (host == "mta-sts.x.test") {
      a.ipv4 = {"127.0.0.1"};
    } else {
      a.status = dns::LookupStatus::kNoSuchDomain;
      a.detail = host + ": host not found (NXDOMAIN)";
    }
    asio::post(io_, [done = std::move(done), a]() mutable { done(std::move(a)); });
  }
  void ResolveTxt(std::string name, TxtCallback done) override {
    ++txt_queries;
    dns::TxtAnswer a;
    if (auto it = txt.find(name); it != txt.end()) {
      a = it->second;
    } else {
      a.status = dns::LookupStatus::kNoSuchDomain;
    }
    asio::post(io_, [done = std::move(done), a]() mutable { done(std::move(a)); });
  }

  // MTA-STS never asks for TLSA: an unvalidated NODATA.
  void ResolveTlsa(std::string, TlsaCallback done) override {
    asio::post(io_, [done = std::move(done)]() mutable { done(dns::TlsaAnswer()); });
  }

  std::map<std::string, dns::TxtAnswer> txt;
  int txt_queries = 0;

 private:
  asio::io_context& io_;
};

dns::TxtAnswer Record(const std::string& id) {
  return dns::TxtAnswer{dns::LookupStatus::kOk, "", {"v=STSv1; id=" + id}};
}

class MtaStsDiscoveryTest : public ::testing::Test {
 protected:
  MtaStsDiscoveryTest() : resolver_(io_) { Restart(/*with_store=*/false); }

  // A new MtaSts, as a (re)started deliverer has: an empty cache; with the
  // store (store_, shared by every "deliverer" of the test) or without.
  void Restart(bool with_store) {
    MtaSts::Options options;
    if (with_store) {
      options.load = [this](size_t store, const std::string& domain,
                            absl::AnyInvocable<void(std::optional<MtaSts::StoredPolicy>)> done) {
        loads_.push_back(domain);
        load_stores_.push_back(store);
        std::optional<MtaSts::StoredPolicy> found;
        std::map<std::string, MtaSts::StoredPolicy>& kept = store == 0 ? store_ : other_store_;
        if (auto it = kept.find(domain); it != kept.end()) {
          found = it->second;
        }
        asio::post(io_, [done = std::move(done), found]() mutable { done(found); });
      };
      options.save = [this](size_t store, const std::string& domain, const MtaSts::StoredPolicy& p) {
        (store == 0 ? store_ : other_store_)[domain] = p;
      };
      options.wall_ms = [this] { return wall_ms_; };
    }
    options.now = [this] { return now_; };
    options.fetch = [this](const std::string& domain, absl::AnyInvocable<void(absl::StatusOr<std::string>)> done) {
      fetched_.push_back(domain);
      absl::StatusOr<std::string> answer = policy_text_;
      // Answers later, as a network fetch would.
      asio::post(io_, [done = std::move(done), answer]() mutable { done(answer); });
    };
    sts_ = std::make_unique<MtaSts>(io_.get_executor(), resolver_, nullptr, options);
  }

  StsLookup Find(const std::string& domain, size_t store = 0) {
    std::optional<StsLookup> result;
    sts_->Find(domain, [&](StsLookup l) { result = std::move(l); }, store);
    EXPECT_FALSE(result.has_value()) << "answered inline";
    io_.restart();
    io_.run_for(5s);
    EXPECT_TRUE(result.has_value());
    return result.value_or(StsLookup{});
  }

  asio::io_context io_;
  ScriptedResolver resolver_;
  std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::time_point() + 1000h;
  absl::StatusOr<std::string> policy_text_ = std::string(kPolicy);
  std::vector<std::string> fetched_;
  std::map<std::string, MtaSts::StoredPolicy> store_;        // store 0
  std::map<std::string, MtaSts::StoredPolicy> other_store_;  // every other store (a second queue shard)
  std::vector<std::string> loads_;
  std::vector<size_t> load_stores_;  // the store of each load
  int64_t wall_ms_ = 1'800'000'000'000;
  std::unique_ptr<MtaSts> sts_;
};

TEST_F(MtaStsDiscoveryTest, AFetchedPolicyIsStoredAndARestartedDelivererUsesItWithoutFetching) {
  Restart(/*with_store=*/true);
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_EQ(Find("example.com").source, "fetched");
  ASSERT_EQ(store_.count("example.com"), 1u);
  EXPECT_EQ(store_["example.com"].id, "one");
  EXPECT_EQ(store_["example.com"].text, kPolicy);
  EXPECT_EQ(store_["example.com"].expires_unix_ms, wall_ms_ + 86'400'000);  // max_age 86400

  // Restarted: the record's id is unchanged, so the stored policy is used.
  Restart(/*with_store=*/true);
  StsLookup again = Find("example.com");
  ASSERT_TRUE(again.policy.has_value()) << again.problem;
  EXPECT_EQ(again.source, "stored");
  EXPECT_EQ(again.policy->mode, StsMode::kEnforce);
  EXPECT_EQ(fetched_.size(), 1u);
  // Then it is in memory: the store is not asked again.
  EXPECT_EQ(Find("example.com").source, "cached");
  EXPECT_EQ(loads_.size(), 2u);
}

TEST_F(MtaStsDiscoveryTest, AStoredPolicyStillAppliesAfterARestartWhenTheRecordIsBlocked) {
  Restart(/*with_store=*/true);
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_TRUE(Find("example.com").policy.has_value());
  // The attacker now answers SERVFAIL for the record, and the deliverer
  // restarts (its memory is gone): the policy still holds (RFC 8461 §5.1).
  resolver_.txt["_mta-sts.example.com"] = dns::TxtAnswer{dns::LookupStatus::kTempFail, "SERVFAIL", {}};
  Restart(/*with_store=*/true);
  StsLookup blocked = Find("example.com");
  ASSERT_TRUE(blocked.policy.has_value());
  EXPECT_EQ(blocked.source, "stored");
  EXPECT_EQ(blocked.problem, "SERVFAIL");
  // Without a store, a restarted deliverer has nothing (the old behaviour).
  Restart(/*with_store=*/false);
  EXPECT_FALSE(Find("example.com").policy.has_value());
}

TEST_F(MtaStsDiscoveryTest, AStoredPolicyPastItsMaxAgeOrWithANewIdIsNotUsed) {
  Restart(/*with_store=*/true);
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_TRUE(Find("example.com").policy.has_value());
  // A new id: fetched again although the store has the old policy.
  resolver_.txt["_mta-sts.example.com"] = Record("two");
  Restart(/*with_store=*/true);
  EXPECT_EQ(Find("example.com").source, "fetched");
  EXPECT_EQ(fetched_.size(), 2u);
  EXPECT_EQ(store_["example.com"].id, "two");
  // Past its max_age (by the wall clock) it is ignored.
  resolver_.txt.erase("_mta-sts.example.com");
  wall_ms_ += 86'400'001;
  Restart(/*with_store=*/true);
  EXPECT_FALSE(Find("example.com").policy.has_value());
}

TEST_F(MtaStsDiscoveryTest, TheStoreIsAskedAboutADomainWithoutAPolicyOnlyOncePerRecheckInterval) {
  Restart(/*with_store=*/true);
  EXPECT_FALSE(Find("plain.example").policy.has_value());
  EXPECT_FALSE(Find("plain.example").policy.has_value());
  EXPECT_EQ(loads_, (std::vector<std::string>{"plain.example"}));
  now_ += MtaSts::kStoreRecheck;
  EXPECT_FALSE(Find("plain.example").policy.has_value());
  EXPECT_EQ(loads_.size(), 2u);
  EXPECT_EQ(sts_->store_loads(), 2u);
}

TEST_F(MtaStsDiscoveryTest, EachLookupLoadsFromAndSavesToTheStoreItNames) {
  Restart(/*with_store=*/true);
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_EQ(Find("example.com", /*store=*/1).source, "fetched");
  EXPECT_EQ(other_store_.count("example.com"), 1u);
  EXPECT_TRUE(store_.empty());
  EXPECT_EQ(load_stores_, (std::vector<size_t>{1}));

  // Restarted, with the record blocked: a delivery from store 0 finds
  // nothing there; within kStoreRecheck of that, one from store 1 still
  // asks its own store, and gets the policy kept there.
  resolver_.txt["_mta-sts.example.com"] = dns::TxtAnswer{dns::LookupStatus::kTempFail, "SERVFAIL", {}};
  Restart(/*with_store=*/true);
  EXPECT_FALSE(Find("example.com", /*store=*/0).policy.has_value());
  StsLookup from_one = Find("example.com", /*store=*/1);
  ASSERT_TRUE(from_one.policy.has_value());
  EXPECT_EQ(from_one.source, "stored");
  EXPECT_EQ(load_stores_, (std::vector<size_t>{1, 0, 1}));
  // Then it is in memory for every store's deliveries.
  EXPECT_EQ(Find("example.com", /*store=*/0).source, "cached");
  EXPECT_EQ(load_stores_.size(), 3u);
}

TEST_F(MtaStsDiscoveryTest, NoRecordMeansNoPolicyAndNoFetch) {
  StsLookup l = Find("example.com");
  EXPECT_FALSE(l.policy.has_value());
  EXPECT_EQ(l.source, "none");
  EXPECT_TRUE(fetched_.empty());
}

TEST_F(MtaStsDiscoveryTest, FetchesOnceAndServesTheCacheWhileTheIdStaysTheSame) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  StsLookup first = Find("Example.COM");
  ASSERT_TRUE(first.policy.has_value()) << first.problem;
  EXPECT_EQ(first.source, "fetched");
  EXPECT_EQ(first.id, "one");
  EXPECT_EQ(first.policy->mode, StsMode::kEnforce);
  StsLookup second = Find("example.com");
  EXPECT_EQ(second.source, "cached");
  EXPECT_EQ(fetched_, (std::vector<std::string>{"example.com"}));

  // A new id means a new policy: fetched again.
  resolver_.txt["_mta-sts.example.com"] = Record("two");
  policy_text_ = std::string("version: STSv1\nmode: testing\nmx: mx9.example.com\nmax_age: 3600\n");
  StsLookup third = Find("example.com");
  EXPECT_EQ(third.source, "fetched");
  EXPECT_EQ(third.policy->mode, StsMode::kTesting);
  EXPECT_EQ(fetched_.size(), 2u);
}

TEST_F(MtaStsDiscoveryTest, ACachedPolicySurvivesAMissingRecordUntilItsMaxAge) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_TRUE(Find("example.com").policy.has_value());
  // An attacker (or an outage) removes the record or breaks DNS: the cached
  // policy still applies (RFC 8461 §5.1).
  resolver_.txt.erase("_mta-sts.example.com");
  StsLookup gone = Find("example.com");
  ASSERT_TRUE(gone.policy.has_value());
  EXPECT_EQ(gone.source, "cached");
  resolver_.txt["_mta-sts.example.com"] = dns::TxtAnswer{dns::LookupStatus::kTempFail, "SERVFAIL", {}};
  StsLookup broken = Find("example.com");
  ASSERT_TRUE(broken.policy.has_value());
  EXPECT_EQ(broken.problem, "SERVFAIL");
  // After max_age (86400 s) it is gone.
  now_ += 86401s;
  StsLookup expired = Find("example.com");
  EXPECT_FALSE(expired.policy.has_value());
  EXPECT_EQ(fetched_.size(), 1u);
}

TEST_F(MtaStsDiscoveryTest, APolicyInUseIsFetchedAgainInTheSecondHalfOfItsMaxAge) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_EQ(Find("example.com").source, "fetched");
  now_ += 43000s;  // max_age is 86400 s: still in the first half
  EXPECT_EQ(Find("example.com").source, "cached");
  EXPECT_EQ(fetched_.size(), 1u);
  now_ += 1000s;  // the second half: refreshed, and good for max_age again
  EXPECT_EQ(Find("example.com").source, "fetched");
  EXPECT_EQ(fetched_.size(), 2u);
  now_ += 43000s;
  EXPECT_EQ(Find("example.com").source, "cached");
  // A refresh that fails keeps the policy (and says why).
  now_ += 1000s;
  policy_text_ = absl::UnavailableError("connect to 127.0.0.1: Connection refused");
  StsLookup kept = Find("example.com");
  ASSERT_TRUE(kept.policy.has_value());
  EXPECT_EQ(kept.source, "cached");
  EXPECT_NE(kept.problem.find("Connection refused"), std::string::npos) << kept.problem;
  EXPECT_EQ(fetched_.size(), 3u);
}

TEST_F(MtaStsDiscoveryTest, AFailedFetchKeepsTheCachedPolicyAndIsNotRetriedAtOnce) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  ASSERT_TRUE(Find("example.com").policy.has_value());
  resolver_.txt["_mta-sts.example.com"] = Record("two");
  policy_text_ = absl::UnavailableError("connect to 127.0.0.1: Connection refused");
  StsLookup l = Find("example.com");
  ASSERT_TRUE(l.policy.has_value());
  EXPECT_EQ(l.id, "one");
  EXPECT_EQ(l.source, "cached");
  EXPECT_NE(l.problem.find("Connection refused"), std::string::npos) << l.problem;
  EXPECT_EQ(fetched_.size(), 2u);
  // Within kFetchRetry: not fetched again.
  now_ += 60s;
  EXPECT_EQ(Find("example.com").id, "one");
  EXPECT_EQ(fetched_.size(), 2u);
  // After it: fetched again, and the new policy takes over.
  now_ += MtaSts::kFetchRetry;
  policy_text_ = std::string(kPolicy);
  StsLookup renewed = Find("example.com");
  EXPECT_EQ(renewed.id, "two");
  EXPECT_EQ(renewed.source, "fetched");
  EXPECT_EQ(fetched_.size(), 3u);
}

TEST_F(MtaStsDiscoveryTest, AnInvalidPolicyIsNoPolicyAndSaysWhy) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  policy_text_ = std::string("version: STSv1\nmode: sometimes\nmx: a.b\nmax_age: 5\n");
  StsLookup l = Find("example.com");
  EXPECT_FALSE(l.policy.has_value());
  EXPECT_NE(l.problem.find("is invalid: unknown mode \"sometimes\""), std::string::npos) << l.problem;
}

TEST_F(MtaStsDiscoveryTest, ConcurrentLookupsOfOneDomainShareOneFetch) {
  resolver_.txt["_mta-sts.example.com"] = Record("one");
  std::vector<StsLookup> results;
  for (int i = 0; i < 5; ++i) {
    sts_->Find("example.com", [&](StsLookup l) { results.push_back(std::move(l)); });
  }
  io_.run_for(5s);
  ASSERT_EQ(results.size(), 5u);
  for (const StsLookup& l : results) {
    EXPECT_TRUE(l.policy.has_value());
  }
  EXPECT_EQ(fetched_.size(), 1u);
  EXPECT_EQ(resolver_.txt_queries, 1);
}

// -- the HTTPS fetch against a real TLS server ---------------------------------

class PolicyFetchTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(TestCerts::Get().ok) << "openssl could not make test certificates"; }

  absl::StatusOr<std::string> Fetch(const std::string& response, bool trusted_server = true,
                                    const std::string& domain = "x.test") {
    const TestCerts& certs = TestCerts::Get();
    HttpsResponder server(io_, trusted_server ? ServerTls(certs.cert, certs.key)
                                            : ServerTls(certs.self_signed, certs.self_signed_key));
    server.response = response;
    std::optional<absl::StatusOr<std::string>> result;
    FetchStsPolicyText(io_.get_executor(), resolver_, ClientTls(certs.ca), domain, server.port(), 5s,
                       [&](absl::StatusOr<std::string> r) { result = std::move(r); });
    io_.restart();
    while (!result.has_value() && io_.run_one_for(5s) > 0) {
    }
    requests_ = server.requests;
    port_ = server.port();
    return result.value_or(absl::DeadlineExceededError("test: no answer"));
  }

  asio::io_context io_;
  ScriptedResolver resolver_{io_};
  std::vector<std::string> requests_;
  uint16_t port_ = 0;  // the responder's of the last Fetch
};

TEST_F(PolicyFetchTest, GetsThePolicyWithContentLength) {
  const std::string body = kPolicy;
  absl::StatusOr<std::string> r =
      Fetch(absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
                         body.size(), "\r\n\r\n", body));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, body);
  ASSERT_EQ(requests_.size(), 1u);
  // Not port 443 here, so Host names the port (RFC 9110 §7.2).
  EXPECT_NE(requests_[0].find(absl::StrCat("GET /.well-known/mta-sts.txt HTTP/1.1\nHost: mta-sts.x.test:", port_, "\n")),
            std::string::npos)
      << requests_[0];
}

TEST_F(PolicyFetchTest, GetsAChunkedPolicyAndOneEndedByClose) {
  absl::StatusOr<std::string> chunked =
      Fetch("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            "10\r\nversion: STSv1\r\n\r\n1;ext=1\r\n\n\r\n0\r\n\r\n");
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  EXPECT_EQ(*chunked, "version: STSv1\r\n\n");
  absl::StatusOr<std::string> closed = Fetch("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nmode: none\r\n");
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(*closed, "mode: none\r\n");
}

TEST_F(PolicyFetchTest, RefusesRedirectsOtherTypesHugeBodiesAndUntrustedCertificates) {
  absl::StatusOr<std::string> redirect =
      Fetch("HTTP/1.1 301 Moved Permanently\r\nLocation: https://evil.test/\r\nContent-Length: 0\r\n\r\n");
  ASSERT_FALSE(redirect.ok());
  EXPECT_NE(redirect.status().message().find("HTTP status 301"), std::string::npos) << redirect.status();

  absl::StatusOr<std::string> html =
      Fetch("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 4\r\n\r\n<p/>");
  ASSERT_FALSE(html.ok());
  EXPECT_NE(html.status().message().find("not served as text/plain"), std::string::npos) << html.status();

  absl::StatusOr<std::string> huge =
      Fetch("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("larger than 64 KiB"), std::string::npos) << huge.status();

  absl::StatusOr<std::string> untrusted =
      Fetch("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n", /*trusted_server=*/false);
  ASSERT_FALSE(untrusted.ok());
  EXPECT_NE(untrusted.status().message().find("mta-sts.x.test[127.0.0.1]"), std::string::npos) << untrusted.status();
  EXPECT_TRUE(requests_.empty()) << "a request went to an unverified server";

  absl::StatusOr<std::string> nohost = Fetch("", true, "nowhere.test");
  ASSERT_FALSE(nohost.ok());
  EXPECT_NE(nohost.status().message().find("mta-sts.nowhere.test"), std::string::npos) << nohost.status();
}

}  // namespace
}  // namespace tern::deliverer
