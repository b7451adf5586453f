# The server half of lib/smtp: command parsing and the DATA/BDAT content
# pipeline for ingest (pure, no I/O).
tern_cc_library(NAME smtp_server
  HDRS command.h command_parser.h dot_decoder.h message_assembler.h
  SRCS command_parser.cc dot_decoder.cc message_assembler.cc
  DEPS tern::address absl::strings absl::status)
tern_cc_test(NAME command_parser_test SRCS command_parser_test.cc DEPS tern::smtp_server)
tern_cc_test(NAME dot_decoder_test SRCS dot_decoder_test.cc DEPS tern::smtp_server)
tern_cc_test(NAME message_assembler_test SRCS message_assembler_test.cc DEPS tern::smtp_server)

# libFuzzer targets for the parsers that see client input (clang only; see
# tern_fuzz_test): scripts/fuzz.sh configures, builds and runs them, or by
# hand ./lib/smtp/command_parser_fuzz -max_total_time=60 in that build.
tern_fuzz_test(NAME command_parser
  SRCS fuzz/command_parser_fuzz.cc command_parser.cc ${PROJECT_SOURCE_DIR}/lib/address/mailbox.cc
  LIBS absl::strings absl::status absl::statusor
  CORPUS fuzz/corpus/command_parser DICT fuzz/smtp.dict)
tern_fuzz_test(NAME data_phase
  SRCS fuzz/data_phase_fuzz.cc dot_decoder.cc message_assembler.cc
  LIBS absl::strings absl::status absl::statusor
  CORPUS fuzz/corpus/data_phase)
