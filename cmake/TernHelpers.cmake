# tern_cc_library / tern_cc_binary / tern_cc_test / tern_fuzz_test / tern_proto_library.
#
# Every Tern target gets the same warnings (-Wall -Wextra [-Werror]) and sees the
# repository root as its include root, so includes read "lib/smtp/reply.h".

set(TERN_WARNINGS -Wall -Wextra)
if(TERN_WERROR)
  list(APPEND TERN_WARNINGS -Werror)
endif()

function(_tern_common target)
  target_compile_options(${target} PRIVATE ${TERN_WARNINGS})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
endfunction()

# tern_fuzz_test(NAME foo SRCS fuzz/foo_fuzz.cc foo.cc LIBS absl::strings
#                CORPUS fuzz/corpus/foo [DICT fuzz/foo.dict])
# builds the libFuzzer target foo_fuzz with ASan and UBSan, and the ctest test
# fuzz_foo (label "fuzz", run by scripts/fuzz.sh) that fuzzes it for
# TERN_FUZZ_SECONDS from the seed CORPUS checked in beside it. The code under
# test is listed in SRCS, not linked as a library, so it gets the fuzzer's
# coverage instrumentation. New inputs go to a corpus in the build tree (the
# first directory, the only one libFuzzer writes to), crash reproducers to
# fuzz-artifacts/; any finding (crash, leak, timeout, out of memory) fails the
# test. Does nothing unless TERN_FUZZ is on and the compiler is clang.
function(tern_fuzz_test)
  cmake_parse_arguments(T "" "NAME;CORPUS;DICT" "SRCS;LIBS" ${ARGN})
  if(NOT TERN_FUZZ OR NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    return()
  endif()
  set(target ${T_NAME}_fuzz)
  add_executable(${target} ${T_SRCS})
  _tern_common(${target})
  set(flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  target_compile_options(${target} PRIVATE ${flags})
  target_link_options(${target} PRIVATE ${flags})
  target_link_libraries(${target} PRIVATE ${T_LIBS})
  set(dict "")
  if(T_DICT)
    set(dict -dict=${CMAKE_CURRENT_SOURCE_DIR}/${T_DICT})
  endif()
  add_test(NAME fuzz_${T_NAME}
           COMMAND ${target} -max_total_time=${TERN_FUZZ_SECONDS} -timeout=10 -rss_limit_mb=2048
                   -create_missing_dirs=1 -print_final_stats=1 ${dict}
                   -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/fuzz-artifacts/${T_NAME}-
                   ${CMAKE_CURRENT_BINARY_DIR}/fuzz-corpus/${T_NAME}
                   ${CMAKE_CURRENT_SOURCE_DIR}/${T_CORPUS})
  math(EXPR timeout "${TERN_FUZZ_SECONDS} + 120")
  set_tests_properties(fuzz_${T_NAME} PROPERTIES LABELS fuzz TIMEOUT ${timeout}
    ENVIRONMENT "UBSAN_OPTIONS=print_stacktrace=1;ASAN_OPTIONS=detect_leaks=1")
endfunction()

# tern_cc_library(NAME foo HDRS a.h SRCS a.cc DEPS tern::bar absl::status)
# builds tern_foo with the alias tern::foo. A header-only library has no SRCS.
function(tern_cc_library)
  cmake_parse_arguments(T "" "NAME" "HDRS;SRCS;DEPS" ${ARGN})
  if(T_SRCS)
    add_library(tern_${T_NAME} STATIC ${T_SRCS} ${T_HDRS})
    _tern_common(tern_${T_NAME})
    target_link_libraries(tern_${T_NAME} PUBLIC ${T_DEPS})
  else()
    add_library(tern_${T_NAME} INTERFACE)
    target_include_directories(tern_${T_NAME} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(tern_${T_NAME} INTERFACE ${T_DEPS})
  endif()
  add_library(tern::${T_NAME} ALIAS tern_${T_NAME})
endfunction()

# tern_cc_binary(NAME tern-queue SRCS main.cc DEPS ...)
function(tern_cc_binary)
  cmake_parse_arguments(T "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  _tern_common(${T_NAME})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS})
endfunction()

# tern_cc_test(NAME reply_parser_test SRCS reply_parser_test.cc DEPS tern::smtp)
# One gtest binary; every TEST becomes its own ctest entry.
function(tern_cc_test)
  if(NOT TERN_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(T "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  _tern_common(${T_NAME})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gmock GTest::gtest_main)
  target_compile_definitions(${T_NAME} PRIVATE TERN_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                                               TERN_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120 LABELS "${T_LABELS}")
endfunction()

# tern_proto_library(NAME proto PROTOS tern/v1/a.proto ... GRPC)
# Generates .pb and (with GRPC) .grpc.pb sources under the build tree; protos
# import each other as "tern/v1/x.proto" and code includes "tern/v1/x.pb.h".
function(tern_proto_library)
  cmake_parse_arguments(T "GRPC" "NAME" "PROTOS;DEPS" ${ARGN})
  add_library(tern_${T_NAME} STATIC ${T_PROTOS})
  target_link_libraries(tern_${T_NAME} PUBLIC protobuf::libprotobuf gRPC::grpc++ ${T_DEPS})
  target_include_directories(tern_${T_NAME} PUBLIC ${CMAKE_CURRENT_BINARY_DIR})
  protobuf_generate(TARGET tern_${T_NAME} LANGUAGE cpp
                    IMPORT_DIRS ${CMAKE_CURRENT_SOURCE_DIR}
                    PROTOC_OUT_DIR ${CMAKE_CURRENT_BINARY_DIR})
  if(T_GRPC)
    protobuf_generate(TARGET tern_${T_NAME} LANGUAGE grpc
                      GENERATE_EXTENSIONS .grpc.pb.h .grpc.pb.cc
                      PLUGIN "protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>"
                      IMPORT_DIRS ${CMAKE_CURRENT_SOURCE_DIR}
                      PROTOC_OUT_DIR ${CMAKE_CURRENT_BINARY_DIR})
  endif()
  add_library(tern::${T_NAME} ALIAS tern_${T_NAME})
endfunction()
