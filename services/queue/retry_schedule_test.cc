#include "services/queue/retry_schedule.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::queue {
namespace {

using ::testing::HasSubstr;

std::vector<int64_t> Seconds(std::vector<double> s) {
  std::vector<int64_t> ms;
  for (double v : s) {
    ms.push_back(static_cast<int64_t>(v * 1000));
  }
  return ms;
}

struct Vector {
  std::string label;
  std::string input;
  std::vector<double> seconds;
};

// haraka-outbound-facts.md §7, "temp_fail_intervals -> seconds".
TEST(RetrySchedule, ParsesEveryHarakaVector) {
  const std::vector<Vector> vectors = {
      {"list with repeats", "1m, 5m*2, 1h*3", {60, 300, 300, 3600, 3600, 3600}},
      {"seconds", "10s, 1m*2", {10, 60, 60}},
      {"long list",
       "30s, 1m, 5m, 9m, 15m*3, 30m*2, 1h*3, 2h*3, 1d",
       {30, 60, 300, 540, 900, 900, 900, 1800, 1800, 3600, 3600, 3600, 7200, 7200, 7200, 86400}},
      {"none", "none", {}},
      {"NONE upper case", "NONE", {}},
      {"minimum", "5s", {5}},
      {"fraction", "1.5m", {90}},
      {"hex number", "0x10s", {16}},
      {"exponent", "1e1m", {600}},
      {"upper-case unit", "1M", {60}},
      {"days upper case", "2D", {172800}},
      {"zero repeat then item", "1m*0, 5s", {5}},
      {"negative repeat adds nothing", "1m*-1, 5s", {5}},
      {"spaces anywhere", " 1 m * 2 ,\t5 s ", {60, 60, 5}},
      {"leading point", ".5m", {30}},
      {"trailing point", "6.s", {6}},
      {"signed", "+1m", {60}},
      {"octal and binary", "0o10s, 0b110s", {8, 6}},
      {"hex repeat count", "1m*0x2", {60, 60}},
  };
  for (const auto& v : vectors) {
    SCOPED_TRACE(v.label);
    auto parsed = ParseTempFailIntervals(v.input);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, Seconds(v.seconds));
  }
}

// The inputs Haraka silently replaces by its default; Tern refuses them.
TEST(RetrySchedule, RefusesEveryValueHarakaFallsBackOn) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"60 min", "bad item '60min'"},
      {"4s", "bad item '4s' (each item must be at least 5s)"},
      {"1w", "bad item '1w'"},
      {"m", "bad item 'm' (each item must be at least 5s)"},
      {"5", "bad item '5'"},
      {"1m*0", "gives no intervals"},
      {"1m*", "gives no intervals"},
      {"1m*-1", "gives no intervals"},
      {"1m*2*3", "bad item '1m*2*3' (more than one '*')"},
      {"1m*2.5", "bad item '1m*2.5' (the repeat count"},
      {"1m,,5m", "empty item"},
      {"  \t ", "empty value"},
      {"1m,", "empty item"},
      {"infinitys", "bad item 'infinitys'"},
      {"0xs", "bad item '0xs'"},
      {"1e5000s", "at most 365d"},
      {"-1m", "at least 5s"},
      {"1m*1e9", "intervals in all"},
  };
  for (const auto& [input, message] : bad) {
    SCOPED_TRACE(input);
    auto parsed = ParseTempFailIntervals(input);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(message));
  }
}

TEST(RetrySchedule, DefaultDoublesFrom64Seconds) {
  EXPECT_EQ(DefaultTempFailIntervals(13),
            Seconds({64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072}));
  EXPECT_EQ(DefaultTempFailIntervals(1), Seconds({}));
  EXPECT_EQ(DefaultTempFailIntervals(2), Seconds({64}));
  EXPECT_EQ(DefaultTempFailIntervals(5), Seconds({64, 128, 256, 512}));
}

TEST(RetrySchedule, ReadsOutboundIniAndNamesTheKeyInErrors) {
  auto ini = config::IniFile::Parse("[main]\ntemp_fail_intervals=1m, 4s\n", "outbound.ini");
  ASSERT_TRUE(ini.ok());
  auto schedule = RetrySchedule::FromOutboundIni(*ini);
  ASSERT_FALSE(schedule.ok());
  EXPECT_EQ(schedule.status().message(),
            "outbound.ini: [main] temp_fail_intervals: bad item '4s' (each item must be at least 5s)");

  ini = config::IniFile::Parse("[main]\nmaxTempFailures=3\n", "outbound.ini");
  ASSERT_TRUE(ini.ok());
  schedule = RetrySchedule::FromOutboundIni(*ini);
  ASSERT_TRUE(schedule.ok()) << schedule.status();
  EXPECT_EQ(schedule->intervals_ms(), Seconds({64, 128}));

  ini = config::IniFile::Parse("[main]\ntemp_fail_intervals=\nmaxTempFailures=2\n", "outbound.ini");
  ASSERT_TRUE(ini.ok());
  schedule = RetrySchedule::FromOutboundIni(*ini);
  ASSERT_TRUE(schedule.ok()) << schedule.status();
  EXPECT_EQ(schedule->intervals_ms(), Seconds({64}));

  ini = config::IniFile::Parse("[main]\nmaxTempFailures=-1\n", "outbound.ini");
  ASSERT_TRUE(ini.ok());
  EXPECT_FALSE(RetrySchedule::FromOutboundIni(*ini).ok());
}

TEST(RetrySchedule, DelayAfterFailureUsesTheIntervalOfThatAttempt) {
  RetrySchedule schedule(Seconds({60, 300}));
  EXPECT_EQ(schedule.DelayAfterFailureMs(1), 60000);
  EXPECT_EQ(schedule.DelayAfterFailureMs(2), 300000);
  EXPECT_EQ(schedule.DelayAfterFailureMs(3), std::nullopt);
  EXPECT_EQ(RetrySchedule(Seconds({})).DelayAfterFailureMs(1), std::nullopt);
}

}  // namespace
}  // namespace tern::queue
