#include "services/bouncer/bouncer_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"
#include "lib/config/config_watcher.h"
#include "lib/config/queue_targets.h"
#include "lib/dsn/dsn_renderer.h"
#include "services/bouncer/default_bounce_message.h"

namespace tern::bouncer {

namespace {

constexpr char kIniName[] = "tern.ini";
constexpr char kSection[] = "bouncer";

// "tern.ini [bouncer] queue: <reason>" from ParseQueueTargets' error.
absl::Status QueueError(const absl::Status& reason) {
  return absl::InvalidArgumentError(absl::StrCat(kIniName, " [", kSection, "] queue: ", reason.message()));
}

absl::StatusOr<std::optional<TemplateSource>> LoadOptional(const config::ConfigDir& dir, absl::string_view file) {
  TERN_ASSIGN_OR_RETURN(std::optional<std::string> text, dir.Text(file));
  if (!text) {
    return std::optional<TemplateSource>();
  }
  return std::optional<TemplateSource>(TemplateSource{*std::move(text), dir.PathOf(file)});
}

// A plausible mailbox for double_bounce_recipient: local@domain, no spaces,
// brackets or control characters.
bool IsMailbox(absl::string_view addr) {
  size_t at = addr.rfind('@');
  if (at == absl::string_view::npos || at == 0 || at + 1 == addr.size()) {
    return false;
  }
  for (char c : addr) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f || c == '<' || c == '>' || c == ',' || c == ';') {
      return false;
    }
  }
  return true;
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

const std::optional<TemplateSource>& BouncerConfig::HtmlFor(dsn::ReportKind kind) const {
  switch (kind) {
    case dsn::ReportKind::kDelayed:
      return delayed_html;
    case dsn::ReportKind::kDelivered:
      return delivered_html;
    case dsn::ReportKind::kFailed:
      break;
  }
  return failed_html;
}

absl::StatusOr<dsn::DsnTemplates> BouncerConfig::TemplatesFor(dsn::ReportKind kind) const {
  dsn::DsnTemplates out;
  const TemplateSource& text = TemplateFor(kind);
  TERN_ASSIGN_OR_RETURN(out.text, dsn::DsnTemplate::Parse(text.text, text.origin));
  if (const std::optional<TemplateSource>& html = HtmlFor(kind); html) {
    TERN_ASSIGN_OR_RETURN(out.html, dsn::HtmlTemplate::Parse(html->text, html->origin));
  }
  if (image) {
    // Parsed (and so checked) even when unused, so a broken file is reported.
    TERN_ASSIGN_OR_RETURN(dsn::InlinePart part, dsn::InlinePart::Parse(image->text, image->origin));
    if (out.html && out.html->has_content()) {
      out.image = std::move(part);
    }
  }
  return out;
}

absl::StatusOr<SuppressionRules> BouncerConfig::Suppression() const {
  return SuppressionRules::Create(suppress_sender_domains, suppress_status,
                                  absl::StrCat(kIniName, " [", kSection, "] suppress_sender_domains"),
                                  absl::StrCat(kIniName, " [", kSection, "] suppress_status"));
}

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
  if (absl::Status s = config::CheckQueueTargets(queues); !s.ok()) {
    return QueueError(s);
  }
  if (!health_listen.empty() && !config::IsHostPort(health_listen, /*allow_zero=*/true)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kIniName, " [", kSection, "] health_listen: \"", health_listen, "\" is not host:port"));
  }
  if (!metrics_listen.empty() && !config::IsHostPort(metrics_listen, /*allow_zero=*/true)) {
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
  if (max_original_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kIniName, " [", kSection, "] max_original_bytes: \"",
                                                   max_original_bytes, "\" is negative"));
  }
  if (!double_bounce_recipient.empty() && !IsMailbox(double_bounce_recipient)) {
    return absl::InvalidArgumentError(absl::StrCat(kIniName, " [", kSection, "] double_bounce_recipient: \"",
                                                   double_bounce_recipient, "\" is not an address (user@domain)"));
  }
  TERN_RETURN_IF_ERROR(Suppression().status());
  for (dsn::ReportKind kind : {dsn::ReportKind::kFailed, dsn::ReportKind::kDelayed, dsn::ReportKind::kDelivered}) {
    TERN_RETURN_IF_ERROR(TemplatesFor(kind).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<BouncerConfig> LoadBouncerConfig(const config::ConfigDir& dir) {
  BouncerConfig cfg;
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini(kIniName));
  absl::StatusOr<std::vector<std::string>> queues =
      config::ReadQueueTargets(ini, kSection, config::JoinQueueTargets(cfg.queues));
  if (!queues.ok()) {
    return QueueError(queues.status());
  }
  cfg.queues = *std::move(queues);
  cfg.health_listen = ini.GetString(kSection, "health_listen", cfg.health_listen);
  cfg.metrics_listen = ini.GetString(kSection, "metrics_listen", cfg.metrics_listen);
  TERN_ASSIGN_OR_RETURN(cfg.config_watch, config::ConfigWatchInterval(ini, kSection));
  TERN_ASSIGN_OR_RETURN(cfg.max_original_bytes, ini.GetInt(kSection, "max_original_bytes", cfg.max_original_bytes));
  cfg.double_bounce_recipient = std::string(
      absl::StripAsciiWhitespace(ini.GetString(kSection, "double_bounce_recipient", cfg.double_bounce_recipient)));
  if (absl::StartsWith(cfg.double_bounce_recipient, "<") && absl::EndsWith(cfg.double_bounce_recipient, ">")) {
    cfg.double_bounce_recipient = cfg.double_bounce_recipient.substr(1, cfg.double_bounce_recipient.size() - 2);
  }
  cfg.suppress_sender_domains = ini.GetList(kSection, "suppress_sender_domains");
  cfg.suppress_status = ini.GetList(kSection, "suppress_status");
  TERN_ASSIGN_OR_RETURN(cfg.me, dir.Me());
  TERN_ASSIGN_OR_RETURN(cfg.failed_template,
                        LoadTemplate(dir, "outbound.bounce_message", kDefaultBounceMessage, "outbound.bounce_message"));
  TERN_ASSIGN_OR_RETURN(cfg.delayed_template, LoadTemplate(dir, "outbound.bounce_message_delayed",
                                                           kDefaultDelayedMessage, "outbound.bounce_message_delayed"));
  TERN_ASSIGN_OR_RETURN(cfg.delivered_template,
                        LoadTemplate(dir, "outbound.bounce_message_delivered", kDefaultDeliveredMessage,
                                     "outbound.bounce_message_delivered"));
  TERN_ASSIGN_OR_RETURN(cfg.failed_html, LoadOptional(dir, "outbound.bounce_message_html"));
  TERN_ASSIGN_OR_RETURN(cfg.delayed_html, LoadOptional(dir, "outbound.bounce_message_delayed_html"));
  TERN_ASSIGN_OR_RETURN(cfg.delivered_html, LoadOptional(dir, "outbound.bounce_message_delivered_html"));
  TERN_ASSIGN_OR_RETURN(cfg.image, LoadOptional(dir, "outbound.bounce_message_image"));
  TERN_RETURN_IF_ERROR(cfg.Validate());
  return cfg;
}

}  // namespace tern::bouncer
