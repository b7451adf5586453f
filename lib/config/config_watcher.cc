#include "lib/config/config_watcher.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <string_view>
#include <utility>

#include "absl/strings/str_join.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"

namespace tern::config {
namespace {

// Bounds for a directory tree that is not a config directory (a path set to
// "/" by mistake): the fingerprint then covers part of it, and stays cheap.
constexpr int kMaxDepth = 8;
constexpr size_t kMaxEntries = 10000;

// FNV-1a, 64 bits: a fingerprint compared only with earlier ones of the
// same process, so it need not be cryptographic.
class Hasher {
 public:
  void Add(std::string_view bytes) {
    for (unsigned char c : bytes) {
      h_ = (h_ ^ c) * 1099511628211ULL;
    }
  }
  void Add(uint64_t v) { Add(std::string_view(reinterpret_cast<const char*>(&v), sizeof v)); }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 14695981039346656037ULL;
};

void AddPath(const std::string& path, int depth, size_t* entries, Hasher* hash) {
  hash->Add(path);
  hash->Add(std::string_view("\0", 1));
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {  // follows symbolic links
    hash->Add(uint64_t{0});
    return;
  }
  hash->Add(static_cast<uint64_t>(st.st_mode));
  hash->Add(static_cast<uint64_t>(st.st_ino));
  if (!S_ISDIR(st.st_mode)) {
    hash->Add(static_cast<uint64_t>(st.st_size));
    hash->Add(static_cast<uint64_t>(st.st_mtim.tv_sec));
    hash->Add(static_cast<uint64_t>(st.st_mtim.tv_nsec));
    // A copy that keeps the old modification time (cp -p, rsync -t) still
    // moves the change time.
    hash->Add(static_cast<uint64_t>(st.st_ctim.tv_sec));
    hash->Add(static_cast<uint64_t>(st.st_ctim.tv_nsec));
    return;
  }
  // A directory's own times move with any file made in it, ignored ones
  // too; what it holds is covered entry by entry below.
  if (depth >= kMaxDepth) {
    return;
  }
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) {
    return;
  }
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') {
      names.emplace_back(entry->d_name);
    }
  }
  ::closedir(dir);
  // readdir's order may differ between two reads of the same directory.
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    if (++*entries > kMaxEntries) {
      return;
    }
    AddPath(path + "/" + name, depth + 1, entries, hash);
  }
}

}  // namespace

uint64_t ConfigWatcher::Fingerprint(const std::vector<std::string>& paths) {
  Hasher hash;
  size_t entries = 0;
  for (const std::string& path : paths) {
    AddPath(path, 0, &entries, &hash);
  }
  return hash.value();
}

ConfigWatcher::ConfigWatcher(std::vector<std::string> paths, std::chrono::milliseconds interval,
                             std::function<void()> on_change)
    : interval_(interval), on_change_(std::move(on_change)), paths_(std::move(paths)) {
  thread_ = std::thread([this] { Run(); });
}

ConfigWatcher::~ConfigWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ConfigWatcher::SetPaths(std::vector<std::string> paths) {
  std::lock_guard<std::mutex> lock(mu_);
  if (paths != paths_) {
    paths_ = std::move(paths);
    paths_changed_ = true;
  }
}

void ConfigWatcher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<std::string> paths = paths_;
  lock.unlock();
  uint64_t reported = Fingerprint(paths);
  uint64_t last = reported;
  lock.lock();
  while (!cv_.wait_for(lock, interval_, [this] { return stop_; })) {
    const bool renamed = std::exchange(paths_changed_, false);
    if (renamed) {
      paths = paths_;
    }
    lock.unlock();
    const uint64_t now = Fingerprint(paths);
    if (renamed) {
      // The new set's state is the one reported.
      reported = last = now;
      lock.lock();
      continue;
    }
    // Reported only when unchanged since the last look (the writing is
    // over) and different from what was reported before.
    if (now == last && now != reported) {
      reported = now;
      on_change_();
    }
    last = now;
    lock.lock();
  }
}

std::vector<std::string> WatchPaths(const ConfigDir& dir, std::initializer_list<const char*> names) {
  std::vector<std::string> paths;
  for (const char* name : names) {
    for (std::string& path : dir.CandidatePaths(name)) {
      paths.push_back(std::move(path));
    }
  }
  return paths;
}

std::unique_ptr<ConfigWatcher> ReloadOnChange(std::vector<std::string> paths, std::chrono::milliseconds interval) {
  if (interval.count() <= 0) {
    return nullptr;
  }
  return std::make_unique<ConfigWatcher>(std::move(paths), interval, [] {
    log::Event(log::Level::kInfo, "config_changed", {{"effect", "reloading"}});
    ::kill(::getpid(), SIGHUP);
  });
}

void LogReloadNeedsRestart(const std::vector<std::string>& settings, absl::string_view effect) {
  if (!settings.empty()) {
    log::Event(log::Level::kWarn, "reload_needs_restart",
               {{"settings", absl::StrJoin(settings, ", ")}, {"effect", effect}});
  }
}

namespace {

metrics::Gauge& LastReloadSuccessful() {
  static metrics::Gauge& g = metrics::Registry::Global().GetGauge(
      "tern_config_last_reload_successful",
      "1 if the last config reload loaded every file (or none was made since the start), else 0");
  return g;
}

metrics::Gauge& LastSuccessTimestamp() {
  static metrics::Gauge& g = metrics::Registry::Global().GetGauge(
      "tern_config_last_reload_success_timestamp_seconds",
      "Unix time the config last loaded whole, at the start or a reload");
  return g;
}

metrics::Counter& Reloads(bool ok) {
  static const std::string kHelp = "Config reloads (SIGHUP or a watched file's change), by whether every file loaded";
  static metrics::Counter& good = metrics::Registry::Global().GetCounter("tern_config_reloads_total", kHelp,
                                                                         {{"result", "ok"}});
  static metrics::Counter& bad = metrics::Registry::Global().GetCounter("tern_config_reloads_total", kHelp,
                                                                        {{"result", "failed"}});
  return ok ? good : bad;
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void RecordConfigLoaded() {
  LastReloadSuccessful().Set(1);
  LastSuccessTimestamp().Set(UnixNow());
  Reloads(true);  // both series exist from the start, at 0
  Reloads(false);
}

void RecordReload(bool ok) {
  Reloads(ok).Inc();
  LastReloadSuccessful().Set(ok ? 1 : 0);
  if (ok) {
    LastSuccessTimestamp().Set(UnixNow());
  }
}

absl::StatusOr<std::chrono::milliseconds> ConfigWatchInterval(const IniFile& tern_ini, absl::string_view section) {
  absl::StatusOr<int64_t> ms = tern_ini.GetInt(section, "config_watch_ms", 2000);
  if (!ms.ok()) {
    return ms.status();
  }
  if (*ms != 0 && (*ms < 100 || *ms > 3'600'000)) {
    return tern_ini.KeyError(section, "config_watch_ms", "must be 0 (off) or between 100 and 3600000");
  }
  return std::chrono::milliseconds(*ms);
}

}  // namespace tern::config
