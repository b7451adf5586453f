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
elseif(TERN_FUZZ)
  message(WARNING "TERN_FUZZ needs clang; fuzz targets are not built")
endif()
