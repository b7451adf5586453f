# tern_cc_library / tern_cc_binary / tern_cc_test / tern_proto_library.
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
