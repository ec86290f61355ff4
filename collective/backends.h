// Constructors of the host backends, for the factory in communicator.cpp (each lives in its own
// file; without MPI compiled in, both give a world-size-1 communicator).
#pragma once
#include <memory>

#include "collective/communicator.h"

namespace rf::collective {
std::unique_ptr<Communicator> make_ring_communicator(const CommOptions& opts);
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& opts);
// nccl_backend.cpp: device buffers; without NCCL in the build it throws rf::Error saying why.
std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& opts);
}  // namespace rf::collective
