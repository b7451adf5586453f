# lib/smtp client side: reply parsing, EHLO capabilities, dot-stuffing, AUTH
# and xtext for the deliverer. Included from lib/smtp/CMakeLists.txt.
tern_cc_library(NAME smtp_client
  HDRS reply.h reply_parser.h dot_codec.h auth_client.h xtext.h
  SRCS reply_parser.cc dot_codec.cc auth_client.cc xtext.cc
  DEPS absl::status absl::statusor absl::strings OpenSSL::Crypto)
tern_cc_test(NAME reply_parser_test SRCS reply_parser_test.cc DEPS tern::smtp_client)
tern_cc_test(NAME dot_codec_test SRCS dot_codec_test.cc DEPS tern::smtp_client)
tern_cc_test(NAME auth_client_test SRCS auth_client_test.cc DEPS tern::smtp_client)

# libFuzzer target for the reply parser, which reads what any destination MX
# sends (see fuzz/reply_parser_fuzz.cc and tern_fuzz_test).
tern_fuzz_test(NAME reply_parser
  SRCS fuzz/reply_parser_fuzz.cc reply_parser.cc
  LIBS absl::strings absl::status absl::statusor
  CORPUS fuzz/corpus/reply_parser DICT fuzz/reply.dict)
