#include "services/bouncer/bouncer_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"
#include "lib/dsn/dsn_renderer.h"
#include "services/bouncer/default_bounce_message.h"

namespace tern::bouncer {

const char kDefaultDelayedMessage[] =
    "Received: by {me} (Tern bouncer, pid {pid}); {date}\n"
    "Date: {date}\n"
    "From: MAILER-DAEMON@{me}\n"
    "To: {to}\n"
    "Auto-Submitted: auto-replied\n"
    "Subject: Delayed Mail (still being retried)\n"
    "Message-Id: {msgid}\n"
    "\n"
    "This is the mail system at {me}.\n"
    "\n"
    "Your message could not be delivered yet to one or more recipients.\n"
    "This is only a warning; you do not need to send the message again.\n"
    "Delivery will be retried, and you will be told if it finally fails.\n"
    "\n"
    "{extended_reason}\n"
    "\n"
    "The subject of your message was: {subject}\n";

const char kDefaultDeliveredMessage[] =
    "Received: by {me} (Tern bouncer, pid {pid}); {date}\n"
    "Date: {date}\n"
    "From: MAILER-DAEMON@{me}\n"
    "To: {to}\n"
    "Auto-Submitted: auto-replied\n"
    "Subject: Successful Mail Delivery Report\n"
    "Message-Id: {msgid}\n"
    "\n"
    "This is the mail system at {me}.\n"
    "\n"
    "Your message was delivered to the following recipients, as you asked\n"
    "to be told:\n"
    "\n"
    "{extended_reason}\n"
    "\n"
    "The subject of your message was: {subject}\n";

namespace {

constexpr char kIniName[] = "tern.ini";
constexpr char kSection[] = "bouncer";

// "host:port" or "[v6]:port", port 1-65535 (0 too when `allow_zero`).
bool IsHostPort(absl::string_view text, bool allow_zero) {
  size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return false;
  }
  absl::string_view host = text.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') {
    return false;
  }
  for (char c : host) {
    if (absl::ascii_isspace(c) || absl::ascii_iscntrl(c)) {
      return false;
    }
  }
  uint32_t port = 0;
  absl::string_view port_text = text.substr(colon + 1);
  if (port_text.empty() || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return false;
  }
  return allow_zero || port != 0;
}

absl::StatusOr<TemplateSource> LoadTemplate(const config::ConfigDir& dir, absl::string_view file,
                                            absl::string_view builtin, absl::string_view builtin_name) {
  TERN_ASSIGN_OR_RETURN(std::optional<std::string> text, dir.Text(file));
  if (text) {
    return TemplateSource{*std::move(text), dir.PathOf(file)};
  }
  return TemplateSource{std::string(builtin), absl::StrCat("built-in ", builtin_name)};
}

}  // namespace

const TemplateSource& BouncerConfig::TemplateFor(dsn::ReportKind kind) const {
  switch (kind) {
    case dsn::ReportKind::kDelayed:
      return delayed_template;
    case dsn::ReportKind::kDelivered:
      return delivered_template;
    case dsn::ReportKind::kFailed:
      break;
  }
  return failed_template;
}

absl::Status BouncerConfig::Validate() const {
  if (!IsHostPort(queue, /*allow_zero=*/false)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kIniName, " [", kSection, "] queue: \"", queue, "\" is not host:port"));
  }
  if (!health_listen.empty() && !IsHostPort(health_listen, /*allow_zero=*/true)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kIniName, " [", kSection, "] health_listen: \"", health_listen, "\" is not host:port"));
  }
  if (!metrics_listen.empty() && !IsHostPort(metrics_listen, /*allow_zero=*/true)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kIniName, " [", kSection, "] metrics_listen: \"", metrics_listen, "\" is not host:port"));
  }
  if (me.empty()) {
    return absl::InvalidArgumentError("me: the host name is empty");
  }
  for (char c : me) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '<' || c == '>' || c == '@' || c == ';') {
      return absl::InvalidArgumentError(absl::StrCat("me: \"", me, "\" is not a host name"));
    }
  }
  for (const TemplateSource* t : {&failed_template, &delayed_template, &delivered_template}) {
    TERN_RETURN_IF_ERROR(dsn::DsnTemplate::Parse(t->text, t->origin).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<BouncerConfig> LoadBouncerConfig(const config::ConfigDir& dir) {
  BouncerConfig cfg;
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini(kIniName));
  cfg.queue = ini.GetString(kSection, "queue", cfg.queue);
  cfg.health_listen = ini.GetString(kSection, "health_listen", cfg.health_listen);
  cfg.metrics_listen = ini.GetString(kSection, "metrics_listen", cfg.metrics_listen);
  TERN_ASSIGN_OR_RETURN(cfg.me, dir.Me());
  TERN_ASSIGN_OR_RETURN(cfg.failed_template,
                        LoadTemplate(dir, "outbound.bounce_message", kDefaultBounceMessage, "outbound.bounce_message"));
  TERN_ASSIGN_OR_RETURN(cfg.delayed_template, LoadTemplate(dir, "outbound.bounce_message_delayed",
                                                           kDefaultDelayedMessage, "outbound.bounce_message_delayed"));
  TERN_ASSIGN_OR_RETURN(cfg.delivered_template,
                        LoadTemplate(dir, "outbound.bounce_message_delivered", kDefaultDeliveredMessage,
                                     "outbound.bounce_message_delivered"));
  TERN_RETURN_IF_ERROR(cfg.Validate());
  return cfg;
}

}  // namespace tern::bouncer
