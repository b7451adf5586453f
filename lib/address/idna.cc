#include "lib/address/idna.h"

#include <idn2.h>

#include <cstdlib>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace tern::address {

absl::StatusOr<std::string> DomainToAscii(absl::string_view domain) {
  bool ascii = true;
  for (char c : domain) {
    ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  }
  if (ascii || (!domain.empty() && domain.front() == '[')) {
    // Already A-labels (or an address literal): the canonical form is the
    // lower-case one. This is also the hot path: no allocation in libidn2.
    return absl::AsciiStrToLower(domain);
  }
  if (domain.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("domain contains a NUL octet");
  }
  const std::string input(domain);
  char* out = nullptr;
  // Non-transitional UTS #46 processing maps case (Ü -> ü) and keeps ß and
  // ς as IDNA2008 does; NFC makes decomposed input (u + U+0308) equal to the
  // composed one.
  const int rc = idn2_to_ascii_8z(input.c_str(), &out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
  std::unique_ptr<char, decltype(&idn2_free)> owned(out, &idn2_free);
  if (rc != IDN2_OK || out == nullptr) {
    // Name the domain readably, but never pass invalid UTF-8 on into logs
    // and replies: then every octet >= 0x80 is shown as \xNN.
    const std::string shown =
        rc == IDN2_ENCODING_ERROR ? absl::CHexEscape(domain) : absl::Utf8SafeCHexEscape(domain);
    return absl::InvalidArgumentError(
        absl::StrCat("domain '", shown, "' has no IDNA A-label form: ", idn2_strerror(rc)));
  }
  // libidn2 lower-cases what it maps; ASCII labels it passes through keep
  // their case, so lower-case the whole result.
  return absl::AsciiStrToLower(owned.get());
}

}  // namespace tern::address
