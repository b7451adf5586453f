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
