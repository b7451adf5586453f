// ternctl against two queue shards: fake Admin servers on loopback (port
// 0), each holding its own messages, driven through the real command line
// (CLI11 with every command group), as `ternctl --queue A,B ...` is.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/command_group.h"
#include "tools/ternctl/destinations_command.h"
#include "tools/ternctl/queue_shards.h"
#include "tools/ternctl/tlsrpt_command.h"

namespace tern::ternctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// 20 hex characters, like a MessageId; `n` orders them.
std::string Id(int n) { return absl::StrCat("0000000000000000", absl::Hex(n, absl::kZeroPad4)); }

// One queue shard: messages by id, each to one domain; a few event-log
// entries and corrupt records. What Admin answers follows the queue's rules
// where ternctl depends on them (List's cursor and next_cursor, an action's
// selector, Delete's confirmation, NOT_FOUND).
class FakeShard final : public tern::v1::Admin::Service {
 public:
  struct Message {
    std::string domain;
    bool held = false;
  };

  FakeShard() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeShard() override { server_->Shutdown(); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  void Add(const std::string& id, const std::string& domain) {
    std::lock_guard<std::mutex> lock(mu_);
    messages_[id] = {domain};
  }
  void AddEvent(uint64_t seq, int64_t at_unix_ms, const std::string& type) {
    std::lock_guard<std::mutex> lock(mu_);
    tern::v1::QueueEvent ev;
    ev.set_seq(seq);
    ev.set_at_unix_ms(at_unix_ms);
    ev.set_type(type);
    events_.push_back(ev);
  }
  void AddCorrupt(const std::string& key, const std::string& value) {
    std::lock_guard<std::mutex> lock(mu_);
    corrupt_[key] = value;
  }
  bool Has(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_.contains(id);
  }
  bool Held(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_.contains(id) && messages_[id].held;
  }
  int actions() {
    std::lock_guard<std::mutex> lock(mu_);
    return actions_;
  }
  bool paused() {
    std::lock_guard<std::mutex> lock(mu_);
    return paused_;
  }

  grpc::Status Stats(grpc::ServerContext*, const tern::v1::StatsRequest*, tern::v1::StatsResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    resp->set_messages(messages_.size());
    resp->set_deliveries(messages_.size());
    for (const auto& [id, m] : messages_) {
      resp->set_deliveries_held(resp->deliveries_held() + (m.held ? 1 : 0));
    }
    resp->set_enqueued_total(messages_.size() + 10);
    resp->set_paused(paused_);
    return grpc::Status::OK;
  }

  grpc::Status List(grpc::ServerContext*, const tern::v1::ListRequest* req, tern::v1::ListResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t limit = req->limit() == 0 ? 100 : req->limit();
    for (const std::string& id : Select(req->selector())) {
      if (!req->cursor().empty() && id <= req->cursor()) {
        continue;
      }
      if (static_cast<size_t>(resp->messages_size()) >= limit) {
        resp->set_next_cursor(resp->messages(resp->messages_size() - 1).message_id());
        break;
      }
      auto* m = resp->add_messages();
      m->set_message_id(id);
      m->add_domains(messages_[id].domain);
      m->set_state(messages_[id].held ? "held" : "due");
    }
    return grpc::Status::OK;
  }

  grpc::Status Show(grpc::ServerContext*, const tern::v1::ShowRequest* req, tern::v1::ShowResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!messages_.contains(req->message_id())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("no message ", req->message_id(), " in the queue"));
    }
    resp->set_message_id(req->message_id());
    resp->mutable_envelope()->set_mail_from(absl::StrCat("sender@", messages_[req->message_id()].domain));
    tern::v1::ClientInfo* client = resp->mutable_envelope()->mutable_client();
    client->set_ip("192.0.2.7");
    client->set_helo("app.example");
    client->set_tls(true);
    client->set_tls_client_verify("OK");
    client->set_tls_client_subject("CN=app.example");
    client->set_tls_client_sha256(std::string(64, 'c'));
    return grpc::Status::OK;
  }

  grpc::Status Hold(grpc::ServerContext*, const tern::v1::ActionRequest* req,
                    tern::v1::ActionResponse* resp) override {
    return Act(*req, resp, [](Message& m) { m.held = true; });
  }
  grpc::Status Delete(grpc::ServerContext*, const tern::v1::ActionRequest* req,
                      tern::v1::ActionResponse* resp) override {
    return Act(*req, resp, nullptr);
  }

  grpc::Status Pause(grpc::ServerContext*, const tern::v1::PauseRequest*, tern::v1::PauseResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = true;
    resp->set_paused(true);
    return grpc::Status::OK;
  }

  grpc::Status Watch(grpc::ServerContext*, const tern::v1::WatchRequest* req,
                     grpc::ServerWriter<tern::v1::QueueEvent>* writer) override {
    std::vector<tern::v1::QueueEvent> events;
    {
      std::lock_guard<std::mutex> lock(mu_);
      events = events_;
    }
    for (const auto& ev : events) {
      if ((req->has_after_seq() && ev.seq() > req->after_seq()) || (!req->has_after_seq() && req->from_oldest())) {
        writer->Write(ev);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetCorrupt(grpc::ServerContext*, const tern::v1::GetCorruptRequest* req,
                          tern::v1::GetCorruptResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = corrupt_.find(req->key());
    if (req->column_family() != "messages" || it == corrupt_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no corrupt record ", req->column_family(), " ", req->key()));
    }
    resp->set_value(it->second);
    return grpc::Status::OK;
  }

 private:
  std::vector<std::string> Select(const tern::v1::Selector& sel) {
    std::vector<std::string> ids;
    for (const auto& [id, m] : messages_) {
      const bool by_id = sel.message_ids().empty() ||
                         std::find(sel.message_ids().begin(), sel.message_ids().end(), id) != sel.message_ids().end();
      if (by_id && (sel.domain().empty() || sel.domain() == m.domain)) {
        ids.push_back(id);
      }
    }
    return ids;
  }

  // `change` null: delete.
  grpc::Status Act(const tern::v1::ActionRequest& req, tern::v1::ActionResponse* resp,
                   void (*change)(Message&)) {
    std::lock_guard<std::mutex> lock(mu_);
    const tern::v1::Selector& sel = req.selector();
    if (sel.message_ids().empty() && sel.domain().empty() && !sel.all()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "select messages (ids, domain, sender, recipient, state, age) or ask for all");
    }
    std::vector<std::string> ids = Select(sel);
    resp->set_matched(ids.size());
    if (change == nullptr && ids.size() > 1 && !req.confirm()) {
      resp->set_needs_confirmation(true);
      return grpc::Status::OK;
    }
    for (const std::string& id : ids) {
      ++actions_;
      if (change == nullptr) {
        messages_.erase(id);
        resp->set_undo_token(absl::StrCat("tok", port_));
        resp->set_undo_until_unix_ms(1'700'000'000'000);
      } else {
        change(messages_[id]);
      }
    }
    resp->set_deliveries_changed(ids.size());
    return grpc::Status::OK;
  }

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mu_;
  std::map<std::string, Message> messages_;
  std::vector<tern::v1::QueueEvent> events_;
  std::map<std::string, std::string> corrupt_;
  int actions_ = 0;
  bool paused_ = false;
};

// A loopback address with nothing listening: bind a port, read it, close it.
std::string ClosedAddress() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
}

struct CliResult {
  int code = 0;
  std::string out;
  std::string err;
};

// `ternctl ARGS...`, with every command group, as main.cc wires them.
CliResult Ternctl(std::vector<std::string> args) {
  CLI::App app{"ternctl"};
  GlobalOptions globals;
  AddQueueOption(app, globals);
  app.add_option("--timeout", globals.timeout_seconds);
  app.require_subcommand(1);
  app.fallthrough();
  std::ostringstream out, err;
  CliResult run;
  Io io{out, err};
  AddStatsCommands(app, globals, io, run.code);
  AddListCommands(app, globals, io, run.code);
  AddActionCommands(app, globals, io, run.code);
  AddWatchCommands(app, globals, io, run.code);
  AddHealthCommands(app, globals, io, run.code);
  AddTlsRptCommands(app, globals, io, run.code);
  AddDestinationsCommand(app, globals, io, run.code);
  std::reverse(args.begin(), args.end());
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    run.code = app.exit(e, out, err);
  }
  run.out = out.str();
  run.err = err.str();
  return run;
}

class TwoShards : public ::testing::Test {
 protected:
  TwoShards() {
    a_.Add(Id(1), "a.example");
    a_.Add(Id(3), "a.example");
    b_.Add(Id(2), "b.example");
  }
  std::string both() const { return absl::StrCat(a_.address(), ",", b_.address()); }

  FakeShard a_;
  FakeShard b_;
};

// The value of the first string member `name` in `json`.
std::string StringMember(const std::string& json, const std::string& name) {
  const std::string key = absl::StrCat("\"", name, "\":\"");
  const size_t start = json.find(key);
  if (start == std::string::npos) {
    return "";
  }
  const size_t from = start + key.size();
  return json.substr(from, json.find('"', from) - from);
}

// The lines of a table after its header, minus the count line.
std::vector<std::string> Rows(const std::string& table) {
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  return std::vector<std::string>(lines.begin() + 1, lines.end() - 1);
}

TEST_F(TwoShards, ListShowsEveryShardsMessagesEachNamingItsShard) {
  CliResult r = Ternctl({"--queue", both(), "list"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::StartsWith("QUEUE"));
  const auto rows = Rows(r.out);
  ASSERT_EQ(rows.size(), 3u) << r.out;
  EXPECT_THAT(rows[0], ::testing::StartsWith(a_.address() + "  " + Id(1)));
  EXPECT_THAT(rows[1], ::testing::StartsWith(b_.address() + "  " + Id(2)));
  EXPECT_THAT(rows[2], ::testing::StartsWith(a_.address() + "  " + Id(3)));
  EXPECT_THAT(r.out, HasSubstr("\n3 messages\n"));

  CliResult j = Ternctl({"--queue", both(), "list", "--json"});
  EXPECT_EQ(j.code, 0) << j.err;
  EXPECT_THAT(j.out, HasSubstr(absl::StrCat("{\"messages\":[{\"queue\":\"", a_.address(), "\",\"message_id\":\"",
                                            Id(1), "\"")));
  EXPECT_THAT(j.out, HasSubstr(absl::StrCat("{\"queue\":\"", b_.address(), "\",\"message_id\":\"", Id(2), "\"")));
  EXPECT_THAT(j.out, HasSubstr("],\"next_cursor\":\"\"}\n"));
}

TEST_F(TwoShards, ListLimitIsTheTotalAndTheCursorPagesAcrossShards) {
  a_.Add(Id(5), "a.example");
  b_.Add(Id(4), "b.example");
  b_.Add(Id(6), "b.example");
  std::vector<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 10; ++page) {
    std::vector<std::string> args = {"--queue", both(), "list", "--limit", "2"};
    if (!cursor.empty()) {
      args.insert(args.end(), {"--cursor", cursor});
    }
    CliResult r = Ternctl(args);
    ASSERT_EQ(r.code, 0) << r.err;
    const auto rows = Rows(r.out);
    EXPECT_LE(rows.size(), 2u) << r.out;
    for (const std::string& row : rows) {
      std::vector<std::string> cols = absl::StrSplit(row, ' ', absl::SkipEmpty());
      seen.push_back(cols[1]);
    }
    const size_t more = r.out.find("more with --cursor ");
    if (more == std::string::npos) {
      break;
    }
    cursor = r.out.substr(more + 19, r.out.find('\n', more) - more - 19);
    EXPECT_THAT(cursor, HasSubstr("@127.0.0.1:"));
  }
  EXPECT_THAT(seen, ElementsAre(Id(1), Id(2), Id(3), Id(4), Id(5), Id(6)));
}

TEST_F(TwoShards, ListCursorKeepsAnIdBothShardsHold) {
  // Ids are unique per shard only: the same id on both is listed twice,
  // each once, even when a page ends between the two.
  a_.Add(Id(7), "a.example");
  b_.Add(Id(7), "b.example");
  b_.Add(Id(8), "b.example");
  std::vector<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 10; ++page) {
    std::vector<std::string> args = {"--queue", both(), "list", "--limit", "1", "--json"};
    if (!cursor.empty()) {
      args.insert(args.end(), {"--cursor", cursor});
    }
    CliResult r = Ternctl(args);
    ASSERT_EQ(r.code, 0) << r.err;
    ASSERT_THAT(r.out, HasSubstr("\"message_id\"")) << r.out;
    seen.push_back(absl::StrCat(StringMember(r.out, "message_id"), "@", StringMember(r.out, "queue")));
    cursor = StringMember(r.out, "next_cursor");
    if (cursor.empty()) {
      break;
    }
  }
  const std::string a = "@" + a_.address();
  const std::string b = "@" + b_.address();
  EXPECT_THAT(seen, ElementsAre(Id(1) + a, Id(2) + b, Id(3) + a, Id(7) + a, Id(7) + b, Id(8) + b));
}

TEST_F(TwoShards, StatsSumsTheShardsAndShowsEach) {
  CliResult j = Ternctl({"--queue", both(), "stats", "--json"});
  EXPECT_EQ(j.code, 0) << j.err;
  EXPECT_THAT(j.out, ::testing::StartsWith("{\"messages\":3,\"deliveries\":3,"));
  EXPECT_THAT(j.out, HasSubstr("\"enqueued_total\":23,"));
  EXPECT_THAT(j.out, HasSubstr(absl::StrCat(",\"queues\":[{\"queue\":\"", a_.address(), "\",\"messages\":2,")));
  EXPECT_THAT(j.out, HasSubstr(absl::StrCat("{\"queue\":\"", b_.address(), "\",\"messages\":1,")));

  CliResult t = Ternctl({"--queue", both(), "stats"});
  EXPECT_EQ(t.code, 0) << t.err;
  EXPECT_THAT(t.out, ::testing::MatchesRegex("(.|\n)*messages stored +3\n(.|\n)*"));
  EXPECT_THAT(t.out, HasSubstr("\nQUEUE "));
  EXPECT_THAT(t.out, ::testing::MatchesRegex(absl::StrCat("(.|\n)*\n", a_.address(), " +2 (.|\n)*")));
  EXPECT_THAT(t.out, ::testing::MatchesRegex(absl::StrCat("(.|\n)*\n", b_.address(), " +1 (.|\n)*")));
}

TEST_F(TwoShards, AnActionByIdActsOnlyOnTheShardHoldingIt) {
  CliResult r = Ternctl({"--queue", both(), "hold", Id(2)});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(b_.Held(Id(2)));
  EXPECT_EQ(a_.actions(), 0);
  EXPECT_EQ(b_.actions(), 1);
  EXPECT_EQ(r.out, absl::StrCat("1 message matches\n"
                                "hold: 1 delivery changed\n"
                                "  queue ", a_.address(), ": 0 messages, 0 deliveries changed\n"
                                "  queue ", b_.address(), ": 1 message, 1 delivery changed\n"));
}

TEST_F(TwoShards, AnActionByFilterAppliesOnEveryShardWithTotals) {
  b_.Add(Id(4), "a.example");
  CliResult r = Ternctl({"--queue", both(), "hold", "--domain", "a.example", "--json"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(a_.Held(Id(1)) && a_.Held(Id(3)) && b_.Held(Id(4)));
  EXPECT_FALSE(b_.Held(Id(2)));
  EXPECT_THAT(r.out, ::testing::StartsWith("{\"matched\":\"3\",\"deliveries_changed\":\"3\","));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("\"queues\":[{\"queue\":\"", a_.address(), "\",\"matched\":\"2\"")));
}

TEST_F(TwoShards, DeleteOfOneMessageOnEachShardStillNeedsYes) {
  CliResult r = Ternctl({"--queue", both(), "delete", Id(1), Id(2)});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, ::testing::StartsWith("2 messages match\n"));
  EXPECT_THAT(r.err, HasSubstr("nothing done: delete of 2 messages needs --yes"));
  EXPECT_TRUE(a_.Has(Id(1)));
  EXPECT_TRUE(b_.Has(Id(2)));

  CliResult one = Ternctl({"--queue", both(), "delete", Id(2)});
  EXPECT_EQ(one.code, 0) << one.err;
  EXPECT_FALSE(b_.Has(Id(2)));
  EXPECT_THAT(one.out, HasSubstr(absl::StrCat("  queue ", b_.address(), ": 1 message, 1 delivery changed; undo until ",
                                              "2023-11-14T22:13:20Z: ternctl undelete --token tok")));

  CliResult yes = Ternctl({"--queue", both(), "delete", "--domain", "a.example", "--yes"});
  EXPECT_EQ(yes.code, 0) << yes.err;
  EXPECT_FALSE(a_.Has(Id(1)));
  EXPECT_FALSE(a_.Has(Id(3)));
}

TEST_F(TwoShards, OneShardDownPrintsTheOthersAndNamesItExit1) {
  const std::string down = ClosedAddress();
  const std::string queue = absl::StrCat(a_.address(), ",", down);
  CliResult list = Ternctl({"--timeout", "2", "--queue", queue, "list"});
  EXPECT_EQ(list.code, 1);
  EXPECT_THAT(list.out, HasSubstr(Id(1)));
  EXPECT_THAT(list.out, HasSubstr(Id(3)));
  EXPECT_THAT(list.out, HasSubstr("2 messages; not every shard answered, so no cursor past this page"));
  EXPECT_THAT(list.err, HasSubstr("cannot reach the queue at " + down));
  EXPECT_THAT(list.err, Not(HasSubstr(a_.address())));
  // A cursor past Id(1) would skip whatever the dead shard holds below it.
  CliResult page = Ternctl({"--timeout", "2", "--queue", queue, "list", "--limit", "1", "--json"});
  EXPECT_EQ(page.code, 1);
  EXPECT_THAT(page.out, HasSubstr(Id(1)));
  EXPECT_THAT(page.out, Not(HasSubstr(Id(3))));
  EXPECT_THAT(page.out, HasSubstr("\"next_cursor\":\"\"}"));

  CliResult stats = Ternctl({"--timeout", "2", "--queue", queue, "stats", "--json"});
  EXPECT_EQ(stats.code, 1);
  EXPECT_THAT(stats.out, ::testing::StartsWith("{\"messages\":2,"));
  EXPECT_THAT(stats.err, HasSubstr("cannot reach the queue at " + down));

  CliResult hold = Ternctl({"--timeout", "2", "--queue", queue, "hold", Id(1)});
  EXPECT_EQ(hold.code, 1);
  EXPECT_TRUE(a_.Held(Id(1)));
  EXPECT_THAT(hold.out, HasSubstr(absl::StrCat("queue ", a_.address(), ": 1 message, 1 delivery changed")));
  EXPECT_THAT(hold.err, HasSubstr(down));
}

TEST_F(TwoShards, ShowAsksEveryShardAndAnIdNowhereIsTheUsualError) {
  CliResult r = Ternctl({"--queue", both(), "show", Id(2)});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::StartsWith(absl::StrCat("== queue ", b_.address(), " ==\nmessage      ", Id(2))));
  EXPECT_THAT(r.out, HasSubstr("<sender@b.example>"));
  EXPECT_THAT(r.out, HasSubstr("client       app.example [192.0.2.7] tls\n"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("client cert  verified CN=app.example sha256=", std::string(64, 'c'), "\n")));

  CliResult j = Ternctl({"--queue", both(), "explain", Id(3), "--json"});
  EXPECT_EQ(j.code, 0) << j.err;
  EXPECT_THAT(j.out, ::testing::StartsWith(absl::StrCat("{\"queue\":\"", a_.address(), "\",\"message_id\":\"", Id(3))));

  CliResult missing = Ternctl({"--queue", both(), "show", Id(9)});
  CliResult missing_one = Ternctl({"--queue", a_.address(), "show", Id(9)});
  EXPECT_EQ(missing.code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, missing_one.err);
  EXPECT_EQ(missing.err, absl::StrCat("ternctl: show failed: no message ", Id(9), " in the queue\n"));
}

TEST_F(TwoShards, WatchInterleavesEveryShardsEventsNamingTheShard) {
  a_.AddEvent(1, 1'700'000'000'000, "received");
  b_.AddEvent(1, 1'700'000'001'000, "received");
  a_.AddEvent(2, 1'700'000'002'000, "delivered");
  CliResult r = Ternctl({"--queue", both(), "watch", "--oldest", "--no-follow"});
  EXPECT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_THAT(lines[0], ::testing::StartsWith(absl::StrCat("1@", a_.address(), "  2023-11-14T22:13:20Z  received")));
  EXPECT_THAT(lines[1], ::testing::StartsWith(absl::StrCat("1@", b_.address(), "  ")));
  EXPECT_THAT(lines[2], ::testing::StartsWith(absl::StrCat("2@", a_.address(), "  ")));

  // Resumed per shard, from what the lines start with.
  CliResult resumed = Ternctl({"--queue", both(), "watch", "--no-follow", "--json", "--from",
                               absl::StrCat("1@", a_.address(), ",1@", b_.address())});
  EXPECT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_EQ(resumed.out, absl::StrCat("{\"queue\":\"", a_.address(),
                                      "\",\"seq\":\"2\",\"at_unix_ms\":\"1700000002000\",\"type\":\"delivered\","
                                      "\"message_id\":\"\",\"job_id\":\"\",\"recipients\":[],\"detail\":\"\"}\n"));

  CliResult bare = Ternctl({"--queue", both(), "watch", "--no-follow", "--from", "1"});
  EXPECT_EQ(bare.code, 2);
  EXPECT_THAT(bare.err, HasSubstr("SEQ@QUEUE"));
}

TEST_F(TwoShards, PauseIsEveryShards) {
  CliResult r = Ternctl({"--queue", both(), "pause"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(a_.paused());
  EXPECT_TRUE(b_.paused());
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("queue ", b_.address(), ": delivery paused")));
}

TEST_F(TwoShards, CorruptShowTakesTheShardWhenTheKeyIsOnSeveral) {
  a_.AddCorrupt("k1", "bytes-a");
  b_.AddCorrupt("k1", "bytes-b");
  b_.AddCorrupt("k2", "bytes-b2");
  CliResult only = Ternctl({"--queue", both(), "corrupt", "show", "messages", "k2"});
  EXPECT_EQ(only.code, 0) << only.err;
  EXPECT_EQ(only.out, "bytes-b2");

  CliResult ambiguous = Ternctl({"--queue", both(), "corrupt", "show", "messages", "k1"});
  EXPECT_EQ(ambiguous.code, 2);
  EXPECT_EQ(ambiguous.out, "");
  EXPECT_THAT(ambiguous.err, HasSubstr("--shard"));

  CliResult named = Ternctl({"--queue", both(), "corrupt", "show", "messages", "k1", "--shard", b_.address()});
  EXPECT_EQ(named.code, 0) << named.err;
  EXPECT_EQ(named.out, "bytes-b");

  CliResult unknown = Ternctl({"--queue", both(), "corrupt", "show", "messages", "k1", "--shard", "127.0.0.1:1"});
  EXPECT_EQ(unknown.code, 2);

  CliResult nowhere = Ternctl({"--queue", both(), "corrupt", "show", "messages", "k9"});
  EXPECT_EQ(nowhere.code, 1);
  EXPECT_EQ(nowhere.err, "ternctl: corrupt show failed: no corrupt record messages k9\n");
}

TEST_F(TwoShards, OneShardPrintsExactlyWhatOneQueueDoes) {
  CliResult list = Ternctl({"--queue", a_.address(), "list", "--json"});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_EQ(list.out, absl::StrCat("{\"messages\":[{\"message_id\":\"", Id(1),
                                   "\",\"arrival_unix_ms\":\"0\",\"mail_from\":\"\",\"size\":\"0\",\"recipients\":0,"
                                   "\"recipients_pending\":0,\"domains\":[\"a.example\"],\"state\":\"due\","
                                   "\"next_attempt_unix_ms\":\"0\",\"max_attempts\":0,\"last_reply\":\"\"},"
                                   "{\"message_id\":\"", Id(3),
                                   "\",\"arrival_unix_ms\":\"0\",\"mail_from\":\"\",\"size\":\"0\",\"recipients\":0,"
                                   "\"recipients_pending\":0,\"domains\":[\"a.example\"],\"state\":\"due\","
                                   "\"next_attempt_unix_ms\":\"0\",\"max_attempts\":0,\"last_reply\":\"\"}],"
                                   "\"next_cursor\":\"\"}\n"));
  CliResult page = Ternctl({"--queue", a_.address(), "list", "--limit", "1"});
  EXPECT_THAT(page.out, ::testing::StartsWith("ID  "));
  EXPECT_THAT(page.out, ::testing::EndsWith(absl::StrCat("\n1 message; more with --cursor ", Id(1), "\n")));
  CliResult hold = Ternctl({"--queue", a_.address(), "hold", Id(1)});
  EXPECT_EQ(hold.out, "1 message matches\nhold: 1 delivery changed\n");
  CliResult pause = Ternctl({"--queue", a_.address(), "pause"});
  EXPECT_EQ(pause.out, "delivery paused (mail is still accepted; `ternctl resume` ends it)\n");
}

TEST(TernctlQueueOption, ABadShardListIsAUsageError) {
  CliResult r = Ternctl({"--queue", "127.0.0.1:7070,,127.0.0.1:7071", "stats"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("entry 2 is empty"));
}

}  // namespace
}  // namespace tern::ternctl
