#include "lib/smtp/message_assembler.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::smtp {
namespace {

const char kTrace[] = "Received: by us\r\n";
const char kMsgId[] = "Message-ID: <added@us>\r\n";
const char kDate[] = "Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n";

std::string Assemble(const std::string& input, AssemblerLimits limits = {}, MessageAssembler* out = nullptr,
                     size_t piece = 0) {
  MessageAssembler local(limits, kTrace, kMsgId, kDate);
  MessageAssembler& a = out != nullptr ? *out : local;
  std::string result;
  if (piece == 0) {
    a.Append(input);
  } else {
    for (size_t i = 0; i < input.size(); i += piece) {
      a.Append(input.substr(i, piece));
      result += a.TakeOutput();
    }
  }
  a.Finish();
  return result + a.TakeOutput();
}

TEST(MessageAssembler, KeepsCompleteMessageAndAddsTraceOnly) {
  const std::string msg =
      "From: a@example.org\r\nMessage-ID: <x@y>\r\nDate: Fri, 2 Jan 2026 00:00:00 +0000\r\n\r\nbody\r\n";
  EXPECT_EQ(Assemble(msg), kTrace + msg);
}

TEST(MessageAssembler, AddsMissingMessageIdAndDateAtTheEndOfTheHeader) {
  EXPECT_EQ(Assemble("Subject: s\r\n\r\nbody\r\n"),
            std::string(kTrace) + "Subject: s\r\n" + kMsgId + kDate + "\r\nbody\r\n");
  // Case-insensitive field names; only the missing one is added.
  EXPECT_EQ(Assemble("message-id: <m@n>\r\n\r\nb\r\n"), std::string(kTrace) + "message-id: <m@n>\r\n" + kDate + "\r\nb\r\n");
}

TEST(MessageAssembler, InsertsEmptyLineWhenHeaderEndsAtNonField) {
  EXPECT_EQ(Assemble("Subject: s\r\nnot a header\r\nmore\r\n"),
            std::string(kTrace) + "Subject: s\r\n" + kMsgId + kDate + "\r\nnot a header\r\nmore\r\n");
}

TEST(MessageAssembler, HeaderOnlyMessageGetsNoSeparator) {
  EXPECT_EQ(Assemble("Subject: s"), std::string(kTrace) + "Subject: s\r\n" + kMsgId + kDate);
}

TEST(MessageAssembler, StripsAuthenticationResultsWithContinuations) {
  const std::string msg = "Authentication-Results: mx; spf=pass\r\n\tdkim=pass\r\nSubject: s\r\n"
                          "Message-ID: <x@y>\r\nDate: d\r\n\r\nb\r\n";
  EXPECT_EQ(Assemble(msg), std::string(kTrace) + "Subject: s\r\nMessage-ID: <x@y>\r\nDate: d\r\n\r\nb\r\n");
  AssemblerLimits keep;
  keep.strip_authentication_results = false;
  EXPECT_EQ(Assemble(msg, keep), kTrace + msg);
}

TEST(MessageAssembler, NormalisesBareLfAcrossPieces) {
  for (size_t piece : {0, 1, 2, 3, 7}) {
    SCOPED_TRACE(piece);
    EXPECT_EQ(Assemble("Message-ID: <a@b>\nDate: d\r\n\nx\ry\r\nz", {}, nullptr, piece),
              std::string(kTrace) + "Message-ID: <a@b>\r\nDate: d\r\n\r\nx\ry\r\nz\r\n");
  }
}

TEST(MessageAssembler, WrapsLongLinesWithCrlfSpace) {
  AssemblerLimits limits;
  limits.max_line_length = 10;
  MessageAssembler a(limits, "", "", "");
  const std::string out = Assemble("\r\n" + std::string(25, 'x') + "\r\n0123456789\r\n", limits, &a);
  EXPECT_EQ(out, "\r\n" + std::string(10, 'x') + "\r\n " + std::string(9, 'x') + "\r\n " + std::string(6, 'x') +
                     "\r\n0123456789\r\n");
  EXPECT_TRUE(a.wrapped());
}

TEST(MessageAssembler, RefusesOversizeContentAndDropsIt) {
  AssemblerLimits limits;
  limits.max_bytes = 100;
  MessageAssembler a(limits, "", "", "");
  a.Append(std::string(60, 'a'));
  a.Append(std::string(60, 'a'));
  a.Finish();
  EXPECT_EQ(a.outcome(), MessageAssembler::Outcome::kTooBig);
  EXPECT_EQ(a.pending(), 0u);
  EXPECT_EQ(a.size(), 120u);
}

TEST(MessageAssembler, RefusesTooManyHeaderLinesWithBoundedMemory) {
  AssemblerLimits limits;
  limits.max_header_lines = 5;
  MessageAssembler a(limits, "", "", "");
  for (int i = 0; i < 6; ++i) {
    a.Append("X-H: v\r\n");
  }
  EXPECT_EQ(a.outcome(), MessageAssembler::Outcome::kTooManyHeaderLines);
  // One endless header line is bounded too (wrapped pieces count as lines).
  limits.max_line_length = 100;
  MessageAssembler b(limits, "", "", "");
  b.Append("X-Long: " + std::string(10000, 'v'));
  EXPECT_EQ(b.outcome(), MessageAssembler::Outcome::kTooManyHeaderLines);
}

TEST(MessageAssembler, RefusesMailLoopByReceivedCount) {
  AssemblerLimits limits;
  limits.max_received = 3;
  std::string msg;
  for (int i = 0; i < 3; ++i) msg += "Received: from x\r\n";
  MessageAssembler ok(limits, "", "", "");
  Assemble(msg + "\r\nb\r\n", limits, &ok);
  EXPECT_EQ(ok.outcome(), MessageAssembler::Outcome::kOk);
  EXPECT_EQ(ok.received_fields(), 3u);
  MessageAssembler loop(limits, "", "", "");
  Assemble(msg + "RECEIVED: from y\r\n\r\nb\r\n", limits, &loop);
  EXPECT_EQ(loop.outcome(), MessageAssembler::Outcome::kLoop);
}

TEST(MessageAssembler, HoldsOnlyTheHeaderBeforeStreaming) {
  MessageAssembler a({}, "", "", "");
  a.Append("Subject: s\r\n");
  EXPECT_EQ(a.pending(), 0u);
  a.Append("\r\nbody");
  EXPECT_FALSE(a.TakeOutput().empty());
  a.Append(std::string(500, 'b'));
  EXPECT_EQ(a.pending(), 500u);
}

}  // namespace
}  // namespace tern::smtp
