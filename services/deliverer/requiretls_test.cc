#include "services/deliverer/requiretls.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::deliverer {
namespace {

TEST(MessageTlsRequest, RequireTlsFromTheEnvelopeWinsOverTheHeaderField) {
  EXPECT_EQ(MessageTlsRequest(true, "TLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n"), TlsRequest::kRequireTls);
  EXPECT_EQ(MessageTlsRequest(true, "Subject: x\r\n\r\nbody\r\n"), TlsRequest::kRequireTls);
}

TEST(MessageTlsRequest, TlsRequiredNoInAnyCaseAndFoldingMakesTlsOptional) {
  EXPECT_EQ(MessageTlsRequest(false, "Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n"), TlsRequest::kTlsOptional);
  EXPECT_EQ(MessageTlsRequest(false, "tls-required:   no  \r\n\r\n"), TlsRequest::kTlsOptional);
  EXPECT_EQ(MessageTlsRequest(false, "TLS-Required:\r\n NO\r\nSubject: x\r\n\r\n"), TlsRequest::kTlsOptional);
}

TEST(MessageTlsRequest, OtherValuesAndBodyTextChangeNothing) {
  EXPECT_EQ(MessageTlsRequest(false, "Subject: x\r\n\r\nbody\r\n"), TlsRequest::kDefault);
  EXPECT_EQ(MessageTlsRequest(false, "TLS-Required: Yes\r\n\r\n"), TlsRequest::kDefault);
  EXPECT_EQ(MessageTlsRequest(false, "TLS-Required: No thanks\r\n\r\n"), TlsRequest::kDefault);
  EXPECT_EQ(MessageTlsRequest(false, "X-TLS-Required: No\r\n\r\n"), TlsRequest::kDefault);
  // A line in the body that looks like the field is not a header field.
  EXPECT_EQ(MessageTlsRequest(false, "Subject: x\r\n\r\nTLS-Required: No\r\n"), TlsRequest::kDefault);
  EXPECT_EQ(MessageTlsRequest(false, ""), TlsRequest::kDefault);
  // The name alone, or as the start of a longer one, is not the field.
  EXPECT_EQ(MessageTlsRequest(false, "TLS-Required\r\n\r\n"), TlsRequest::kDefault);
  EXPECT_EQ(MessageTlsRequest(false, "TLS-Required-Not: No\r\n\r\n"), TlsRequest::kDefault);
  // Last header line without a line end, and a bare LF.
  EXPECT_EQ(MessageTlsRequest(false, "Subject: x\nTLS-Required: no"), TlsRequest::kTlsOptional);
}

TEST(RequireTlsMxProblem, NeedsAValidatedMxAnswerOrAnEnforcedStsPolicy) {
  EXPECT_EQ(RequireTlsMxProblem("example.com", true, false), "");
  EXPECT_EQ(RequireTlsMxProblem("example.com", false, true), "");
  EXPECT_EQ(RequireTlsMxProblem("example.com", true, true), "");
  const std::string problem = RequireTlsMxProblem("example.com", false, false);
  EXPECT_NE(problem.find("MX hosts of example.com were not found securely"), std::string::npos) << problem;
}

TEST(TlsRequestName, NamesEveryRequest) {
  EXPECT_STREQ(TlsRequestName(TlsRequest::kDefault), "default");
  EXPECT_STREQ(TlsRequestName(TlsRequest::kRequireTls), "requiretls");
  EXPECT_STREQ(TlsRequestName(TlsRequest::kTlsOptional), "tls_optional");
}

}  // namespace
}  // namespace tern::deliverer
