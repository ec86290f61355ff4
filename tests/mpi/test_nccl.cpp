// The nccl backend (ctest nccl_np1: a plain run, world size 1, since NCCL cannot put two ranks
// of one communicator on the same GPU): every collective x dtype on DEVICE buffers, with
// rank-dependent inputs and exact expected values (the same scheme as test_collectives.cpp, so
// it also holds under mpiexec with one GPU per rank), counts 0, 1, primes and 2^20+3, in place
// and out of place, async handles, ordering after the compute stream, shm_buffer. Every test
// skips without a CUDA device; then one test checks that make_communicator("nccl") refuses
// with a message naming CUDA, and the program exits 77 (ctest: skipped).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collective/communicator.h"
#include "collective/mpi_env.h"
#include "kernels/half.h"
#include "runtime/cuda_backend.h"
#include "runtime/device.h"
#include "runtime/error.h"
#include "tests/mpi/collective_test_util.h"
#if RINGFLOW_MPI
#include <mpi.h>
#endif

namespace rf::collective {
namespace {

// The communicator under test, made on first use (after the skip check) and destroyed in main().
std::unique_ptr<Communicator>& holder() {
  static std::unique_ptr<Communicator> c;
  return c;
}
Communicator& comm() {
  if (!holder()) {
    CommOptions o;
    o.timeout_seconds = 60;
    holder() = make_communicator("nccl", o);
  }
  return *holder();
}
Device device() { return Device::cuda(comm().local_rank() % cuda_device_count()); }

using namespace test_util;

// ncclAvg on floats multiplies each input by 1/n before summing: exact at world size 1, a
// rounding or two off otherwise.
double tolerance(ReduceOp op, DType t, int n) {
  if (op != ReduceOp::Avg || n == 1 || t == DType::I32 || t == DType::I64) return 0;
  return t == DType::F16 || t == DType::BF16 ? 0.05 : 1e-5;
}

// A device buffer (from the caching allocator) with a host mirror: fill the mirror, push();
// pull() fetches the device contents into the mirror. Starts as 0x7f bytes.
struct DevBuf {
  DType t;
  Device dev;
  std::vector<std::byte> host;
  void* d = nullptr;
  DevBuf(size_t n, DType dt) : t(dt), dev(device()), host(std::max<size_t>(n, 1) * dtype_size(dt), std::byte{0x7f}) {
    d = allocator_for(dev).allocate(host.size());
    push();
  }
  ~DevBuf() { allocator_for(dev).deallocate(d, host.size()); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void* dat(size_t i = 0) { return static_cast<std::byte*>(d) + i * dtype_size(t); }  // device
  void* h(size_t i = 0) { return host.data() + i * dtype_size(t); }                  // host mirror
  void push() { copy_bytes(d, dev, host.data(), Device::cpu(), host.size()); }
  void* pull() {
    copy_bytes(host.data(), Device::cpu(), d, dev, host.size());
    return host.data();
  }
};

// Counts the elements of host b[0, n) that differ from want(i) by more than tol; reports the first.
template <class F>
size_t check(const void* b, DType t, size_t n, F want, const std::string& what, double tol = 0) {
  size_t wrong = 0;
  typed(const_cast<void*>(b), t, [&](auto* p, auto from, auto) {
    for (size_t i = 0; i < n; ++i) {
      const double got = from(p[i]), w = want(i);
      if (!(std::fabs(got - w) <= tol * std::max(1.0, std::fabs(w))) && wrong++ == 0)
        ADD_FAILURE() << what << ": element " << i << " is " << got << ", want " << w;
    }
  });
  return wrong;
}

std::string tag(const char* what, DType t, size_t count, bool in_place, const std::string& extra = "") {
  return std::string(what) + "(" + dtype_name(t) + ", count " + std::to_string(count) +
         (in_place ? ", in place" : ", out of place") + extra + ")";
}

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {  // every test of the fixture starts here
    if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
    c = &comm();
    n = c->size();
    r = c->rank();
  }
  Communicator* c = nullptr;
  int n = 1, r = 0;
};

TEST(NcclNoDevice, RefusesNamingCuda) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  try {
    make_communicator("nccl");
    ADD_FAILURE() << "make_communicator(\"nccl\") without a CUDA device did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

TEST_F(Nccl, Basics) {
  EXPECT_EQ(c->name(), "nccl");
  EXPECT_GE(r, 0);
  EXPECT_LT(r, n);
  if (!started_by_mpi_launcher()) {
    EXPECT_EQ(n, 1);
  }
}

TEST_F(Nccl, Allreduce) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (ReduceOp op : kOps)
        for (bool in_place : {false, true}) {
          DevBuf in(count, t), out(count, t);
          fill(in.h(), t, count, [&](size_t i) { return value(r, n, i); });
          in.push();
          DevBuf& dst = in_place ? in : out;
          try {
            c->allreduce(in.dat(), dst.dat(), count, t, op);
          } catch (const Error& e) {
            ADD_FAILURE() << e.what();
          }
          check(dst.pull(), t, count, [&](size_t i) { return expected(op, n, i); },
                tag("allreduce", t, count, in_place, std::string(", ") + reduce_op_name(op)), tolerance(op, t, n));
          if (!in_place)  // the input is left alone
            check(in.pull(), t, count, [&](size_t i) { return value(r, n, i); }, "allreduce input");
        }
}

TEST_F(Nccl, Broadcast) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (int root : {0, n - 1}) {
        DevBuf b(count, t);
        fill(b.h(), t, count, [&](size_t i) { return r == root ? value(root, n, i) : -99; });
        b.push();
        try {
          c->broadcast(b.dat(), count, t, root);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(b.pull(), t, count, [&](size_t i) { return value(root, n, i); },
              tag("broadcast", t, count, true, ", root " + std::to_string(root)));
      }
}

TEST_F(Nccl, Allgather) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (bool in_place : {false, true}) {
        DevBuf in(count, t), out(count * n, t);
        const size_t mine = static_cast<size_t>(r) * count;
        if (in_place) {
          fill(out.h(mine), t, count, [&](size_t i) { return value(r, n, i); });
          out.push();
        } else {
          fill(in.h(), t, count, [&](size_t i) { return value(r, n, i); });
          in.push();
        }
        try {
          c->allgather(in_place ? out.dat(mine) : in.dat(), out.dat(), count, t);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(out.pull(), t, count * n, [&](size_t j) { return value(static_cast<int>(j / count), n, j % count); },
              tag("allgather", t, count, in_place));
      }
}

TEST_F(Nccl, Allgatherv) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (bool in_place : {false, true}) {
        // Uneven pieces, rank 1's empty: count + q, 0.
        std::vector<size_t> counts(static_cast<size_t>(n)), displ(static_cast<size_t>(n) + 1, 0);
        for (int q = 0; q < n; ++q) {
          counts[q] = q == 1 ? 0 : count + static_cast<size_t>(q);
          displ[q + 1] = displ[q] + counts[q];
        }
        DevBuf in(counts[r], t), out(displ[n], t);
        if (in_place) {
          fill(out.h(displ[r]), t, counts[r], [&](size_t i) { return value(r, n, i); });
          out.push();
        } else {
          fill(in.h(), t, counts[r], [&](size_t i) { return value(r, n, i); });
          in.push();
        }
        try {
          c->allgatherv(in_place ? out.dat(displ[r]) : in.dat(), out.dat(), counts, t);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(out.pull(), t, displ[n], [&](size_t j) {
          const int q = static_cast<int>(std::upper_bound(displ.begin(), displ.end(), j) - displ.begin()) - 1;
          return value(q, n, j - displ[q]);
        }, tag("allgatherv", t, count, in_place));
      }
}

TEST_F(Nccl, ReduceScatter) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (ReduceOp op : kOps)
        for (bool in_place : {false, true}) {
          DevBuf in(count * n, t), out(count, t);
          fill(in.h(), t, count * n, [&](size_t j) { return value(r, n, j); });
          in.push();
          const size_t mine = static_cast<size_t>(r) * count;
          try {
            c->reduce_scatter(in.dat(), in_place ? in.dat(mine) : out.dat(), count, t, op);
          } catch (const Error& e) {
            ADD_FAILURE() << e.what();
          }
          const void* got = in_place ? in.h(mine) : out.h();
          if (in_place) in.pull();
          else out.pull();
          check(got, t, count, [&](size_t i) { return expected(op, n, mine + i); },
                tag("reduce_scatter", t, count, in_place, std::string(", ") + reduce_op_name(op)),
                tolerance(op, t, n));
        }
}

TEST_F(Nccl, Barrier) {
  for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(c->barrier());
  Work w = c->barrier_async();
  EXPECT_NO_THROW(w.wait());
  EXPECT_TRUE(w.test());
}

// Several collectives in flight, waited out of order; test() until done; a blocking barrier
// behind an async allreduce (one stream: it finishes first).
TEST_F(Nccl, AsyncHandles) {
  const size_t count = 100003;
  const DType t = DType::F32;
  DevBuf a(count, t), b(count, t), g(count * n, t), bc(count, t), d(7, t);
  fill(a.h(), t, count, [&](size_t i) { return value(r, n, i); });
  fill(b.h(), t, count, [&](size_t i) { return value(r, n, i + 1); });
  fill(bc.h(), t, count, [&](size_t i) { return r == 0 ? value(0, n, i) : 0; });
  fill(d.h(), t, 7, [&](size_t i) { return value(r, n, i); });
  for (DevBuf* x : {&a, &b, &bc, &d}) x->push();
  Work wa = c->allreduce_async(a.dat(), a.dat(), count, t, ReduceOp::Sum);
  Work wb = c->allreduce_async(b.dat(), b.dat(), count, t, ReduceOp::Max);
  Work wg = c->allgather_async(b.dat(), g.dat(), count, t);  // same stream, after wb: gathers the max
  Work wc = c->broadcast_async(bc.dat(), count, t, 0);
  Work wbar = c->barrier_async();
  EXPECT_NO_THROW(wc.wait());
  const auto t0 = std::chrono::steady_clock::now();
  while (!wg.test()) {
    ASSERT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60)) << "test() never became true";
    std::this_thread::yield();
  }
  EXPECT_NO_THROW(wg.wait());
  EXPECT_NO_THROW(wbar.wait());
  EXPECT_NO_THROW(wa.wait());
  EXPECT_NO_THROW(wb.wait());
  check(a.pull(), t, count, [&](size_t i) { return expected(ReduceOp::Sum, n, i); }, "async allreduce sum");
  check(b.pull(), t, count, [&](size_t i) { return expected(ReduceOp::Max, n, i + 1); }, "async allreduce max");
  check(g.pull(), t, count * n, [&](size_t j) { return expected(ReduceOp::Max, n, j % count + 1); }, "async allgather");
  check(bc.pull(), t, count, [&](size_t i) { return value(0, n, i); }, "async broadcast");
  Work wd = c->allreduce_async(d.dat(), d.dat(), 7, t, ReduceOp::Min);
  c->barrier();
  EXPECT_TRUE(wd.test());
  check(d.pull(), t, 7, [&](size_t i) { return expected(ReduceOp::Min, n, i); }, "allreduce before barrier");
}

// The collective runs after the work queued on the compute stream before it (an event, no host
// wait): memsets still queued there must land before the allreduce reads its input. Out of place,
// because at world size 1 NCCL's in-place allreduce moves nothing.
TEST_F(Nccl, OrderedAfterComputeStream) {
  const size_t count = size_t(64) << 20;  // 256 MiB of f32
  const DType t = DType::F32;
  DevBuf a(count, t), b(count, t);
  for (int rep = 0; rep < 3; ++rep) {
    fill(a.h(), t, count, [&](size_t i) { return value(r, n, i); });
    a.push();
    for (int k = 0; k < 8; ++k) cuda::memset_zero(a.dat(), a.dev.index, count * sizeof(float));  // async
    Work w = c->allreduce_async(a.dat(), b.dat(), count, t, ReduceOp::Sum);
    EXPECT_NO_THROW(w.wait());
    EXPECT_EQ(check(b.pull(), t, count, [](size_t) { return 0.0; }, "allreduce after queued memsets"), 0u);
  }
}

// Work::wait_device queues the wait on the compute stream without blocking the host: a copy
// queued on the compute stream right after it (copy_bytes runs there) sees the finished result of
// a collective large enough to still be running when the host moves on.
TEST_F(Nccl, WaitDeviceOrdersTheComputeStream) {
  const size_t count = size_t(64) << 20;  // 256 MiB of f32
  const DType t = DType::F32;
  DevBuf a(count, t), b(count, t);
  fill(a.h(), t, count, [&](size_t i) { return value(r, n, i); });
  a.push();
  for (int rep = 0; rep < 3; ++rep) {
    cuda::memset_zero(b.dat(), b.dev.index, count * sizeof(float));
    Work w = c->allreduce_async(a.dat(), b.dat(), count, t, ReduceOp::Sum);
    w.wait_device();
    EXPECT_EQ(check(b.pull(), t, count, [&](size_t i) { return expected(ReduceOp::Sum, n, i); },
                    "allreduce read on the compute stream after wait_device"),
              0u);
    EXPECT_TRUE(w.test());  // the pull synchronised the compute stream, which waited for the event
  }
}

// shm_buffer is private device memory here: written, reduced in place, grown.
TEST_F(Nccl, ShmBuffer) {
  const Device dev = device();
  for (size_t count : {size_t(13), size_t(1) << 18, (size_t(1) << 20) + 3}) {
    void* p = c->shm_buffer(count * sizeof(float));
    ASSERT_NE(p, nullptr);
    std::vector<float> h(count);
    for (ReduceOp op : kOps) {
      for (size_t i = 0; i < count; ++i) h[i] = static_cast<float>(value(r, n, i));
      copy_bytes(p, dev, h.data(), Device::cpu(), count * sizeof(float));
      EXPECT_NO_THROW(c->allreduce_shm(count, DType::F32, op));
      copy_bytes(h.data(), Device::cpu(), p, dev, count * sizeof(float));
      check(h.data(), DType::F32, count, [&](size_t i) { return expected(op, n, i); },
            "allreduce_shm count " + std::to_string(count) + " " + reduce_op_name(op), tolerance(op, DType::F32, n));
    }
  }
  EXPECT_THROW(c->allreduce_shm((size_t(1) << 24), DType::F32, ReduceOp::Sum), Error);  // more than the buffer
}

}  // namespace
}  // namespace rf::collective

int main(int argc, char** argv) {
  using namespace rf::collective;
  ::testing::InitGoogleTest(&argc, argv);
  const MpiEnv& env = mpi_env();  // MPI only under a launcher; finalised at exit
  int failed = RUN_ALL_TESTS() != 0;
  holder().reset();  // before MPI and the CUDA runtime go away
#if RINGFLOW_MPI
  if (env.active) {
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    failed = any;
  }
#else
  (void)env;
#endif
  if (!failed && rf::cuda_device_count() == 0) {
    std::printf("nccl tests skipped: no CUDA device (%s)\n", rf::cuda_unavailable_reason().c_str());
    return 77;  // ctest: SKIP_RETURN_CODE
  }
  return failed;
}
