// File: admin_call.h
//
// CallAndPrint: the whole of a read-only ternctl command whose answer is
// printed as it is: one unary Admin call with ternctl's deadline, the answer
// as JSON (--json) or through `format`, or the failure on io.err. Kept out
// of admin_client.h, which the command groups include without gRPC.
//
// Thread-safety: single-threaded CLI helper.
#pragma once

#include <grpcpp/client_context.h>

#include <ostream>

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

}  // namespace tern::ternctl
