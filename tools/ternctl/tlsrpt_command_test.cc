#include "tools/ternctl/tlsrpt_command.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::ternctl {
namespace {

using ::testing::HasSubstr;

TEST(FormatDay, IsTheUtcDate) {
  EXPECT_EQ(FormatDay(0), "1970-01-01");
  EXPECT_EQ(FormatDay(20414), "2025-11-22");
}

TEST(FormatTlsReportsPending, ShowsADayDomainRowWithTotalsAndRua) {
  tern::v1::ListTlsReportsResponse resp;
  auto* p = resp.add_pending();
  p->set_day(20414);
  p->set_policy_domain("example.com");
  p->set_successful(5326);
  p->set_failed(303);
  p->add_rua("mailto:tlsrpt@example.com");
  p->add_rua("https://tlsrpt.example.com/v1");
  EXPECT_EQ(FormatTlsReportsPending(resp),
            "DAY         DOMAIN       SUCCESSFUL  FAILED  RUA\n"
            "2025-11-22  example.com  5326        303     mailto:tlsrpt@example.com https://tlsrpt.example.com/v1\n"
            "1 report pending (sent after midnight UTC; `ternctl tlsrpt send` sends the finished days now)\n");
  EXPECT_THAT(FormatTlsReportsPending(tern::v1::ListTlsReportsResponse()), HasSubstr("0 reports pending"));
}

TEST(FormatTlsReportsSent, ListsReportsSkippedRuaAndDroppedDomains) {
  tern::v1::SendTlsReportsResponse resp;
  auto* s = resp.add_sent();
  s->set_day(20414);
  s->set_policy_domain("example.com");
  s->set_report_id("2025-11-22_example.com@mail.example.net");
  s->add_message_ids("m1");
  s->add_message_ids("m2");
  s->add_skipped_rua("mailto:tlsrpt@[192.0.2.1]: not a usable address");
  auto* d = resp.add_sent();
  d->set_day(20414);
  d->set_policy_domain("other.example");
  d->add_skipped_rua("https://u@other.example/r: user information in the URI");
  EXPECT_EQ(FormatTlsReportsSent(resp),
            "2025-11-22 example.com: report 2025-11-22_example.com@mail.example.net queued as m1, m2\n"
            "  skipped mailto:tlsrpt@[192.0.2.1]: not a usable address\n"
            "2025-11-22 other.example: nothing queued (no usable rua); its counts are deleted\n"
            "  skipped https://u@other.example/r: user information in the URI\n"
            "1 report, 2 messages queued\n");
  EXPECT_EQ(FormatTlsReportsSent(tern::v1::SendTlsReportsResponse()), "nothing to send\n");
}

}  // namespace
}  // namespace tern::ternctl
