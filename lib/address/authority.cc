#include "lib/address/authority.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tern::address {

std::string HostAuthority(absl::string_view host, uint32_t port, uint32_t default_port) {
  const bool v6 = absl::StrContains(host, ':');
  return absl::StrCat(v6 ? "[" : "", host, v6 ? "]" : "", port == default_port ? "" : absl::StrCat(":", port));
}

}  // namespace tern::address
