// File: reply_parser.h
//
// ReplyParser turns the lines a remote SMTP server sends into SmtpReply
// values. It is fed one line at a time (without its CRLF), so the caller owns
// all I/O and timeouts; the parser is pure and safe on any input (fuzzable).
// Anything that is not a well-formed reply - "hello there", a code outside
// 2xx-5xx, a missing separator ("250OK"), different codes within one
// multi-line reply, an over-long line or too many lines - is an
// InvalidArgument error, which the deliverer treats as a broken session
// (transient), never a crash and never a bounce.
//
// Unlike Haraka, enhanced status codes with multi-digit parts ("5.7.26") are
// recognised, and multi-line replies keep every line.
//
// Also here: ParseEhloCapabilities (the extensions an EHLO reply offers) and
// DefaultEnhancedStatus (x.0.0 from the reply class, for replies without one).
//
// Thread-safety: a ReplyParser is a plain object used by one coroutine.
//
// Standards: RFC 5321 §4.2 and §4.5.3.1.5 (reply syntax, 512-byte lines; we
// accept longer ones up to a configurable cap because real servers send
// them), RFC 3463 and RFC 2034 (enhanced codes), RFC 5321 §4.1.1.1 (EHLO).
#pragma once

#include <cstddef>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/smtp/reply.h"

namespace tern::smtp {

class ReplyParser {
 public:
  struct Options {
    // Longest reply line accepted (without CRLF). Default: 4096.
    size_t max_line_length = 4096;
    // Most lines in one reply (EHLO replies are the longest). Default: 256.
    size_t max_lines = 256;
  };

  ReplyParser() = default;
  explicit ReplyParser(Options options) : options_(options) {}

  // Feeds one line without its line end. Returns true when the reply is
  // complete (take it with TakeReply), false when more lines are needed, or
  // InvalidArgument for a malformed line; after an error call Reset() before
  // feeding again.
  absl::StatusOr<bool> Feed(absl::string_view line);

  // The completed reply; resets the parser for the next one.
  SmtpReply TakeReply();

  void Reset();

  // True when at least one line of an unfinished multi-line reply was fed.
  bool in_progress() const { return reply_.code != 0; }

 private:
  Options options_;
  SmtpReply reply_;
  bool complete_ = false;
};

// Parses an RFC 3463 code at the start of `text`: class 2/4/5, then one to
// three digits, a dot, one to three digits, followed by the end or a space.
// On success sets *consumed to the bytes used (including one following space).
std::optional<EnhancedStatusCode> ParseEnhancedStatusCode(absl::string_view text, size_t* consumed);

// x.0.0 for reply code x00-x99 (2, 4 or 5), e.g. 4.0.0 for a 451 without an
// enhanced code; used when the server gave none (RFC 3463 §3.1).
EnhancedStatusCode DefaultEnhancedStatus(int reply_code);

// The extensions a (positive) EHLO reply offers: every line but the first is
// "KEYWORD [params]". Unknown keywords are ignored; a bad SIZE value counts as
// SIZE without a limit.
EhloCapabilities ParseEhloCapabilities(const SmtpReply& ehlo_reply);

}  // namespace tern::smtp
