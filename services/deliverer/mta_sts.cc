#include "services/deliverer/mta_sts.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asio/co_spawn.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/address/mailbox.h"
#include "lib/dns/resolver_await.h"
#include "services/deliverer/https_client.h"

namespace tern::deliverer {
namespace {

using Clock = std::chrono::steady_clock;

// §3.3 leaves the size to the sender; real policies are a few hundred bytes.
constexpr size_t kMaxPolicyBytes = 64 * 1024;

}  // namespace

// -- policy fetch (over https_client.h) -----------------------------------------

namespace {

// co_await adapter for `call(domain, done)`, whose `done` gets a Result: the
// fetch (see lib/dns/resolver_await.h for the form).
template <typename Result, typename Call>
asio::awaitable<Result> AwaitDomainCall(const Call* call, std::string domain) {
  auto init = [call, domain = std::move(domain)](auto handler) {
    (*call)(domain, [h = std::move(handler)](Result result) mutable { std::move(h)(std::move(result)); });
  };
  return asio::async_initiate<decltype(asio::use_awaitable), void(Result)>(std::move(init), asio::use_awaitable);
}

// The same for the store lookup, which also names the store.
asio::awaitable<std::optional<MtaSts::StoredPolicy>> AwaitLoad(const MtaSts::StoreLoad* load, size_t store,
                                                                 std::string domain) {
  using Result = std::optional<MtaSts::StoredPolicy>;
  auto init = [load, store, domain = std::move(domain)](auto handler) {
    (*load)(store, domain, [h = std::move(handler)](Result result) mutable { std::move(h)(std::move(result)); });
  };
  return asio::async_initiate<decltype(asio::use_awaitable), void(Result)>(std::move(init), asio::use_awaitable);
}

asio::awaitable<absl::StatusOr<std::string>> AwaitFetch(const MtaSts::Fetcher* fetch, std::string domain) {
  return AwaitDomainCall<absl::StatusOr<std::string>>(fetch, std::move(domain));
}

}  // namespace

void FetchStsPolicyText(asio::any_io_executor executor, dns::MxResolver& resolver,
                        std::shared_ptr<asio::ssl::context> tls, std::string domain, uint16_t port,
                        std::chrono::milliseconds timeout, absl::AnyInvocable<void(absl::StatusOr<std::string>)> done) {
  HttpsRequest request;
  request.host = absl::StrCat("mta-sts.", domain);
  request.port = port;
  request.target = "/.well-known/mta-sts.txt";
  request.headers = {{"Accept", "text/plain"}};
  request.timeout = timeout;
  request.max_body = kMaxPolicyBytes;
  // RFC 8461 §3.3: only a 200 counts, and a redirect must not be followed,
  // so a 3xx is a failure like any other status; §3.2: the policy is served
  // as text/plain (parameters allowed). Checked before the body is read.
  request.check_head = [](const HttpsResponse& head) {
    if (head.status != 200) {
      return absl::UnavailableError(
          absl::StrCat("HTTP status ", head.status, head.reason.empty() ? "" : " ", head.reason));
    }
    if (head.MediaType() != "text/plain") {
      return absl::UnavailableError("the policy is not served as text/plain");
    }
    return absl::OkStatus();
  };
  std::string host = request.host;
  SendHttps(std::move(executor), resolver, std::move(tls), std::move(request),
            [host = std::move(host), done = std::move(done)](absl::StatusOr<HttpsResponse> response) mutable {
              if (!response.ok()) {
                done(absl::Status(response.status().code(), absl::StrCat("policy fetch from ", host, " failed: ",
                                                                         response.status().message())));
                return;
              }
              done(std::move(response->body));
            });
}

// -- discovery and cache -------------------------------------------------------

class MtaSts::Impl : public std::enable_shared_from_this<MtaSts::Impl> {
 public:
  Impl(asio::any_io_executor executor, dns::MxResolver& resolver, std::shared_ptr<asio::ssl::context> tls,
       Options options)
      : executor_(std::move(executor)), resolver_(resolver), tls_(std::move(tls)), options_(std::move(options)) {
    if (!options_.now) {
      options_.now = [] { return Clock::now(); };
    }
    if (!options_.wall_ms) {
      options_.wall_ms = [] { return absl::ToUnixMillis(absl::Now()); };
    }
    if (!options_.fetch) {
      options_.fetch = [this](const std::string& domain, absl::AnyInvocable<void(absl::StatusOr<std::string>)> done) {
        FetchStsPolicyText(executor_, resolver_, tls_, domain, options_.port, options_.timeout, std::move(done));
      };
    }
  }

  void Find(std::string domain, absl::AnyInvocable<void(StsLookup)> done, size_t store) {
    domain = address::CanonicalHostName(domain);
    auto [it, first] = waiting_.try_emplace(domain);
    it->second.push_back(std::move(done));
    if (!first) {
      return;  // joins the discovery in progress
    }
    std::weak_ptr<Impl> weak = weak_from_this();
    asio::co_spawn(executor_, Discover(shared_from_this(), domain, store),
                   [weak, domain](std::exception_ptr e, StsLookup lookup) {
                     auto self = weak.lock();
                     if (!self) {
                       return;
                     }
                     if (e) {
                       lookup = StsLookup{};
                       lookup.problem = "MTA-STS discovery failed unexpectedly";
                     }
                     auto node = self->waiting_.extract(domain);
                     for (auto& callback : node.mapped()) {
                       callback(lookup);
                     }
                   });
  }

  size_t cache_size() const { return cache_.size(); }
  uint64_t fetches() const { return fetches_; }
  uint64_t store_loads() const { return store_loads_; }

 private:
  struct Entry {
    StsPolicy policy;
    std::string id;
    Clock::time_point expires;
  };

  // Ends on the executor (co_spawn's completion), so callers are never
  // called inline from Find.
  static asio::awaitable<StsLookup> Discover(std::shared_ptr<Impl> self, std::string domain, size_t store) {
    const Clock::time_point now = self->options_.now();
    StsLookup cached;
    if (auto it = self->cache_.find(domain); it != self->cache_.end()) {
      if (it->second.expires > now) {
        cached.policy = it->second.policy;
        cached.id = it->second.id;
        cached.source = "cached";
      } else {
        self->cache_.erase(it);
      }
    }
    if (!cached.policy.has_value() && self->options_.load && self->StoreCheckDue(store, domain, now)) {
      ++self->store_loads_;
      std::optional<StoredPolicy> stored = co_await AwaitLoad(&self->options_.load, store, domain);
      if (stored.has_value()) {
        cached = self->Adopt(domain, *stored);
      }
    }
    const std::string txt_name = absl::StrCat("_mta-sts.", domain);
    dns::TxtAnswer txt = co_await dns::AwaitTxt(self->resolver_, txt_name);
    if (txt.status == dns::LookupStatus::kTempFail) {
      cached.problem = txt.detail;
      co_return cached;
    }
    std::optional<std::string> id = ParseStsRecord(txt.records);
    if (!id.has_value()) {
      co_return cached;
    }
    if (cached.policy.has_value() && cached.id == *id) {
      // The same policy: used as it is until the second half of its
      // max_age, then fetched again (§5.1: refreshed before it expires, so
      // that a policy in use never lapses unless its host stays away for
      // half a max_age). A failed refresh keeps it.
      auto entry = self->cache_.find(domain);
      if (entry == self->cache_.end() || entry->second.expires - now > cached.policy->max_age / 2) {
        co_return cached;
      }
    }
    const std::string retry_key = absl::StrCat(domain, " ", *id);
    if (auto it = self->failed_.find(retry_key); it != self->failed_.end()) {
      if (it->second.first > now) {
        cached.problem = it->second.second;
        co_return cached;
      }
      self->failed_.erase(it);
    }
    ++self->fetches_;
    absl::StatusOr<std::string> text = co_await AwaitFetch(&self->options_.fetch, domain);
    absl::StatusOr<StsPolicy> policy =
        text.ok() ? ParseStsPolicy(*text)
                  : absl::StatusOr<StsPolicy>(text.status());
    if (!policy.ok()) {
      std::string why = text.ok() ? absl::StrCat("policy of ", domain, " (id ", *id, ") is invalid: ",
                                                 policy.status().message())
                                  : std::string(text.status().message());
      if (self->failed_.size() >= self->options_.max_entries) {
        self->failed_.clear();
      }
      self->failed_[retry_key] = {self->options_.now() + kFetchRetry, why};
      cached.problem = std::move(why);
      co_return cached;
    }
    StsLookup fresh;
    fresh.policy = *policy;
    fresh.id = *id;
    fresh.source = "fetched";
    if (policy->max_age.count() > 0) {
      if (self->cache_.size() >= self->options_.max_entries) {
        self->cache_.clear();
      }
      self->cache_[domain] = Entry{*policy, *id, self->options_.now() + policy->max_age};
      if (self->options_.save) {
        const int64_t max_age_ms = std::chrono::duration_cast<std::chrono::milliseconds>(policy->max_age).count();
        self->options_.save(store, domain, StoredPolicy{*id, *text, self->options_.wall_ms() + max_age_ms});
      }
    } else {
      self->cache_.erase(domain);
    }
    co_return fresh;
  }

  // True when `domain` was not looked up in store `store` within
  // kStoreRecheck; notes the lookup. Most domains have no policy at all, so
  // without this every message to them would cost a store round trip.
  bool StoreCheckDue(size_t store, const std::string& domain, Clock::time_point now) {
    if (store >= store_checked_.size()) {
      store_checked_.resize(store + 1);
    }
    std::map<std::string, Clock::time_point>& checked = store_checked_[store];
    auto it = checked.find(domain);
    if (it != checked.end() && it->second > now) {
      return false;
    }
    if (checked.size() >= options_.max_entries) {
      checked.clear();
    }
    checked[domain] = now + kStoreRecheck;
    return true;
  }

  // A stored policy that has not expired and still parses goes into the
  // cache for what is left of its max_age, and is the lookup's result so far.
  StsLookup Adopt(const std::string& domain, const StoredPolicy& stored) {
    StsLookup out;
    const int64_t left_ms = stored.expires_unix_ms - options_.wall_ms();
    absl::StatusOr<StsPolicy> policy = ParseStsPolicy(stored.text);
    if (left_ms <= 0 || !policy.ok() || stored.id.empty()) {
      return out;
    }
    if (cache_.size() >= options_.max_entries) {
      cache_.clear();
    }
    cache_[domain] = Entry{*policy, stored.id, options_.now() + std::chrono::milliseconds(left_ms)};
    out.policy = *std::move(policy);
    out.id = stored.id;
    out.source = "stored";
    return out;
  }

  asio::any_io_executor executor_;
  dns::MxResolver& resolver_;
  std::shared_ptr<asio::ssl::context> tls_;
  Options options_;
  std::map<std::string, Entry> cache_;
  // Per store: domain → when that store may be asked about it again.
  std::vector<std::map<std::string, Clock::time_point>> store_checked_;
  uint64_t store_loads_ = 0;
  // "domain id" → (no fetch before, why the last one failed).
  std::map<std::string, std::pair<Clock::time_point, std::string>> failed_;
  std::map<std::string, std::vector<absl::AnyInvocable<void(StsLookup)>>> waiting_;
  uint64_t fetches_ = 0;
};

MtaSts::MtaSts(asio::any_io_executor executor, dns::MxResolver& resolver, std::shared_ptr<asio::ssl::context> tls,
               Options options)
    : impl_(std::make_shared<Impl>(std::move(executor), resolver, std::move(tls), std::move(options))) {}

MtaSts::~MtaSts() = default;

void MtaSts::Find(std::string domain, absl::AnyInvocable<void(StsLookup)> done, size_t store) {
  impl_->Find(std::move(domain), std::move(done), store);
}

size_t MtaSts::cache_size() const { return impl_->cache_size(); }
uint64_t MtaSts::fetches() const { return impl_->fetches(); }
uint64_t MtaSts::store_loads() const { return impl_->store_loads(); }

}  // namespace tern::deliverer
