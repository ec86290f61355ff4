// The `mpi` backend, the baseline: each collective is the matching MPI call (MPI_Allreduce,
// MPI_Bcast, ...). Those block inside MPI, so the engine's watchdog enforces the timeout. f16
// and bf16 travel as 16-bit words reduced by user-defined MPI_Ops (widened to f32 per pair).
#include "collective/backends.h"

#if RINGFLOW_MPI
#include <climits>
#include <cstring>

#include "collective/host_engine.h"
#include "collective/reduce.h"

namespace rf::collective {
namespace {

template <DType D, ReduceOp Op>
void half_op(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce2(inout, in, inout, static_cast<size_t>(*len), D, Op, 0);
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::F16:
    case DType::BF16: return MPI_UINT16_T;
    case DType::U8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

class MpiCommunicator final : public HostCommunicator {
 public:
  explicit MpiCommunicator(const CommOptions& o) : HostCommunicator(o) {
    if (size_ == 1) return;
    MPI_CHECK(MPI_Op_create(&half_op<DType::F16, ReduceOp::Sum>, 1, &half_ops_[0][0]));
    MPI_CHECK(MPI_Op_create(&half_op<DType::F16, ReduceOp::Min>, 1, &half_ops_[0][1]));
    MPI_CHECK(MPI_Op_create(&half_op<DType::F16, ReduceOp::Max>, 1, &half_ops_[0][2]));
    MPI_CHECK(MPI_Op_create(&half_op<DType::BF16, ReduceOp::Sum>, 1, &half_ops_[1][0]));
    MPI_CHECK(MPI_Op_create(&half_op<DType::BF16, ReduceOp::Min>, 1, &half_ops_[1][1]));
    MPI_CHECK(MPI_Op_create(&half_op<DType::BF16, ReduceOp::Max>, 1, &half_ops_[1][2]));
  }
  ~MpiCommunicator() override {
    shutdown();
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (auto& row : half_ops_)
      for (MPI_Op& op : row)
        if (op != MPI_OP_NULL && !finalized) MPI_Op_free(&op);
  }
  std::string name() const override { return "mpi"; }

 protected:
  void execute(Task& t) override {
    arm_watchdog(&t);  // the calls below block inside MPI: the watchdog owns the deadline
    try {
      dispatch(t);
    } catch (...) {
      disarm_watchdog();
      throw;
    }
    disarm_watchdog();
  }

 private:
  MPI_Op op_for(DType d, ReduceOp op) const {
    const int k = op == ReduceOp::Min ? 1 : op == ReduceOp::Max ? 2 : 0;
    if (d == DType::F16 || d == DType::BF16) return half_ops_[d == DType::BF16][k];
    return k == 1 ? MPI_MIN : k == 2 ? MPI_MAX : MPI_SUM;
  }
  static int icount(size_t n, const char* what) {
    RF_CHECK(n <= static_cast<size_t>(INT_MAX), "mpi backend: ", what, " of ", n,
             " elements exceeds MPI's int count; use the ring backend");
    return static_cast<int>(n);
  }
  void finish_avg(void* buf, size_t n, const Task& t) {
    if (t.op != ReduceOp::Avg) return;
    const void* s[1] = {buf};
    reduce_into(buf, nullptr, s, 1, n, t.dtype, ReduceOp::Avg, size_);
  }
  void allreduce(const void* send, void* recv, size_t n, const Task& t) {
    const MPI_Datatype ty = mpi_type(t.dtype);
    const size_t es = dtype_size(t.dtype);
    constexpr size_t kPiece = size_t(1) << 30;  // MPI counts are ints: large buffers go in pieces
    for (size_t off = 0; off < n; off += kPiece) {
      const int c = static_cast<int>(std::min(kPiece, n - off));
      char* r = static_cast<char*>(recv) + off * es;
      const void* s = send == recv ? MPI_IN_PLACE : static_cast<const char*>(send) + off * es;
      MPI_CHECK(MPI_Allreduce(s, r, c, ty, op_for(t.dtype, t.op), world_));
    }
    finish_avg(recv, n, t);
  }

  void dispatch(Task& t) {
    const MPI_Datatype ty = mpi_type(t.dtype);
    const size_t es = dtype_size(t.dtype);
    switch (t.kind) {
      case CollKind::Allreduce: return allreduce(t.send, t.recv, t.count, t);
      case CollKind::AllreduceShm: return allreduce(private_shm_for(t), private_shm_for(t), t.count, t);
      case CollKind::Broadcast:
        MPI_CHECK(MPI_Bcast(t.recv, icount(t.count, "broadcast"), ty, t.root, world_));
        return;
      case CollKind::Allgather: {
        const bool in_place = t.send == static_cast<char*>(t.recv) + static_cast<size_t>(rank_) * t.count * es;
        const int c = icount(t.count * static_cast<size_t>(size_), "allgather");
        MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : t.send, c / size_, ty, t.recv, c / size_, ty, world_));
        return;
      }
      case CollKind::Allgatherv: {
        std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
        size_t off = 0;
        for (int r = 0; r < size_; ++r) {
          counts[r] = icount(t.counts[r], "allgatherv");
          displs[r] = icount(off, "allgatherv");
          off += t.counts[r];
        }
        const bool in_place = t.send == static_cast<char*>(t.recv) + static_cast<size_t>(displs[rank_]) * es;
        MPI_CHECK(MPI_Allgatherv(in_place ? MPI_IN_PLACE : t.send, counts[rank_], ty, t.recv, counts.data(),
                                 displs.data(), ty, world_));
        return;
      }
      case CollKind::ReduceScatter: {
        const int c = icount(t.count * static_cast<size_t>(size_), "reduce_scatter") / size_;
        char* mine = static_cast<char*>(const_cast<void*>(t.send)) + static_cast<size_t>(rank_) * t.count * es;
        if (t.recv == mine) {  // in place (NCCL's convention): MPI leaves the block at the front
          void* base = const_cast<void*>(t.send);
          MPI_CHECK(MPI_Reduce_scatter_block(MPI_IN_PLACE, base, c, ty, op_for(t.dtype, t.op), world_));
          std::memmove(mine, base, t.count * es);
        } else {
          MPI_CHECK(MPI_Reduce_scatter_block(t.send, t.recv, c, ty, op_for(t.dtype, t.op), world_));
        }
        finish_avg(t.recv, t.count, t);
        return;
      }
      case CollKind::Barrier: MPI_CHECK(MPI_Barrier(world_)); return;
      case CollKind::ShmAlloc: return;
    }
  }

  MPI_Op half_ops_[2][3] = {{MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL}, {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL}};
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& opts) {
  return std::make_unique<MpiCommunicator>(opts);
}

}  // namespace rf::collective
#endif
