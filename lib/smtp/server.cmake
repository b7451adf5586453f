# The server half of lib/smtp: command parsing for ingest (pure, no I/O).
tern_cc_library(NAME smtp_server
  HDRS command.h command_parser.h
  SRCS command_parser.cc
  DEPS tern::address absl::strings absl::status)
tern_cc_test(NAME command_parser_test SRCS command_parser_test.cc DEPS tern::smtp_server)
