// File: wal_prefill.h
//
// A RocksDB file system that hands each new write-ahead log a file whose
// blocks were already written (with zeros) and synced, so that the queue's
// per-commit fdatasync writes only the commit's own data.
//
// Why: every acknowledged message costs a share of one WAL fdatasync, and on
// ext4 an fdatasync of a file that grew (or that wrote into fallocated,
// "unwritten" blocks) must also write the inode or the extent tree: two or
// three device writes instead of one. Overwriting blocks that already exist
// inside the file's size needs no metadata at all. RocksDB's own way to get
// this, WAL recycling, is turned off under point-in-time recovery (the
// recovery mode the queue relies on) because old records in a recycled file
// could be replayed. A file filled with zeros has no old records: the WAL
// reader skips zero blocks as padding, so recovery after a crash reads the
// synced records and stops at the zeros.
//
// How: one spare file (`TERN-WAL-SPARE` in the data directory) is filled with
// zeros and synced in the background. When RocksDB creates a WAL (`*.log`),
// the spare is renamed to that name and written from offset 0 with pwrite;
// closing the WAL truncates the unused zeros. A WAL that outgrows the spare
// simply grows, as without this layer. When no spare is ready (the filler is
// behind, or it failed, e.g. on a full disk), the WAL is created the usual
// way and the filler tries again for the next one. Files other than WALs go
// straight to the wrapped file system.
//
// Crashes: a killed process loses nothing (its writes are in the OS cache).
// After a power loss every record RocksDB synced is on disk, because the
// sync made it so; the zero tail after it reads as padding. Records written
// after the last sync may be partly there, as with a growing file, and since
// a later sync would have made them durable, they are only the queue's
// unsynced lease-only groups, which may be lost by design.
//
// Thread-safety: the file system may be used from any thread; each WAL file
// is written by one thread at a time, as RocksDB does.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace rocksdb {
class FileSystem;
}

namespace tern::queue {

struct WalPrefillOptions {
  // Directory of the spare file: the RocksDB directory (a rename must not
  // cross file systems).
  std::string dir;
  // Size of the spare, i.e. how much of each WAL is prefilled. Default: 64 MiB
  // (about one memtable's worth; the queue's WALs rarely grow beyond it).
  uint64_t spare_bytes = 64u << 20;
  // A spare is only made while the file system would keep at least this
  // much free after it, so the filler never takes the space that RocksDB's
  // own writes (flushes, WAL growth) need on a nearly full disk; the queue
  // passes its min_free_bytes. Default: 0.
  uint64_t keep_free_bytes = 0;
};

// Wraps `base`. Before returning, makes sure a spare is ready (filling one if
// needed, tens of milliseconds for 64 MiB), so the WAL that DB::Open creates
// is prefilled too; a failure there is logged and leaves the first WAL
// unprefilled. Removes a half-written spare left by a crash.
std::shared_ptr<rocksdb::FileSystem> NewWalPrefillFileSystem(std::shared_ptr<rocksdb::FileSystem> base,
                                                             WalPrefillOptions options);

// Bytes still free for an unprivileged writer on the file system of `dir`
// (statvfs f_bavail); nullopt when the file system cannot say. The queue's
// min_free_bytes check and the filler both measure the disk this way.
std::optional<uint64_t> AvailableDiskBytes(const std::string& dir);

// Name of the spare file inside WalPrefillOptions::dir (for tests and docs).
inline constexpr const char kWalSpareName[] = "TERN-WAL-SPARE";

}  // namespace tern::queue
