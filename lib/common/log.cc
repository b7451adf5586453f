#include "lib/common/log.h"

#include <atomic>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace tern::log {
namespace {

struct State {
  std::mutex mu;
  std::string service = "tern";
  Format format = Format::kDefault;
  std::atomic<int> level{static_cast<int>(Level::kInfo)};
  std::shared_ptr<spdlog::logger> logger;
};

State& GetState() {
  static State* state = [] {
    auto* s = new State;
    // stderr_sink_mt writes each line with one fwrite under a mutex, so lines
    // from different threads never interleave.
    s->logger = std::make_shared<spdlog::logger>("tern", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    s->logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %v", spdlog::pattern_time_type::utc);
    s->logger->set_level(spdlog::level::trace);
    s->logger->flush_on(spdlog::level::trace);
    return s;
  }();
  return *state;
}

const char* LevelName(Level level) {
  switch (level) {
    case Level::kData: return "DATA";
    case Level::kProtocol: return "PROTOCOL";
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kNotice: return "NOTICE";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
    case Level::kCrit: return "CRIT";
    case Level::kAlert: return "ALERT";
    case Level::kEmerg: return "EMERG";
  }
  return "INFO";
}

// logfmt/default: quote a value when it has spaces, quotes, '=' or control
// characters; escape control characters so a remote reply cannot start a new
// log line.
void AppendLogfmtValue(std::string& out, absl::string_view v) {
  bool needs_quotes = v.empty();
  for (unsigned char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) {
      needs_quotes = true;
      break;
    }
  }
  if (!needs_quotes) {
    out.append(v.data(), v.size());
    return;
  }
  out.push_back('"');
  for (unsigned char c : v) {
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c < 0x20 || c == 0x7f) {
          absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

void AppendJsonString(std::string& out, absl::string_view v) {
  out.push_back('"');
  for (unsigned char c : v) {
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c < 0x20 || c == 0x7f) {
          absl::StrAppend(&out, "\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

}  // namespace

absl::StatusOr<Level> ParseLevel(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  static constexpr std::pair<const char*, Level> kNames[] = {
      {"data", Level::kData},   {"protocol", Level::kProtocol}, {"debug", Level::kDebug},
      {"info", Level::kInfo},   {"notice", Level::kNotice},     {"warn", Level::kWarn},
      {"warning", Level::kWarn}, {"error", Level::kError},      {"crit", Level::kCrit},
      {"alert", Level::kAlert}, {"emerg", Level::kEmerg}};
  for (const auto& [text, level] : kNames) {
    if (n == text) {
      return level;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown log level '", name, "'"));
}

absl::StatusOr<Format> ParseFormat(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "default" || n.empty()) return Format::kDefault;
  if (n == "logfmt") return Format::kLogfmt;
  if (n == "json") return Format::kJson;
  return absl::InvalidArgumentError(absl::StrCat("unknown log format '", name, "' (default, logfmt, json)"));
}

void Init(absl::string_view service, Level level, Format format) {
  State& s = GetState();
  std::lock_guard lock(s.mu);
  s.service = std::string(service);
  s.format = format;
  s.level.store(static_cast<int>(level));
}

bool Enabled(Level level) { return static_cast<int>(level) >= GetState().level.load(std::memory_order_relaxed); }

Level CurrentLevel() { return static_cast<Level>(GetState().level.load(std::memory_order_relaxed)); }

Format CurrentFormat() {
  State& s = GetState();
  std::lock_guard lock(s.mu);
  return s.format;
}

std::string Render(Format format, absl::string_view service, Level level, absl::string_view event,
                   std::initializer_list<Field> fields) {
  std::string out;
  out.reserve(128);
  switch (format) {
    case Format::kDefault:
      absl::StrAppend(&out, "[", LevelName(level), "] [", service, "] ", event);
      for (const auto& [k, v] : fields) {
        absl::StrAppend(&out, " ", k, "=");
        AppendLogfmtValue(out, v);
      }
      break;
    case Format::kLogfmt:
      absl::StrAppend(&out, "level=", LevelName(level), " service=", service, " event=");
      AppendLogfmtValue(out, event);
      for (const auto& [k, v] : fields) {
        absl::StrAppend(&out, " ", k, "=");
        AppendLogfmtValue(out, v);
      }
      break;
    case Format::kJson:
      absl::StrAppend(&out, "{\"level\":\"", LevelName(level), "\",\"service\":");
      AppendJsonString(out, service);
      out.append(",\"event\":");
      AppendJsonString(out, event);
      for (const auto& [k, v] : fields) {
        out.push_back(',');
        AppendJsonString(out, k);
        out.push_back(':');
        AppendJsonString(out, v);
      }
      out.push_back('}');
      break;
  }
  return out;
}

void Event(Level level, absl::string_view event, std::initializer_list<Field> fields) {
  if (!Enabled(level)) {
    return;
  }
  State& s = GetState();
  std::string line;
  {
    std::lock_guard lock(s.mu);
    line = Render(s.format, s.service, level, event, fields);
  }
  s.logger->info(line);
}

void Debug(absl::string_view text) { Event(Level::kDebug, text); }
void Info(absl::string_view text) { Event(Level::kInfo, text); }
void Notice(absl::string_view text) { Event(Level::kNotice, text); }
void Warn(absl::string_view text) { Event(Level::kWarn, text); }
void Error(absl::string_view text) { Event(Level::kError, text); }

}  // namespace tern::log
