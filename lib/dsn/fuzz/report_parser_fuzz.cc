// libFuzzer target: the DSN report parser (report_parser.h) on arbitrary
// message text. The bouncer runs it on a failed REQUIRETLS message from <>,
// which an authenticated client can submit, so a crash there would be a
// bounce job that crashes the bouncer on every lease. Checks:
//   * never crashes, memory stays bounded (ASan, -rss_limit_mb);
//   * whatever parses renders again as a redacted DSN (the bouncer's next
//     step), and that DSN parses back to as many recipients, each with the
//     same Action, and has no third part.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/time/time.h"
#include "lib/dsn/dsn_renderer.h"
#include "lib/dsn/report_parser.h"
#include "lib/mime/header.h"

namespace {

const tern::dsn::DsnRenderer& Renderer() {
  static const tern::dsn::DsnRenderer* renderer = [] {
    absl::StatusOr<tern::dsn::DsnTemplate> tmpl = tern::dsn::DsnTemplate::Parse(
        "From: MAILER-DAEMON@{me}\nTo: {to}\nSubject: failure\n\n{extended_reason}\n{subject}\n", "fuzz");
    if (!tmpl.ok()) {
      std::abort();
    }
    auto n = std::make_shared<uint64_t>(0);
    return new tern::dsn::DsnRenderer(*std::move(tmpl), [n] { return "tok" + std::to_string(++*n); }, 1);
  }();
  return *renderer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tern::dsn::DeliveryReport> parsed = tern::dsn::ParseDeliveryReport(input);
  if (!parsed.ok()) {
    return 0;
  }
  if (parsed->recipients.empty()) {
    std::abort();  // success promises at least one recipient
  }
  parsed->original_sender = "sender@example.com";
  parsed->original_withheld = true;
  parsed->original_subject = "withheld";
  absl::StatusOr<tern::dsn::RenderedDsn> rendered = Renderer().Render(*parsed, absl::UnixEpoch());
  if (!rendered.ok()) {
    // Only a boundary search can fail, and not on inputs of fuzzing size.
    std::abort();
  }
  // A redacted DSN has two parts: two opening delimiters of the top-level
  // boundary (which occurs nowhere in the content), no third.
  const std::string content_type = tern::mime::GetHeader(rendered->message, "Content-Type").value_or("");
  const size_t at = content_type.find("boundary=\"");
  if (at == std::string::npos) {
    std::abort();
  }
  const size_t start = at + 10;
  const std::string delimiter = "\r\n--" + content_type.substr(start, content_type.find('"', start) - start) + "\r\n";
  size_t parts = 0;
  for (size_t pos = rendered->message.find(delimiter); pos != std::string::npos;
       pos = rendered->message.find(delimiter, pos + 1)) {
    ++parts;
  }
  if (parts != 2) {
    std::abort();
  }
  absl::StatusOr<tern::dsn::DeliveryReport> again = tern::dsn::ParseDeliveryReport(rendered->message);
  if (!again.ok() || again->recipients.size() != parsed->recipients.size()) {
    std::abort();
  }
  for (size_t i = 0; i < again->recipients.size(); ++i) {
    if (again->recipients[i].action != parsed->recipients[i].action) {
      std::abort();
    }
  }
  return 0;
}
