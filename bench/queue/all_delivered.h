// File: all_delivered.h
//
// The no-op worker of the queue benchmarks: a Report that says every
// recipient of every leased delivery was delivered (250).
#pragma once

#include "tern/v1/queue.pb.h"

namespace tern::bench {

inline tern::v1::ReportRequest AllDelivered(const tern::v1::LeaseResponse& lease) {
  tern::v1::ReportRequest rep;
  for (const auto& job : lease.deliveries()) {
    auto* r = rep.add_reports();
    r->set_delivery_id(job.delivery_id());
    r->set_lease_token(job.lease_token());
    for (const auto& rc : job.recipients()) {
      auto* rr = r->add_recipients();
      rr->set_index(rc.index());
      rr->mutable_result()->set_outcome(tern::v1::OUTCOME_DELIVERED);
      rr->mutable_result()->set_reply_code(250);
    }
  }
  return rep;
}

}  // namespace tern::bench
