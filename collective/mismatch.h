// The collective mismatch check's descriptor (RINGFLOW_CHECK_COLLECTIVES): what every rank that
// called the same collective has in common, exchanged as raw bytes by each backend, and the
// one-line report when ranks differ. Shared by the host engine and the NCCL backend.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "collective/communicator.h"

namespace rf::collective {

struct CollDesc {
  uint64_t seq, count, counts_hash;
  uint8_t kind, dtype, op, pad;
  int32_t root;
  bool operator==(const CollDesc& o) const;
  bool operator<(const CollDesc& o) const;
};

// c's descriptor as collective number `seq` (1, 2, ... in call order on every rank).
CollDesc describe(const Collective& c, uint64_t seq);
// "allreduce(count=4, f32, sum)".
std::string to_string(const CollDesc& d);
// "" when all ranks' descriptors (all[r] is rank r's) agree, else "collective #17 mismatch: rank 1
// called allreduce(count=5, f32, sum) but ranks 0,2 called allreduce(count=4, f32, sum)"; the
// biggest group (ties: the one with the lowest rank) is the reference.
std::string mismatch_report(const std::vector<CollDesc>& all, uint64_t seq);

}  // namespace rf::collective
