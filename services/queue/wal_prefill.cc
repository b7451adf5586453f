#include "services/queue/wal_prefill.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"
#include "rocksdb/file_system.h"

namespace tern::queue {
namespace {

struct PrefillMetrics {
  metrics::Counter& prefilled;
  metrics::Counter& unprefilled;
  metrics::Counter& failures;
};

PrefillMetrics& Metrics() {
  static PrefillMetrics* m = [] {
    auto& r = metrics::Registry::Global();
    const std::string help = "WAL files created, by whether they got a prefilled spare";
    return new PrefillMetrics{
        r.GetCounter("tern_queue_wal_files_total", help, {{"prefilled", "true"}}),
        r.GetCounter("tern_queue_wal_files_total", help, {{"prefilled", "false"}}),
        r.GetCounter("tern_queue_wal_prefill_failures_total",
                     "Spare WAL files not made: too little free disk, or a write failed"),
    };
  }();
  return *m;
}

// Like RocksDB's own POSIX layer: a full disk is NoSpace (the queue answers
// it with RESOURCE_EXHAUSTED), anything else an I/O error.
rocksdb::IOStatus IoError(absl::string_view what, const std::string& path, int err) {
  const std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOSPC) {
    rocksdb::IOStatus s = rocksdb::IOStatus::NoSpace(message);
    s.SetRetryable(true);
    return s;
  }
  return rocksdb::IOStatus::IOError(message);
}

// Writes all of [data, data + size) at `offset`; returns 0 or an errno.
int PwriteAll(int fd, const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return 0;
}

// A WAL living in a renamed spare. Appends are pwrites at the logical end
// (never O_APPEND, which would write after the zeros); there is no buffer of
// our own, RocksDB's WritableFileWriter buffers.
class PrefilledWal final : public rocksdb::FSWritableFile {
 public:
  PrefilledWal(std::string path, int fd, const rocksdb::FileOptions& options)
      : rocksdb::FSWritableFile(options), path_(std::move(path)), fd_(fd) {}

  ~PrefilledWal() override { (void)Close(rocksdb::IOOptions(), nullptr); }

  using rocksdb::FSWritableFile::Append;
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& /*options*/,
                           rocksdb::IODebugContext* /*dbg*/) override {
    if (const int err = PwriteAll(fd_, data.data(), data.size(), size_)) {
      return IoError("appending to", path_, err);
    }
    size_ += data.size();
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& /*options*/,
                             rocksdb::IODebugContext* /*dbg*/) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return IoError("truncating", path_, errno);
    }
    size_ = size;
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Close(const rocksdb::IOOptions& /*options*/, rocksdb::IODebugContext* /*dbg*/) override {
    if (fd_ < 0) {
      return rocksdb::IOStatus::OK();
    }
    // Drop the zeros past the last record so a closed WAL has its true size.
    // Not synced on purpose: should the old size survive a crash, the zeros
    // read as padding.
    const int rc = ::ftruncate(fd_, static_cast<off_t>(size_));
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    return rc == 0 ? rocksdb::IOStatus::OK() : IoError("truncating", path_, err);
  }

  rocksdb::IOStatus Flush(const rocksdb::IOOptions& /*options*/, rocksdb::IODebugContext* /*dbg*/) override {
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Sync(const rocksdb::IOOptions& /*options*/, rocksdb::IODebugContext* /*dbg*/) override {
    if (::fdatasync(fd_) != 0) {
      return IoError("syncing", path_, errno);
    }
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& /*options*/, rocksdb::IODebugContext* /*dbg*/) override {
    if (::fsync(fd_) != 0) {
      return IoError("syncing", path_, errno);
    }
    return rocksdb::IOStatus::OK();
  }

  bool IsSyncThreadSafe() const override { return true; }

  uint64_t GetFileSize(const rocksdb::IOOptions& /*options*/, rocksdb::IODebugContext* /*dbg*/) override {
    return size_;
  }

  // The blocks exist already; past the spare the file grows as any other.
  rocksdb::IOStatus Allocate(uint64_t /*offset*/, uint64_t /*len*/, const rocksdb::IOOptions& /*options*/,
                             rocksdb::IODebugContext* /*dbg*/) override {
    return rocksdb::IOStatus::OK();
  }

 private:
  const std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

class WalPrefillFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  WalPrefillFileSystem(std::shared_ptr<rocksdb::FileSystem> base, WalPrefillOptions options)
      : rocksdb::FileSystemWrapper(std::move(base)),
        options_(std::move(options)),
        spare_path_(absl::StrCat(options_.dir, "/", kWalSpareName)),
        tmp_path_(absl::StrCat(spare_path_, ".tmp")) {
    // A half-written spare from a crash is useless; a complete one (renamed
    // only after it was synced) is reused.
    ::unlink(tmp_path_.c_str());
    struct stat st;
    if (::stat(spare_path_.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == options_.spare_bytes) {
      ready_ = true;
    } else {
      ::unlink(spare_path_.c_str());
      ready_ = Fill();
    }
    thread_ = std::thread([this] { Run(); });
  }

  ~WalPrefillFileSystem() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    stopping_.store(true);
    cv_.notify_all();
    thread_.join();
  }

  const char* Name() const override { return "TernWalPrefillFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& file_opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    if (!absl::EndsWith(fname, ".log") || file_opts.use_direct_writes || file_opts.use_mmap_writes) {
      return target()->NewWritableFile(fname, file_opts, result, dbg);
    }
    if (TakeSpare(fname)) {
      const int fd = ::open(fname.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd >= 0) {
        result->reset(new PrefilledWal(fname, fd, file_opts));
        Metrics().prefilled.Inc();
        return rocksdb::IOStatus::OK();
      }
      // The spare is in place but will not open: fall through, and the
      // wrapped file system truncates and reuses it as a plain new file.
      log::Event(log::Level::kWarn, "wal_prefill_failed",
                 {{"file", fname}, {"error", absl::StrCat("open: ", std::strerror(errno))}});
    }
    Metrics().unprefilled.Inc();
    return target()->NewWritableFile(fname, file_opts, result, dbg);
  }

 private:
  // Moves the ready spare to `fname` and wakes the filler for the next one.
  bool TakeSpare(const std::string& fname) {
    std::lock_guard<std::mutex> lock(mu_);
    wanted_ = true;
    cv_.notify_all();
    if (!ready_) {
      return false;
    }
    ready_ = false;
    if (::rename(spare_path_.c_str(), fname.c_str()) != 0) {
      log::Event(log::Level::kWarn, "wal_prefill_failed",
                 {{"file", fname}, {"error", absl::StrCat("rename: ", std::strerror(errno))}});
      return false;
    }
    return true;
  }

  // The filler: makes a new spare each time one was taken (or was wanted
  // and missing). A failure waits for the next WAL to ask again, so a full
  // disk is not hammered.
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || (wanted_ && !ready_); });
      if (stop_) {
        return;
      }
      wanted_ = false;
      lock.unlock();
      const bool ok = Fill();
      lock.lock();
      ready_ = ok;
    }
  }

  // Writes and syncs a spare under the temporary name, then renames it
  // into place: a spare that has its final name is complete.
  bool Fill() {
    static const std::vector<char> zeros(1u << 20, '\0');
    if (const std::optional<uint64_t> free_bytes = AvailableDiskBytes(options_.dir);
        free_bytes.has_value() && *free_bytes < options_.spare_bytes + options_.keep_free_bytes) {
      Metrics().failures.Inc();
      log::Event(log::Level::kWarn, "wal_prefill_skipped",
                 {{"dir", options_.dir},
                  {"free_bytes", absl::StrCat(*free_bytes)},
                  {"needed_bytes", absl::StrCat(options_.spare_bytes + options_.keep_free_bytes)}});
      return false;
    }
    const int fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = fd < 0 ? errno : 0;
    const char* step = "create";
    for (uint64_t offset = 0; err == 0 && offset < options_.spare_bytes; offset += zeros.size()) {
      if (stopping_.load()) {
        err = ECANCELED;
        break;
      }
      const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), options_.spare_bytes - offset));
      err = PwriteAll(fd, zeros.data(), n, offset);
      step = "write";
    }
    if (err == 0 && ::fdatasync(fd) != 0) {
      err = errno;
      step = "sync";
    }
    if (fd >= 0) {
      ::close(fd);
    }
    if (err == 0 && ::rename(tmp_path_.c_str(), spare_path_.c_str()) != 0) {
      err = errno;
      step = "rename";
    }
    if (err != 0) {
      ::unlink(tmp_path_.c_str());
      if (err != ECANCELED) {
        Metrics().failures.Inc();
        log::Event(log::Level::kWarn, "wal_prefill_failed",
                   {{"file", tmp_path_}, {"error", absl::StrCat(step, ": ", std::strerror(err))}});
      }
      return false;
    }
    return true;
  }

  const WalPrefillOptions options_;
  const std::string spare_path_;
  const std::string tmp_path_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool ready_ = false;   // guarded by mu_: the spare exists, complete
  bool wanted_ = false;  // guarded by mu_: a WAL was created since the last fill
  bool stop_ = false;    // guarded by mu_
  std::atomic<bool> stopping_{false};  // stop_ for the filler's write loop
  std::thread thread_;
};

}  // namespace

std::optional<uint64_t> AvailableDiskBytes(const std::string& dir) {
  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

std::shared_ptr<rocksdb::FileSystem> NewWalPrefillFileSystem(std::shared_ptr<rocksdb::FileSystem> base,
                                                             WalPrefillOptions options) {
  if (options.spare_bytes == 0) {
    return base;
  }
  return std::make_shared<WalPrefillFileSystem>(std::move(base), std::move(options));
}

}  // namespace tern::queue
