#include "services/ingest/auth.h"

#include <crypt.h>
#include <openssl/evp.h>

#include <string>

#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

using namespace std::chrono_literals;

config::IniFile Ini(const std::string& text) {
  auto ini = config::IniFile::Parse(text, "auth_flat_file.ini");
  EXPECT_TRUE(ini.ok()) << ini.status();
  return ini.ok() ? *ini : config::IniFile();
}

std::string Ssha256(const std::string& password, const std::string& salt) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const std::string input = password + salt;
  EVP_Digest(input.data(), input.size(), out, &len, EVP_sha256(), nullptr);
  return "{SSHA256}" + EncodeBase64(std::string(reinterpret_cast<char*>(out), len) + salt);
}

TEST(UserDb, VerifiesPlaintextAndHashedPasswords) {
  crypt_data data{};
  const std::string sha512_crypt = crypt_r("s3cret", "$6$saltsalt$", &data);
  auto db = UserDb::FromIni(Ini("[users]\nalice=wonder land\nbob={SHA512-CRYPT}" + sha512_crypt +
                                "\ncarol=" + Ssha256("pa55", "NaCl") + "\ndave={PLAIN}{braces}\n"));
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_TRUE(db->Verify("alice", "wonder land"));
  EXPECT_FALSE(db->Verify("alice", "wonder"));
  EXPECT_TRUE(db->Verify("bob", "s3cret"));
  EXPECT_FALSE(db->Verify("bob", "s3cre"));
  EXPECT_FALSE(db->Verify("bob", sha512_crypt));  // the hash is not the password
  EXPECT_TRUE(db->Verify("carol", "pa55"));
  EXPECT_FALSE(db->Verify("carol", "pa56"));
  EXPECT_TRUE(db->Verify("dave", "{braces}"));
  EXPECT_FALSE(db->Verify("nobody", "wonder land"));
  EXPECT_FALSE(db->all_plaintext());
  EXPECT_EQ(db->Plaintext("alice"), "wonder land");
  EXPECT_EQ(db->Plaintext("bob"), std::nullopt);
}

TEST(UserDb, OnlyCryptHashesAreSlowToVerify) {
  crypt_data data{};
  const std::string sha512_crypt = crypt_r("s3cret", "$6$saltsalt$", &data);
  auto fast = UserDb::FromIni(Ini("[users]\nalice=wonder land\ncarol=" + Ssha256("pa55", "NaCl") + "\n"));
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_FALSE(fast->any_slow_to_verify());
  EXPECT_FALSE(fast->SlowToVerify("carol"));
  auto mixed = UserDb::FromIni(Ini("[users]\nalice=wonder land\nbob={SHA512-CRYPT}" + sha512_crypt + "\n"));
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_TRUE(mixed->any_slow_to_verify());
  EXPECT_TRUE(mixed->SlowToVerify("bob"));
  EXPECT_FALSE(mixed->SlowToVerify("alice"));
}

TEST(UserDb, RejectsUnknownSchemesAndEmptyPasswords) {
  auto bad = UserDb::FromIni(Ini("[users]\nx={MD4}abc\n"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("x"), std::string::npos);
  EXPECT_EQ(bad.status().message().find("abc"), std::string::npos) << "secret leaked into the error";
  EXPECT_FALSE(UserDb::FromIni(Ini("[users]\nx=\n")).ok());
  EXPECT_FALSE(UserDb::FromIni(Ini("[users]\nx={SSHA256}!!!!\n")).ok());
}

TEST(AuthConfig, OffersCramMd5OnlyWithPlaintextStore) {
  auto plain = LoadAuthConfig(Ini("[users]\na=b\n"));
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->methods, (std::vector<std::string>{"PLAIN", "LOGIN", "CRAM-MD5"}));
  EXPECT_TRUE(plain->require_tls);
  auto hashed = LoadAuthConfig(Ini("[users]\na=" + Ssha256("b", "s") + "\n"));
  ASSERT_TRUE(hashed.ok());
  EXPECT_EQ(hashed->methods, (std::vector<std::string>{"PLAIN", "LOGIN"}));
  auto custom = LoadAuthConfig(Ini("[core]\nmethods=login\nrequire_tls=false\n[users]\na=b\n"));
  ASSERT_TRUE(custom.ok());
  EXPECT_EQ(custom->methods, (std::vector<std::string>{"LOGIN"}));
  EXPECT_FALSE(custom->require_tls);
  EXPECT_FALSE(LoadAuthConfig(Ini("[core]\nmethods=GSSAPI\n")).ok());
  EXPECT_FALSE(LoadAuthConfig(config::IniFile())->enabled());
}

TEST(Sasl, DecodesBase64Strictly) {
  std::string out;
  EXPECT_TRUE(DecodeBase64("AGFsaWNlAHNlY3JldA==", &out));
  EXPECT_EQ(out, std::string("\0alice\0secret", 13));
  EXPECT_TRUE(DecodeBase64("", &out));
  for (const char* bad : {"AGFsaWNl*HNlY3JldA==", "abc", "ab==cd==", "YQ", "Y Q==", "====", "a==="}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(DecodeBase64(bad, &out));
  }
}

TEST(Sasl, ParsesPlainAndRefusesProxyAuthorization) {
  auto c = ParseSaslPlain(std::string("\0alice\0secret", 13));
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->user, "alice");
  EXPECT_EQ(c->password, "secret");
  EXPECT_TRUE(ParseSaslPlain(std::string("alice\0alice\0secret", 18)).has_value());
  EXPECT_FALSE(ParseSaslPlain(std::string("bob\0alice\0secret", 16)).has_value());
  EXPECT_FALSE(ParseSaslPlain(std::string("\0alice", 6)).has_value());
  EXPECT_FALSE(ParseSaslPlain(std::string("\0\0secret", 8)).has_value());
}

TEST(Sasl, ChecksCramMd5AgainstRfc2195Example) {
  // RFC 2195 §2: user tim, password tanstaaftanstaaf.
  auto db = UserDb::FromIni(Ini("[users]\ntim=tanstaaftanstaaf\n"));
  ASSERT_TRUE(db.ok());
  const std::string challenge = "<1896.697170952@postoffice.reston.mci.net>";
  EXPECT_EQ(CheckCramMd5(challenge, "tim b913a602c7eda7a495b4e6e7334d3890", *db), "tim");
  EXPECT_EQ(CheckCramMd5(challenge, "tim b913a602c7eda7a495b4e6e7334d3891", *db), std::nullopt);
  EXPECT_EQ(CheckCramMd5(challenge, "tom b913a602c7eda7a495b4e6e7334d3890", *db), std::nullopt);
  EXPECT_EQ(CheckCramMd5(challenge, "nospace", *db), std::nullopt);
}

TEST(AuthTarpit, DoublesPerFailureUpToTheCapAndForgets) {
  AuthTarpit tarpit(100ms, 500ms, 10min, 3);
  const auto t0 = AuthTarpit::Clock::time_point{} + 1h;
  EXPECT_EQ(tarpit.Fail("192.0.2.1", t0), 100ms);
  EXPECT_EQ(tarpit.Fail("192.0.2.1", t0), 200ms);
  EXPECT_EQ(tarpit.Fail("192.0.2.1", t0), 400ms);
  EXPECT_EQ(tarpit.Fail("192.0.2.1", t0), 500ms);
  EXPECT_EQ(tarpit.Fail("192.0.2.2", t0), 100ms);  // per IP
  EXPECT_EQ(tarpit.failures("192.0.2.1", t0 + 11min), 0);
  EXPECT_EQ(tarpit.Fail("192.0.2.1", t0 + 11min), 100ms);
  tarpit.Fail("192.0.2.3", t0 + 11min);
  tarpit.Fail("192.0.2.4", t0 + 11min);
  EXPECT_LE(tarpit.size(), 3u);  // bounded
}

}  // namespace
}  // namespace tern::ingest
