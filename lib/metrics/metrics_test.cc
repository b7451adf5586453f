#include "lib/metrics/metrics.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace tern::metrics {
namespace {

TEST(Registry, RendersCountersWithLabelsInTextFormat) {
  Registry r;
  r.GetCounter("tern_x_total", "X things", {{"outcome", "delivered"}}).Inc(3);
  r.GetCounter("tern_x_total", "X things", {{"outcome", "failed"}}).Inc();
  const std::string text = r.Render();
  EXPECT_NE(text.find("# TYPE tern_x_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_x_total{outcome=\"delivered\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_x_total{outcome=\"failed\"} 1\n"), std::string::npos) << text;
}

TEST(Registry, SameNameAndLabelsIsSameCounter) {
  Registry r;
  Counter& a = r.GetCounter("c", "h");
  Counter& b = r.GetCounter("c", "h");
  EXPECT_EQ(&a, &b);
}

TEST(Registry, EscapesLabelValues) { EXPECT_EQ(RenderLabels({{"a", "x\"y\\"}}), "{a=\"x\\\"y\\\\\"}"); }

TEST(Histogram, CountsEachObservationInTheFirstBucketThatHoldsIt) {
  Histogram h({0.001, 0.01, 0.1});
  h.Observe(0.0005);
  h.Observe(0.001);  // equal to a bound: Prometheus buckets are "less than or equal"
  h.Observe(0.05);
  h.Observe(7);
  EXPECT_EQ(h.cumulative_count(0), 2u);
  EXPECT_EQ(h.cumulative_count(1), 2u);
  EXPECT_EQ(h.cumulative_count(2), 3u);
  EXPECT_EQ(h.count(), 4u);
  EXPECT_DOUBLE_EQ(h.sum(), 0.0005 + 0.001 + 0.05 + 7);
}

TEST(Registry, RendersHistogramsAsCumulativeBucketsWithSumAndCount) {
  Registry r;
  Histogram& h = r.GetHistogram("tern_op_seconds", "Op time", {0.5, 1}, {{"method", "Lease"}});
  h.Observe(0.25);
  h.Observe(0.75);
  h.Observe(3);
  EXPECT_EQ(&h, &r.GetHistogram("tern_op_seconds", "Op time", {9}, {{"method", "Lease"}}));
  const std::string text = r.Render();
  EXPECT_NE(text.find("# TYPE tern_op_seconds histogram\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_op_seconds_bucket{method=\"Lease\",le=\"0.5\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_op_seconds_bucket{method=\"Lease\",le=\"1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_op_seconds_bucket{method=\"Lease\",le=\"+Inf\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_op_seconds_sum{method=\"Lease\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_op_seconds_count{method=\"Lease\"} 3\n"), std::string::npos) << text;
}

TEST(HttpExporter, ServesMetricsOverHttp) {
  Registry r;
  r.GetGauge("tern_depth", "Depth").Set(42);
  auto exporter = HttpExporter::Start("127.0.0.1:0", r);
  ASSERT_NE(exporter, nullptr);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(exporter->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string req = "GET /metrics HTTP/1.0\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) resp.append(buf, static_cast<size_t>(n));
  ::close(fd);
  EXPECT_NE(resp.find("200 OK"), std::string::npos);
  EXPECT_NE(resp.find("tern_depth 42"), std::string::npos) << resp;
}

}  // namespace
}  // namespace tern::metrics
