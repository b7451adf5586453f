# Every third-party package Tern uses, all from Debian 12 (see README "Dependencies").
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)          # module mode: Debian ships no protobuf CMake config
find_package(gRPC CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
# gzip for TLS reports (RFC 8460 §5.1); module mode, CMake's FindZLIB.
find_package(ZLIB REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(CARES REQUIRED IMPORTED_TARGET libcares)
pkg_check_modules(INIH REQUIRED IMPORTED_TARGET inih)
# IDNA2008 / UTS #46 (U-label -> A-label) for the queue's per-domain key.
pkg_check_modules(IDN2 REQUIRED IMPORTED_TARGET libidn2)
# jemalloc as the queue's allocator (see README "Dependencies"). Not with
# ASan, which brings its own.
if(NOT TERN_ASAN)
  pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
  add_library(tern_malloc INTERFACE)
  target_link_libraries(tern_malloc INTERFACE PkgConfig::JEMALLOC)
else()
  add_library(tern_malloc INTERFACE)
endif()
add_library(tern::malloc ALIAS tern_malloc)
include(GoogleTest)

# Standalone Asio is header-only; the flags make clang tools (clangd, clang-tidy)
# see the C++20 coroutine support that g++ detects by itself.
add_library(tern_asio INTERFACE)
target_compile_definitions(tern_asio INTERFACE ASIO_NO_DEPRECATED ASIO_HAS_CO_AWAIT=1 ASIO_HAS_STD_COROUTINE=1)
target_link_libraries(tern_asio INTERFACE Threads::Threads)
add_library(tern::asio ALIAS tern_asio)
