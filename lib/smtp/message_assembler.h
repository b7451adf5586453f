// File: message_assembler.h
//
// MessageAssembler: turns the content a client sends with DATA (after
// DotDecoder) or BDAT (raw chunks) into the message the queue stores, as a
// stream, applying ingest's message policy on the way:
//
//   * line ends: bare LF becomes CRLF; a CR not followed by LF stays as is;
//     a message that does not end in a line end gets CRLF;
//   * long lines: a line longer than `max_line_length` octets is wrapped with
//     CRLF SPACE (Haraka's max.data_line_length behaviour); wrapped() says so;
//   * the header section (up to the first empty line, or the first line that
//     is not a header field) is buffered, bounded by `max_header_lines`, and
//     then written out with: `trace` (our Received:) in front; incoming
//     Authentication-Results fields removed (if configured); the given
//     Message-ID / Date fields appended when the message has none; an empty
//     line inserted when the header ended at a line that is not a field;
//   * limits: more content than max_bytes -> kTooBig; more header lines than
//     max_header_lines -> kTooManyHeaderLines; more Received: fields than
//     max_received -> kLoop. After a failure everything is discarded (the
//     caller keeps reading the client's data and then refuses the message).
//
// Only the header section is held in memory; body output accumulates until
// the caller takes it (TakeOutput), so a 25 MB message is never held whole.
//
// Pure (no I/O) and fuzzed (services/ingest/fuzz).
//
// Thread-safety: one assembler per message; not shared.
//
// Standards: RFC 5322 §2.2 and §3.6 (header fields, Message-ID, Date,
// folding), RFC 5321 §4.4 (trace fields, loop detection by counting
// Received:), §4.5.3.1.6 (text line length), RFC 8601 §5 (removing
// Authentication-Results a client could forge), RFC 3030 (BDAT content).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace tern::smtp {

struct AssemblerLimits {
  // Largest content in octets (what the client sent, after dot-unstuffing).
  uint64_t max_bytes = 26214400;
  // Longest line before it is wrapped with CRLF SPACE (at least 2).
  size_t max_line_length = 992;
  // Most physical lines in the header section.
  size_t max_header_lines = 1000;
  // Most Received: fields a message may already carry.
  size_t max_received = 100;
  // Remove incoming Authentication-Results: fields.
  bool strip_authentication_results = true;
};

class MessageAssembler {
 public:
  enum class Outcome { kOk, kTooBig, kTooManyHeaderLines, kLoop };

  // `trace` goes in front of the message (may be empty). `message_id_field`
  // and `date_field` are whole header fields ending in CRLF, added when the
  // message lacks them (may be empty: never added).
  MessageAssembler(AssemblerLimits limits, std::string trace, std::string message_id_field,
                   std::string date_field);

  // More content.
  void Append(absl::string_view data);
  // The end of the content.
  void Finish();

  Outcome outcome() const { return outcome_; }
  bool failed() const { return outcome_ != Outcome::kOk; }
  // Octets given to Append so far.
  uint64_t size() const { return size_; }
  bool wrapped() const { return wrapped_; }
  bool header_done() const { return header_done_; }
  size_t received_fields() const { return received_; }
  bool added_message_id() const { return added_message_id_; }
  bool added_date() const { return added_date_; }

  // Output ready to be sent, and taking it.
  size_t pending() const { return out_.size(); }
  std::string TakeOutput();

 private:
  struct Field {
    std::string name;  // lower-cased
    std::string text;  // the whole field with its CRLFs
  };

  void AddText(absl::string_view text);
  void EndLine();
  void HeaderLine();
  void EndHeader(bool separator);
  void Fail(Outcome outcome);

  const AssemblerLimits limits_;
  std::string trace_;
  std::string message_id_field_;
  std::string date_field_;

  Outcome outcome_ = Outcome::kOk;
  uint64_t size_ = 0;
  bool wrapped_ = false;
  bool cr_held_ = false;  // a CR ended the last input; its meaning depends on the next octet
  size_t col_ = 0;        // octets on the current output line

  // Header section state.
  bool header_done_ = false;
  std::string line_;         // the current header line, wrapped
  size_t line_pieces_ = 1;   // physical lines in line_
  size_t header_lines_ = 0;  // physical lines in fields_
  std::vector<Field> fields_;
  size_t received_ = 0;
  bool added_message_id_ = false;
  bool added_date_ = false;

  std::string out_;
};

}  // namespace tern::smtp
