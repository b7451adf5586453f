# The server half of lib/smtp: command parsing and the DATA/BDAT content
# pipeline for ingest (pure, no I/O).
tern_cc_library(NAME smtp_server
  HDRS command.h command_parser.h dot_decoder.h message_assembler.h
  SRCS command_parser.cc dot_decoder.cc message_assembler.cc
  DEPS tern::address absl::strings absl::status)
tern_cc_test(NAME command_parser_test SRCS command_parser_test.cc DEPS tern::smtp_server)
tern_cc_test(NAME dot_decoder_test SRCS dot_decoder_test.cc DEPS tern::smtp_server)
tern_cc_test(NAME message_assembler_test SRCS message_assembler_test.cc DEPS tern::smtp_server)

# libFuzzer targets for the parsers that see client input (clang only):
#   cmake -DTERN_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang ...
#   ninja command_parser_fuzz data_phase_fuzz
#   ./lib/smtp/command_parser_fuzz -max_total_time=60
# or simply scripts/fuzz.sh (configure, build, ctest -L fuzz).
# The code under test is compiled into each target so it gets the fuzzer's
# coverage instrumentation.
option(TERN_FUZZ "Build libFuzzer targets (needs clang)" OFF)
if(TERN_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  set(_tern_fuzz_flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  add_executable(command_parser_fuzz fuzz/command_parser_fuzz.cc command_parser.cc
                 ${PROJECT_SOURCE_DIR}/lib/address/mailbox.cc)
  add_executable(data_phase_fuzz fuzz/data_phase_fuzz.cc dot_decoder.cc message_assembler.cc)
  foreach(_t command_parser_fuzz data_phase_fuzz)
    _tern_common(${_t})
    target_compile_options(${_t} PRIVATE ${_tern_fuzz_flags})
    target_link_options(${_t} PRIVATE ${_tern_fuzz_flags})
    target_link_libraries(${_t} PRIVATE absl::strings absl::status absl::statusor)
  endforeach()

  # ctest -L fuzz (scripts/fuzz.sh, run by scripts/test.sh in CI): each target
  # for TERN_FUZZ_SECONDS from the seed corpus checked in under fuzz/corpus/.
  # New inputs go to a corpus in the build tree (the first directory, the
  # only one libFuzzer writes to), crash reproducers to fuzz-artifacts/. Any
  # finding (crash, leak, timeout, out of memory) exits non-zero.
  set(TERN_FUZZ_SECONDS 60 CACHE STRING "Seconds each libFuzzer target runs under ctest -L fuzz")
  set(_fuzz_dict_command_parser -dict=${CMAKE_CURRENT_SOURCE_DIR}/fuzz/smtp.dict)
  set(_fuzz_dict_data_phase "")
  foreach(_name command_parser data_phase)
    add_test(NAME fuzz_${_name}
             COMMAND ${_name}_fuzz -max_total_time=${TERN_FUZZ_SECONDS} -timeout=10 -rss_limit_mb=2048
                     -create_missing_dirs=1 -print_final_stats=1 ${_fuzz_dict_${_name}}
                     -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/fuzz-artifacts/${_name}-
                     ${CMAKE_CURRENT_BINARY_DIR}/fuzz-corpus/${_name}
                     ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${_name})
    math(EXPR _fuzz_timeout "${TERN_FUZZ_SECONDS} + 120")
    set_tests_properties(fuzz_${_name} PROPERTIES LABELS fuzz TIMEOUT ${_fuzz_timeout}
      ENVIRONMENT "UBSAN_OPTIONS=print_stacktrace=1;ASAN_OPTIONS=detect_leaks=1")
  endforeach()
elseif(TERN_FUZZ)
  message(WARNING "TERN_FUZZ needs clang; fuzz targets are not built")
endif()
