#include "services/ingest/auth.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tern::ingest {
namespace {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string Digest(const EVP_MD* md, absl::string_view a, absl::string_view b) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 || EVP_DigestUpdate(ctx.get(), a.data(), a.size()) != 1 ||
      EVP_DigestUpdate(ctx.get(), b.data(), b.size()) != 1 || EVP_DigestFinal_ex(ctx.get(), out, &len) != 1) {
    return "";
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

bool IsBase64Char(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
}

}  // namespace

bool DecodeBase64(absl::string_view text, std::string* out) {
  out->clear();
  if (text.size() % 4 != 0) {
    return false;
  }
  size_t pad = 0;
  while (pad < 2 && pad < text.size() && text[text.size() - 1 - pad] == '=') {
    ++pad;
  }
  for (size_t i = 0; i < text.size() - pad; ++i) {
    if (!IsBase64Char(text[i])) {
      return false;
    }
  }
  return absl::Base64Unescape(text, out);
}

std::string EncodeBase64(absl::string_view data) { return absl::Base64Escape(data); }

absl::StatusOr<UserDb::Entry> UserDb::ParseEntry(absl::string_view value) {
  Entry entry;
  if (value.empty()) {
    return absl::InvalidArgumentError("empty password");
  }
  if (value.front() != '{') {
    entry.secret = std::string(value);
    return entry;
  }
  const size_t close = value.find('}');
  if (close == absl::string_view::npos) {
    return absl::InvalidArgumentError("unterminated {SCHEME} prefix");
  }
  const std::string scheme = absl::AsciiStrToUpper(value.substr(1, close - 1));
  const absl::string_view rest = value.substr(close + 1);
  if (rest.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("{", scheme, "}: empty value"));
  }
  if (scheme == "PLAIN") {
    entry.secret = std::string(rest);
    return entry;
  }
  if (scheme == "CRYPT" || scheme == "MD5-CRYPT" || scheme == "SHA256-CRYPT" || scheme == "SHA512-CRYPT" ||
      scheme == "BLF-CRYPT") {
    entry.scheme = Scheme::kCrypt;
    entry.secret = std::string(rest);
    return entry;
  }
  struct Digested {
    const char* name;
    Scheme scheme;
    size_t digest_len;
    bool salted;
  };
  static constexpr Digested kDigests[] = {
      {"SSHA256", Scheme::kSsha256, 32, true},
      {"SSHA512", Scheme::kSsha512, 64, true},
      {"SHA256", Scheme::kSha256, 32, false},
      {"SHA512", Scheme::kSha512, 64, false},
  };
  for (const Digested& d : kDigests) {
    if (scheme != d.name) {
      continue;
    }
    std::string decoded;
    if (!DecodeBase64(rest, &decoded)) {
      return absl::InvalidArgumentError(absl::StrCat("{", scheme, "}: bad base64"));
    }
    if (d.salted ? decoded.size() <= d.digest_len : decoded.size() != d.digest_len) {
      return absl::InvalidArgumentError(absl::StrCat("{", scheme, "}: wrong length"));
    }
    entry.scheme = d.scheme;
    entry.secret = std::move(decoded);
    return entry;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown password scheme {", scheme, "}"));
}

absl::StatusOr<UserDb> UserDb::FromIni(const config::IniFile& ini) {
  UserDb db;
  for (const std::string& user : ini.Keys("users")) {
    const std::optional<std::string> value = ini.Get("users", user);
    auto entry = ParseEntry(value.value_or(""));
    if (!entry.ok()) {
      return ini.KeyError("users", user, entry.status().message());
    }
    db.users_[user] = *std::move(entry);
  }
  return db;
}

bool UserDb::all_plaintext() const {
  return std::all_of(users_.begin(), users_.end(), [](const auto& u) { return u.second.scheme == Scheme::kPlain; });
}

bool UserDb::Check(const Entry& entry, absl::string_view password) {
  switch (entry.scheme) {
    case Scheme::kPlain:
      return ConstantTimeEquals(entry.secret, password);
    case Scheme::kCrypt: {
      // crypt_data is large (tens of KiB): keep it off the coroutine stack.
      auto data = std::make_unique<crypt_data>();
      const std::string pw(password);
      const char* hashed = crypt_r(pw.c_str(), entry.secret.c_str(), data.get());
      // libxcrypt returns a string starting with '*' on failure.
      return hashed != nullptr && hashed[0] != '*' && ConstantTimeEquals(hashed, entry.secret);
    }
    case Scheme::kSsha256:
    case Scheme::kSsha512: {
      const size_t len = entry.scheme == Scheme::kSsha256 ? 32 : 64;
      const absl::string_view digest = absl::string_view(entry.secret).substr(0, len);
      const absl::string_view salt = absl::string_view(entry.secret).substr(len);
      return ConstantTimeEquals(Digest(len == 32 ? EVP_sha256() : EVP_sha512(), password, salt), digest);
    }
    case Scheme::kSha256:
      return ConstantTimeEquals(Digest(EVP_sha256(), password, ""), entry.secret);
    case Scheme::kSha512:
      return ConstantTimeEquals(Digest(EVP_sha512(), password, ""), entry.secret);
  }
  return false;
}

bool UserDb::SlowToVerify(absl::string_view user) const {
  auto it = users_.find(user);
  return it != users_.end() && it->second.scheme == Scheme::kCrypt;
}

bool UserDb::any_slow_to_verify() const {
  return std::any_of(users_.begin(), users_.end(), [](const auto& u) { return u.second.scheme == Scheme::kCrypt; });
}

bool UserDb::Verify(absl::string_view user, absl::string_view password) const {
  auto it = users_.find(user);
  if (it == users_.end()) {
    // Spend about the same work as for a plaintext user, so the reply time
    // does not tell which user names exist.
    Digest(EVP_sha256(), password, user);
    return false;
  }
  return Check(it->second, password);
}

std::optional<std::string> UserDb::Plaintext(absl::string_view user) const {
  auto it = users_.find(user);
  if (it == users_.end() || it->second.scheme != Scheme::kPlain) {
    return std::nullopt;
  }
  return it->second.secret;
}

bool AuthConfig::Offers(absl::string_view mechanism) const {
  return std::find(methods.begin(), methods.end(), mechanism) != methods.end();
}

absl::StatusOr<AuthConfig> LoadAuthConfig(const config::IniFile& ini) {
  AuthConfig cfg;
  auto users = UserDb::FromIni(ini);
  if (!users.ok()) {
    return users.status();
  }
  cfg.users = *std::move(users);
  const std::string methods = ini.GetString("core", "methods", "PLAIN,LOGIN,CRAM-MD5");
  for (absl::string_view m : absl::StrSplit(methods, ',', absl::SkipWhitespace())) {
    const std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(m));
    if (name != "PLAIN" && name != "LOGIN" && name != "CRAM-MD5") {
      return ini.KeyError("core", "methods", absl::StrCat("unsupported mechanism ", name));
    }
    if (name == "CRAM-MD5" && !cfg.users.all_plaintext()) {
      continue;  // needs plaintext passwords
    }
    if (!cfg.Offers(name)) {
      cfg.methods.push_back(name);
    }
  }
  auto require_tls = ini.GetBool("core", "require_tls", true);
  if (!require_tls.ok()) {
    return require_tls.status();
  }
  cfg.require_tls = *require_tls;
  auto delay = ini.GetInt("core", "fail_delay_ms", 1000);
  if (!delay.ok()) {
    return delay.status();
  }
  auto delay_max = ini.GetInt("core", "fail_delay_max_ms", 16000);
  if (!delay_max.ok()) {
    return delay_max.status();
  }
  if (*delay < 0 || *delay > 600000) {
    return ini.KeyError("core", "fail_delay_ms", "must be 0..600000");
  }
  if (*delay_max < *delay || *delay_max > 600000) {
    return ini.KeyError("core", "fail_delay_max_ms", "must be fail_delay_ms..600000");
  }
  cfg.fail_delay = std::chrono::milliseconds(*delay);
  cfg.fail_delay_max = std::chrono::milliseconds(*delay_max);
  return cfg;
}

std::optional<PlainCredentials> ParseSaslPlain(absl::string_view decoded) {
  const std::vector<absl::string_view> parts = absl::StrSplit(decoded, absl::ByChar('\0'));
  if (parts.size() != 3 || parts[1].empty() || parts[2].empty()) {
    return std::nullopt;
  }
  if (!parts[0].empty() && parts[0] != parts[1]) {
    return std::nullopt;
  }
  return PlainCredentials{std::string(parts[1]), std::string(parts[2])};
}

std::optional<std::string> CheckCramMd5(absl::string_view challenge, absl::string_view response,
                                        const UserDb& users) {
  const size_t space = response.rfind(' ');
  if (space == absl::string_view::npos || space == 0) {
    return std::nullopt;
  }
  const absl::string_view user = response.substr(0, space);
  const std::string digest = absl::AsciiStrToLower(response.substr(space + 1));
  const std::optional<std::string> password = users.Plaintext(user);
  // Compute even for an unknown user (with an empty key) to keep timing flat.
  const std::string key = password.value_or("");
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  if (HMAC(EVP_md5(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(challenge.data()),
           challenge.size(), mac, &mac_len) == nullptr) {
    return std::nullopt;
  }
  const std::string expected = absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(mac), mac_len));
  if (!password.has_value() || !ConstantTimeEquals(expected, digest)) {
    return std::nullopt;
  }
  return std::string(user);
}

AuthTarpit::AuthTarpit(std::chrono::milliseconds base, std::chrono::milliseconds max,
                       std::chrono::milliseconds forget_after, size_t max_entries)
    : base_(base), max_(max), forget_after_(forget_after), max_entries_(std::max<size_t>(max_entries, 1)) {}

void AuthTarpit::Prune(Clock::time_point now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (now - it->second.last > forget_after_) {
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  while (entries_.size() >= max_entries_) {
    auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                   [](const auto& a, const auto& b) { return a.second.last < b.second.last; });
    entries_.erase(oldest);
  }
}

std::chrono::milliseconds AuthTarpit::Fail(const std::string& ip, Clock::time_point now) {
  auto it = entries_.find(ip);
  if (it != entries_.end() && now - it->second.last > forget_after_) {
    entries_.erase(it);
    it = entries_.end();
  }
  if (it == entries_.end()) {
    if (entries_.size() >= max_entries_) {
      Prune(now);
    }
    it = entries_.emplace(ip, Entry{}).first;
  }
  Entry& e = it->second;
  e.failures = std::min(e.failures + 1, 30);
  e.last = now;
  std::chrono::milliseconds delay = base_;
  for (int i = 1; i < e.failures && delay < max_; ++i) {
    delay *= 2;
  }
  return std::min(delay, max_);
}

int AuthTarpit::failures(const std::string& ip, Clock::time_point now) const {
  auto it = entries_.find(ip);
  if (it == entries_.end() || now - it->second.last > forget_after_) {
    return 0;
  }
  return it->second.failures;
}

}  // namespace tern::ingest
