# lib/smtp client side: reply parsing, EHLO capabilities and dot-stuffing for
# the deliverer. Included from lib/smtp/CMakeLists.txt.
tern_cc_library(NAME smtp_client
  HDRS reply.h reply_parser.h dot_codec.h
  SRCS reply_parser.cc dot_codec.cc
  DEPS absl::status absl::statusor absl::strings)
tern_cc_test(NAME reply_parser_test SRCS reply_parser_test.cc DEPS tern::smtp_client)
tern_cc_test(NAME dot_codec_test SRCS dot_codec_test.cc DEPS tern::smtp_client)
