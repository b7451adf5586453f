#include "services/deliverer/dkim.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/address/idna.h"
#include "lib/common/status_macros.h"
#include "lib/config/haraka_plugins.h"
#include "lib/mime/header.h"
#include "lib/net/connection.h"
#include "lib/smtp/dot_codec.h"

namespace tern::deliverer {
namespace {

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

// No passphrase prompt on the terminal for an encrypted key: it fails.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return 0; }

// `dir`'s read of `path` (ConfigDir::Text or Line), with a failure to read
// as a startup error that names the file.
template <typename T>
absl::StatusOr<T> Readable(const std::string& path, absl::StatusOr<T> read) {
  if (!read.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read: ", read.status().message()));
  }
  return read;
}

// The DKIM-Signature field, folded: tags separated by "; ", each on the line
// it fits on, a continuation line starting with one space (so that the
// column count is plain). Atoms of one tag are joined without a space, with
// a fold between them where needed (h= at its colons, base64 anywhere: both
// allow FWS there, §3.5).
class Folder {
 public:
  explicit Folder(absl::string_view start) : out_(start), column_(start.size()) {}

  void Tag(const std::vector<std::string>& atoms) {
    for (size_t i = 0; i < atoms.size(); ++i) {
      const std::string& a = atoms[i];
      const size_t sep = i == 0 ? 1 : 0;
      if (column_ + sep + a.size() > mime::kFoldLineLength && column_ > 1) {
        Fold();
      } else if (sep != 0) {
        out_ += ' ';
        ++column_;
      }
      out_ += a;
      column_ += a.size();
    }
  }

  // Base64 filling every line to the fold column.
  void Fill(absl::string_view text) {
    while (!text.empty()) {
      if (column_ >= mime::kFoldLineLength) {
        Fold();
      }
      const size_t n = std::min(text.size(), mime::kFoldLineLength - column_);
      absl::StrAppend(&out_, text.substr(0, n));
      column_ += n;
      text.remove_prefix(n);
    }
  }

  const std::string& text() const { return out_; }

 private:
  void Fold() {
    out_ += "\r\n ";
    column_ = 1;
  }

  std::string out_;
  size_t column_;
};

absl::Status OpensslError(absl::string_view what) {
  const std::string reason = net::TakeOpensslError();
  return absl::InternalError(absl::StrCat("DKIM ", what, ": ", reason.empty() ? "failed" : reason));
}

absl::StatusOr<std::string> SignHeaderData(const DkimKey& key, absl::string_view data) {
  MdCtx ctx(EVP_MD_CTX_new());
  if (ctx == nullptr) {
    return OpensslError("signing");
  }
  unsigned char hash[EVP_MAX_MD_SIZE];
  absl::string_view input = data;
  const EVP_MD* md = EVP_sha256();
  if (key.ed25519) {
    // RFC 8463 §3: Ed25519 (pure, no pre-hash mode) over the SHA-256 hash of
    // the header data.
    unsigned int hash_len = 0;
    if (EVP_Digest(data.data(), data.size(), hash, &hash_len, EVP_sha256(), nullptr) != 1) {
      return OpensslError("hashing");
    }
    input = absl::string_view(reinterpret_cast<const char*>(hash), hash_len);
    md = nullptr;
  }
  if (EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key.pkey.get()) != 1) {
    return OpensslError("signing");
  }
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, in, input.size()) != 1) {
    return OpensslError("signing");
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()) != 1) {
    return OpensslError("signing");
  }
  sig.resize(len);
  return sig;
}

}  // namespace

const std::vector<std::string>& DkimConfig::DefaultHeaders() {
  static const auto* kHeaders = new std::vector<std::string>{
      "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc", "MIME-Version", "List-Unsubscribe",
      "List-Unsubscribe-Post"};
  return *kHeaders;
}

absl::StatusOr<DkimKey> ParseDkimKey(absl::string_view pem, std::string domain, std::string selector,
                                     std::string file) {
  ERR_clear_error();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  EVP_PKEY* raw = bio == nullptr ? nullptr : PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  ERR_clear_error();  // the reason may quote nothing secret, but is no use either
  if (raw == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": not a PEM private key (PKCS#8 or PKCS#1, without a passphrase)"));
  }
  DkimKey key;
  key.pkey.reset(raw, PkeyDeleter());
  switch (EVP_PKEY_base_id(raw)) {
    case EVP_PKEY_RSA:
      if (EVP_PKEY_bits(raw) < 1024) {
        return absl::InvalidArgumentError(absl::StrCat(file, ": the RSA key has ", EVP_PKEY_bits(raw),
                                                       " bits; DKIM needs at least 1024 (RFC 8301)"));
      }
      break;
    case EVP_PKEY_ED25519:
      key.ed25519 = true;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(file, ": the key is neither RSA nor Ed25519"));
  }
  // d= holds A-labels (RFC 6376 §3.5), and keys are looked up by them, so
  // a directory named in U-labels ("bücher.example") is the same domain as
  // its A-label spelling.
  absl::StatusOr<std::string> ascii = address::DomainToAscii(domain);
  if (!ascii.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", ascii.status().message()));
  }
  key.domain = *std::move(ascii);
  key.selector = std::move(selector);
  key.file = std::move(file);
  return key;
}

absl::StatusOr<DkimConfig> DkimConfig::Load(const config::ConfigDir& dir) {
  DkimConfig c;
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini("dkim.ini"));
  TERN_ASSIGN_OR_RETURN(c.enabled, ini.GetBool("sign", "enabled", false));
  // Where the [sign] settings come from: dkim.ini (haraka-plugin-dkim), or
  // a Haraka 2 config's dkim_sign.ini [main] when `plugins` lists the old
  // core dkim_sign plugin and dkim.ini does not turn signing on, so mail
  // from such a config is not quietly sent unsigned.
  const config::IniFile* sign = &ini;
  std::string section = "sign";
  std::string headers_key = "headers";
  config::IniFile legacy;
  if (!c.enabled) {
    TERN_ASSIGN_OR_RETURN(const bool dkim_sign, config::HarakaPluginListed(dir, {"dkim_sign"}));
    if (dkim_sign) {
      TERN_ASSIGN_OR_RETURN(legacy, dir.Ini("dkim_sign.ini"));
      TERN_ASSIGN_OR_RETURN(const bool disabled, legacy.GetBool("main", "disabled", false));
      c.enabled = !disabled;
      sign = &legacy;
      section = "main";
      headers_key = "headers_to_sign";
    }
  }

  // Header field names, separated by commas, colons or semicolons.
  auto names = [](const config::IniFile& file, const std::string& in, const std::string& key,
                  std::vector<std::string>* out) -> absl::Status {
    out->clear();
    for (const std::string& item : file.GetList(in, key)) {
      for (absl::string_view name : absl::StrSplit(item, absl::ByAnyChar(",:;"), absl::SkipWhitespace())) {
        name = absl::StripAsciiWhitespace(name);
        if (!mime::IsValidFieldName(name)) {
          return file.KeyError(in, key, absl::StrCat("\"", name, "\" is not a header field name"));
        }
        out->emplace_back(name);
      }
    }
    return absl::OkStatus();
  };
  if (sign->Has(section, headers_key)) {
    TERN_RETURN_IF_ERROR(names(*sign, section, headers_key, &c.headers));
  } else {
    c.headers = DefaultHeaders();
  }
  if (ini.Has("sign", "oversign_headers")) {
    TERN_RETURN_IF_ERROR(names(ini, "sign", "oversign_headers", &c.oversign_headers));
  }
  // The From field must be signed (RFC 6376 §5.4).
  if (std::none_of(c.headers.begin(), c.headers.end(),
                   [](const std::string& h) { return absl::EqualsIgnoreCase(h, "From"); })) {
    c.headers.insert(c.headers.begin(), "From");
  }

  const std::string canon = absl::AsciiStrToLower(ini.GetString("canon", "body", "simple"));
  if (canon == "simple") {
    c.body_canon = DkimBodyCanon::kSimple;
  } else if (canon == "relaxed") {
    c.body_canon = DkimBodyCanon::kRelaxed;
  } else {
    return ini.KeyError("canon", "body", "must be simple or relaxed");
  }
  if (!c.enabled) {
    return c;
  }

  // Per-domain keys: dkim/<domain>/private and dkim/<domain>/selector.
  const std::string keys_dir = dir.PathOf("dkim");
  std::error_code ec;
  if (std::filesystem::is_directory(keys_dir, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(keys_dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name[0] == '.' || !entry.is_directory(ec)) {
        continue;
      }
      const std::string private_path = (entry.path() / "private").string();
      const std::string selector_path = (entry.path() / "selector").string();
      TERN_ASSIGN_OR_RETURN(std::optional<std::string> pem, Readable(private_path, dir.Text(private_path)));
      if (!pem.has_value()) {
        continue;  // a directory without a key (e.g. only the dns record) signs nothing
      }
      TERN_ASSIGN_OR_RETURN(std::optional<std::string> selector_line,
                            Readable(selector_path, dir.Line(selector_path)));
      const std::string selector = selector_line.value_or("");
      if (selector.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(selector_path, ": missing or empty, but ", private_path, " exists"));
      }
      TERN_ASSIGN_OR_RETURN(DkimKey key, ParseDkimKey(*pem, name, selector, private_path));
      const std::string domain = key.domain;
      if (!c.keys.emplace(domain, std::move(key)).second) {
        return absl::InvalidArgumentError(absl::StrCat(private_path, ": a second key directory for ", domain));
      }
    }
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(keys_dir, ": cannot be listed: ", ec.message()));
    }
  }

  // The single-domain fallback.
  const std::string selector = std::string(absl::StripAsciiWhitespace(sign->GetString(section, "selector", "")));
  const std::string domain = std::string(absl::StripAsciiWhitespace(sign->GetString(section, "domain", "")));
  if (!selector.empty() && !domain.empty()) {
    const std::string path = dir.PathOf("dkim.private.key");
    TERN_ASSIGN_OR_RETURN(std::optional<std::string> pem, Readable(path, dir.Text(path)));
    if (pem.has_value()) {
      TERN_ASSIGN_OR_RETURN(DkimKey key, ParseDkimKey(*pem, domain, selector, path));
      c.fallback = std::move(key);
    }
  }
  return c;
}

const DkimKey* DkimConfig::KeyFor(absl::string_view domain) const {
  while (!domain.empty()) {
    if (auto it = keys.find(domain); it != keys.end()) {
      return &it->second;
    }
    const size_t dot = domain.find('.');
    if (dot == absl::string_view::npos) {
      break;
    }
    domain.remove_prefix(dot + 1);
  }
  return fallback.has_value() ? &*fallback : nullptr;
}

namespace dkim {

std::vector<RawField> SplitFields(absl::string_view header_block) {
  std::vector<RawField> fields;
  const char* field_start = nullptr;  // the field being read, if any
  absl::string_view name;
  auto finish = [&](const char* end) {
    if (field_start != nullptr) {
      fields.push_back({name, absl::string_view(field_start, static_cast<size_t>(end - field_start))});
      field_start = nullptr;
    }
  };
  size_t pos = 0;
  while (pos < header_block.size()) {
    size_t eol = header_block.find("\r\n", pos);
    if (eol == absl::string_view::npos) {
      eol = header_block.size();
    }
    const absl::string_view line = header_block.substr(pos, eol - pos);
    if (!line.empty() && IsWsp(line[0])) {
      // A continuation: the field goes on (or, with no field, is skipped).
    } else {
      finish(header_block.data() + pos - (pos >= 2 ? 2 : 0));
      const size_t colon = line.find(':');
      if (colon != absl::string_view::npos) {
        absl::string_view n = line.substr(0, colon);
        while (!n.empty() && IsWsp(n.back())) {
          n.remove_suffix(1);
        }
        if (!n.empty()) {
          field_start = line.data();
          name = n;
        }
      }
    }
    pos = eol + 2;
  }
  finish(header_block.data() + (absl::EndsWith(header_block, "\r\n") ? header_block.size() - 2 : header_block.size()));
  return fields;
}

std::string RelaxedHeader(absl::string_view field) {
  std::string out;
  out.reserve(field.size() + 2);
  const size_t colon = field.find(':');
  absl::string_view name = field.substr(0, colon);
  while (!name.empty() && IsWsp(name.back())) {
    name.remove_suffix(1);
  }
  out = absl::AsciiStrToLower(name);
  out += ':';
  if (colon == absl::string_view::npos) {
    out += "\r\n";
    return out;
  }
  bool pending_space = false;
  bool any = false;
  for (size_t i = colon + 1; i < field.size(); ++i) {
    const char ch = field[i];
    if (ch == '\r' || ch == '\n') {
      continue;  // unfolding: line breaks go, the WSP after them stays
    }
    if (IsWsp(ch)) {
      pending_space = true;
      continue;
    }
    if (pending_space && any) {
      out += ' ';
    }
    pending_space = false;
    any = true;
    out += ch;
  }
  out += "\r\n";
  return out;
}

void CanonicalizeBody(absl::string_view body, DkimBodyCanon canon,
                      const std::function<void(absl::string_view)>& sink) {
  if (canon == DkimBodyCanon::kSimple) {
    // §3.4.3: empty lines at the end go; the body ends with one CRLF (an
    // empty body is one CRLF).
    while (absl::EndsWith(body, "\r\n")) {
      body.remove_suffix(2);
    }
    if (!body.empty()) {
      sink(body);
    }
    sink("\r\n");
    return;
  }
  // §3.4.4: per line, WSP runs become one SP and WSP at the end goes; then
  // empty lines at the end go. Empty lines are held back until a non-empty
  // one shows they are not at the end.
  size_t held_empty = 0;
  std::string line_out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    const size_t next = eol == absl::string_view::npos ? body.size() : eol + 2;
    if (eol == absl::string_view::npos) {
      eol = body.size();
    }
    absl::string_view line = body.substr(pos, eol - pos);
    pos = next;
    while (!line.empty() && IsWsp(line.back())) {
      line.remove_suffix(1);
    }
    if (line.empty()) {
      ++held_empty;
      continue;
    }
    for (; held_empty > 0; --held_empty) {
      sink("\r\n");
    }
    // Most lines need no change: hash them where they lie.
    bool plain = true;
    for (size_t i = 0; i < line.size() && plain; ++i) {
      plain = line[i] != '\t' && !(line[i] == ' ' && i + 1 < line.size() && IsWsp(line[i + 1]));
    }
    if (plain) {
      sink(line);
    } else {
      line_out.clear();
      bool in_wsp = false;
      for (char ch : line) {
        if (IsWsp(ch)) {
          in_wsp = true;
          continue;
        }
        if (in_wsp) {
          line_out += ' ';
          in_wsp = false;
        }
        line_out += ch;
      }
      sink(line_out);
    }
    sink("\r\n");
  }
}

std::string CanonicalBody(absl::string_view body, DkimBodyCanon canon) {
  std::string out;
  CanonicalizeBody(body, canon, [&out](absl::string_view piece) { absl::StrAppend(&out, piece); });
  return out;
}

std::vector<size_t> SelectFields(const std::vector<RawField>& fields, const std::vector<std::string>& names) {
  std::vector<size_t> selected;
  std::vector<std::string> seen;
  for (const std::string& name : names) {
    const std::string lower = absl::AsciiStrToLower(name);
    if (std::find(seen.begin(), seen.end(), lower) != seen.end()) {
      continue;
    }
    seen.push_back(lower);
    for (size_t i = fields.size(); i-- > 0;) {
      if (absl::EqualsIgnoreCase(fields[i].name, lower)) {
        selected.push_back(i);
      }
    }
  }
  return selected;
}

std::optional<std::string> SingleAddressDomain(absl::string_view value) {
  // Split the list into mailboxes at top-level commas; a group's display
  // name (up to its colon) is dropped, its semicolon ends a mailbox.
  // Comments are removed; quoted strings and angle addresses are kept whole.
  std::vector<std::string> items;
  std::string current;
  int comment_depth = 0;
  bool quoted = false;
  bool angle = false;
  for (size_t i = 0; i < value.size(); ++i) {
    const char ch = value[i];
    if (comment_depth > 0) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '(') {
        ++comment_depth;
      } else if (ch == ')') {
        --comment_depth;
      }
      continue;
    }
    if (quoted) {
      current += ch;
      if (ch == '\\' && i + 1 < value.size()) {
        current += value[++i];
      } else if (ch == '"') {
        quoted = false;
      }
      continue;
    }
    switch (ch) {
      case '(':
        comment_depth = 1;
        current += ' ';
        break;
      case '"':
        quoted = true;
        current += ch;
        break;
      case '<':
        angle = true;
        current += ch;
        break;
      case '>':
        angle = false;
        current += ch;
        break;
      case ',':
      case ';':
        if (angle) {
          current += ch;
        } else {
          items.push_back(std::move(current));
          current.clear();
        }
        break;
      case ':':
        if (angle) {
          current += ch;
        } else {
          current.clear();  // a group's display name
        }
        break;
      default:
        current += ch;
    }
  }
  items.push_back(std::move(current));
  std::vector<absl::string_view> mailboxes;
  for (const std::string& item : items) {
    absl::string_view m = absl::StripAsciiWhitespace(item);
    if (!m.empty()) {
      mailboxes.push_back(m);
    }
  }
  if (mailboxes.size() != 1) {
    return std::nullopt;
  }
  absl::string_view address = mailboxes[0];
  if (const size_t open = address.find('<'); open != absl::string_view::npos) {
    address.remove_prefix(open + 1);
    address = address.substr(0, address.find('>'));
    if (const size_t route_end = address.rfind(':'); route_end != absl::string_view::npos) {
      address.remove_prefix(route_end + 1);  // an obsolete source route
    }
  }
  const size_t at = address.rfind('@');
  if (at == absl::string_view::npos) {
    return std::nullopt;
  }
  absl::string_view domain = absl::StripAsciiWhitespace(address.substr(at + 1));
  domain = absl::StripSuffix(domain, ".");
  if (domain.empty() || std::any_of(domain.begin(), domain.end(),
                                    [](char c) { return IsWsp(c) || c == '"' || c == '<' || c == '>'; })) {
    return std::nullopt;
  }
  return absl::AsciiStrToLower(domain);
}

std::string SigningDomain(absl::string_view header_block, absl::string_view envelope_from) {
  const std::vector<RawField> fields = SplitFields(header_block);
  for (absl::string_view name : {"From", "Sender"}) {
    const RawField* only = nullptr;
    size_t count = 0;
    for (const RawField& f : fields) {
      if (absl::EqualsIgnoreCase(f.name, name)) {
        only = &f;
        ++count;
      }
    }
    if (count == 1) {
      const absl::string_view value = only->text.substr(only->text.find(':') + 1);
      if (std::optional<std::string> domain = SingleAddressDomain(mime::Unfold(value))) {
        return *domain;
      }
    }
  }
  const size_t at = envelope_from.rfind('@');
  if (at == absl::string_view::npos) {
    return "";
  }
  return absl::AsciiStrToLower(absl::StripSuffix(envelope_from.substr(at + 1), "."));
}

}  // namespace dkim

absl::StatusOr<DkimResult> DkimSign(const DkimConfig& config, absl::string_view message,
                                    absl::string_view envelope_from, int64_t unix_time) {
  // What goes on the wire: the stored message with every line end CRLF
  // (DotCodec; a copy only in the rare case that it is not already so).
  std::string canonical;
  absl::string_view m = message;
  if (!smtp::DotCodec::IsCrlfCanonical(message)) {
    smtp::DotCodec::AppendCrlfCanonical(message, &canonical);
    m = canonical;
  }
  const mime::HeaderBlock parts = mime::SplitHeaderBlock(m);

  DkimResult result;
  result.domain = dkim::SigningDomain(parts.headers, envelope_from);
  if (result.domain.empty()) {
    result.unsigned_reason = "no_domain";
    return result;
  }
  // An internationalized From domain finds its key, and signs, as A-labels.
  absl::StatusOr<std::string> ascii = address::DomainToAscii(result.domain);
  if (!ascii.ok()) {
    result.unsigned_reason = "bad_domain";
    return result;
  }
  result.domain = *std::move(ascii);
  const DkimKey* key = config.KeyFor(result.domain);
  if (key == nullptr) {
    result.unsigned_reason = "no_key";
    return result;
  }
  result.domain = key->domain;
  result.selector = key->selector;
  result.algorithm = key->ed25519 ? "ed25519-sha256" : "rsa-sha256";

  // bh=: the hash of the canonical body (§3.7).
  MdCtx body_ctx(EVP_MD_CTX_new());
  if (body_ctx == nullptr || EVP_DigestInit_ex(body_ctx.get(), EVP_sha256(), nullptr) != 1) {
    return OpensslError("hashing");
  }
  bool hashed = true;
  dkim::CanonicalizeBody(parts.body, config.body_canon, [&](absl::string_view piece) {
    hashed = hashed && EVP_DigestUpdate(body_ctx.get(), piece.data(), piece.size()) == 1;
  });
  unsigned char body_hash[EVP_MAX_MD_SIZE];
  unsigned int body_hash_len = 0;
  if (!hashed || EVP_DigestFinal_ex(body_ctx.get(), body_hash, &body_hash_len) != 1) {
    return OpensslError("hashing");
  }

  const std::vector<dkim::RawField> fields = dkim::SplitFields(parts.headers);
  // The signed instances in h= order (the entries that sign an absence
  // add nothing to the hashed data).
  std::vector<size_t> selected = dkim::SelectFields(fields, config.headers);
  std::vector<std::string> h_names;
  bool from_signed = false;
  for (size_t i : selected) {
    h_names.emplace_back(fields[i].name);
    from_signed = from_signed || absl::EqualsIgnoreCase(fields[i].name, "From");
  }
  // §8.15 and §5.4.2: an h= entry beyond a field's instances signs "no more
  // of it", so one added in transit fails verification. A field the
  // message lacks is named once either way (§5.4: From is always signed).
  bool from_extra = false;
  for (const std::string& name : config.oversign_headers) {
    if (std::none_of(h_names.begin(), h_names.end(),
                     [&name](const std::string& h) { return absl::EqualsIgnoreCase(h, name); }) &&
        std::none_of(config.headers.begin(), config.headers.end(),
                     [&name](const std::string& h) { return absl::EqualsIgnoreCase(h, name); })) {
      // Not in `headers`: its instances are signed here, bottom-up.
      for (size_t i : dkim::SelectFields(fields, {name})) {
        selected.push_back(i);
        h_names.emplace_back(fields[i].name);
      }
    }
    h_names.emplace_back(name);
    from_extra = from_extra || absl::EqualsIgnoreCase(name, "From");
  }
  if (!from_signed && !from_extra) {
    h_names.emplace_back("From");  // signs its absence
  }

  Folder folder("DKIM-Signature: v=1;");
  folder.Tag({absl::StrCat("a=", result.algorithm, ";")});
  folder.Tag({config.body_canon == DkimBodyCanon::kSimple ? "c=relaxed/simple;" : "c=relaxed/relaxed;"});
  folder.Tag({absl::StrCat("d=", key->domain, ";")});
  folder.Tag({absl::StrCat("s=", key->selector, ";")});
  folder.Tag({absl::StrCat("t=", unix_time, ";")});
  std::vector<std::string> h_atoms;
  for (size_t i = 0; i < h_names.size(); ++i) {
    h_atoms.push_back(absl::StrCat(i == 0 ? "h=" : "", h_names[i], i + 1 < h_names.size() ? ":" : ";"));
  }
  folder.Tag(h_atoms);
  folder.Tag({absl::StrCat(
      "bh=", absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(body_hash), body_hash_len)), ";")});
  folder.Tag({"b="});

  // §3.7: the signed fields, then this field with an empty b= and without
  // its final CRLF, all in relaxed form.
  std::string header_data;
  for (size_t i : selected) {
    header_data += dkim::RelaxedHeader(fields[i].text);
  }
  std::string own = dkim::RelaxedHeader(folder.text());
  own.resize(own.size() - 2);
  header_data += own;
  TERN_ASSIGN_OR_RETURN(std::string signature, SignHeaderData(*key, header_data));
  folder.Fill(absl::Base64Escape(signature));
  result.header = absl::StrCat(folder.text(), "\r\n");
  return result;
}

}  // namespace tern::deliverer
