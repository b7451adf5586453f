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

const std::string* RecordCache::Lookup(uint32_t cf, absl::string_view key) const {
  const Map* map = Find(cf);
  if (map == nullptr) {
    return nullptr;
  }
  auto it = map->find(key);
  return it == map->end() ? nullptr : &it->second;
}

void RecordCache::Store(uint32_t cf, absl::string_view key, absl::string_view value) {
  Map* map = Find(cf);
  if (map == nullptr) {
    return;
  }
  auto it = map->find(key);
  if (it == map->end()) {
    const size_t cost = Cost(key.size(), value.size());
    if (bytes_ + cost > max_bytes_) {
      return;
    }
    map->emplace(std::string(key), std::string(value));
    bytes_ += cost;
    return;
  }
  const size_t old_cost = Cost(key.size(), it->second.size());
  const size_t new_cost = Cost(key.size(), value.size());
  if (bytes_ - old_cost + new_cost > max_bytes_) {
    bytes_ -= old_cost;
    map->erase(it);
    return;
  }
  it->second.assign(value.data(), value.size());
  bytes_ = bytes_ - old_cost + new_cost;
}

void RecordCache::Erase(uint32_t cf, absl::string_view key) {
  Map* map = Find(cf);
  if (map == nullptr) {
    return;
  }
  auto it = map->find(key);
  if (it != map->end()) {
    bytes_ -= Cost(key.size(), it->second.size());
    map->erase(it);
  }
}

void RecordCache::Clear() {
  for (auto& [id, map] : maps_) {
    map.clear();
  }
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
