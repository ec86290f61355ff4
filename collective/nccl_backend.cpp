// `nccl`: the collectives by NCCL on DEVICE buffers. One NCCL communicator over all ranks,
// bootstrapped by rank 0's ncclUniqueId broadcast over MPI (at world size 1 no MPI is needed),
// on cuda:(local_rank % device count). Collectives run on a communication stream of the
// communicator's own, ordered after the work already queued on the device's compute stream
// (an event, no host wait). Without NCCL in the build, make_nccl_communicator says why.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collective/backends.h"
#include "collective/mismatch.h"
#include "collective/watchdog.h"
#include "runtime/device.h"
#include "runtime/error.h"

#if RINGFLOW_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "collective/mpi_check.h"
#include "collective/mpi_env.h"
#include "runtime/cuda_backend.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 10, 0)
#error "the nccl backend needs NCCL 2.10 or newer (ncclAvg, ncclBfloat16)"
#endif

// NCCL_CHECK(expr): throws rf::Error with the expression, file:line and NCCL's message (the
// project's one-macro-per-library convention; only this file calls NCCL).
#define NCCL_CHECK(expr) RF_LIB_CHECK_GEN("NCCL", expr, ncclSuccess, ncclGetErrorString)
#endif

namespace rf::collective {

#if !RINGFLOW_NCCL

std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions&) {
#if RINGFLOW_CUDA
  fail("collective backend 'nccl' is not built into this ringflow: NCCL was not found when it was configured "
       "(set NCCL_INCLUDE_DIR and NCCL_LIBRARY); use ring or mpi");
#else
  fail("collective backend 'nccl' needs CUDA, but this build has no CUDA/NCCL; use ring or mpi");
#endif
}

#else

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;  // broadcast / allgather only (reductions reject it earlier)
  }
  fail("nccl: unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    case ReduceOp::Min: return ncclMin;
    case ReduceOp::Max: return ncclMax;
  }
  fail("nccl: unknown reduce op");
}

// The op to hand NCCL. On one rank the average is the sum (x / 1 == x, exactly), and NCCL before
// 2.29.7 loses the tail of an out-of-place one-rank ncclAvg (NVIDIA/nccl#1950: its oneRankReduce
// kernel splits the count over the blocks with floor division; seen here on an H200 with 2.28.9,
// count 2^20 + 3: the last 3 elements unwritten). ncclSum on one rank is a plain copy.
ncclRedOp_t nccl_op(ReduceOp op, int world_size) {
  return op == ReduceOp::Avg && world_size == 1 ? ncclSum : nccl_op(op);
}

using cuda::DeviceGuard;

// Completion of one collective: an event recorded on the communication stream after it. It
// holds no reference to the communicator, so a Work may outlive it.
struct NcclWork final : detail::WorkState {
  NcclWork(Event e, Stream compute) : done(std::move(e)), compute(compute) {}
  void wait() override {
    wait_device();  // later compute-stream work (which may reuse the buffers) comes after
    done.synchronize();  // and Work::wait blocks the host until the collective is done
  }
  void wait_device() override { done.wait(compute); }
  bool test() override { return done.done(); }

  Event done;
  Stream compute;  // the device's compute stream
};

void warn(const char* what, const std::string& msg) {
  std::fprintf(stderr, "ringflow: warning: nccl: %s failed: %s\n", what, msg.c_str());
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(const CommOptions& opts);
  ~NcclCommunicator() override { release(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return "nccl"; }

 protected:
  Work submit(Collective c, bool blocking) override;
  void* shm_buffer_impl(size_t bytes) override;

 private:
  void init();
  void check_mismatch(const Collective& c, uint64_t seq);
  void enqueue(const Collective& c);
  void release() noexcept;  // destructor and failed constructor: log, never throw
  cudaStream_t stream() const { return static_cast<cudaStream_t>(comm_stream_.handle); }

  CommOptions opts_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  Device dev_;
  ncclComm_t comm_ = nullptr;
  Stream comm_stream_;  // ours, non-blocking
  Stream compute_;      // the device's compute stream
  Event ready_;         // recorded on compute_ at each submit; comm_stream_ waits on it
  void* barrier_buf_ = nullptr;  // one int32 the barrier allreduces
  void* shm_ = nullptr;          // shm_buffer: private device memory
  size_t shm_bytes_ = 0;
  std::mutex mu_;  // one NCCL call sequence at a time (NCCL communicators are not thread-safe)
  uint64_t seq_ = 0;  // collectives submitted
  bool check_ = false;  // RINGFLOW_CHECK_COLLECTIVES, where MPI allows it
  std::unique_ptr<Watchdog> watchdog_;  // RINGFLOW_COLLECTIVE_TIMEOUT and NCCL's async errors
};

NcclCommunicator::NcclCommunicator(const CommOptions& opts) : opts_(opts) {
  try {
    init();
  } catch (...) {
    release();
    throw;
  }
}

void NcclCommunicator::init() {
  const MpiEnv& env = mpi_env();  // MPI only under a launcher
  (void)env;
#if RINGFLOW_MPI
  if (env.active && env.world_size > 1) {
    rank_ = env.world_rank;
    size_ = env.world_size;
    MPI_Comm node = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
    MPI_CHECK(MPI_Comm_size(node, &local_size_));
    MPI_CHECK(MPI_Comm_free(&node));
  }
#endif
  // Every rank checks that it can take part, and all agree before anyone enters NCCL: a rank
  // throwing alone would leave the others waiting in the bootstrap.
  const int ndev = cuda_device_count();
  std::string problem;
  if (ndev == 0)
    problem = "the nccl collective backend needs a CUDA device, but none is usable (" + cuda_unavailable_reason() + ")";
  else if (local_size_ > ndev)
    problem = std::to_string(local_size_) + " ranks share this node but it has " + std::to_string(ndev) +
              " CUDA device(s); NCCL cannot put two ranks of one communicator on the same GPU";
#if RINGFLOW_MPI
  if (size_ > 1) {
    int bad = problem.empty() ? 0 : 1, any = 0;
    MPI_CHECK(MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    if (any && !bad) problem = "another rank cannot start NCCL (see its message)";
  }
#endif
  if (!problem.empty()) fail(problem);

  dev_ = Device::cuda(local_rank_ % ndev);
  DeviceGuard guard(dev_.index);
  // Rank 0's id (and whether it got one) to every rank.
  struct {
    int rc = ncclSuccess;
    ncclUniqueId id{};
  } boot;
  if (rank_ == 0) boot.rc = ncclGetUniqueId(&boot.id);
#if RINGFLOW_MPI
  if (size_ > 1) MPI_CHECK(MPI_Bcast(&boot, sizeof boot, MPI_BYTE, 0, MPI_COMM_WORLD));
#endif
  if (boot.rc != ncclSuccess)
    fail("NCCL error '", ncclGetErrorString(static_cast<ncclResult_t>(boot.rc)), "' in ncclGetUniqueId on rank 0");
  NCCL_CHECK(ncclCommInitRank(&comm_, size_, boot.id, rank_));

  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  comm_stream_ = {dev_, s};
  compute_ = compute_stream(dev_);
  ready_ = Event(dev_);
  barrier_buf_ = allocator_for(dev_).allocate(sizeof(int32_t));
  CUDA_CHECK(cudaMemsetAsync(barrier_buf_, 0, sizeof(int32_t), s));

  // A collective that never finishes (a rank missing, ranks calling different collectives) would
  // hang the step's final synchronisation: the host only queued a stream wait for it. The
  // watchdog polls every collective's completion event and NCCL's asynchronous error; past
  // RINGFLOW_COLLECTIVE_TIMEOUT, or on an NCCL error, it ends the job with one line, as the host
  // backends' timeout does.
  const int dev = dev_.index;
  watchdog_ = std::make_unique<Watchdog>(
      std::chrono::milliseconds(100),
      [this](const std::string& why, bool timed_out) {
        if (timed_out)
          std::fprintf(stderr,
                       "ringflow: error: rank %d: nccl: %s did not finish in %g s (RINGFLOW_COLLECTIVE_TIMEOUT): a "
                       "rank never called it, or the ranks called different collectives\n",
                       rank_, why.c_str(), opts_.timeout_seconds);
        else
          std::fprintf(stderr, "ringflow: error: rank %d: nccl: %s\n", rank_, why.c_str());
        abort_job_now(1);
      },
      [this, dev]() -> std::string {
        DeviceGuard guard(dev);
        ncclResult_t r = ncclSuccess;
        if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) return "";  // the query itself: no verdict
        return r == ncclSuccess || r == ncclInProgress ? "" : std::string("asynchronous error: ") + ncclGetErrorString(r);
      });
  // RINGFLOW_CHECK_COLLECTIVES: each collective's descriptor is compared over MPI before it is
  // enqueued (check_mismatch), which needs MPI_THREAD_MULTIPLE (the host communicator's thread
  // calls MPI too).
#if RINGFLOW_MPI
  check_ = opts_.check_mismatch && size_ > 1 && mpi_env().thread_level >= MPI_THREAD_MULTIPLE;
#endif
  if (opts_.check_mismatch && size_ > 1 && !check_ && rank_ == 0)
    std::fprintf(stderr, "ringflow: warning: the nccl backend checks collectives for mismatches only with "
                         "MPI_THREAD_MULTIPLE (RINGFLOW_CHECK_COLLECTIVES is ignored)\n");
}

void NcclCommunicator::release() noexcept {
  watchdog_.reset();  // before the events and the communicator it polls go
  if (comm_stream_.handle) {
    const cudaError_t e = cudaStreamSynchronize(stream());
    if (e != cudaSuccess) warn("cudaStreamSynchronize", cudaGetErrorString(e));
  }
  if (comm_) {
    const ncclResult_t r = ncclCommDestroy(comm_);
    if (r != ncclSuccess) warn("ncclCommDestroy", ncclGetErrorString(r));
    comm_ = nullptr;
  }
  try {
    if (shm_) allocator_for(dev_).deallocate(shm_, shm_bytes_);
    if (barrier_buf_) allocator_for(dev_).deallocate(barrier_buf_, sizeof(int32_t));
  } catch (const std::exception& e) {
    warn("freeing device buffers", e.what());
  }
  shm_ = barrier_buf_ = nullptr;
  shm_bytes_ = 0;
  if (comm_stream_.handle) {
    const cudaError_t e = cudaStreamDestroy(stream());
    if (e != cudaSuccess) warn("cudaStreamDestroy", cudaGetErrorString(e));
    comm_stream_.handle = nullptr;
  }
}

Work NcclCommunicator::submit(Collective c, bool blocking) {
  std::shared_ptr<NcclWork> w;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceGuard guard(dev_.index);
    const uint64_t seq = ++seq_;
    if (check_) check_mismatch(c, seq);
    // After the compute stream's work so far (which produced the inputs), without a host wait.
    ready_.record(compute_);
    ready_.wait(comm_stream_);
    enqueue(c);
    w = std::make_shared<NcclWork>(Event(dev_), compute_);
    w->done.record(comm_stream_);
    const int dev = dev_.index;
    size_t elements = c.count;
    for (size_t n : c.counts) elements += n;  // allgatherv
    watchdog_->watch(std::string(coll_kind_name(c.kind)) + " #" + std::to_string(seq) + " (" +
                         std::to_string(elements * dtype_size(c.dtype)) + " B)",
                     [w, dev] {
                       DeviceGuard guard(dev);
                       return w->test();
                     },
                     opts_.deadline());
  }
  if (!blocking) return Work(std::move(w));
  w->wait();
  return Work();
}

// Every rank's descriptor of collective `seq`, compared before NCCL sees it: a mismatch throws
// the same one-line report on every rank (collective/mismatch.h); a rank that never arrives ends
// the job after RINGFLOW_COLLECTIVE_TIMEOUT.
void NcclCommunicator::check_mismatch(const Collective& c, uint64_t seq) {
#if RINGFLOW_MPI
  const CollDesc mine = describe(c, seq);
  std::vector<CollDesc> all(static_cast<size_t>(size_));
  MPI_Request req;
  MPI_CHECK(MPI_Iallgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, MPI_COMM_WORLD, &req));
  const auto deadline = opts_.deadline();
  for (int done = 0;;) {
    MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) break;
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "ringflow: error: rank %d: nccl: %s #%llu was not called by every rank within %g s "
                           "(RINGFLOW_COLLECTIVE_TIMEOUT)\n",
                   rank_, coll_kind_name(c.kind), static_cast<unsigned long long>(seq), opts_.timeout_seconds);
      abort_job_now(1);
    }
    std::this_thread::yield();
  }
  const std::string report = mismatch_report(all, seq);
  if (!report.empty()) fail(report);
#else
  (void)c;
  (void)seq;
#endif
}

void NcclCommunicator::enqueue(const Collective& c) {
  const ncclDataType_t t = nccl_type(c.dtype);
  const size_t es = dtype_size(c.dtype);
  cudaStream_t s = stream();
  // Zero elements: nothing to move (every rank skips alike, the counts being the same).
  switch (c.kind) {
    case CollKind::Allreduce:
      if (c.count) NCCL_CHECK(ncclAllReduce(c.send, c.recv, c.count, t, nccl_op(c.op, size_), comm_, s));
      return;
    case CollKind::AllreduceShm:
      RF_CHECK((c.offset + c.count) * es <= shm_bytes_, "allreduce_shm of ", c.count * es, " bytes at offset ",
               c.offset * es, ", but shm_buffer holds ", shm_bytes_);
      if (c.count) {
        char* region = static_cast<char*>(shm_) + c.offset * es;
        NCCL_CHECK(ncclAllReduce(region, region, c.count, t, nccl_op(c.op, size_), comm_, s));
      }
      return;
    case CollKind::Broadcast:
      if (c.count) NCCL_CHECK(ncclBroadcast(c.send, c.recv, c.count, t, c.root, comm_, s));
      return;
    case CollKind::Allgather:
      if (c.count) NCCL_CHECK(ncclAllGather(c.send, c.recv, c.count, t, comm_, s));
      return;
    case CollKind::Allgatherv: {
      // One broadcast per rank into its place, grouped (as PyTorch does); in place, the own
      // piece's broadcast has sendbuff == recvbuff and moves nothing locally.
      size_t total = 0;
      for (size_t n : c.counts) total += n;
      if (!total) return;
      NCCL_CHECK(ncclGroupStart());
      ncclResult_t rc = ncclSuccess;
      size_t off = 0;
      for (int r = 0; r < size_; ++r) {
        const size_t n = c.counts[static_cast<size_t>(r)];
        if (n && rc == ncclSuccess)
          rc = ncclBroadcast(c.send, static_cast<std::byte*>(c.recv) + off * es, n, t, r, comm_, s);
        off += n;
      }
      const ncclResult_t end = ncclGroupEnd();  // always closes the group
      NCCL_CHECK(rc);
      NCCL_CHECK(end);
      return;
    }
    case CollKind::ReduceScatter:
      if (c.count) NCCL_CHECK(ncclReduceScatter(c.send, c.recv, c.count, t, nccl_op(c.op, size_), comm_, s));
      return;
    case CollKind::Barrier:
      // Every rank's allreduce must have started before any finishes; blocking waits then sync.
      NCCL_CHECK(ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclInt32, ncclSum, comm_, s));
      return;
    case CollKind::ShmAlloc: break;
  }
  fail("nccl: ", coll_kind_name(c.kind), " is not a collective this backend runs");
}

void* NcclCommunicator::shm_buffer_impl(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes <= shm_bytes_ && shm_) return shm_;
  // Growing: collectives in flight may still use the old buffer; the new one starts undefined.
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  Allocator& a = allocator_for(dev_);
  if (shm_) a.deallocate(shm_, shm_bytes_);
  shm_ = nullptr;
  shm_bytes_ = 0;
  shm_ = a.allocate(std::max<size_t>(bytes, 1));
  shm_bytes_ = std::max<size_t>(bytes, 1);
  return shm_;
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& opts) {
  return std::make_unique<NcclCommunicator>(opts);
}

#endif  // RINGFLOW_NCCL

}  // namespace rf::collective
