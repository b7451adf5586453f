#include "lib/smtp/message_assembler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"

namespace tern::smtp {
namespace {

// RFC 5322 §2.2: field-name = 1*ftext (printable ASCII but ':'), then ':'.
// Obsolete syntax (§4.5.3) allows white space before the colon.
bool FieldName(absl::string_view line, std::string* name) {
  size_t i = 0;
  while (i < line.size()) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if (c < 33 || c > 126 || c == ':') {
      break;
    }
    ++i;
  }
  if (i == 0) {
    return false;
  }
  size_t j = i;
  while (j < line.size() && (line[j] == ' ' || line[j] == '\t')) {
    ++j;
  }
  if (j >= line.size() || line[j] != ':') {
    return false;
  }
  *name = absl::AsciiStrToLower(line.substr(0, i));
  return true;
}

}  // namespace

MessageAssembler::MessageAssembler(AssemblerLimits limits, std::string trace, std::string message_id_field,
                                   std::string date_field)
    : limits_(limits),
      trace_(std::move(trace)),
      message_id_field_(std::move(message_id_field)),
      date_field_(std::move(date_field)) {}

void MessageAssembler::Fail(Outcome outcome) {
  outcome_ = outcome;
  out_.clear();
  out_.shrink_to_fit();
  line_.clear();
  line_.shrink_to_fit();
  fields_.clear();
  fields_.shrink_to_fit();
}

std::string MessageAssembler::TakeOutput() {
  std::string out;
  out.swap(out_);
  return out;
}

void MessageAssembler::Append(absl::string_view data) {
  size_ += data.size();
  if (failed()) {
    return;
  }
  if (size_ > limits_.max_bytes) {
    Fail(Outcome::kTooBig);
    return;
  }
  size_t i = 0;
  while (i < data.size() && !failed()) {
    if (cr_held_) {
      cr_held_ = false;
      if (data[i] == '\n') {
        ++i;
        EndLine();
        continue;
      }
      AddText("\r");
    }
    const size_t lf = data.find('\n', i);
    absl::string_view segment = data.substr(i, lf == absl::string_view::npos ? absl::string_view::npos : lf - i);
    if (!segment.empty() && segment.back() == '\r') {
      segment.remove_suffix(1);
      // A CR at the very end of this input may pair with an LF in the next.
      cr_held_ = lf == absl::string_view::npos;
    }
    AddText(segment);
    if (lf == absl::string_view::npos) {
      break;
    }
    EndLine();
    i = lf + 1;
  }
}

void MessageAssembler::AddText(absl::string_view text) {
  std::string& sink = header_done_ ? out_ : line_;
  const size_t limit = std::max<size_t>(limits_.max_line_length, 2);
  while (!text.empty()) {
    if (col_ >= limit) {
      sink.append("\r\n ");
      col_ = 1;
      wrapped_ = true;
      if (!header_done_ && header_lines_ + ++line_pieces_ > limits_.max_header_lines) {
        Fail(Outcome::kTooManyHeaderLines);
        return;
      }
    }
    const size_t n = std::min(limit - col_, text.size());
    sink.append(text.data(), n);
    col_ += n;
    text.remove_prefix(n);
  }
}

void MessageAssembler::EndLine() {
  if (header_done_) {
    out_.append("\r\n");
  } else {
    HeaderLine();
  }
  col_ = 0;
}

void MessageAssembler::HeaderLine() {
  std::string name;
  if (line_.empty()) {
    EndHeader(/*separator=*/true);
    return;
  }
  const bool continuation = line_.front() == ' ' || line_.front() == '\t';
  if (continuation && !fields_.empty()) {
    fields_.back().text.append(line_);
    fields_.back().text.append("\r\n");
  } else if (!continuation && FieldName(line_, &name)) {
    fields_.push_back(Field{std::move(name), line_ + "\r\n"});
  } else {
    // Not a header field: the header section ended without its empty line.
    // Insert one, so this line is body and not a broken header.
    std::string line;
    line.swap(line_);
    line_pieces_ = 1;
    EndHeader(/*separator=*/true);
    if (!failed()) {
      out_.append(line);
      out_.append("\r\n");
    }
    return;
  }
  header_lines_ += line_pieces_;
  line_.clear();
  line_pieces_ = 1;
  if (header_lines_ > limits_.max_header_lines) {
    Fail(Outcome::kTooManyHeaderLines);
  }
}

void MessageAssembler::EndHeader(bool separator) {
  bool has_message_id = false;
  bool has_date = false;
  for (const Field& f : fields_) {
    if (f.name == "received") {
      ++received_;
    } else if (f.name == "message-id") {
      has_message_id = true;
    } else if (f.name == "date") {
      has_date = true;
    }
  }
  if (received_ > limits_.max_received) {
    Fail(Outcome::kLoop);
    return;
  }
  header_done_ = true;
  std::string out = std::move(trace_);
  for (const Field& f : fields_) {
    if (limits_.strip_authentication_results && f.name == "authentication-results") {
      continue;
    }
    out.append(f.text);
  }
  if (!has_message_id && !message_id_field_.empty()) {
    out.append(message_id_field_);
    added_message_id_ = true;
  }
  if (!has_date && !date_field_.empty()) {
    out.append(date_field_);
    added_date_ = true;
  }
  if (separator) {
    out.append("\r\n");
  }
  fields_.clear();
  fields_.shrink_to_fit();
  line_.clear();
  out.append(out_);
  out_ = std::move(out);
}

void MessageAssembler::Finish() {
  if (failed()) {
    return;
  }
  if (cr_held_) {
    cr_held_ = false;
    AddText("\r");
  }
  if (!header_done_) {
    if (!line_.empty()) {
      EndLine();
    }
    if (!header_done_ && !failed()) {
      EndHeader(/*separator=*/false);
    }
  } else if (col_ > 0) {
    out_.append("\r\n");
    col_ = 0;
  }
}

}  // namespace tern::smtp
