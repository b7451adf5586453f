#include "lib/dns/cares_resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "asio/post.hpp"
#include "asio/posix/stream_descriptor.hpp"
#include "asio/steady_timer.hpp"
#include "lib/address/mailbox.h"

namespace tern::dns {

namespace {

using Clock = std::chrono::steady_clock;

// A most hosts we resolve for one domain; more MX records than this are
// ignored (Postfix caps the same way with smtp_mx_address_limit).
constexpr size_t kMaxMxHosts = 32;

struct MxRecord {
  uint16_t preference = 0;
  std::string exchange;
};

// Puts each run of equal preference (the items are sorted by preference) in
// a new uniformly random order: RFC 5321 §5.1 asks for random selection
// among equal preferences; Haraka's neighbour swap is biased. For MxRecord
// before the hosts are resolved and for MxHost when an answer comes from the
// cache.
template <typename T, typename Rng>
void ShuffleEqualPreferences(std::vector<T>& items, Rng& rng) {
  for (auto first = items.begin(); first != items.end();) {
    auto last = std::find_if(first, items.end(), [&](const T& x) { return x.preference != first->preference; });
    std::shuffle(first, last, rng);
    first = last;
  }
}

// The result of one DNS query (one name, one type), as cached.
struct QueryResult {
  enum class Kind { kAnswer, kNoData, kNxDomain, kError };
  Kind kind = Kind::kError;
  std::string detail;                 // for kError
  std::vector<MxRecord> mx;           // MX queries
  std::vector<std::string> addresses;  // A / AAAA queries
  std::vector<std::string> texts;      // TXT queries: one per record, strings joined
  std::vector<TlsaRecord> tlsa;        // TLSA queries
  // The CNAME records of the answer section, owner -> target (normalised):
  // where the queried name led (RFC 7672 §2.2.2 uses the end of the chain).
  std::vector<std::pair<std::string, std::string>> cnames;
  bool secure = false;                // the answer carried AD (validated)
  uint32_t ttl = 0;                   // seconds to cache; 0 = do not cache

  bool empty() const { return mx.empty() && addresses.empty() && texts.empty() && tlsa.empty(); }
};

// Header bits (RFC 1035 §4.1.1, RFC 4035 §3.2.3): AD in the fourth byte,
// RCODE its low four bits.
constexpr unsigned char kAdBit = 0x20;
constexpr int kRcodeNxDomain = 3;

uint16_t Get16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Get32(const unsigned char* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | p[3];
}

// Expands the (possibly compressed) name at `p`; returns false on a malformed
// name. *len receives the bytes the name occupies at `p`.
bool ExpandName(const unsigned char* p, const unsigned char* abuf, int alen, std::string* name, long* len) {
  char* out = nullptr;
  if (ares_expand_name(p, abuf, alen, &out, len) != ARES_SUCCESS) {
    return false;
  }
  *name = out;
  ares_free_string(out);
  return true;
}

// Parses a DNS response (every bound checked: the answer is untrusted input).
// Collects the records of `qtype` from the answer section, the smallest TTL
// among answer records, and the RFC 2308 negative TTL from an SOA in the
// authority section.
bool ParseResponse(const unsigned char* abuf, int alen, int qtype, QueryResult* result, uint32_t* min_ttl,
                   std::optional<uint32_t>* negative_ttl) {
  if (alen < 12) {
    return false;
  }
  const unsigned char* const end = abuf + alen;
  const int qdcount = Get16(abuf + 4);
  const int ancount = Get16(abuf + 6);
  const int nscount = Get16(abuf + 8);
  const unsigned char* p = abuf + 12;
  std::string name;
  long len = 0;
  for (int i = 0; i < qdcount; ++i) {
    if (!ExpandName(p, abuf, alen, &name, &len) || p + len + 4 > end) {
      return false;
    }
    p += len + 4;
  }
  *min_ttl = UINT32_MAX;
  for (int i = 0; i < ancount + nscount; ++i) {
    const bool answer = i < ancount;
    if (!ExpandName(p, abuf, alen, &name, &len) || p + len + 10 > end) {
      return false;
    }
    p += len;
    const int type = Get16(p);
    const int klass = Get16(p + 2);
    const uint32_t ttl = Get32(p + 4) & 0x7fffffffu;  // RFC 2181 §8: top bit set means 0
    const int rdlen = Get16(p + 8);
    p += 10;
    if (p + rdlen > end) {
      return false;
    }
    const unsigned char* rdata = p;
    p += rdlen;
    if (klass != ns_c_in) {
      continue;
    }
    if (answer) {
      *min_ttl = std::min(*min_ttl, ttl);
      if (type == ns_t_cname && type != qtype) {
        std::string target;
        long target_len = 0;
        if (!ExpandName(rdata, abuf, alen, &target, &target_len) || rdata + target_len > rdata + rdlen) {
          return false;
        }
        result->cnames.emplace_back(address::CanonicalHostName(name), address::CanonicalHostName(target));
        continue;
      }
      if (type != qtype) {
        continue;  // e.g. the CNAME leading to the records we want
      }
      if (type == ns_t_mx) {
        if (rdlen < 3) {
          return false;
        }
        MxRecord mx;
        mx.preference = Get16(rdata);
        if (!ExpandName(rdata + 2, abuf, alen, &mx.exchange, &len) || rdata + 2 + len > rdata + rdlen) {
          return false;
        }
        mx.exchange = address::CanonicalHostName(mx.exchange);
        result->mx.push_back(std::move(mx));
      } else if (type == ns_t_a && rdlen == 4) {
        char text[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, rdata, text, sizeof(text));
        result->addresses.emplace_back(text);
      } else if (type == ns_t_aaaa && rdlen == 16) {
        char text[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, rdata, text, sizeof(text));
        result->addresses.emplace_back(text);
      } else if (type == ns_t_txt) {
        // RDATA is one or more <character-string>s: a length byte, then that
        // many bytes (RFC 1035 §3.3.14).
        std::string joined;
        for (const unsigned char* s = rdata; s < rdata + rdlen;) {
          const size_t n = *s++;
          if (s + n > rdata + rdlen) {
            return false;
          }
          joined.append(reinterpret_cast<const char*>(s), n);
          s += n;
        }
        result->texts.push_back(std::move(joined));
      } else if (type == ns_t_tlsa) {
        // usage, selector, matching type, then the association data
        // (RFC 6698 §2.1); at least one octet of data.
        if (rdlen < 4) {
          return false;
        }
        result->tlsa.push_back(TlsaRecord{rdata[0], rdata[1], rdata[2],
                                          std::string(reinterpret_cast<const char*>(rdata + 3), rdlen - 3)});
      }
    } else if (type == ns_t_soa && rdlen >= 22) {
      // RFC 2308 §5: negative TTL = min(SOA TTL, SOA MINIMUM), the last field.
      *negative_ttl = std::min(ttl, Get32(rdata + rdlen - 4));
    }
  }
  return true;
}

// Where `name` leads through the CNAME records of an answer: the last
// target of the chain, or "" when the name is not an alias. A chain longer
// than the records (a loop) stops where it repeats.
std::string CanonicalName(const std::string& name, const std::vector<std::pair<std::string, std::string>>& cnames) {
  std::string at = name;
  for (size_t hops = 0; hops < cnames.size(); ++hops) {
    auto it = std::find_if(cnames.begin(), cnames.end(), [&](const auto& c) { return c.first == at; });
    if (it == cnames.end()) {
      break;
    }
    at = it->second;
  }
  return at == name ? "" : at;
}

// The status and detail of a TXT or TLSA answer from its query's result;
// true when `r` holds records to copy.
template <typename Answer>
bool SetRecordStatus(const QueryResult& r, const char* type, const std::string& name, Answer& answer) {
  switch (r.kind) {
    case QueryResult::Kind::kAnswer:
      return true;
    case QueryResult::Kind::kNoData:
      return false;
    case QueryResult::Kind::kNxDomain:
      answer.status = LookupStatus::kNoSuchDomain;
      answer.detail = absl::StrCat(name, ": not found (NXDOMAIN)");
      return false;
    case QueryResult::Kind::kError:
      answer.status = LookupStatus::kTempFail;
      answer.detail = absl::StrCat(type, " lookup for ", name, " failed: ", r.detail);
      return false;
  }
  return false;
}

const char* TypeName(int qtype) {
  switch (qtype) {
    case ns_t_mx:
      return "MX";
    case ns_t_a:
      return "A";
    case ns_t_aaaa:
      return "AAAA";
    case ns_t_txt:
      return "TXT";
    case ns_t_tlsa:
      return "TLSA";
  }
  return "?";
}

}  // namespace

class CaresResolver::Impl : public std::enable_shared_from_this<CaresResolver::Impl> {
 public:
  using QueryCallback = absl::AnyInvocable<void(const QueryResult&)>;

  Impl(asio::any_io_executor executor, Options options)
      : executor_(std::move(executor)), options_(std::move(options)), timer_(executor_) {
    if (!options_.now) {
      options_.now = [] { return Clock::now(); };
    }
    rng_.seed(options_.shuffle_seed != 0 ? options_.shuffle_seed : std::random_device{}());
  }

  ~Impl() {
    if (channel_ != nullptr) {
      destroying_ = true;
      // Fails pending queries with ARES_EDESTRUCTION (dropped in OnAnswer)
      // and reports every socket closed (released in OnSocketState).
      ares_destroy(channel_);
    }
  }

  absl::Status Init() {
    static std::once_flag once;
    std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
    ares_options opts{};
    opts.sock_state_cb = &Impl::SocketStateThunk;
    opts.sock_state_cb_data = this;
    opts.timeout = static_cast<int>(options_.timeout.count());
    opts.tries = options_.tries;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    if (int rc = ares_init_options(&channel_, &opts, mask); rc != ARES_SUCCESS) {
      channel_ = nullptr;
      return absl::InternalError(absl::StrCat("c-ares init failed: ", ares_strerror(rc)));
    }
    if (!options_.servers.empty()) {
      const std::string csv = absl::StrJoin(options_.servers, ",");
      if (int rc = ares_set_servers_ports_csv(channel_, csv.c_str()); rc != ARES_SUCCESS) {
        return absl::InvalidArgumentError(absl::StrCat("bad DNS server list \"", csv, "\": ", ares_strerror(rc)));
      }
    }
    return absl::OkStatus();
  }

  // One query (name, type), answered from the cache, joined to an identical
  // query in flight, or sent. `done` always runs from a posted handler.
  void Query(const std::string& name, int qtype, QueryCallback done) {
    std::string key = absl::StrCat(qtype, " ", name);
    const Clock::time_point now = options_.now();
    if (auto it = cache_.find(key); it != cache_.end()) {
      if (it->second.expiry > now) {
        Post(std::move(done), it->second.result);
        return;
      }
      cache_.erase(it);
    }
    auto [it, inserted] = pending_.try_emplace(key);
    it->second.push_back(std::move(done));
    if (!inserted) {
      return;
    }
    ++queries_sent_;
    auto* ctx = new QueryContext{this, std::move(key), name, qtype};
    // Built here rather than by ares_query so the AD bit can be set: a
    // validating resolver then reports whether it validated the answer
    // (RFC 6840 §5.7); c-ares 1.18 has no option for it. ares_send gives
    // the raw answer, NXDOMAIN included (see OnAnswer).
    unsigned char* query = nullptr;
    int query_len = 0;
    if (int rc = ares_create_query(name.c_str(), ns_c_in, qtype, 0, 1, &query, &query_len, 0);
        rc != ARES_SUCCESS || query_len < 12) {
      if (query != nullptr) {
        ares_free_string(query);
      }
      // A name c-ares cannot encode (a label over 63 octets): answered as
      // a failed lookup, from a posted handler like every answer.
      std::weak_ptr<Impl> weak = weak_from_this();
      const int status = rc != ARES_SUCCESS ? rc : ARES_EBADQUERY;
      asio::post(executor_, [weak, ctx, status] {
        std::unique_ptr<QueryContext> owned(ctx);
        if (auto self = weak.lock()) {
          self->OnAnswer(*owned, status, nullptr, 0);
        }
      });
      return;
    }
    query[3] |= kAdBit;
    ares_send(channel_, query, query_len, &Impl::OnAnswerThunk, ctx);
    ares_free_string(query);
    UpdateTimer();
  }

  void ResolveHost(std::string host, HostCallback done) {
    host = address::CanonicalHostName(host);
    struct Join {
      HostCallback done;
      HostAnswer answer;
      int remaining = 2;
      int nxdomain = 0;
      int answered = 0;
      bool all_secure = true;
      std::vector<std::string> errors;
    };
    auto join = std::make_shared<Join>();
    join->done = std::move(done);
    auto on_result = [join, host](int qtype, const QueryResult& r) {
      auto& out = qtype == ns_t_a ? join->answer.ipv4 : join->answer.ipv6;
      if (r.kind != QueryResult::Kind::kError) {
        ++join->answered;
        join->all_secure = join->all_secure && r.secure;
      }
      if (join->answer.canonical_name.empty()) {
        join->answer.canonical_name = CanonicalName(host, r.cnames);
      }
      switch (r.kind) {
        case QueryResult::Kind::kAnswer:
          out = r.addresses;
          break;
        case QueryResult::Kind::kNoData:
          break;
        case QueryResult::Kind::kNxDomain:
          ++join->nxdomain;
          break;
        case QueryResult::Kind::kError:
          join->errors.push_back(absl::StrCat(TypeName(qtype), " lookup for ", host, ": ", r.detail));
          break;
      }
      if (--join->remaining > 0) {
        return;
      }
      HostAnswer& a = join->answer;
      a.detail = absl::StrJoin(join->errors, "; ");
      a.secure = join->answered > 0 && join->all_secure;
      if (!a.ipv4.empty() || !a.ipv6.empty()) {
        a.status = LookupStatus::kOk;  // one family is enough; detail says what failed
      } else if (!join->errors.empty()) {
        a.status = LookupStatus::kTempFail;
      } else if (join->nxdomain == 2) {
        a.status = LookupStatus::kNoSuchDomain;
        a.detail = absl::StrCat(host, ": host not found (NXDOMAIN)");
      } else {
        a.status = LookupStatus::kOk;  // the name exists but has no address
      }
      join->done(std::move(a));
    };
    Query(host, ns_t_a, [on_result](const QueryResult& r) { on_result(ns_t_a, r); });
    Query(host, ns_t_aaaa, [on_result](const QueryResult& r) { on_result(ns_t_aaaa, r); });
  }

  void ResolveTxt(std::string name, TxtCallback done) {
    name = address::CanonicalHostName(name);
    Query(name, ns_t_txt, [name, done = std::move(done)](const QueryResult& r) mutable {
      TxtAnswer answer;
      if (SetRecordStatus(r, "TXT", name, answer)) {
        answer.records = r.texts;
      }
      done(std::move(answer));
    });
  }

  void ResolveTlsa(std::string name, TlsaCallback done) {
    name = address::CanonicalHostName(name);
    Query(name, ns_t_tlsa, [name, done = std::move(done)](const QueryResult& r) mutable {
      TlsaAnswer answer;
      answer.secure = r.secure && r.kind != QueryResult::Kind::kError;
      if (SetRecordStatus(r, "TLSA", name, answer)) {
        answer.records = r.tlsa;
      }
      done(std::move(answer));
    });
  }

  // Answered whole from mx_cache_ while every record behind the answer is
  // fresh: with the record cache alone, a cached domain still cost three
  // cache queries, their posted callbacks and the joins per delivery (a sixth
  // of the deliverer's work when every message goes to one domain).
  void ResolveMx(std::string domain, MxCallback done) {
    domain = address::CanonicalHostName(domain);
    if (auto it = mx_cache_.find(domain); it != mx_cache_.end()) {
      if (it->second.expiry > options_.now()) {
        MxAnswer answer = it->second.answer;
        ShuffleEqualPreferences(answer.hosts, rng_);
        Post(std::move(done), std::move(answer));
        return;
      }
      mx_cache_.erase(it);
    }
    std::weak_ptr<Impl> weak = weak_from_this();
    Query(domain, ns_t_mx, [weak, domain, done = std::move(done)](const QueryResult& r) mutable {
      auto self = weak.lock();
      if (!self) {
        return;
      }
      self->OnMx(domain, r, [weak, domain, done = std::move(done)](MxAnswer answer) mutable {
        if (auto self = weak.lock()) {
          self->StoreMx(domain, answer);
        }
        done(std::move(answer));
      });
    });
  }

  uint64_t queries_sent() const { return queries_sent_; }
  size_t cache_size() const { return cache_.size(); }

 private:
  struct QueryContext {
    Impl* impl;
    std::string key;
    std::string name;
    int qtype;
  };
  struct CacheEntry {
    Clock::time_point expiry;
    QueryResult result;
  };
  struct MxCacheEntry {
    Clock::time_point expiry;
    MxAnswer answer;
  };
  struct Socket {
    explicit Socket(const asio::any_io_executor& ex, int fd) : descriptor(ex, fd) {}
    asio::posix::stream_descriptor descriptor;
    bool want_read = false;
    bool want_write = false;
    bool reading = false;
    bool writing = false;
    bool closed = false;
  };

  // Caches a composed MX answer until the first of the records it was built
  // from expires. Nothing is cached when any of them was not (a temporary
  // failure, or a TTL of 0).
  void StoreMx(const std::string& domain, const MxAnswer& answer) {
    if (answer.status == LookupStatus::kTempFail) {
      return;
    }
    std::optional<Clock::time_point> expiry;
    auto fresh_until = [&](int qtype, const std::string& name) {
      auto it = cache_.find(absl::StrCat(qtype, " ", name));
      if (it == cache_.end()) {
        return false;
      }
      expiry = expiry.has_value() ? std::min(*expiry, it->second.expiry) : it->second.expiry;
      return true;
    };
    if (!fresh_until(ns_t_mx, domain)) {
      return;
    }
    for (const MxHost& host : answer.hosts) {
      if (host.addresses.status == LookupStatus::kTempFail || !fresh_until(ns_t_a, host.name) ||
          !fresh_until(ns_t_aaaa, host.name)) {
        return;
      }
    }
    if (*expiry <= options_.now()) {
      return;
    }
    if (mx_cache_.size() >= options_.max_cache_entries) {
      mx_cache_.clear();
    }
    mx_cache_[domain] = MxCacheEntry{*expiry, answer};
  }

  void OnMx(const std::string& domain, const QueryResult& r, MxCallback done) {
    MxAnswer answer;
    answer.secure = r.secure;
    switch (r.kind) {
      case QueryResult::Kind::kNxDomain:
        answer.status = LookupStatus::kNoSuchDomain;
        answer.detail = absl::StrCat("Host or domain name not found: ", domain, " (NXDOMAIN)");
        Post(std::move(done), std::move(answer));
        return;
      case QueryResult::Kind::kError:
        answer.status = LookupStatus::kTempFail;
        answer.detail = absl::StrCat("MX lookup for ", domain, " failed: ", r.detail);
        Post(std::move(done), std::move(answer));
        return;
      case QueryResult::Kind::kNoData:
      case QueryResult::Kind::kAnswer:
        break;
    }
    std::vector<MxRecord> records = r.mx;
    if (records.size() == 1 && records[0].exchange.empty()) {
      // RFC 7505: a single MX with the root as exchange ("." on the wire is
      // the empty name) says the domain accepts no mail.
      answer.status = LookupStatus::kNullMx;
      answer.detail = absl::StrCat("Domain ", domain, " does not accept mail (null MX, RFC 7505)");
      Post(std::move(done), std::move(answer));
      return;
    }
    // A null MX mixed with real ones is a misconfiguration; use the real ones.
    std::erase_if(records, [](const MxRecord& mx) { return mx.exchange.empty(); });
    if (records.empty()) {
      ResolveImplicitMx(domain, r.secure, std::move(done));
      return;
    }
    std::stable_sort(records.begin(), records.end(),
                     [](const MxRecord& a, const MxRecord& b) { return a.preference < b.preference; });
    ShuffleEqualPreferences(records, rng_);
    if (records.size() > kMaxMxHosts) {
      records.resize(kMaxMxHosts);
    }
    struct Join {
      MxCallback done;
      MxAnswer answer;
      size_t remaining = 0;
    };
    auto join = std::make_shared<Join>();
    join->done = std::move(done);
    join->answer.secure = r.secure;
    join->remaining = records.size();
    for (auto& mx : records) {
      MxHost host;
      host.name = mx.exchange;
      host.preference = mx.preference;
      join->answer.hosts.push_back(std::move(host));
    }
    for (size_t i = 0; i < records.size(); ++i) {
      ResolveHost(records[i].exchange, [join, i](HostAnswer a) {
        join->answer.hosts[i].addresses = std::move(a);
        if (--join->remaining == 0) {
          join->done(std::move(join->answer));
        }
      });
    }
  }

  void ResolveImplicitMx(const std::string& domain, bool nodata_secure, MxCallback done) {
    ResolveHost(domain, [domain, nodata_secure, done = std::move(done)](HostAnswer a) mutable {
      MxAnswer answer;
      answer.implicit_mx = true;
      answer.secure = nodata_secure;
      if (a.status == LookupStatus::kTempFail) {
        answer.status = LookupStatus::kTempFail;
        answer.detail = absl::StrCat("no MX for ", domain, ", and ", a.detail);
      } else if (a.ipv4.empty() && a.ipv6.empty()) {
        answer.status = LookupStatus::kNoSuchDomain;
        answer.detail = absl::StrCat("Domain ", domain, " has no MX and no A/AAAA records");
      } else {
        MxHost host;
        host.name = domain;
        host.addresses = std::move(a);
        answer.hosts.push_back(std::move(host));
      }
      done(std::move(answer));
    });
  }

  static void OnAnswerThunk(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    std::unique_ptr<QueryContext> ctx(static_cast<QueryContext*>(arg));
    if (status == ARES_EDESTRUCTION || ctx->impl->destroying_) {
      return;
    }
    ctx->impl->OnAnswer(*ctx, status, abuf, alen);
  }

  void OnAnswer(const QueryContext& ctx, int status, const unsigned char* abuf, int alen) {
    QueryResult result;
    uint32_t min_ttl = 0;
    std::optional<uint32_t> negative_ttl;
    const bool have_body = abuf != nullptr && alen > 0;
    switch (status) {
      case ARES_SUCCESS: {
        // ares_send hands over every answer c-ares did not retry elsewhere
        // (it does for SERVFAIL, NOTIMP and REFUSED): NXDOMAIN and other
        // RCODEs are ours to sort out.
        const int rcode = have_body && alen >= 4 ? (abuf[3] & 0x0f) : -1;
        if (rcode != 0 && rcode != kRcodeNxDomain) {
          result.kind = QueryResult::Kind::kError;
          result.detail = rcode < 0 ? "malformed DNS response"
                                    : absl::StrCat("DNS error RCODE ", rcode, " (", TypeName(ctx.qtype), " ",
                                                   ctx.name, ")");
          break;
        }
        if (!ParseResponse(abuf, alen, ctx.qtype, &result, &min_ttl, &negative_ttl)) {
          result = QueryResult();
          result.kind = QueryResult::Kind::kError;
          result.detail = "malformed DNS response";
          break;
        }
        result.secure = (abuf[3] & kAdBit) != 0;
        if (rcode == kRcodeNxDomain) {
          result.kind = QueryResult::Kind::kNxDomain;
          result.mx.clear();
          result.addresses.clear();
          result.texts.clear();
          result.tlsa.clear();
          result.ttl = negative_ttl.value_or(options_.negative_ttl.count());
          break;
        }
        // Answers holding only a CNAME to a name without our type are NODATA.
        result.kind = result.empty() ? QueryResult::Kind::kNoData : QueryResult::Kind::kAnswer;
        result.ttl = result.kind == QueryResult::Kind::kAnswer ? min_ttl
                                                               : negative_ttl.value_or(options_.negative_ttl.count());
        break;
      }
      case ARES_ENODATA:
      case ARES_ENOTFOUND:
        result.kind = status == ARES_ENODATA ? QueryResult::Kind::kNoData : QueryResult::Kind::kNxDomain;
        if (have_body) {
          QueryResult ignored;
          ParseResponse(abuf, alen, ctx.qtype, &ignored, &min_ttl, &negative_ttl);
        }
        result.ttl = negative_ttl.value_or(options_.negative_ttl.count());
        break;
      default:
        result.kind = QueryResult::Kind::kError;
        result.detail = absl::StrCat(ares_strerror(status), " (", TypeName(ctx.qtype), " ", ctx.name, ")");
        break;
    }
    result.ttl = std::min<uint32_t>(result.ttl, options_.max_ttl.count());
    if (result.kind != QueryResult::Kind::kError && result.ttl > 0) {
      Store(ctx.key, result);
    }
    auto it = pending_.find(ctx.key);
    if (it == pending_.end()) {
      return;
    }
    std::vector<QueryCallback> waiters = std::move(it->second);
    pending_.erase(it);
    for (auto& waiter : waiters) {
      Post(std::move(waiter), result);
    }
  }

  void Store(const std::string& key, const QueryResult& result) {
    const Clock::time_point now = options_.now();
    if (cache_.size() >= options_.max_cache_entries) {
      for (auto it = cache_.begin(); it != cache_.end();) {
        if (it->second.expiry <= now) {
          cache_.erase(it++);
        } else {
          ++it;
        }
      }
      if (cache_.size() >= options_.max_cache_entries) {
        cache_.clear();
      }
    }
    cache_[key] = CacheEntry{now + std::chrono::seconds(result.ttl), result};
  }

  // Runs `fn(value)` later on the executor, unless the resolver is gone.
  template <typename Fn, typename Value>
  void Post(Fn fn, Value value) {
    std::weak_ptr<Impl> weak = weak_from_this();
    asio::post(executor_, [weak, fn = std::move(fn), value = std::move(value)]() mutable {
      if (weak.lock()) {
        fn(std::move(value));
      }
    });
  }

  static void SocketStateThunk(void* data, ares_socket_t fd, int readable, int writable) {
    static_cast<Impl*>(data)->OnSocketState(fd, readable != 0, writable != 0);
  }

  // c-ares opened, changed interest in, or is about to close socket `fd`.
  // Called from inside c-ares: only bookkeeping and arming waits here.
  void OnSocketState(int fd, bool readable, bool writable) {
    auto it = sockets_.find(fd);
    if (!readable && !writable) {
      if (it != sockets_.end()) {
        it->second->closed = true;
        // c-ares closes the fd itself; release() cancels our waits and
        // deregisters it without closing.
        it->second->descriptor.release();
        sockets_.erase(it);
      }
      return;
    }
    if (destroying_) {
      return;
    }
    if (it == sockets_.end()) {
      try {
        it = sockets_.emplace(fd, std::make_shared<Socket>(executor_, fd)).first;
      } catch (const std::exception&) {
        // The reactor refused the descriptor (should not happen). Leave it
        // unwatched: c-ares times the query out and reports a failure.
        return;
      }
    }
    it->second->want_read = readable;
    it->second->want_write = writable;
    Arm(fd, it->second);
  }

  void Arm(int fd, const std::shared_ptr<Socket>& socket) {
    std::weak_ptr<Impl> weak = weak_from_this();
    if (socket->want_read && !socket->reading) {
      socket->reading = true;
      socket->descriptor.async_wait(asio::posix::descriptor_base::wait_read,
                                    [weak, socket, fd](const asio::error_code& ec) {
                                      socket->reading = false;
                                      auto self = weak.lock();
                                      if (!self || socket->closed || ec == asio::error::operation_aborted) {
                                        return;
                                      }
                                      self->Process(fd, ARES_SOCKET_BAD);
                                    });
    }
    if (socket->want_write && !socket->writing) {
      socket->writing = true;
      socket->descriptor.async_wait(asio::posix::descriptor_base::wait_write,
                                    [weak, socket, fd](const asio::error_code& ec) {
                                      socket->writing = false;
                                      auto self = weak.lock();
                                      if (!self || socket->closed || ec == asio::error::operation_aborted) {
                                        return;
                                      }
                                      self->Process(ARES_SOCKET_BAD, fd);
                                    });
    }
  }

  // Lets c-ares read/write `fd` (or just handle timeouts when both are BAD),
  // then re-arms the socket's waits and the timer.
  void Process(int read_fd, int write_fd) {
    ares_process_fd(channel_, read_fd, write_fd);
    for (int fd : {read_fd, write_fd}) {
      if (fd == ARES_SOCKET_BAD) {
        continue;
      }
      if (auto it = sockets_.find(fd); it != sockets_.end()) {
        Arm(fd, it->second);
      }
    }
    UpdateTimer();
  }

  void UpdateTimer() {
    timeval tv{};
    if (ares_timeout(channel_, nullptr, &tv) == nullptr) {
      timer_.cancel();
      return;
    }
    timer_.expires_after(std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec));
    std::weak_ptr<Impl> weak = weak_from_this();
    timer_.async_wait([weak](const asio::error_code& ec) {
      if (ec) {
        return;  // re-armed or cancelled
      }
      if (auto self = weak.lock()) {
        self->Process(ARES_SOCKET_BAD, ARES_SOCKET_BAD);
      }
    });
  }

  asio::any_io_executor executor_;
  Options options_;
  ares_channel channel_ = nullptr;
  bool destroying_ = false;
  asio::steady_timer timer_;
  std::map<int, std::shared_ptr<Socket>> sockets_;
  absl::flat_hash_map<std::string, CacheEntry> cache_;
  absl::flat_hash_map<std::string, MxCacheEntry> mx_cache_;  // domain -> composed answer
  absl::flat_hash_map<std::string, std::vector<QueryCallback>> pending_;
  std::mt19937_64 rng_;
  uint64_t queries_sent_ = 0;
};

absl::StatusOr<std::unique_ptr<CaresResolver>> CaresResolver::Create(asio::any_io_executor executor,
                                                                     Options options) {
  auto impl = std::make_shared<Impl>(std::move(executor), std::move(options));
  if (absl::Status s = impl->Init(); !s.ok()) {
    return s;
  }
  return std::unique_ptr<CaresResolver>(new CaresResolver(std::move(impl)));
}

CaresResolver::CaresResolver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

CaresResolver::~CaresResolver() = default;

void CaresResolver::ResolveMx(std::string domain, MxCallback done) {
  impl_->ResolveMx(std::move(domain), std::move(done));
}

void CaresResolver::ResolveTxt(std::string name, TxtCallback done) {
  impl_->ResolveTxt(std::move(name), std::move(done));
}

void CaresResolver::ResolveTlsa(std::string name, TlsaCallback done) {
  impl_->ResolveTlsa(std::move(name), std::move(done));
}

void CaresResolver::ResolveHost(std::string host, HostCallback done) {
  impl_->ResolveHost(std::move(host), std::move(done));
}

uint64_t CaresResolver::queries_sent() const { return impl_->queries_sent(); }
size_t CaresResolver::cache_size() const { return impl_->cache_size(); }

}  // namespace tern::dns
