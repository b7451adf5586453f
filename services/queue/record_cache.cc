#include "services/queue/record_cache.h"

namespace tern::queue {

void RecordCache::AddColumnFamily(uint32_t cf) {
  if (Find(cf) == nullptr) {
    maps_.emplace_back(cf, Map());
  }
}

RecordCache::Map* RecordCache::Find(uint32_t cf) {
  for (auto& [id, map] : maps_) {
    if (id == cf) {
      return &map;
    }
  }
  return nullptr;
}

const RecordCache::Map* RecordCache::Find(uint32_t cf) const {
  for (const auto& [id, map] : maps_) {
    if (id == cf) {
      return &map;
    }
  }
  return nullptr;
}

const RecordCache::Entry* RecordCache::Lookup(uint32_t cf, absl::string_view key) const {
  const Map* map = Find(cf);
  if (map == nullptr) {
    return nullptr;
  }
  auto it = map->find(key);
  return it == map->end() ? nullptr : &it->second;
}

void RecordCache::StoreRead(uint32_t cf, absl::string_view key, absl::string_view value) {
  Map* map = Find(cf);
  if (map == nullptr) {
    return;
  }
  Entry e;
  e.value.assign(value.data(), value.size());
  const size_t cost = Cost(key.size(), e);
  if (bytes_ + cost > max_bytes_) {
    return;
  }
  if (map->try_emplace(key, std::move(e)).second) {
    bytes_ += cost;
  }
}

void RecordCache::Write(uint32_t cf, absl::string_view key, std::optional<absl::string_view> value,
                        UndoLog& undo) {
  Map* map = Find(cf);
  if (map == nullptr) {
    return;
  }
  auto [it, inserted] = map->try_emplace(key);
  Entry& e = it->second;
  const bool was_written = e.written;  // false for a new entry
  if (inserted) {
    undo.changes.push_back({cf, std::string(key), std::nullopt});
  } else {
    bytes_ -= Cost(key.size(), e);
    undo.changes.push_back({cf, std::string(key), std::move(e)});
  }
  if (value.has_value()) {
    e.value.assign(value->data(), value->size());
  } else {
    e.value.clear();
  }
  e.deleted = !value.has_value();
  e.written = true;
  bytes_ += Cost(key.size(), e);
  if (!was_written) {
    written_.emplace_back(cf, std::string(key));
  }
}

void RecordCache::Undo(UndoLog& undo) {
  for (auto c = undo.changes.rbegin(); c != undo.changes.rend(); ++c) {
    Map* map = Find(c->cf);
    auto it = map->find(c->key);
    if (it != map->end()) {
      bytes_ -= Cost(c->key.size(), it->second);
      map->erase(it);
    }
    if (c->before.has_value()) {
      bytes_ += Cost(c->key.size(), *c->before);
      map->emplace(c->key, std::move(*c->before));
    }
  }
  undo.changes.clear();
}

void RecordCache::GroupWritten() {
  for (const auto& [cf, key] : written_) {
    Map* map = Find(cf);
    auto it = map->find(key);
    if (it == map->end() || !it->second.written) {
      continue;  // taken back by Undo, or listed twice
    }
    if (it->second.deleted || bytes_ > max_bytes_) {
      bytes_ -= Cost(key.size(), it->second);
      map->erase(it);
      continue;
    }
    it->second.written = false;
  }
  written_.clear();
}

void RecordCache::Clear() {
  for (auto& [id, map] : maps_) {
    map.clear();
  }
  written_.clear();
  bytes_ = 0;
}

size_t RecordCache::entries() const {
  size_t n = 0;
  for (const auto& [id, map] : maps_) {
    n += map.size();
  }
  return n;
}

}  // namespace tern::queue
