#include "lib/common/json_string.h"

#include "absl/strings/str_format.h"
#include "lib/mime/header.h"

namespace tern {

void AppendJsonString(std::string& out, absl::string_view s) {
  out.push_back('"');
  // Bytes that are not UTF-8 become U+FFFD (lib/mime's check, the one DSNs
  // use); everything from 0x80 up is then valid UTF-8 and goes as it is.
  for (char ch : mime::ToValidUtf8(s)) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

}  // namespace tern
