// File: config_watcher.h
//
// ConfigWatcher: notices that files in a config directory changed, so a
// service can reload without being sent SIGHUP (Haraka watches its config
// files; in Kubernetes a ConfigMap or Secret update, e.g. a renewed
// certificate from cert-manager, arrives as new files and nobody signals).
//
// It polls: every `interval` it takes a fingerprint of the paths it watches
// (name, size, modification and change times, inode and type of every
// entry, directories read recursively, symbolic links followed, so the
// atomic `..data` link swap of a Kubernetes volume shows as a change of
// every file behind it). Names
// starting with "." are skipped (editor swap files, Kubernetes' own `..data`
// and timestamped directories, which the links above already cover). Polling
// rather than inotify because inotify misses changes behind symbolic links
// and on some network and overlay file systems; a few dozen stat calls every
// two seconds cost nothing.
//
// A change is reported once the files have stopped changing: when the
// fingerprint differs from the last one reported and has stayed the same
// for one more interval. So an operator who edits three files one after
// another, or a tool that writes a file in several writes, causes one
// reload, usually of the finished files.
//
// Thread-safety: the watcher runs `on_change` on its own thread; the
// destructor stops and joins it (waiting for a call of `on_change` in
// progress).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"
#include "lib/config/ini_file.h"

namespace tern::config {

class ConfigWatcher {
 public:
  // Starts watching `paths` (files or directories; a missing one counts as
  // a state of its own, so creating it is a change).
  ConfigWatcher(std::vector<std::string> paths, std::chrono::milliseconds interval, std::function<void()> on_change);
  ~ConfigWatcher();
  ConfigWatcher(const ConfigWatcher&) = delete;
  ConfigWatcher& operator=(const ConfigWatcher&) = delete;

  // Watches `paths` from the next look on (e.g. a reload named other key
  // files); no effect when they are the ones watched. The change of paths
  // is not itself a change: their state then is taken as known.
  void SetPaths(std::vector<std::string> paths);

  // The state of `paths` as one number: equal for unchanged files.
  static uint64_t Fingerprint(const std::vector<std::string>& paths);

 private:
  void Run();

  const std::chrono::milliseconds interval_;
  const std::function<void()> on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> paths_;  // under mu_
  bool paths_changed_ = false;      // under mu_
  bool stop_ = false;               // under mu_
  std::thread thread_;
};

// Every place `names` may be read from in `dir` (ConfigDir::CandidatePaths),
// for a watcher.
std::vector<std::string> WatchPaths(const ConfigDir& dir, std::initializer_list<const char*> names);

// How the services use a watcher: on a change, log `config_changed` and send
// this process SIGHUP, so that the service's SIGHUP handling stays the one
// place that reloads. Null when `interval` is 0 (watching off).
std::unique_ptr<ConfigWatcher> ReloadOnChange(std::vector<std::string> paths, std::chrono::milliseconds interval);

// tern.ini `[section] config_watch_ms`, the same key for every service: how
// often its config files are looked at, 0 = only on SIGHUP, else 100 ..
// 3600000. Default: 2000. The error names the file, section and key.
absl::StatusOr<std::chrono::milliseconds> ConfigWatchInterval(const IniFile& tern_ini, absl::string_view section);

// The settings a reload found changed that only a restart applies, by name,
// for LogReloadNeedsRestart: Note(running != loaded, "file [section] key")
// for each, or Keep, which also puts the running value back into the
// loaded config, so that one list both names and keeps them.
struct RestartOnlySettings {
  void Note(bool differs, std::string name) {
    if (differs) {
      names.push_back(std::move(name));
    }
  }
  // `load` may be a std::tie of several fields, kept and named together.
  template <typename Running, typename Loaded>
  void Keep(const Running& run, Loaded&& load, std::string name) {
    Note(!(run == load), std::move(name));
    load = run;
  }
  std::vector<std::string> names;
};

// After a reload: logs `reload_needs_restart` (warn) naming `settings`, the
// changed ones only a restart applies, with `effect`; nothing when empty.
inline constexpr absl::string_view kKeptUntilRestart = "these keep their running values until a restart";
void LogReloadNeedsRestart(const std::vector<std::string>& settings, absl::string_view effect = kKeptUntilRestart);

// For operators to alert on: a reload whose files did not all load means
// the next restart would stop at them. Prometheus's own metric names for
// the same thing:
//   tern_config_last_reload_successful               1 or 0
//   tern_config_last_reload_success_timestamp_seconds  when the config last
//                                                   loaded whole (the start
//                                                   counts)
//   tern_config_reloads_total{result="ok|failed"}
// RecordConfigLoaded at startup, once the config loaded; RecordReload after
// each reload, `ok` when every file it read loaded.
void RecordConfigLoaded();
void RecordReload(bool ok);

}  // namespace tern::config
