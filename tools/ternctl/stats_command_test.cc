#include "tools/ternctl/stats_command.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tern/v1/admin.grpc.pb.h"

namespace tern::ternctl {
namespace {

using ::testing::HasSubstr;

// Every field gets a distinct value so each can be found in the output.
tern::v1::StatsResponse SampleStats() {
  tern::v1::StatsResponse s;
  s.set_messages(101);
  s.set_deliveries(102);
  s.set_deliveries_due(103);
  s.set_deliveries_leased(104);
  s.set_deliveries_deferred(105);
  s.set_bounces(106);
  s.set_bounces_leased(107);
  s.set_recipients_pending(108);
  s.set_oldest_message_unix_ms(1'795'000'000'000);  // 2026-11-18T...
  s.set_enqueued_total(110);
  s.set_delivered_total(111);
  s.set_deferred_total(112);
  s.set_failed_total(113);
  s.set_deliveries_held(114);
  s.set_ambiguous_total(115);
  s.set_corrupt_records(117);
  return s;
}

TEST(FormatStatsJson, HasEveryFieldAsANumber) {
  std::string json = FormatStatsJson(SampleStats());
  const google::protobuf::Descriptor* d = tern::v1::StatsResponse::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    EXPECT_THAT(json, HasSubstr(absl::StrCat("\"", d->field(i)->name(), "\":"))) << d->field(i)->name();
  }
  EXPECT_EQ(json,
            "{\"messages\":101,\"deliveries\":102,\"deliveries_due\":103,\"deliveries_leased\":104,"
            "\"deliveries_deferred\":105,\"deliveries_held\":114,\"bounces\":106,\"bounces_leased\":107,"
            "\"recipients_pending\":108,\"oldest_message_unix_ms\":1795000000000,\"paused\":false,"
            "\"corrupt_records\":117,\"enqueued_total\":110,\"delivered_total\":111,"
            "\"deferred_total\":112,\"failed_total\":113,\"ambiguous_total\":115}\n");
}

TEST(FormatStatsTable, ShowsEveryFieldAlignedWithOldestAge) {
  absl::Time now = absl::FromUnixMillis(1'795'000'000'000) + absl::Minutes(3) + absl::Seconds(12);
  std::string table = FormatStatsTable(SampleStats(), now);
  for (int v = 101; v <= 117; ++v) {
    if (v == 109 || v == 116) {
      continue;  // the oldest-message field is shown as a time
    }
    EXPECT_THAT(table, HasSubstr(absl::StrCat("  ", v, "\n"))) << v;
  }
  EXPECT_THAT(table, HasSubstr("messages stored"));
  EXPECT_THAT(table, HasSubstr("since the queue started:\n"));
  EXPECT_THAT(table, HasSubstr("oldest message"));
  EXPECT_THAT(table, HasSubstr("2026-11-18T"));
  EXPECT_THAT(table, HasSubstr("(3m12s ago)"));
  // Values start in one column.
  size_t column = std::string::npos;
  std::istringstream lines(table);
  for (std::string line; std::getline(lines, line);) {
    size_t pos = line.find_last_of(' ', line.find_first_of("0123456789-"));
    if (line.find("since") == 0 || line.find("oldest") != std::string::npos) {
      continue;
    }
    if (column == std::string::npos) {
      column = pos;
    }
    EXPECT_EQ(pos, column) << line;
  }
}

TEST(FormatStatsTable, EmptyQueueHasNoOldestMessage) {
  std::string table = FormatStatsTable(tern::v1::StatsResponse(), absl::Now());
  EXPECT_THAT(table, HasSubstr("- (queue empty)"));
}

class FakeAdmin final : public tern::v1::Admin::Service {
 public:
  grpc::Status Stats(grpc::ServerContext*, const tern::v1::StatsRequest*, tern::v1::StatsResponse* resp) override {
    *resp = SampleStats();
    return grpc::Status::OK;
  }
};

TEST(RunStats, PrintsTheQueuesAnswer) {
  FakeAdmin admin;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&admin);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  GlobalOptions globals;
  globals.queue = absl::StrCat("127.0.0.1:", port);
  std::ostringstream out, err;
  EXPECT_EQ(RunStats(globals, /*json=*/true, Io{out, err}), 0);
  EXPECT_EQ(out.str(), FormatStatsJson(SampleStats()));
  EXPECT_EQ(err.str(), "");
  server->Shutdown();
}

// A loopback port with nothing listening: bind one, read it, close it.
int ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(RunStats, UnreachableQueueIsAClearErrorAndExitCode1) {
  GlobalOptions globals;
  globals.queue = absl::StrCat("127.0.0.1:", ClosedPort());
  std::ostringstream out, err;
  auto start = absl::Now();
  EXPECT_EQ(RunStats(globals, /*json=*/false, Io{out, err}), 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(globals.timeout_seconds + 2));
  EXPECT_EQ(out.str(), "");
  EXPECT_THAT(err.str(), HasSubstr("ternctl: cannot reach the queue at " + globals.queue));
}

}  // namespace
}  // namespace tern::ternctl
