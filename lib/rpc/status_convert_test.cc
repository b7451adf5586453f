#include "lib/rpc/status_convert.h"

#include "gtest/gtest.h"

namespace tern::rpc {
namespace {

TEST(StatusConvert, RoundTripsEveryCode) {
  for (int code = 0; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), code == 0 ? "" : "why");
    grpc::Status g = ToGrpc(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(FromGrpc(g), s);
  }
}

TEST(StatusConvert, KeepsMessage) {
  EXPECT_EQ(ToGrpc(absl::ResourceExhaustedError("disk full")).error_message(), "disk full");
}

}  // namespace
}  // namespace tern::rpc
