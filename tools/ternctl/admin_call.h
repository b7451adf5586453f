// File: admin_call.h
//
// Making ternctl's calls, kept out of admin_client.h, which the command
// groups include without gRPC.
//
// CallAndPrint: the whole of a read-only command on one queue whose answer
// is printed as it is: one unary Admin call with ternctl's deadline, the
// answer as JSON (--json) or through `format`, or the failure on io.err.
//
// AskShards / AskEveryShard: the same call on every queue shard
// (queue_shards.h) at once, one thread per shard beyond the first, so that
// an unreachable shard costs one --timeout, not one per shard. Each answer
// keeps its shard's address; ReportFailedShards prints the failures, and the
// command prints what the others answered.
//
// Thread-safety: single-threaded CLI helpers; AskShards runs `call`
// concurrently, once per shard, each with its own stub and response.
#pragma once

#include <grpcpp/client_context.h>

#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {

// `method` is e.g. &tern::v1::Admin::Stub::Qshape; `what` names the command
// in an error. Returns the exit code.
template <typename Req, typename Resp, typename Format>
int CallAndPrint(const GlobalOptions& g,
                 grpc::Status (tern::v1::Admin::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                 const Req& req, absl::string_view what, bool json, Io io, Format format) {
  Resp resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue));
  grpc::Status s = ((*stub).*method)(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, what, g, io);
  }
  io.out << (json ? ToJson(resp) : format(resp));
  return 0;
}

// One shard's answer.
template <typename Resp>
struct ShardAnswer {
  std::string queue;  // the shard's address, as --queue lists it
  grpc::Status status;
  Resp resp;
};

// Runs `call(stub, resp, index)` for every shard, concurrently, with a stub
// of `Service` (tern::v1::Admin, tern::v1::Queue, grpc::health::v1::Health)
// on the shard's channel. `call` makes its own ClientContext (SetDeadline)
// and returns the call's status. Answers come back in shard order.
template <typename Service, typename Resp, typename Call>
std::vector<ShardAnswer<Resp>> AskShards(const std::vector<std::string>& shards, Call call) {
  std::vector<ShardAnswer<Resp>> answers(shards.size());
  std::vector<std::unique_ptr<typename Service::Stub>> stubs;
  for (size_t i = 0; i < shards.size(); ++i) {
    answers[i].queue = shards[i];
    stubs.push_back(Service::NewStub(rpc::MakeChannel(shards[i])));
  }
  auto run = [&](size_t i) { answers[i].status = call(*stubs[i], answers[i].resp, i); };
  std::vector<std::thread> threads;
  for (size_t i = 1; i < shards.size(); ++i) {
    threads.emplace_back(run, i);
  }
  if (!shards.empty()) {
    run(0);
  }
  for (std::thread& t : threads) {
    t.join();
  }
  return answers;
}

// One unary Admin call with the same request on every shard.
template <typename Req, typename Resp>
std::vector<ShardAnswer<Resp>> AskEveryShard(
    const GlobalOptions& g, const std::vector<std::string>& shards,
    grpc::Status (tern::v1::Admin::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Req& req) {
  return AskShards<tern::v1::Admin, Resp>(shards, [&](tern::v1::Admin::Stub& stub, Resp& resp, size_t) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, g);
    return (stub.*method)(&ctx, req, &resp);
  });
}

// Whether `a` answered: OK, or `absent` (e.g. NOT_FOUND for show: the id is
// on another shard), which is an answer too.
template <typename Resp>
bool Answered(const ShardAnswer<Resp>& a, grpc::StatusCode absent = grpc::StatusCode::OK) {
  return a.status.ok() || a.status.error_code() == absent;
}

// Prints to io.err why each shard that did not answer (Answered) failed,
// naming it; returns whether any failed. When every shard refused the
// request alike (the same code and message, and not for being unreachable),
// the request is what is wrong: that is printed once, as on one queue.
template <typename Resp>
bool ReportFailedShards(const std::vector<ShardAnswer<Resp>>& answers, absl::string_view what, Io io,
                        grpc::StatusCode absent = grpc::StatusCode::OK) {
  bool failed = false;
  bool alike = !answers.empty();
  for (const ShardAnswer<Resp>& a : answers) {
    failed = failed || !Answered(a, absent);
    alike = alike && !Answered(a, absent) && a.status.error_code() == answers[0].status.error_code() &&
            a.status.error_message() == answers[0].status.error_message();
  }
  const grpc::StatusCode code = answers.empty() ? grpc::StatusCode::OK : answers[0].status.error_code();
  if (alike && answers.size() > 1 && code != grpc::StatusCode::UNAVAILABLE &&
      code != grpc::StatusCode::DEADLINE_EXCEEDED) {
    io.err << "ternctl: " << what << " failed: " << answers[0].status.error_message() << "\n";
    return true;
  }
  for (const ShardAnswer<Resp>& a : answers) {
    if (!Answered(a, absent)) {
      ReportShardError(a.status, what, a.queue, io);
    }
  }
  return failed;
}

// The answers that are OK, in shard order.
template <typename Resp>
std::vector<const ShardAnswer<Resp>*> OkAnswers(const std::vector<ShardAnswer<Resp>>& answers) {
  std::vector<const ShardAnswer<Resp>*> ok;
  for (const ShardAnswer<Resp>& a : answers) {
    if (a.status.ok()) {
      ok.push_back(&a);
    }
  }
  return ok;
}

}  // namespace tern::ternctl
