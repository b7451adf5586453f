#include "services/deliverer/dkim.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace tern::deliverer {
namespace {

using dkim::RawField;

// --- independent helpers (not the code under test) -------------------------

std::string B64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string UnB64(const std::string& text) {
  std::string out(text.size(), '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  EXPECT_GE(n, 0);
  size_t len = static_cast<size_t>(n);
  for (size_t i = text.size(); i > 0 && text[i - 1] == '='; --i) {
    --len;  // EVP_DecodeBlock counts the padding
  }
  out.resize(len);
  return out;
}

std::string Sha256(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::shared_ptr<EVP_PKEY> Generate(bool ed25519, int bits = 2048) {
  EVP_PKEY* key = ed25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                          : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits));
  return std::shared_ptr<EVP_PKEY>(key, EVP_PKEY_free);
}

std::string PrivatePem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(len));
  BIO_free(bio);
  return pem;
}

// EVP_DigestVerify's answer for `sig` over `data` as a DKIM verifier checks
// b=: RSA with SHA-256, or Ed25519 over the SHA-256 hash of the data (RFC
// 8463 §3); nullopt when the verifier could not be set up.
std::optional<int> VerifyHeaderSignature(EVP_PKEY* pkey, bool ed25519, const std::string& sig,
                                         const std::string& data) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const EVP_MD* md = ed25519 ? nullptr : EVP_sha256();  // Ed25519 is given the hash itself
  if (ctx == nullptr || EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, pkey) != 1) {
    return std::nullopt;
  }
  const std::string input = ed25519 ? Sha256(data) : data;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(input.data()), input.size());
}

// The tags of a DKIM-Signature field, unfolded, whitespace removed from the values.
std::map<std::string, std::string> Tags(const std::string& field) {
  std::string value(field.substr(field.find(':') + 1));
  value = absl::StrReplaceAll(value, {{"\r\n", ""}});
  std::map<std::string, std::string> tags;
  for (absl::string_view tag : absl::StrSplit(value, ';', absl::SkipWhitespace())) {
    const size_t eq = tag.find('=');
    std::string v(tag.substr(eq + 1));
    v = absl::StrReplaceAll(v, {{" ", ""}, {"\t", ""}});
    tags[std::string(absl::StripAsciiWhitespace(tag.substr(0, eq)))] = v;
  }
  return tags;
}

// --- canonicalization (RFC 6376 §3.4.5's example) ----------------------------

TEST(DkimCanonicalization, RelaxedHeadersOfTheRfcExample) {
  const std::vector<RawField> fields = dkim::SplitFields("A: X\r\nB : Y\t\r\n\tZ  \r\n");
  ASSERT_EQ(fields.size(), 2u);
  EXPECT_EQ(fields[0].name, "A");
  EXPECT_EQ(fields[1].name, "B");
  EXPECT_EQ(fields[1].text, "B : Y\t\r\n\tZ  ");
  EXPECT_EQ(dkim::RelaxedHeader(fields[0].text) + dkim::RelaxedHeader(fields[1].text), "a:X\r\nb:Y Z\r\n");
}

TEST(DkimCanonicalization, BodiesOfTheRfcExample) {
  const std::string body = " C \r\nD \t E\r\n\r\n\r\n";
  EXPECT_EQ(dkim::CanonicalBody(body, DkimBodyCanon::kRelaxed), " C\r\nD E\r\n");
  EXPECT_EQ(dkim::CanonicalBody(body, DkimBodyCanon::kSimple), " C \r\nD \t E\r\n");
}

TEST(DkimCanonicalization, EmptyBodies) {
  struct Case {
    const char* label;
    std::string body;
    DkimBodyCanon canon;
    std::string expected;
  } cases[] = {
      {"simple empty", "", DkimBodyCanon::kSimple, "\r\n"},
      {"simple empty lines", "\r\n\r\n", DkimBodyCanon::kSimple, "\r\n"},
      {"relaxed empty", "", DkimBodyCanon::kRelaxed, ""},
      {"relaxed blank lines", " \r\n\t\r\n", DkimBodyCanon::kRelaxed, ""},
      {"relaxed inner empty line kept", "a\r\n\r\nb \r\n\r\n", DkimBodyCanon::kRelaxed, "a\r\n\r\nb\r\n"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(dkim::CanonicalBody(c.body, c.canon), c.expected);
  }
  // RFC 6376 §3.4.3: the SHA-256 of the empty simple body (CRLF).
  EXPECT_EQ(B64(Sha256(dkim::CanonicalBody("", DkimBodyCanon::kSimple))),
            "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
  EXPECT_EQ(B64(Sha256(dkim::CanonicalBody("", DkimBodyCanon::kRelaxed))),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");  // nothing hashed
}

TEST(DkimHeaders, RepeatedFieldsAreSignedBottomUpOncePerInstance) {
  const std::vector<RawField> fields =
      dkim::SplitFields("Received: one\r\nTo: x@y\r\nreceived: two\r\nFrom: f@example.com\r\nRECEIVED: three\r\n");
  ASSERT_EQ(fields.size(), 5u);
  EXPECT_EQ(dkim::SelectFields(fields, {"From", "Received", "from", "Cc"}), (std::vector<size_t>{3, 4, 2, 0}));
}

// --- the signing domain --------------------------------------------------------

TEST(DkimDomain, SingleAddressDomain) {
  struct Case {
    const char* label;
    const char* value;
    std::optional<std::string> expected;
  } cases[] = {
      {"bare", "a@Example.COM", "example.com"},
      {"display name", "Alice <alice@mail.example.com>", "mail.example.com"},
      {"quoted comma and at", "\"Doe, J @ home\" <j@d.example>", "d.example"},
      {"comment", "alice@a.example (Alice, at a@b.example)", "a.example"},
      {"quoted local part", "\"a@b\"@c.example", "c.example"},
      {"group of one", "Team: one@t.example;", "t.example"},
      {"two addresses", "a@one.example, b@two.example", std::nullopt},
      {"group of two", "Team: a@t.example, b@t.example;", std::nullopt},
      {"empty group", "undisclosed-recipients:;", std::nullopt},
      {"no domain", "postmaster", std::nullopt},
      {"trailing dot", "a@example.com.", "example.com"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(dkim::SingleAddressDomain(c.value), c.expected);
  }
}

TEST(DkimDomain, FromThenSenderThenEnvelope) {
  struct Case {
    const char* label;
    const char* headers;
    const char* envelope;
    const char* expected;
  } cases[] = {
      {"from", "From: A <a@From.example>\r\nSender: s@sender.example\r\n", "e@env.example", "from.example"},
      {"multi-address From uses Sender", "From: a@one.example,\r\n b@two.example\r\nSender: s@sender.example\r\n",
       "e@env.example", "sender.example"},
      {"multi-address From, no Sender", "From: a@one.example, b@two.example\r\n", "e@Env.example", "env.example"},
      {"no From", "Subject: x\r\n", "e@env.example", "env.example"},
      {"null sender, no From", "Subject: x\r\n", "", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(dkim::SigningDomain(c.headers, c.envelope), c.expected);
  }
}

TEST(DkimDomain, KeyDirectoryIsTheMostSpecificParent) {
  std::shared_ptr<EVP_PKEY> pkey = Generate(true);
  DkimConfig config;
  config.enabled = true;
  for (const char* d : {"example.com", "mail.example.com"}) {
    auto key = ParseDkimKey(PrivatePem(pkey.get()), d, "s", "test");
    ASSERT_TRUE(key.ok()) << key.status();
    config.keys.emplace(d, *key);
  }
  ASSERT_NE(config.KeyFor("a.b.mail.example.com"), nullptr);
  EXPECT_EQ(config.KeyFor("a.b.mail.example.com")->domain, "mail.example.com");
  EXPECT_EQ(config.KeyFor("news.example.com")->domain, "example.com");
  EXPECT_EQ(config.KeyFor("example.com")->domain, "example.com");
  EXPECT_EQ(config.KeyFor("example.org"), nullptr);
  EXPECT_EQ(config.KeyFor("com"), nullptr);
  auto fallback = ParseDkimKey(PrivatePem(pkey.get()), "fallback.example", "f", "test");
  ASSERT_TRUE(fallback.ok());
  config.fallback = *fallback;
  EXPECT_EQ(config.KeyFor("example.org")->domain, "fallback.example");
}

// d= is in A-labels (RFC 6376 §3.5): a From domain in U-labels finds the key
// of a directory named either way, and one with no A-label form goes unsigned.
TEST(DkimDomain, InternationalizedDomainsSignAsALabels) {
  std::shared_ptr<EVP_PKEY> pkey = Generate(true);
  DkimConfig config;
  config.enabled = true;
  config.headers = DkimConfig::DefaultHeaders();
  auto key = ParseDkimKey(PrivatePem(pkey.get()), "b\xC3\xBC" "cher.example", "s", "test");  // bücher.example
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->domain, "xn--bcher-kva.example");
  config.keys.emplace(key->domain, *key);
  for (const char* from : {"From: <a@B\xC3\x9C" "CHER.example>\r\n", "From: a@xn--bcher-kva.example\r\n",
                           "From: a@mail.b\xC3\xBC" "cher.example\r\n"}) {
    auto signed_message = DkimSign(config, absl::StrCat(from, "\r\nhello\r\n"), "", 1);
    ASSERT_TRUE(signed_message.ok()) << signed_message.status();
    EXPECT_FALSE(signed_message->header.empty()) << from;
    EXPECT_EQ(signed_message->domain, "xn--bcher-kva.example") << from;
    EXPECT_EQ(Tags(signed_message->header)["d"], "xn--bcher-kva.example") << from;
  }
  // U+2615 then U+0000-free garbage: not a valid IDNA label.
  auto bad = DkimSign(config, "From: a@\xE2\x98\x95\xFF.example\r\n\r\nhello\r\n", "", 1);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_TRUE(bad->header.empty());
  EXPECT_STREQ(bad->unsigned_reason, "bad_domain");
  EXPECT_FALSE(ParseDkimKey(PrivatePem(pkey.get()), "\xFF.example", "s", "bad dir").ok());
}

// --- signatures that OpenSSL verifies ---------------------------------------------

class DkimSignTest : public ::testing::TestWithParam<bool> {};

TEST_P(DkimSignTest, SignatureVerifiesAgainstThePublicKey) {
  const bool ed25519 = GetParam();
  std::shared_ptr<EVP_PKEY> pkey = Generate(ed25519);
  DkimConfig config;
  config.enabled = true;
  config.headers = DkimConfig::DefaultHeaders();
  config.body_canon = DkimBodyCanon::kRelaxed;
  auto key = ParseDkimKey(PrivatePem(pkey.get()), "Example.com", "sel2026", "test");
  ASSERT_TRUE(key.ok()) << key.status();
  config.keys.emplace("example.com", *key);

  // Bare LF line ends: signed as sent, CRLF.
  const std::string message =
      "Received: by a\r\nFrom: Alice\r\n <alice@news.example.com>\r\nTo:  bob@example.org \r\n"
      "Subject: Hi\tthere\nX-Other: not signed\r\nTo: carol@example.org\r\n\r\nHello  world \r\n\r\n";
  auto signed_ = DkimSign(config, message, "bounce@other.example", 1700000000);
  ASSERT_TRUE(signed_.ok()) << signed_.status();
  const std::string& field = signed_->header;
  ASSERT_FALSE(field.empty());
  EXPECT_EQ(signed_->domain, "example.com");
  EXPECT_TRUE(absl::StartsWith(field, "DKIM-Signature: v=1; "));
  EXPECT_TRUE(absl::EndsWith(field, "\r\n"));
  for (absl::string_view line : absl::StrSplit(absl::StripSuffix(field, "\r\n"), "\r\n")) {
    EXPECT_LE(line.size(), 78u) << line;
  }

  std::map<std::string, std::string> tags = Tags(field);
  EXPECT_EQ(tags["v"], "1");
  EXPECT_EQ(tags["a"], ed25519 ? "ed25519-sha256" : "rsa-sha256");
  EXPECT_EQ(tags["c"], "relaxed/relaxed");
  EXPECT_EQ(tags["d"], "example.com");
  EXPECT_EQ(tags["s"], "sel2026");
  EXPECT_EQ(tags["t"], "1700000000");
  // From once more than the message has it: oversigned by default.
  EXPECT_EQ(tags["h"], "From:Subject:To:To:From");
  EXPECT_EQ(tags["bh"], B64(Sha256("Hello world\r\n")));

  // The header hash input (§3.7), written out here rather than computed by
  // the code under test: the fields in h= order, relaxed (the second To
  // first), then this field with b= empty, relaxed, without its CRLF.
  std::string unsigned_field = field.substr(0, field.find(" b=", field.find("bh=")) + 3);
  unsigned_field = absl::StrReplaceAll(unsigned_field, {{"\r\n ", " "}});
  const std::string own = absl::StrCat("dkim-signature:", absl::StripPrefix(unsigned_field, "DKIM-Signature: "));
  const std::string data = absl::StrCat("from:Alice <alice@news.example.com>\r\n", "subject:Hi there\r\n",
                                        "to:carol@example.org\r\n", "to:bob@example.org\r\n", own);

  const std::string sig = UnB64(tags["b"]);
  const std::optional<int> ok = VerifyHeaderSignature(pkey.get(), ed25519, sig, data);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 1) << field;

  // A changed signed field no longer verifies (the check can fail).
  const std::string tampered = absl::StrReplaceAll(data, {{"subject:Hi there", "subject:Hi there!"}});
  const std::optional<int> tampered_ok = VerifyHeaderSignature(pkey.get(), ed25519, sig, tampered);
  ASSERT_TRUE(tampered_ok.has_value());
  EXPECT_NE(*tampered_ok, 1);
}

// oversign_headers: each name once more than the message has it; a name not
// in `headers` has its instances signed too; the extra entries add nothing
// to the hashed data (a verifier finds no instance left for them).
TEST(DkimSign, OversignedFieldsAreNamedOnceMoreThanTheyOccur) {
  std::shared_ptr<EVP_PKEY> pkey = Generate(/*ed25519=*/true);
  DkimConfig config;
  config.enabled = true;
  config.headers = {"From", "Subject"};
  auto key = ParseDkimKey(PrivatePem(pkey.get()), "example.com", "s", "test");
  ASSERT_TRUE(key.ok()) << key.status();
  config.keys.emplace("example.com", *key);
  const std::string message =
      "From: a@example.com\r\nX-Campaign: one\r\nSubject: Hi\r\nX-Campaign: two\r\n\r\nbody\r\n";

  config.oversign_headers = {"From", "X-Campaign", "Reply-To"};
  auto signed_ = DkimSign(config, message, "", 1700000000);
  ASSERT_TRUE(signed_.ok()) << signed_.status();
  std::map<std::string, std::string> tags = Tags(signed_->header);
  EXPECT_EQ(tags["h"], "From:Subject:From:X-Campaign:X-Campaign:X-Campaign:Reply-To");
  std::string unsigned_field = signed_->header.substr(0, signed_->header.find(" b=", signed_->header.find("bh=")) + 3);
  unsigned_field = absl::StrReplaceAll(unsigned_field, {{"\r\n ", " "}});
  const std::string own = absl::StrCat("dkim-signature:", absl::StripPrefix(unsigned_field, "DKIM-Signature: "));
  const std::string data = absl::StrCat("from:a@example.com\r\n", "subject:Hi\r\n", "x-campaign:two\r\n",
                                        "x-campaign:one\r\n", own);
  const std::optional<int> ok = VerifyHeaderSignature(pkey.get(), true, UnB64(tags["b"]), data);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 1) << signed_->header;

  config.oversign_headers = {};
  signed_ = DkimSign(config, message, "", 1700000000);
  ASSERT_TRUE(signed_.ok()) << signed_.status();
  EXPECT_EQ(Tags(signed_->header)["h"], "From:Subject");

  // No From in the message: named once, with or without oversigning.
  for (std::vector<std::string> oversign : {std::vector<std::string>{}, std::vector<std::string>{"From"}}) {
    config.oversign_headers = oversign;
    signed_ = DkimSign(config, "Subject: Hi\r\n\r\nbody\r\n", "x@example.com", 1700000000);
    ASSERT_TRUE(signed_.ok()) << signed_.status();
    EXPECT_EQ(Tags(signed_->header)["h"], "Subject:From");
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, DkimSignTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Ed25519" : "Rsa"; });

TEST(DkimSign, UnsignedWithoutAKeyOrADomain) {
  DkimConfig config;
  config.enabled = true;
  config.headers = DkimConfig::DefaultHeaders();
  auto no_key = DkimSign(config, "From: a@nokey.example\r\n\r\nx\r\n", "", 1);
  ASSERT_TRUE(no_key.ok());
  EXPECT_TRUE(no_key->header.empty());
  EXPECT_STREQ(no_key->unsigned_reason, "no_key");
  EXPECT_EQ(no_key->domain, "nokey.example");
  auto no_domain = DkimSign(config, "Subject: x\r\n\r\nx\r\n", "", 1);
  ASSERT_TRUE(no_domain.ok());
  EXPECT_STREQ(no_domain->unsigned_reason, "no_domain");
}

// --- configuration ------------------------------------------------------------------

class DkimConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("dkim_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::filesystem::create_directories((dir_ / name).parent_path());
    std::ofstream(dir_ / name) << text;
  }
  absl::StatusOr<DkimConfig> Load() { return DkimConfig::Load(config::ConfigDir(dir_.string())); }

  std::filesystem::path dir_;
};

TEST_F(DkimConfigTest, DefaultsWithoutDkimIni) {
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->enabled);
  EXPECT_EQ(c->headers, DkimConfig::DefaultHeaders());
  EXPECT_EQ(c->oversign_headers, std::vector<std::string>{"From"});
  EXPECT_EQ(c->body_canon, DkimBodyCanon::kSimple);
  EXPECT_TRUE(c->keys.empty());
  EXPECT_FALSE(c->fallback.has_value());
}

TEST_F(DkimConfigTest, LoadsKeysHeadersAndFallback) {
  Write("dkim.ini", "[sign]\nenabled=true\nheaders=Subject: To; Cc,Date\nselector=fb\ndomain=fallback.example\n"
                    "oversign_headers=From:Subject\n[canon]\nbody=relaxed\n");
  Write("dkim/Example.COM/private", PrivatePem(Generate(false, 1024).get()));
  Write("dkim/Example.COM/selector", "# comment\nmail2026\n");
  Write("dkim/ed.example/private", PrivatePem(Generate(true).get()));
  Write("dkim/ed.example/selector", "ed\n");
  Write("dkim/dns-only.example/dns", "v=DKIM1; ...\n");
  Write("dkim.private.key", PrivatePem(Generate(true).get()));
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->enabled);
  EXPECT_EQ(c->headers, (std::vector<std::string>{"From", "Subject", "To", "Cc", "Date"}));
  EXPECT_EQ(c->oversign_headers, (std::vector<std::string>{"From", "Subject"}));
  EXPECT_EQ(c->body_canon, DkimBodyCanon::kRelaxed);
  ASSERT_EQ(c->keys.size(), 2u);
  EXPECT_EQ(c->keys.at("example.com").selector, "mail2026");
  EXPECT_FALSE(c->keys.at("example.com").ed25519);
  EXPECT_TRUE(c->keys.at("ed.example").ed25519);
  ASSERT_TRUE(c->fallback.has_value());
  EXPECT_EQ(c->fallback->domain, "fallback.example");
  EXPECT_EQ(c->fallback->selector, "fb");
}

// A Haraka 2 config signs with the old core plugin, dkim_sign, and its
// dkim_sign.ini; Tern signs as it did instead of sending unsigned.
TEST_F(DkimConfigTest, Haraka2DkimSignPluginAndIniAreHonoured) {
  Write("plugins", "relay\ndkim_sign\n");
  Write("dkim_sign.ini", "[main]\nheaders_to_sign=From, Subject; Date\nselector=old\ndomain=single.example\n");
  Write("dkim/example.com/private", PrivatePem(Generate(false, 1024).get()));
  Write("dkim/example.com/selector", "mail2019\n");
  Write("dkim.private.key", PrivatePem(Generate(true).get()));
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->enabled);
  EXPECT_EQ(c->headers, (std::vector<std::string>{"From", "Subject", "Date"}));
  ASSERT_EQ(c->keys.size(), 1u);
  EXPECT_EQ(c->keys.at("example.com").selector, "mail2019");
  ASSERT_TRUE(c->fallback.has_value());
  EXPECT_EQ(c->fallback->selector, "old");

  // disabled=true in it turns signing off, as it did in Haraka.
  Write("dkim_sign.ini", "[main]\ndisabled=true\n");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->enabled);

  // Without the plugin in `plugins`, the file is not read: a leftover.
  Write("dkim_sign.ini", "[main]\nheaders_to_sign=From\n");
  Write("plugins", "relay\n# dkim_sign\n");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->enabled);

  // dkim.ini turning signing on wins over dkim_sign.ini.
  Write("plugins", "dkim_sign\n");
  Write("dkim.ini", "[sign]\nenabled=true\nheaders=From, To\n");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->headers, (std::vector<std::string>{"From", "To"}));
}

TEST_F(DkimConfigTest, BadConfigsAreErrorsNamingTheFile) {
  const std::string good_pem = PrivatePem(Generate(false, 1024).get());
  struct Case {
    const char* label;
    std::vector<std::pair<std::string, std::string>> files;
    std::string named;
  } cases[] = {
      {"bad canon", {{"dkim.ini", "[canon]\nbody=loose\n"}}, "dkim.ini"},
      {"bad header name", {{"dkim.ini", "[sign]\nheaders=From, Bad Name\n"}}, "dkim.ini"},
      {"bad oversigned name", {{"dkim.ini", "[sign]\noversign_headers=From, Bad Name\n"}}, "dkim.ini"},
      {"garbled key",
       {{"dkim.ini", "[sign]\nenabled=true\n"},
        {"dkim/a.example/private", "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"},
        {"dkim/a.example/selector", "s\n"}},
       "dkim/a.example/private"},
      {"missing selector",
       {{"dkim.ini", "[sign]\nenabled=true\n"}, {"dkim/a.example/private", good_pem}},
       "dkim/a.example/selector"},
      {"short RSA key",
       {{"dkim.ini", "[sign]\nenabled=true\n"},
        {"dkim/a.example/private", PrivatePem(Generate(false, 512).get())},
        {"dkim/a.example/selector", "s\n"}},
       "dkim/a.example/private"},
      {"garbled fallback key",
       {{"dkim.ini", "[sign]\nenabled=true\nselector=s\ndomain=d.example\n"}, {"dkim.private.key", "junk\n"}},
       "dkim.private.key"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    for (const auto& [name, text] : c.files) {
      Write(name, text);
    }
    auto loaded = Load();
    ASSERT_FALSE(loaded.ok());
    EXPECT_TRUE(absl::StrContains(loaded.status().message(), c.named)) << loaded.status();
    EXPECT_FALSE(absl::StrContains(loaded.status().message(), "BEGIN")) << loaded.status();
  }
}

}  // namespace
}  // namespace tern::deliverer
