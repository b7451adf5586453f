#include "lib/common/process.h"

#include "absl/synchronization/mutex.h"

namespace tern {

void InitServiceProcess() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

}  // namespace tern
