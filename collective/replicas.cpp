// Keeping replicas identical: the start-up broadcast and the cross-rank consistency check.
#include "collective/replicas.h"

#include <cmath>

namespace rf::collective {

// Per-Variable checksums (sum and sum of squares in double) compared across ranks; a replica
// that drifted stops the run naming the step and the first Variable that differs.
void check_replicas(Session& s, Communicator& comm, int64_t step) {
  const Graph& g = s.graph();
  const std::vector<int> vars = g.variables();
  std::vector<double> sums;
  for (int id : vars) {
    double a = 0, q = 0;
    const Tensor& t = s.variable(id);
    if (t.dtype() == DType::F32)
      for (float v : t.to_vector<float>()) a += v, q += double(v) * v;
    else if (t.dtype() == DType::F64)
      for (double v : t.to_vector<double>()) a += v, q += v * v;
    sums.push_back(a);
    sums.push_back(q);
  }
  std::vector<double> lo = sums, hi = sums;
  comm.allreduce(lo.data(), lo.size(), DType::F64, ReduceOp::Min);
  comm.allreduce(hi.data(), hi.size(), DType::F64, ReduceOp::Max);
  for (size_t i = 0; i < sums.size(); ++i) {
    // NaN never equals itself: a Variable that overflowed on every rank is divergence of the
    // training, not of the replicas.
    RF_CHECK(std::isfinite(lo[i]) && std::isfinite(hi[i]), "training diverged by step ", step, ": Variable '",
             g.node(vars[i / 2]).name, "' is not finite (checksum ", lo[i], " .. ", hi[i], "): lower --lr");
    RF_CHECK(lo[i] == hi[i], "replicas diverged at step ", step, ": Variable '", g.node(vars[i / 2]).name,
             "' differs across ranks (checksum ", lo[i], " vs ", hi[i], ")");
  }
}

// Rank 0's Variables (weights and optimizer slots) to every rank, so replicas start identical.
void broadcast_variables(Session& s, Communicator& comm, int root) {
  for (int id : s.graph().variables()) {
    Tensor& t = s.variable(id);
    comm.broadcast(t.raw(), size_t(t.numel()), t.dtype(), root);
  }
}

}  // namespace rf::collective
