// libFuzzer target: the data-phase reader (DotDecoder + MessageAssembler)
// on arbitrary client bytes, framed the way net::Connection::ReadLine frames
// them. The first input bytes choose the limits. Checks:
//   * never crashes, and memory stays bounded (ASan, -rss_limit_mb);
//   * the stored message has CRLF line ends only (no bare LF) and no line
//     longer than max_line_length;
//   * BDAT: the output does not depend on how the content is split into
//     chunks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "lib/smtp/dot_decoder.h"
#include "lib/smtp/message_assembler.h"

namespace {

using tern::smtp::AssemblerLimits;
using tern::smtp::DotDecoder;
using tern::smtp::MessageAssembler;

constexpr absl::string_view kMessageId = "Message-ID: <x@y>\r\n";
constexpr absl::string_view kDate = "Date: d\r\n";

void CheckOutput(const std::string& out, const AssemblerLimits& limits) {
  size_t line_start = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] != '\n') {
      continue;
    }
    if (i == 0 || out[i - 1] != '\r') {
      std::abort();  // bare LF stored
    }
    const absl::string_view line(out.data() + line_start, i + 1 - line_start);
    // Our own added fields are not client content and are not wrapped.
    if (i - 1 - line_start > limits.max_line_length && line != kMessageId && line != kDate) {
      std::abort();  // not wrapped
    }
    line_start = i + 1;
  }
  if (!out.empty() && (out.size() < 2 || out.substr(out.size() - 2) != "\r\n")) {
    std::abort();  // must end in CRLF
  }
}

std::string Drain(MessageAssembler& a) {
  a.Finish();
  return a.TakeOutput();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) {
    return 0;
  }
  AssemblerLimits limits;
  limits.max_line_length = 2 + data[0] % 64;
  limits.max_header_lines = 1 + data[1] % 32;
  limits.max_received = data[2] % 4;
  limits.max_bytes = 64 + static_cast<uint64_t>(data[3]) * 64;
  limits.strip_authentication_results = (data[3] & 1) != 0;
  const size_t read_max = 1 + data[2] % 80;  // ReadLine's max_len
  const std::string input(reinterpret_cast<const char*>(data) + 4, size - 4);

  // DATA: frame like Connection::ReadLine, decode dots, assemble.
  {
    MessageAssembler a(limits, "", std::string(kMessageId), std::string(kDate));
    DotDecoder decoder;
    size_t pos = 0;
    bool ended = false;
    while (pos < input.size() && !ended) {
      const std::string pending = input.substr(pos);
      const size_t lf = pending.substr(0, read_max + 2).find('\n');
      std::string text;
      bool partial = false;
      bool bare_lf = false;
      size_t used = 0;
      size_t len = lf;
      if (lf != std::string::npos) {
        if (len > 0 && pending[len - 1] == '\r') {
          --len;
        } else {
          bare_lf = true;
        }
      }
      if (lf != std::string::npos && len <= read_max) {
        text = pending.substr(0, len);
        used = lf + 1;
      } else if (pending.size() > read_max) {
        text = pending.substr(0, read_max);
        partial = true;
        bare_lf = false;
        used = read_max;
      } else {
        break;  // an unterminated tail: the client would still be sending
      }
      pos += used;
      const DotDecoder::Result r = decoder.Decode(text, partial, bare_lf);
      if (r.end) {
        ended = true;
        break;
      }
      a.Append(r.text);
      if (r.line_end) {
        a.Append("\r\n");
      }
    }
    const std::string out = Drain(a);
    if (!a.failed()) {
      CheckOutput(out, limits);
    }
  }

  // BDAT: the same content in one chunk and in chunks of a fuzzed size.
  {
    MessageAssembler whole(limits, "", "", "");
    whole.Append(input);
    const std::string one = Drain(whole);
    MessageAssembler pieces(limits, "", "", "");
    const size_t step = 1 + data[1] % 7;
    std::string many;
    for (size_t i = 0; i < input.size(); i += step) {
      pieces.Append(absl::string_view(input).substr(i, step));
      many += pieces.TakeOutput();
    }
    many += Drain(pieces);
    if (whole.failed() != pieces.failed() || (!whole.failed() && one != many)) {
      std::abort();
    }
    if (!whole.failed()) {
      CheckOutput(one, limits);
    }
  }
  return 0;
}
