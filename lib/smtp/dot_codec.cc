#include "lib/smtp/dot_codec.h"

#include <cstring>

namespace tern::smtp {

namespace {

// One pass for both DATA and BDAT: `stuff` doubles a leading dot and adds
// the terminator (DATA); line ends become CRLF either way.
void AppendLines(absl::string_view body, std::string* out, bool stuff) {
  // Headroom for a few stuffed dots and converted line ends; the string grows
  // geometrically if a pathological body needs more.
  out->reserve(out->size() + body.size() + body.size() / 64 + 8);
  const char* p = body.data();
  const char* const end = p + body.size();
  bool line_start = true;
  while (p < end) {
    if (stuff && line_start && *p == '.') {
      out->push_back('.');
    }
    // The line ends at the first CR or LF. Two memchr calls (vectorised in
    // libc) instead of a loop over every byte: this scan was the deliverer's
    // biggest cost of its own per message.
    const char* lf = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
    if (lf == nullptr) {
      lf = end;
    }
    const char* cr = static_cast<const char*>(std::memchr(p, '\r', static_cast<size_t>(lf - p)));
    const char* q = cr != nullptr ? cr : lf;
    out->append(p, static_cast<size_t>(q - p));
    if (q == end) {
      line_start = false;
      break;
    }
    if (*q == '\r' && q + 1 < end && q[1] == '\n') {
      q += 2;  // CRLF
    } else {
      q += 1;  // bare CR or bare LF
    }
    out->append("\r\n", 2);
    p = q;
    line_start = true;
  }
  if (!line_start) {
    out->append("\r\n", 2);
  }
  if (stuff) {
    out->append(".\r\n", 3);
  }
}

}  // namespace

void DotCodec::AppendEncoded(absl::string_view body, std::string* out) { AppendLines(body, out, /*stuff=*/true); }

void DotCodec::AppendCrlfCanonical(absl::string_view body, std::string* out) {
  AppendLines(body, out, /*stuff=*/false);
}

bool DotCodec::IsCrlfCanonical(absl::string_view body) {
  if (body.empty()) {
    return true;
  }
  if (body.size() < 2 || body.substr(body.size() - 2) != "\r\n") {
    return false;
  }
  // Every LF must follow a CR and every CR precede an LF. Counting both
  // with memchr-speed scans: equal counts plus every LF preceded by a CR
  // means no CR stands alone either.
  size_t crs = 0;
  for (const char* p = body.data(), *end = p + body.size();
       (p = static_cast<const char*>(std::memchr(p, '\r', static_cast<size_t>(end - p)))) != nullptr; ++p) {
    ++crs;
  }
  size_t lfs = 0;
  for (const char* p = body.data(), *end = p + body.size();
       (p = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)))) != nullptr; ++p) {
    if (p == body.data() || p[-1] != '\r') {
      return false;
    }
    ++lfs;
  }
  return crs == lfs;
}

std::string DotCodec::Encode(absl::string_view body) {
  std::string out;
  AppendEncoded(body, &out);
  return out;
}

}  // namespace tern::smtp
