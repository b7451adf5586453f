#include "lib/smtp/dot_decoder.h"

namespace tern::smtp {

DotDecoder::Result DotDecoder::Decode(absl::string_view text, bool partial, bool bare_lf) {
  Result result;
  if (!continuing_) {
    if (!partial && !bare_lf && text == ".") {
      result.end = true;
      return result;
    }
    // A bare-LF "." line is kept whole: it was never a terminator, so it
    // was never stuffed either.
    if (!text.empty() && text.front() == '.' && !(bare_lf && text == ".")) {
      text.remove_prefix(1);
    }
  }
  continuing_ = partial;
  result.text = text;
  result.line_end = !partial;
  return result;
}

}  // namespace tern::smtp
