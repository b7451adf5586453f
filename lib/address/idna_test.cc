#include "lib/address/idna.h"

#include "gtest/gtest.h"

namespace tern::address {
namespace {

TEST(DomainToAscii, LowerCasesAsciiDomains) {
  EXPECT_EQ(*DomainToAscii("Example.COM"), "example.com");
  EXPECT_EQ(*DomainToAscii("mx-1.example"), "mx-1.example");
}

TEST(DomainToAscii, KeepsALabelsAndLowerCasesThem) {
  EXPECT_EQ(*DomainToAscii("xn--bcher-kva.example"), "xn--bcher-kva.example");
  EXPECT_EQ(*DomainToAscii("XN--BCHER-KVA.Example"), "xn--bcher-kva.example");
}

TEST(DomainToAscii, ConvertsULabelsToALabels) {
  EXPECT_EQ(*DomainToAscii("bücher.example"), "xn--bcher-kva.example");
  EXPECT_EQ(*DomainToAscii("例え.テスト"), "xn--r8jz45g.xn--zckzah");
}

TEST(DomainToAscii, MapsUpperCaseULabelsToTheSameALabel) {
  EXPECT_EQ(*DomainToAscii("BÜCHER.example"), "xn--bcher-kva.example");
  EXPECT_EQ(*DomainToAscii("BÜCHER.EXAMPLE"), "xn--bcher-kva.example");
}

TEST(DomainToAscii, NormalisesDecomposedInput) {
  // "u" + COMBINING DIAERESIS is the same domain as the composed "ü".
  EXPECT_EQ(*DomainToAscii("bu\xCC\x88" "cher.example"), "xn--bcher-kva.example");
}

TEST(DomainToAscii, KeepsEszettAsIdna2008Does) {
  // Non-transitional: ß is a letter of its own, not "ss".
  EXPECT_EQ(*DomainToAscii("straße.example"), "xn--strae-oqa.example");
}

TEST(DomainToAscii, LowerCasesAddressLiterals) {
  EXPECT_EQ(*DomainToAscii("[192.0.2.1]"), "[192.0.2.1]");
  EXPECT_EQ(*DomainToAscii("[IPv6:2001:DB8::1]"), "[ipv6:2001:db8::1]");
}

TEST(DomainToAscii, RefusesDisallowedCodePointsNamingTheDomain) {
  // U+2603 SNOWMAN is DISALLOWED in IDNA2008.
  auto r = DomainToAscii("\xE2\x98\x83.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("\xE2\x98\x83.example"), absl::string_view::npos) << r.status();
}

TEST(DomainToAscii, RefusesInvalidUtf8) {
  auto r = DomainToAscii("b\xFF" "cher.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("\\xff"), absl::string_view::npos) << r.status();
}

TEST(DomainToAscii, RefusesALabelThatGetsTooLong) {
  // 60 non-ASCII letters encode to an A-label far over 63 octets.
  std::string label;
  for (int i = 0; i < 60; ++i) {
    label += "\xC3\xBC";  // ü
  }
  EXPECT_FALSE(DomainToAscii(label + ".example").ok());
}

}  // namespace
}  // namespace tern::address
