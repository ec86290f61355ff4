// Helper for tests/mpi/timeout.sh: collective #1 on every rank, then the last rank stalls
// (sleeps) instead of calling collective #2, so the others must time out and name it. With
// "flag" (the ring's shared-memory PeerWindow, as the fused update uses it), the last rank never
// publishes the flag the others wait for.
// Usage: ringflow_mpi_timeout ring|mpi|flag
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "collective/communicator.h"
#include "runtime/error.h"

int main(int argc, char** argv) {
  using namespace rf::collective;
  const std::string backend = argc > 1 ? argv[1] : "ring";
  try {
    auto c = make_communicator(backend == "flag" ? "ring" : backend);
    std::vector<float> x(1 << 16, 1.0f);
    if (backend == "flag") {
      PeerWindow* w = c->peer_window();
      if (!w) {
        std::fprintf(stderr, "no peer window (%s)\n", c->name().c_str());
        return 2;
      }
      c->barrier();
      if (c->rank() == c->size() - 1) {
        std::this_thread::sleep_for(std::chrono::seconds(120));
        return 0;
      }
      w->publish(0, 1);
      w->wait(0, 1, "fused update (waiting for the peers' gradients)");
      std::fprintf(stderr, "the flag wait returned although a rank never published\n");
      return 0;
    }
    c->allreduce(x.data(), x.data(), x.size(), rf::DType::F32, ReduceOp::Sum);
    if (c->rank() == c->size() - 1) {
      std::this_thread::sleep_for(std::chrono::seconds(120));
      return 0;
    }
    c->allreduce(x.data(), x.data(), x.size(), rf::DType::F32, ReduceOp::Sum);
  } catch (const rf::Error& e) {
    std::fprintf(stderr, "ringflow: error: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "collective #2 returned although a rank never called it\n");
  return 0;
}
