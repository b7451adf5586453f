#include "tools/ternctl/destinations_command.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::ternctl {
namespace {

using ::testing::HasSubstr;

TEST(FormatDestinations, OneRowPerDestinationThenEachBackoffInForce) {
  tern::v1::DestinationsResponse resp;
  auto* site = resp.add_destinations();
  site->set_destination("site:google");
  site->set_leased(20);
  site->set_waiting(340);
  site->set_concurrency_max(20);
  site->set_concurrency_now(20);
  site->set_rate_max("100/s");
  site->set_site_domains(1204);
  auto* domain = resp.add_destinations();
  domain->set_destination("small-isp.example");
  domain->set_leased(1);
  domain->set_waiting(12);
  domain->set_concurrency_max(4);
  domain->set_concurrency_now(1);
  domain->set_rate_max("none");
  domain->set_backoff_until_unix_ms(1'700'000'090'000);
  domain->set_backoff_reply("421 4.7.0 Too many connections");
  auto* open = resp.add_destinations();
  open->set_destination("open.example");
  open->set_rate_max("none");
  EXPECT_EQ(FormatDestinations(resp, 1'700'000'000'000),
            "DESTINATION        LEASED  WAITING  CONCURRENCY  MAX  RATE   DOMAINS\n"
            "site:google        20      340      20           20   100/s  1204\n"
            "small-isp.example  1       12       1            4    -\n"
            "open.example       0       0        -            -    -\n"
            "small-isp.example: backed off to 1 until 2023-11-14T22:14:50Z (1m more) after "
            "'421 4.7.0 Too many connections'\n");
}

TEST(FormatDestinations, SaysSoWhenThereIsNothingToShow) {
  EXPECT_THAT(FormatDestinations(tern::v1::DestinationsResponse(), 0), HasSubstr("no destination has deliveries"));
}

}  // namespace
}  // namespace tern::ternctl
