// File: resolver_await.h
//
// co_await adapters for the callback-style MxResolver:
//
//   dns::MxAnswer mx = co_await dns::AwaitMx(resolver, domain);
//
// The resolver calls back on its executor from a posted handler, so the
// coroutine resumes there. These are plain functions returning the
// awaitable, with named initiation types: GCC 12 miscompiles a lambda
// init-capture of a coroutine parameter, and a temporary with a non-trivial
// member built inside a co_await expression (both free twice). Include only
// from .cc files: it pulls in Asio.
#pragma once

#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "asio/async_result.hpp"
#include "asio/awaitable.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/dns/mx_resolver.h"

namespace tern::dns {

// Starts `Resolve` on `resolver` for `name` and hands its answer to the
// awaiting coroutine's handler.
template <typename Answer, void (MxResolver::*Resolve)(std::string, absl::AnyInvocable<void(Answer)>)>
struct ResolveInitiation {
  MxResolver* resolver;
  std::string name;
  template <typename Handler>
  void operator()(Handler handler) {
    (resolver->*Resolve)(std::move(name), [h = std::move(handler)](Answer a) mutable { std::move(h)(std::move(a)); });
  }
};

template <typename Answer, void (MxResolver::*Resolve)(std::string, absl::AnyInvocable<void(Answer)>)>
asio::awaitable<Answer> AwaitResolve(MxResolver& resolver, std::string name) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(Answer)>(
      ResolveInitiation<Answer, Resolve>{&resolver, std::move(name)}, asio::use_awaitable);
}

inline asio::awaitable<MxAnswer> AwaitMx(MxResolver& resolver, std::string domain) {
  return AwaitResolve<MxAnswer, &MxResolver::ResolveMx>(resolver, std::move(domain));
}

inline asio::awaitable<HostAnswer> AwaitHost(MxResolver& resolver, std::string host) {
  return AwaitResolve<HostAnswer, &MxResolver::ResolveHost>(resolver, std::move(host));
}

inline asio::awaitable<TxtAnswer> AwaitTxt(MxResolver& resolver, std::string name) {
  return AwaitResolve<TxtAnswer, &MxResolver::ResolveTxt>(resolver, std::move(name));
}

inline asio::awaitable<TlsaAnswer> AwaitTlsa(MxResolver& resolver, std::string name) {
  return AwaitResolve<TlsaAnswer, &MxResolver::ResolveTlsa>(resolver, std::move(name));
}

}  // namespace tern::dns
