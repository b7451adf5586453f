#include "services/deliverer/call_pacer.h"

#include <chrono>

#include "gtest/gtest.h"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;
using Clock = CallPacer::Clock;

const Clock::time_point kT0 = Clock::time_point() + 1000s;

TEST(CallPacer, FirstCallGoesAtOnce) {
  CallPacer pacer(5ms, 64);
  EXPECT_EQ(pacer.ReadyAt(1, kT0), kT0);
}

TEST(CallPacer, ASmallBatchWaitsUntilTheWaitAfterThePreviousCallStarted) {
  CallPacer pacer(5ms, 64);
  pacer.Started(kT0);
  EXPECT_EQ(pacer.ReadyAt(1, kT0 + 1ms), kT0 + 5ms);
  EXPECT_EQ(pacer.ReadyAt(63, kT0 + 4ms), kT0 + 5ms);
}

TEST(CallPacer, AFullBatchGoesAtOnce) {
  CallPacer pacer(5ms, 64);
  pacer.Started(kT0);
  EXPECT_EQ(pacer.ReadyAt(64, kT0 + 1ms), kT0 + 1ms);
  EXPECT_EQ(pacer.ReadyAt(500, kT0), kT0);
}

TEST(CallPacer, AfterAQuietSpellTheNextCallGoesAtOnce) {
  CallPacer pacer(5ms, 64);
  pacer.Started(kT0);
  EXPECT_EQ(pacer.ReadyAt(1, kT0 + 5ms), kT0 + 5ms);
  EXPECT_EQ(pacer.ReadyAt(1, kT0 + 2s), kT0 + 2s);
}

TEST(CallPacer, TheWaitCountsFromTheLatestStart) {
  CallPacer pacer(5ms, 64);
  pacer.Started(kT0);
  pacer.Started(kT0 + 7ms);
  EXPECT_EQ(pacer.ReadyAt(2, kT0 + 8ms), kT0 + 12ms);
}

TEST(CallPacer, ZeroWaitNeverDelays) {
  CallPacer pacer(Clock::duration::zero(), 64);
  pacer.Started(kT0);
  EXPECT_EQ(pacer.ReadyAt(1, kT0 + 1us), kT0 + 1us);
}

}  // namespace
}  // namespace tern::deliverer
