// Replica state across ranks: every rank starts from rank 0's Variables (weights and optimizer
// slots), and a cheap checksum comparison catches replicas that drifted apart.
#pragma once
#include <cstdint>

#include "collective/communicator.h"
#include "runtime/session.h"

namespace rf::collective {

// Every Variable of the session's graph (trainable or not) from `root` to all ranks.
void broadcast_variables(Session& s, Communicator& comm, int root = 0);

// Compares per-Variable checksums (sum and sum of squares, in double) across ranks; throws
// rf::Error naming `step` and the first Variable that differs.
void check_replicas(Session& s, Communicator& comm, int64_t step);

}  // namespace rf::collective
