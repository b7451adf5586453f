// File: asio_grpc.h
//
// Awaiting gRPC callback-API calls from Asio coroutines.
//
//   grpc::ClientContext ctx;
//   tern::v1::LeaseResponse resp;
//   grpc::Status s = co_await tern::rpc::AwaitGrpc([&](auto done) {
//     stub->async()->Lease(&ctx, &req, &resp, std::move(done));
//   });
//
// The completion runs on a gRPC thread; it is posted back to the awaiting
// coroutine's executor, so the coroutine resumes on its own thread. The
// context, request and response must live in the coroutine frame (they do, as
// locals) until the co_await returns. Include only from .cc files: it pulls in
// both Asio and gRPC headers.
#pragma once

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include <grpcpp/support/status.h>

#include "asio/async_result.hpp"
#include "asio/post.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"

namespace tern::rpc {

// `start` must capture only pointers and references (it is trivially
// copyable): g++ 12 destroys a coroutine argument with non-trivial captures
// (a shared_ptr, a string) twice when it is built inside a co_await
// expression, which freed gRPC reactors under their feet in testing.
template <typename Start>
asio::awaitable<grpc::Status> AwaitGrpc(Start start) {
  static_assert(std::is_trivially_copyable_v<Start>,
                "AwaitGrpc: capture only pointers/references (g++ 12 coroutine argument bug)");
  auto executor = co_await asio::this_coro::executor;
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(grpc::Status)>(
      [executor, start = std::move(start)](auto handler) mutable {
        // std::function needs a copyable callable; the handler is move-only.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        start(std::function<void(grpc::Status)>([executor, shared](grpc::Status status) {
          asio::post(executor, [shared, status = std::move(status)]() mutable { (*shared)(std::move(status)); });
        }));
      },
      asio::use_awaitable);
}

}  // namespace tern::rpc
