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

#include "asio/async_result.hpp"
#include "asio/awaitable.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/dns/mx_resolver.h"

namespace tern::dns {

struct MxInitiation {
  MxResolver* resolver;
  std::string domain;
  template <typename Handler>
  void operator()(Handler handler) {
    resolver->ResolveMx(std::move(domain),
                        [h = std::move(handler)](MxAnswer a) mutable { std::move(h)(std::move(a)); });
  }
};

struct HostInitiation {
  MxResolver* resolver;
  std::string host;
  template <typename Handler>
  void operator()(Handler handler) {
    resolver->ResolveHost(std::move(host),
                          [h = std::move(handler)](HostAnswer a) mutable { std::move(h)(std::move(a)); });
  }
};

struct TxtInitiation {
  MxResolver* resolver;
  std::string name;
  template <typename Handler>
  void operator()(Handler handler) {
    resolver->ResolveTxt(std::move(name),
                         [h = std::move(handler)](TxtAnswer a) mutable { std::move(h)(std::move(a)); });
  }
};

inline asio::awaitable<MxAnswer> AwaitMx(MxResolver& resolver, std::string domain) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(MxAnswer)>(
      MxInitiation{&resolver, std::move(domain)}, asio::use_awaitable);
}

inline asio::awaitable<HostAnswer> AwaitHost(MxResolver& resolver, std::string host) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(HostAnswer)>(
      HostInitiation{&resolver, std::move(host)}, asio::use_awaitable);
}

inline asio::awaitable<TxtAnswer> AwaitTxt(MxResolver& resolver, std::string name) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(TxtAnswer)>(
      TxtInitiation{&resolver, std::move(name)}, asio::use_awaitable);
}

}  // namespace tern::dns
