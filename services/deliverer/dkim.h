// File: dkim.h
//
// DKIM signing of outbound mail (RFC 6376), configured as haraka-plugin-dkim
// is: `dkim.ini` and the key directory `dkim/<domain>/{private,selector}`.
//
// Types:
//   DkimConfig  dkim.ini and every key, read and checked once at startup.
//   DkimKey     one signing key with its d= and s=.
//   DkimResult  what became of one message: the DKIM-Signature header field
//               to write before it, or why it goes unsigned.
// and the pure pieces the signer is made of, in namespace `dkim` (exposed
// for tests): canonicalization (§3.4), header selection (§5.4.2) and the
// choice of the signing domain.
//
// Where the signature goes: the deliverer signs each message once, at its
// first delivery job, over the bytes it is about to send (the stored message
// with every line end made CRLF, as DotCodec sends it); the message's other
// jobs on that deliverer and its retries reuse the field (delivery_worker.cc),
// and every SMTP transaction writes it before the message
// (TransactionRequest::dkim_signature). The stored message is never copied
// to add the field.
//
// The signing domain (d=) is found from the message: the domain of the From
// header field when it holds exactly one address, else of the Sender field,
// else of the envelope sender (MAIL FROM). The key is the one of the most
// specific `dkim/<name>` directory that is that domain or one of its parents
// (mail.example.com, then example.com, ...); d= is the directory's name. No
// such directory: dkim.ini's `selector`/`domain` with `dkim.private.key`
// when all three are set; else the message goes unsigned.
//
// Header fields are signed with relaxed canonicalization; the body with
// `[canon] body` (simple or relaxed). Repeated fields are signed bottom-up,
// one h= entry per instance (§5.4.2), unlike haraka-plugin-dkim, which signs
// one instance only; `oversign_headers` (From by default) are named once
// more in h= (§8.15), which haraka-plugin-dkim does not do. Keys: RSA
// (rsa-sha256; at least 1024 bits, RFC 8301) or
// Ed25519 (ed25519-sha256, RFC 8463: Ed25519 over the SHA-256 hash of the
// header data), chosen by the key's type.
//
// Thread-safety: DkimConfig is immutable after Load and may be used from any
// thread; the functions are pure. Private key material is never put into a
// Status, a log line or a result.
//
// Standards: RFC 6376 (§3.4 canonicalization, §3.5 tags, §3.7 hashes, §5.4
// and §5.4.2 header selection), RFC 8301 (rsa-sha256 only, keys of 1024 bits
// or more), RFC 8463 (ed25519-sha256), RFC 5322 §3.4 (address lists).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace tern::deliverer {

enum class DkimBodyCanon { kSimple, kRelaxed };

struct DkimKey {
  std::string domain;    // d=, lower case
  std::string selector;  // s=
  std::string file;      // where the key came from (for errors and logs)
  bool ed25519 = false;  // else RSA
  std::shared_ptr<evp_pkey_st> pkey;
};

struct DkimConfig {
  // dkim.ini [sign] enabled. Default: false
  bool enabled = false;
  // dkim.ini [sign] headers, as written (separated by commas, colons or
  // semicolons), From always first. Default: kDefaultHeaders.
  std::vector<std::string> headers;
  // dkim.ini [sign] oversign_headers (a Tern key), separated as headers:
  // fields listed in h= once more than the message has them (RFC 6376
  // §8.15), so that a field of that name added in transit (a second From
  // above the signed one, which a reader may be shown) breaks the
  // signature. A name not in `headers` is signed too. Empty: none.
  // Default: From.
  std::vector<std::string> oversign_headers = {"From"};
  // dkim.ini [canon] body: simple or relaxed. Default: simple
  DkimBodyCanon body_canon = DkimBodyCanon::kSimple;
  // dkim/<domain>/private and selector, by the directory's name in lower
  // case. Default: none
  std::map<std::string, DkimKey, std::less<>> keys;
  // dkim.ini [sign] selector and domain with dkim.private.key, when all
  // three are set. Default: none
  std::optional<DkimKey> fallback;

  // Haraka-plugin-dkim's shipped header list.
  static const std::vector<std::string>& DefaultHeaders();

  // Reads dkim.ini and, when enabled, every key; or, when dkim.ini does not
  // enable signing and `plugins` lists Haraka 2's core `dkim_sign`, that
  // plugin's dkim_sign.ini [main] (disabled, headers_to_sign, selector,
  // domain) with the same key layout. A key file that cannot be
  // read or parsed, an RSA key under 1024 bits, a key of another type, a
  // private file without its selector file, or a bad [canon] body value is
  // an error naming the file (never its contents).
  static absl::StatusOr<DkimConfig> Load(const config::ConfigDir& dir);

  // The key for `domain` (lower case): the most specific key directory that
  // is `domain` or a parent, else the fallback, else null.
  const DkimKey* KeyFor(absl::string_view domain) const;
};

// A parsed private key (PEM, PKCS#8 or PKCS#1), checked as Load does;
// `file` names it in errors. For Load and tests.
absl::StatusOr<DkimKey> ParseDkimKey(absl::string_view pem, std::string domain, std::string selector,
                                     std::string file);

struct DkimResult {
  // The complete "DKIM-Signature: ..." field, folded at 78 columns, ending
  // in CRLF; empty when the message goes unsigned.
  std::string header;
  // d= and s= when signed; when unsigned, `domain` is the domain that had
  // no key ("" if the message named none).
  std::string domain;
  std::string selector;
  const char* algorithm = "";  // "rsa-sha256" or "ed25519-sha256" when signed
  // Why unsigned: "no_domain" (no From, Sender or envelope domain),
  // "bad_domain" (a non-ASCII domain with no A-label form) or "no_key" (no
  // key directory fits and no fallback); "" when signed. Domains are in
  // A-labels.
  const char* unsigned_reason = "";
};

// Signs `message` (RFC 5322 text as stored; line ends are made CRLF for
// hashing exactly as DotCodec sends them) for the domain chosen as described
// above, with `unix_time` as t=. A Status is a signing failure of our own
// (OpenSSL); an unsigned message is an OK result with an empty header.
absl::StatusOr<DkimResult> DkimSign(const DkimConfig& config, absl::string_view message,
                                    absl::string_view envelope_from, int64_t unix_time);

namespace dkim {

// One header field as it appears in the (CRLF) header block: `name` as
// written (without trailing whitespace) and `text`, the whole field from the
// start of its name to the end of its last continuation line, without the
// final CRLF.
struct RawField {
  absl::string_view name;
  absl::string_view text;
};

// The fields of a CRLF header block, in order. Lines that are neither a
// field nor a continuation are skipped.
std::vector<RawField> SplitFields(absl::string_view header_block);

// §3.4.2: "name:value\r\n" with the name in lower case, continuation line
// breaks removed, runs of WSP made one SP, WSP around the colon and at the
// end of the value removed. `field` is a RawField's text.
std::string RelaxedHeader(absl::string_view field);

// §3.4.3 and §3.4.4 of a CRLF body, passed to `sink` in pieces (so that a
// large body is hashed without a copy). simple: trailing empty lines
// removed, an empty body becomes CRLF; relaxed: also WSP runs made one SP
// and WSP at line ends removed, an empty body stays empty.
void CanonicalizeBody(absl::string_view body, DkimBodyCanon canon,
                      const std::function<void(absl::string_view)>& sink);
std::string CanonicalBody(absl::string_view body, DkimBodyCanon canon);

// The fields to sign, in h= order: for each name of `names` (case-
// insensitive, each name once), its instances from the bottom up (§5.4.2).
// Indices into `fields`.
std::vector<size_t> SelectFields(const std::vector<RawField>& fields, const std::vector<std::string>& names);

// The domain (lower case, without a final dot) of the one address in an
// address-list header value (From, Sender), or nullopt when it holds no
// address, several, or one without a domain. Comments, quoted strings,
// angle addresses and groups are understood.
std::optional<std::string> SingleAddressDomain(absl::string_view value);

// The signing domain of a message: From (one address), else Sender, else
// the envelope sender's domain; "" if none. `header_block` is CRLF text.
std::string SigningDomain(absl::string_view header_block, absl::string_view envelope_from);

}  // namespace dkim
}  // namespace tern::deliverer
