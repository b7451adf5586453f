// File: auth.h
//
// SMTP AUTH for ingest (RFC 4954): the user store read from Haraka's
// `auth_flat_file.ini`, the SASL PLAIN / LOGIN / CRAM-MD5 decoding, and the
// per-IP tarpit that slows down password guessing. Pure code (OpenSSL and
// libcrypt for the hashes; no I/O), so the session only drives it.
//
// auth_flat_file.ini:
//   [core]
//   methods=PLAIN,LOGIN,CRAM-MD5   ; what EHLO offers (Haraka's key)
//   require_tls=true               ; Tern: offer AUTH only over TLS
//   fail_delay_ms=1000             ; Tern: first failure's delay, doubles
//   fail_delay_max_ms=16000        ;   per failure from the same IP, capped
//   [users]
//   alice=plaintext password
//   bob={SHA512-CRYPT}$6$salt$hash  ; crypt(3): {CRYPT} {MD5-CRYPT}
//                                   ; {SHA256-CRYPT} {SHA512-CRYPT} {BLF-CRYPT}
//   carol={SSHA256}base64(sha256(password+salt)+salt)  ; also {SSHA512},
//                                   ; {SHA256}, {SHA512} (no salt), {PLAIN}
// A value without a {SCHEME} prefix is plaintext (Haraka's format); one that
// starts with an unknown {SCHEME} is a startup error, so a typo cannot turn
// a hash into a plaintext password. CRAM-MD5 needs every password in
// plaintext, so it is offered only when no user has a hashed one.
//
// Secrets never leave this file: nothing here logs, and errors name the user
// at most.
//
// Thread-safety: UserDb is immutable after load (Verify may run on any
// thread); AuthTarpit is not thread-safe (ingest uses it under a lock).
//
// Standards: RFC 4954 (SMTP AUTH), RFC 4616 (PLAIN), RFC 2195 (CRAM-MD5),
// RFC 4648 §4 (base64), draft-murchison-sasl-login (LOGIN).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/ini_file.h"

namespace tern::ingest {

class UserDb {
 public:
  // Reads [users] of `ini`; an error names the file and the user.
  static absl::StatusOr<UserDb> FromIni(const config::IniFile& ini);

  bool empty() const { return users_.empty(); }
  size_t size() const { return users_.size(); }
  // True when every password is plaintext (CRAM-MD5 is possible).
  bool all_plaintext() const;
  // True if `user` exists and `password` is theirs.
  bool Verify(absl::string_view user, absl::string_view password) const;
  // True when checking `user`'s password is slow by design: a crypt(3)
  // hash (SHA-512-crypt ~1 ms at its default 5,000 rounds, bcrypt 50-250 ms
  // at the usual costs), which ingest checks off the session's thread.
  bool SlowToVerify(absl::string_view user) const;
  // True when some user's password is SlowToVerify: only then does ingest
  // keep threads for password checks.
  bool any_slow_to_verify() const;
  // The plaintext password (CRAM-MD5), if the user exists and has one.
  std::optional<std::string> Plaintext(absl::string_view user) const;

 private:
  enum class Scheme { kPlain, kCrypt, kSsha256, kSsha512, kSha256, kSha512 };
  struct Entry {
    Scheme scheme = Scheme::kPlain;
    std::string secret;  // plaintext, crypt(3) hash, or decoded digest+salt
  };
  static absl::StatusOr<Entry> ParseEntry(absl::string_view value);
  static bool Check(const Entry& entry, absl::string_view password);

  std::map<std::string, Entry, std::less<>> users_;
};

struct AuthConfig {
  // Mechanisms offered, upper-case, in the configured order. Default:
  // PLAIN, LOGIN, CRAM-MD5 (CRAM-MD5 dropped when a password is hashed).
  std::vector<std::string> methods;
  // Offer and accept AUTH only over TLS. Default: true.
  bool require_tls = true;
  // Tarpit: the first failure from an IP waits fail_delay, each further one
  // twice as long, up to fail_delay_max. Default: 1000 ms and 16000 ms.
  std::chrono::milliseconds fail_delay{1000};
  std::chrono::milliseconds fail_delay_max{16000};
  UserDb users;

  // AUTH is on when there is at least one user and one mechanism.
  bool enabled() const { return !users.empty() && !methods.empty(); }
  bool Offers(absl::string_view mechanism) const;
};

// Reads auth_flat_file.ini (an empty IniFile when the file is missing: AUTH off).
absl::StatusOr<AuthConfig> LoadAuthConfig(const config::IniFile& ini);

// Strict base64 (RFC 4648 §4, padding required, no white space); false on
// anything else.
bool DecodeBase64(absl::string_view text, std::string* out);
std::string EncodeBase64(absl::string_view data);

struct PlainCredentials {
  std::string user;
  std::string password;
};
// RFC 4616 message: [authzid] NUL authcid NUL passwd. An authzid other than
// the authcid (acting for someone else) is refused: nullopt.
std::optional<PlainCredentials> ParseSaslPlain(absl::string_view decoded);

// RFC 2195: `response` (decoded) is "user hex(HMAC-MD5(password, challenge))".
// Returns the user on success.
std::optional<std::string> CheckCramMd5(absl::string_view challenge, absl::string_view response, const UserDb& users);

// Per-IP memory of failed AUTH attempts: how long to wait before answering a
// failure. Entries are forgotten `forget_after` after their last failure, and
// the table is bounded (oldest entries go first).
class AuthTarpit {
 public:
  using Clock = std::chrono::steady_clock;
  AuthTarpit(std::chrono::milliseconds base, std::chrono::milliseconds max,
             std::chrono::milliseconds forget_after = std::chrono::minutes(15), size_t max_entries = 100000);

  // Records a failure from `ip` at `now` and returns the delay to apply.
  std::chrono::milliseconds Fail(const std::string& ip, Clock::time_point now);
  // A config reload's new delays; the failures remembered stay (a client
  // guessing passwords gains nothing from the reload).
  void SetDelays(std::chrono::milliseconds base, std::chrono::milliseconds max) {
    base_ = base;
    max_ = max;
  }
  // Failures remembered for `ip` (0 if none or forgotten).
  int failures(const std::string& ip, Clock::time_point now) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    int failures = 0;
    Clock::time_point last;
  };
  void Prune(Clock::time_point now);

  std::chrono::milliseconds base_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds forget_after_;
  size_t max_entries_;
  std::map<std::string, Entry> entries_;
};

}  // namespace tern::ingest
