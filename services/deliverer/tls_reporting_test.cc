#include "services/deliverer/tls_reporting.h"

#include <openssl/x509_vfy.h>

#include "gtest/gtest.h"
#include "lib/tlsrpt/tlsrpt.h"
#include "services/deliverer/mta_sts.h"

namespace tern::deliverer {
namespace {

TEST(TlsFailureResultType, CertificateProblemsGetTheirOwnResultTypes) {
  EXPECT_STREQ(TlsFailureResultType(X509_V_ERR_CERT_HAS_EXPIRED, false), "certificate-expired");
  EXPECT_STREQ(TlsFailureResultType(X509_V_ERR_HOSTNAME_MISMATCH, false), "certificate-host-mismatch");
  EXPECT_STREQ(TlsFailureResultType(X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, false), "certificate-not-trusted");
  EXPECT_STREQ(TlsFailureResultType(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, false), "certificate-not-trusted");
}

TEST(TlsFailureResultType, HandshakeFailuresAndDaneMismatchesAreValidationFailures) {
  EXPECT_STREQ(TlsFailureResultType(0, false), "validation-failure");
  // Under DANE the TLSA records decide, even for an expired certificate.
  EXPECT_STREQ(TlsFailureResultType(X509_V_ERR_CERT_HAS_EXPIRED, true), "validation-failure");
}

TEST(StsProblemResultType, TellsFetchErrorsInvalidPoliciesAndBadCertificatesApart) {
  EXPECT_STREQ(StsProblemResultType("mta-sts.example.com: not found"), "sts-policy-fetch-error");
  EXPECT_STREQ(StsProblemResultType("policy of example.com (id 1) is invalid: no mode"), "sts-policy-invalid");
  EXPECT_STREQ(StsProblemResultType("TLS handshake failed: certificate verify failed: certificate has expired"),
               "sts-webpki-invalid");
}

TEST(StsPolicyForReport, ListsTheDirectivesAndMxPatterns) {
  StsPolicy policy;
  policy.mode = StsMode::kEnforce;
  policy.mx = {"mx1.example.com", "*.example.net"};
  policy.max_age = std::chrono::seconds(86400);
  TlsRptPolicy p = StsPolicyForReport(policy);
  EXPECT_EQ(p.type, "sts");
  EXPECT_EQ(p.policy_string, (std::vector<std::string>{"version: STSv1", "mode: enforce", "mx: mx1.example.com",
                                                       "mx: *.example.net", "max_age: 86400"}));
  EXPECT_EQ(p.mx_host, policy.mx);
}

TEST(DanePolicyForReport, WritesRecordsAsInAZoneFile) {
  net::DaneRecord r{3, 1, 1, std::string("\x01\xab\xff", 3)};
  TlsRptPolicy p = DanePolicyForReport({r});
  EXPECT_EQ(p.type, "tlsa");
  EXPECT_EQ(p.policy_string, (std::vector<std::string>{"3 1 1 01abff"}));
}

TEST(MakeTlsRptCount, KeepsWhereAndWhyOnlyForFailures) {
  v1::TlsRptCount ok = MakeTlsRptCount(20000, "example.com", NoPolicyForReport(), "", "mx.example.com", "192.0.2.1",
                                       "", {"mailto:r@example.com"});
  EXPECT_EQ(ok.policy_type(), "no-policy-found");
  EXPECT_EQ(ok.receiving_mx_hostname(), "");
  EXPECT_EQ(ok.count(), 1u);
  v1::TlsRptCount bad = MakeTlsRptCount(20000, "example.com", NoPolicyForReport(), "starttls-not-supported",
                                        "mx.example.com", "192.0.2.1", std::string(1000, 'x'), {});
  EXPECT_EQ(bad.receiving_mx_hostname(), "mx.example.com");
  EXPECT_EQ(bad.receiving_ip(), "192.0.2.1");
  EXPECT_EQ(bad.failure_reason_code().size(), 256u);  // a server cannot fill the records
}

TEST(TlsRptCounter, MergesEqualCountsAndKeepsTheNewestRua) {
  TlsRptCounter counter(10);
  EXPECT_TRUE(counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {"mailto:old@a"})));
  EXPECT_TRUE(counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {"mailto:new@a"})));
  EXPECT_TRUE(counter.Add(MakeTlsRptCount(2, "a.example", NoPolicyForReport(), "", "", "", "", {"mailto:new@a"})));
  std::vector<v1::TlsRptCount> taken = counter.Take();
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_TRUE(counter.empty());
  for (const v1::TlsRptCount& c : taken) {
    EXPECT_EQ(c.rua(0), "mailto:new@a");
    EXPECT_EQ(c.count(), c.day() == 1 ? 2u : 1u);
  }
}

TEST(TlsRptCounter, PutBackAddsUpWithoutOverwritingNewerRua) {
  TlsRptCounter counter(10);
  counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {"mailto:old@a"}));
  std::vector<v1::TlsRptCount> failed_call = counter.Take();
  counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {"mailto:new@a"}));
  counter.PutBack(std::move(failed_call));
  std::vector<v1::TlsRptCount> taken = counter.Take();
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].count(), 2u);
  EXPECT_EQ(taken[0].rua(0), "mailto:new@a");
}

TEST(TlsRptCounter, RefusesNewCountsWhenFullButStillAddsToKnownOnes) {
  TlsRptCounter counter(1);
  EXPECT_TRUE(counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {})));
  EXPECT_FALSE(counter.Add(MakeTlsRptCount(1, "b.example", NoPolicyForReport(), "", "", "", "", {})));
  EXPECT_TRUE(counter.Add(MakeTlsRptCount(1, "a.example", NoPolicyForReport(), "", "", "", "", {})));
  std::vector<v1::TlsRptCount> taken = counter.Take();
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].count(), 2u);
}

}  // namespace
}  // namespace tern::deliverer
