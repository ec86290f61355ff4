// The Communicator's public calls (argument checks, then the backend's submit), names of the
// enums, the RINGFLOW_* environment options and the backend factory.
#include "collective/communicator.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "collective/backends.h"
#include "collective/host_engine.h"
#include "collective/reduce.h"
#include "runtime/error.h"

namespace rf::collective {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Min: return "min";
    case ReduceOp::Max: return "max";
  }
  return "?";
}

const char* transport_name(Transport t) {
  switch (t) {
    case Transport::Auto: return "auto";
    case Transport::P2P: return "p2p";
    case Transport::Shm: return "shm";
  }
  return "?";
}

const char* coll_kind_name(CollKind k) {
  switch (k) {
    case CollKind::Allreduce: return "allreduce";
    case CollKind::Broadcast: return "broadcast";
    case CollKind::Allgather: return "allgather";
    case CollKind::Allgatherv: return "allgatherv";
    case CollKind::ReduceScatter: return "reduce_scatter";
    case CollKind::Barrier: return "barrier";
    case CollKind::AllreduceShm: return "allreduce_shm";
    case CollKind::ShmAlloc: return "shm_buffer";
  }
  return "?";
}

size_t parse_size(const std::string& what, const std::string& text) {
  const char* s = text.c_str();
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  double mul = 1;
  if (end && (*end == 'K' || *end == 'k')) mul = 0x1p10, ++end;
  else if (end && (*end == 'M' || *end == 'm')) mul = 0x1p20, ++end;
  else if (end && (*end == 'G' || *end == 'g')) mul = 0x1p30, ++end;
  // strtod also reads "inf", "nan" and hex: a size is plain decimal digits (and a point).
  const bool plain = !text.empty() && text.find_first_not_of("0123456789.kKmMgG") == std::string::npos;
  RF_CHECK(plain && errno == 0 && end != s && *end == '\0' && v * mul < 0x1p63, what, "='", text,
           "' is not a size (a number of bytes, optionally with K, M or G)");
  return static_cast<size_t>(v * mul);
}

CommOptions options_from_env(CommOptions o) {
  if (const char* v = std::getenv("RINGFLOW_RING_TRANSPORT")) {
    const std::string s = v;
    if (s == "auto") o.transport = Transport::Auto;
    else if (s == "p2p") o.transport = Transport::P2P;
    else if (s == "shm") o.transport = Transport::Shm;
    else fail("RINGFLOW_RING_TRANSPORT='", s, "' is not one of auto, p2p, shm");
  }
  if (const char* v = std::getenv("RINGFLOW_CHECK_COLLECTIVES")) {
    const std::string s = v;
    if (s == "1" || s == "true" || s == "yes") o.check_mismatch = true;
    else if (s == "0" || s == "false" || s == "no" || s.empty()) o.check_mismatch = false;
    else fail("RINGFLOW_CHECK_COLLECTIVES='", s, "' is not 0 or 1");
  }
  if (const char* v = std::getenv("RINGFLOW_COLLECTIVE_TIMEOUT")) {
    char* end = nullptr;
    const double t = std::strtod(v, &end);
    RF_CHECK(end != v && *end == '\0' && t > 0, "RINGFLOW_COLLECTIVE_TIMEOUT='", v,
             "' is not a positive number of seconds");
    o.timeout_seconds = t;
  }
  if (const char* v = std::getenv("RINGFLOW_CHUNK_BYTES")) o.chunk_bytes = parse_size("RINGFLOW_CHUNK_BYTES", v);
  if (const char* v = std::getenv("RINGFLOW_RANKS_PER_NODE"))
    o.ranks_per_node = static_cast<int>(parse_size("RINGFLOW_RANKS_PER_NODE", v));
  return o;
}

Work Communicator::call(Collective c, bool blocking) {
  const char* what = coll_kind_name(c.kind);
  const size_t es = dtype_size(c.dtype);
  RF_CHECK(es > 0, what, ": unknown dtype");
  const bool reduces = c.kind == CollKind::Allreduce || c.kind == CollKind::ReduceScatter ||
                       c.kind == CollKind::AllreduceShm;
  if (reduces) check_reducible(c.dtype);
  size_t total = c.count;  // elements in the largest buffer the call touches
  if (c.kind == CollKind::Allgather || c.kind == CollKind::ReduceScatter) {
    RF_CHECK(c.count <= std::numeric_limits<size_t>::max() / es / static_cast<size_t>(size()), what, ": count ",
             c.count, " overflows");
    total = c.count * static_cast<size_t>(size());
  }
  if (c.kind == CollKind::Allgatherv) {
    RF_CHECK(c.counts.size() == static_cast<size_t>(size()), what, ": ", c.counts.size(),
             " counts given for ", size(), " ranks");
    total = 0;
    for (size_t n : c.counts) total += n;
    c.count = c.counts[static_cast<size_t>(rank())];
  }
  RF_CHECK(total <= std::numeric_limits<size_t>::max() / es, what, ": count ", total, " overflows");
  if (c.kind == CollKind::Broadcast)
    RF_CHECK(c.root >= 0 && c.root < size(), what, ": root ", c.root, " is not a rank of ", size());
  if (total > 0 && c.kind != CollKind::AllreduceShm) {
    RF_CHECK(c.recv != nullptr, what, ": null buffer for ", total, " elements");
    RF_CHECK(c.send != nullptr || c.kind == CollKind::Broadcast, what, ": null input for ", total, " elements");
  }
  return submit(std::move(c), blocking);
}

#define RF_COLL(...) [&] { Collective c; __VA_ARGS__; return c; }()

Work Communicator::allreduce_async(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) {
  return call(RF_COLL(c.kind = CollKind::Allreduce, c.send = send, c.recv = recv, c.count = count,
                      c.dtype = dtype, c.op = op), false);
}
void Communicator::allreduce(const void* send, void* recv, size_t count, DType dtype, ReduceOp op) {
  call(RF_COLL(c.kind = CollKind::Allreduce, c.send = send, c.recv = recv, c.count = count, c.dtype = dtype,
               c.op = op), true);
}
Work Communicator::broadcast_async(void* buf, size_t count, DType dtype, int root) {
  return call(RF_COLL(c.kind = CollKind::Broadcast, c.send = buf, c.recv = buf, c.count = count, c.dtype = dtype,
                      c.root = root), false);
}
void Communicator::broadcast(void* buf, size_t count, DType dtype, int root) {
  call(RF_COLL(c.kind = CollKind::Broadcast, c.send = buf, c.recv = buf, c.count = count, c.dtype = dtype,
               c.root = root), true);
}
Work Communicator::allgather_async(const void* send, void* recv, size_t count, DType dtype) {
  return call(RF_COLL(c.kind = CollKind::Allgather, c.send = send, c.recv = recv, c.count = count,
                      c.dtype = dtype), false);
}
void Communicator::allgather(const void* send, void* recv, size_t count, DType dtype) {
  call(RF_COLL(c.kind = CollKind::Allgather, c.send = send, c.recv = recv, c.count = count, c.dtype = dtype), true);
}
Work Communicator::allgatherv_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) {
  return call(RF_COLL(c.kind = CollKind::Allgatherv, c.send = send, c.recv = recv, c.counts = counts,
                      c.dtype = dtype), false);
}
void Communicator::allgatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) {
  call(RF_COLL(c.kind = CollKind::Allgatherv, c.send = send, c.recv = recv, c.counts = counts, c.dtype = dtype),
       true);
}
Work Communicator::reduce_scatter_async(const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp op) {
  return call(RF_COLL(c.kind = CollKind::ReduceScatter, c.send = send, c.recv = recv, c.count = recv_count,
                      c.dtype = dtype, c.op = op), false);
}
void Communicator::reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp op) {
  call(RF_COLL(c.kind = CollKind::ReduceScatter, c.send = send, c.recv = recv, c.count = recv_count,
               c.dtype = dtype, c.op = op), true);
}
Work Communicator::barrier_async() { return call(RF_COLL(c.kind = CollKind::Barrier), false); }
void Communicator::barrier() { call(RF_COLL(c.kind = CollKind::Barrier), true); }

void* Communicator::shm_buffer(size_t bytes) { return shm_buffer_impl(bytes); }
Work Communicator::allreduce_shm_async(size_t count, DType dtype, ReduceOp op, size_t offset) {
  return call(RF_COLL(c.kind = CollKind::AllreduceShm, c.count = count, c.dtype = dtype, c.op = op,
                      c.offset = offset), false);
}
void Communicator::allreduce_shm(size_t count, DType dtype, ReduceOp op, size_t offset) {
  call(RF_COLL(c.kind = CollKind::AllreduceShm, c.count = count, c.dtype = dtype, c.op = op, c.offset = offset),
       true);
}

#undef RF_COLL

#if !RINGFLOW_MPI
namespace {
// Built without MPI: world size 1, every collective a local copy (HostCommunicator does them).
class LocalCommunicator final : public HostCommunicator {
 public:
  LocalCommunicator(const CommOptions& o, std::string name) : HostCommunicator(o), name_(std::move(name)) {}
  ~LocalCommunicator() override { shutdown(); }
  std::string name() const override { return name_ + "(local)"; }

 protected:
  void execute(Task&) override { fail("no MPI: only world size 1 exists"); }

 private:
  std::string name_;
};
}  // namespace
std::unique_ptr<Communicator> make_ring_communicator(const CommOptions& o) {
  return std::make_unique<LocalCommunicator>(o, "ring");
}
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& o) {
  return std::make_unique<LocalCommunicator>(o, "mpi");
}
#endif

std::unique_ptr<Communicator> make_communicator(const std::string& backend, const CommOptions& opts) {
  const CommOptions o = options_from_env(opts);
  RF_CHECK(o.timeout_seconds > 0, "collective timeout must be positive, got ", o.timeout_seconds, " s");
  if (backend == "ring" || backend == "auto") return make_ring_communicator(o);
  if (backend == "mpi") return make_mpi_communicator(o);
  // Device buffers, a stream of its own; throws when the build or the machine has no CUDA/NCCL.
  if (backend == "nccl") return make_nccl_communicator(o);
  fail("unknown collective backend '", backend, "' (expected ring, mpi, nccl or auto)");
}

}  // namespace rf::collective
