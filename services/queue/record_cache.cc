#include "services/queue/record_cache.h"

namespace tern::queue {

void RecordCache::AddColumnFamily(uint32_t cf) {
  if (Find(cf) == nullptr) {
    families_.push_back(Family{cf, Map(), {}});
  }
}

RecordCache::Family* RecordCache::Find(uint32_t cf) {
  for (Family& f : families_) {
    if (f.cf == cf) {
      return &f;
    }
  }
  return nullptr;
}

const RecordCache::Family* RecordCache::Find(uint32_t cf) const {
  for (const Family& f : families_) {
    if (f.cf == cf) {
      return &f;
    }
  }
  return nullptr;
}

const RecordCache::Entry* RecordCache::Lookup(uint32_t cf, absl::string_view key) const {
  const Family* family = Find(cf);
  if (family == nullptr) {
    return nullptr;
  }
  auto it = family->map.find(key);
  return it == family->map.end() ? nullptr : &it->second;
}

void RecordCache::StoreRead(uint32_t cf, absl::string_view key, absl::string_view value) {
  Family* family = Find(cf);
  if (family == nullptr) {
    return;
  }
  Entry e;
  e.value.assign(value.data(), value.size());
  const size_t cost = Cost(key.size(), e);
  if (bytes_ + cost > max_bytes_) {
    return;
  }
  if (family->map.try_emplace(key, std::move(e)).second) {
    bytes_ += cost;
  }
}

void RecordCache::Write(uint32_t cf, absl::string_view key, std::optional<absl::string_view> value,
                        UndoLog& undo) {
  Family* family = Find(cf);
  if (family == nullptr) {
    return;
  }
  auto [it, inserted] = family->map.try_emplace(key);
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
    family->written.emplace_back(key);
  }
}

void RecordCache::Undo(UndoLog& undo) {
  for (auto c = undo.changes.rbegin(); c != undo.changes.rend(); ++c) {
    Map& map = Find(c->cf)->map;
    auto it = map.find(c->key);
    if (it != map.end()) {
      bytes_ -= Cost(c->key.size(), it->second);
      map.erase(it);
    }
    if (c->before.has_value()) {
      bytes_ += Cost(c->key.size(), *c->before);
      map.emplace(c->key, std::move(*c->before));
    }
  }
  undo.changes.clear();
}

void RecordCache::GroupWritten() {
  for (Family& family : families_) {
    for (const std::string& key : family.written) {
      auto it = family.map.find(key);
      if (it == family.map.end() || !it->second.written) {
        continue;  // taken back by Undo, or listed twice
      }
      if (it->second.deleted || bytes_ > max_bytes_) {
        bytes_ -= Cost(key.size(), it->second);
        family.map.erase(it);
        continue;
      }
      it->second.written = false;
    }
    family.written.clear();
  }
}

void RecordCache::Clear() {
  for (Family& family : families_) {
    family.map.clear();
    family.written.clear();
  }
  bytes_ = 0;
}

size_t RecordCache::entries() const {
  size_t n = 0;
  for (const Family& family : families_) {
    n += family.map.size();
  }
  return n;
}

}  // namespace tern::queue
