// Collectives under mpiexec (world sizes 1-4): every collective x backend (ring over p2p, ring
// over shared memory, ring hierarchical, mpi) x dtype, rank-dependent inputs with exact
// expected values, counts 0, 1, size-1, primes and 2^20+3, in place and out of place, async
// handles, and the mismatch check. Only EXPECTs: every rank must go on calling the same
// collectives whatever fails, and main() fails the run on every rank if any rank failed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "collective/communicator.h"
#include "collective/mpi_env.h"
#include "tests/mpi/collective_test_util.h"
#include "tests/mpi/mpi_main.h"
#include "kernels/half.h"
#include "runtime/error.h"

namespace rf::collective {
namespace {

// The communicators under test, made in main() (collectively, on every rank alike).
struct Backend {
  std::string label;
  std::unique_ptr<Communicator> comm;
};
std::vector<Backend>& backends() {
  static std::vector<Backend> b;
  return b;
}
const char* const kLabels[] = {"ring_p2p", "ring_shm", "ring_hier", "mpi"};

using namespace test_util;

double get(const void* b, DType t, size_t i) {
  double out = 0;
  typed(const_cast<void*>(b), t, [&](auto* p, auto from, auto) { out = from(p[i]); });
  return out;
}

struct Buf {
  std::vector<std::byte> bytes;
  DType t;
  Buf(size_t n, DType dt) : bytes(std::max<size_t>(n, 1) * dtype_size(dt), std::byte{0x7f}), t(dt) {}
  void* data() { return bytes.data(); }
  void* at(size_t i) { return bytes.data() + i * dtype_size(t); }
};

// Counts the elements of b[0, n) that differ from want(i); reports the first one.
template <class F>
size_t check(const void* b, DType t, size_t n, F want, const std::string& what) {
  size_t wrong = 0;
  typed(const_cast<void*>(b), t, [&](auto* p, auto from, auto) {
    for (size_t i = 0; i < n; ++i) {
      const double got = from(p[i]), w = want(i);
      if (got != w && wrong++ == 0) ADD_FAILURE() << what << ": element " << i << " is " << got << ", want " << w;
    }
  });
  return wrong;
}

std::string tag(const char* what, DType t, size_t count, bool in_place, const char* extra = "") {
  return std::string(what) + "(" + dtype_name(t) + ", count " + std::to_string(count) +
         (in_place ? ", in place" : ", out of place") + extra + ")";
}

class Collectives : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (static_cast<size_t>(GetParam()) >= backends().size() || !backends()[GetParam()].comm)
      GTEST_SKIP() << kLabels[GetParam()] << " not built for this world size";
    c = backends()[GetParam()].comm.get();
    n = c->size();
    r = c->rank();
  }
  Communicator* c = nullptr;
  int n = 1, r = 0;
};

TEST_P(Collectives, Allreduce) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (ReduceOp op : kOps)
        for (bool in_place : {false, true}) {
          Buf in(count, t), out(count, t);
          fill(in.data(), t, count, [&](size_t i) { return value(r, n, i); });
          void* dst = in_place ? in.data() : out.data();
          try {
            c->allreduce(in.data(), dst, count, t, op);
          } catch (const Error& e) {
            ADD_FAILURE() << e.what();
          }
          check(dst, t, count, [&](size_t i) { return expected(op, n, i); },
                tag("allreduce", t, count, in_place, (std::string(", ") + reduce_op_name(op)).c_str()));
          if (!in_place)  // the input is left alone
            check(in.data(), t, count, [&](size_t i) { return value(r, n, i); }, "allreduce input");
        }
}

TEST_P(Collectives, Broadcast) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (int root : {0, n - 1}) {
        Buf b(count, t);
        fill(b.data(), t, count, [&](size_t i) { return r == root ? value(root, n, i) : -99; });
        try {
          c->broadcast(b.data(), count, t, root);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(b.data(), t, count, [&](size_t i) { return value(root, n, i); },
              tag("broadcast", t, count, true, (", root " + std::to_string(root)).c_str()));
      }
}

TEST_P(Collectives, Allgather) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (bool in_place : {false, true}) {
        Buf in(count, t), out(count * n, t);
        void* src = in_place ? out.at(static_cast<size_t>(r) * count) : in.data();
        fill(src, t, count, [&](size_t i) { return value(r, n, i); });
        try {
          c->allgather(src, out.data(), count, t);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(out.data(), t, count * n, [&](size_t j) { return value(static_cast<int>(j / count), n, j % count); },
              tag("allgather", t, count, in_place));
      }
}

TEST_P(Collectives, Allgatherv) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (bool in_place : {false, true}) {
        // Uneven pieces, rank 1's empty: count + r, 0.
        std::vector<size_t> counts(static_cast<size_t>(n)), displ(static_cast<size_t>(n) + 1, 0);
        for (int q = 0; q < n; ++q) {
          counts[q] = q == 1 ? 0 : count + static_cast<size_t>(q);
          displ[q + 1] = displ[q] + counts[q];
        }
        Buf in(counts[r], t), out(displ[n], t);
        void* src = in_place ? out.at(displ[r]) : in.data();
        fill(src, t, counts[r], [&](size_t i) { return value(r, n, i); });
        try {
          c->allgatherv(src, out.data(), counts, t);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
        check(out.data(), t, displ[n], [&](size_t j) {
          const int q = static_cast<int>(std::upper_bound(displ.begin(), displ.end(), j) - displ.begin()) - 1;
          return value(q, n, j - displ[q]);
        }, tag("allgatherv", t, count, in_place));
      }
}

TEST_P(Collectives, ReduceScatter) {
  for (DType t : kDTypes)
    for (size_t count : test_counts(n))
      for (ReduceOp op : kOps)
        for (bool in_place : {false, true}) {
          if (count > 100000 && (op == ReduceOp::Min || t == DType::F64)) continue;  // keep the run short
          Buf in(count * n, t), out(count, t);
          fill(in.data(), t, count * n, [&](size_t j) { return value(r, n, j); });
          void* dst = in_place ? in.at(static_cast<size_t>(r) * count) : out.data();
          try {
            c->reduce_scatter(in.data(), dst, count, t, op);
          } catch (const Error& e) {
            ADD_FAILURE() << e.what();
          }
          check(dst, t, count, [&](size_t i) { return expected(op, n, static_cast<size_t>(r) * count + i); },
                tag("reduce_scatter", t, count, in_place, (std::string(", ") + reduce_op_name(op)).c_str()));
        }
}

TEST_P(Collectives, Barrier) {
  for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(c->barrier());
}

// Several collectives in flight at once, waited out of order; test() until done; then a
// blocking call, which must queue behind nothing left.
TEST_P(Collectives, AsyncHandles) {
  const size_t count = 100003;
  const DType t = DType::F32;
  Buf a(count, t), b(count, t), g(count * n, t), bc(count, t);
  fill(a.data(), t, count, [&](size_t i) { return value(r, n, i); });
  fill(b.data(), t, count, [&](size_t i) { return value(r, n, i + 1); });
  fill(bc.data(), t, count, [&](size_t i) { return r == 0 ? value(0, n, i) : 0; });
  Work wa = c->allreduce_async(a.data(), a.data(), count, t, ReduceOp::Sum);
  Work wb = c->allreduce_async(b.data(), b.data(), count, t, ReduceOp::Max);
  Work wg = c->allgather_async(b.data(), g.data(), count, t);  // runs after wb (FIFO): gathers the max
  Work wc = c->broadcast_async(bc.data(), count, t, 0);
  Work wbar = c->barrier_async();
  EXPECT_NO_THROW(wc.wait());
  while (!wg.test()) std::this_thread::yield();
  EXPECT_NO_THROW(wg.wait());
  EXPECT_NO_THROW(wbar.wait());
  EXPECT_NO_THROW(wa.wait());
  EXPECT_NO_THROW(wb.wait());
  check(a.data(), t, count, [&](size_t i) { return expected(ReduceOp::Sum, n, i); }, "async allreduce sum");
  check(b.data(), t, count, [&](size_t i) { return expected(ReduceOp::Max, n, i + 1); }, "async allreduce max");
  // The allgather ran after the max-allreduce (FIFO), so it gathered the reduced b.
  check(g.data(), t, count * n, [&](size_t j) { return expected(ReduceOp::Max, n, j % count + 1); }, "async allgather");
  check(bc.data(), t, count, [&](size_t i) { return value(0, n, i); }, "async broadcast");
  Buf d(7, t);
  fill(d.data(), t, 7, [&](size_t i) { return value(r, n, i); });
  Work wd = c->allreduce_async(d.data(), d.data(), 7, t, ReduceOp::Min);
  c->barrier();  // blocking behind an async one
  EXPECT_TRUE(wd.test());
  check(d.data(), t, 7, [&](size_t i) { return expected(ReduceOp::Min, n, i); }, "allreduce before barrier");
}

// Fusion buffers in the shared window: written in place, reduced in place, grown.
TEST_P(Collectives, ShmBuffer) {
  for (size_t count : {size_t(13), size_t(1) << 18, (size_t(1) << 20) + 3}) {
    auto* p = static_cast<float*>(c->shm_buffer(count * sizeof(float)));
    ASSERT_NE(p, nullptr);
    for (ReduceOp op : kOps) {
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<float>(value(r, n, i));
      EXPECT_NO_THROW(c->allreduce_shm(count, DType::F32, op));
      check(p, DType::F32, count, [&](size_t i) { return expected(op, n, i); },
            "allreduce_shm count " + std::to_string(count) + " " + reduce_op_name(op));
    }
  }
}

// Several regions of the shared window (one per gradient bucket) reduced at offsets, all in
// flight at once; the bytes between regions stay untouched.
TEST_P(Collectives, ShmBufferRegionsAtOffsets) {
  const size_t sizes[] = {7, 1000, 65537, 3};
  size_t total = 0;
  for (size_t k : sizes) total += k + 5;  // 5 untouched elements after each region
  auto* p = static_cast<float*>(c->shm_buffer(total * sizeof(float)));
  size_t off = 0;
  std::vector<size_t> offsets;
  for (size_t k : sizes) {
    for (size_t i = 0; i < k; ++i) p[off + i] = static_cast<float>(value(r, n, i));
    for (size_t i = k; i < k + 5; ++i) p[off + i] = -7.0f;
    offsets.push_back(off);
    off += k + 5;
  }
  std::vector<Work> work;
  for (size_t b = 0; b < 4; ++b) work.push_back(c->allreduce_shm_async(sizes[b], DType::F32, ReduceOp::Sum, offsets[b]));
  for (size_t b = 4; b-- > 0;) work[b].wait();
  for (size_t b = 0; b < 4; ++b) {
    check(p + offsets[b], DType::F32, sizes[b], [&](size_t i) { return expected(ReduceOp::Sum, n, i); },
          "allreduce_shm region " + std::to_string(b));
    check(p + offsets[b] + sizes[b], DType::F32, 5, [](size_t) { return -7.0; }, "gap after region " + std::to_string(b));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, Collectives, ::testing::Range(0, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return kLabels[info.param]; });

// One rank passes a different count: every rank gets an error naming it, nobody hangs, and
// the communicator still works afterwards.
TEST(MismatchCheck, NamesTheOddRank) {
  for (const char* backend : {"ring", "mpi"}) {
    CommOptions o;
    o.check_mismatch = true;
    auto c = make_communicator(backend, o);
    const int n = c->size(), r = c->rank();
    if (n == 1) GTEST_SKIP() << "needs two ranks";
    std::vector<float> x(8, 1.0f);
    const size_t count = r == n - 1 ? 5 : 4;
    std::string msg;
    try {
      c->allreduce(x.data(), x.data(), count, DType::F32, ReduceOp::Sum);
    } catch (const Error& e) {
      msg = e.what();
    }
    const std::string odd = "rank " + std::to_string(n - 1) + " called allreduce(count=5, f32, sum)";
    EXPECT_NE(msg.find(odd), std::string::npos) << backend << ": " << msg;
    EXPECT_NE(msg.find("called allreduce(count=4, f32, sum)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("collective #1 mismatch"), std::string::npos) << msg;
    // A different kind of collective on one rank is caught too.
    msg.clear();
    try {
      if (r == 0) c->broadcast(x.data(), 4, DType::F32, 0);
      else c->allreduce(x.data(), x.data(), 4, DType::F32, ReduceOp::Sum);
    } catch (const Error& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("rank 0 called broadcast(count=4, f32, root=0)"), std::string::npos) << msg;
    std::fill(x.begin(), x.end(), 1.0f);
    EXPECT_NO_THROW(c->allreduce(x.data(), x.data(), 8, DType::F32, ReduceOp::Sum));
    EXPECT_EQ(x[7], static_cast<float>(n));
  }
}

TEST(Options, FromEnvironment) {
  setenv("RINGFLOW_RING_TRANSPORT", "shm", 1);
  setenv("RINGFLOW_COLLECTIVE_TIMEOUT", "2.5", 1);
  setenv("RINGFLOW_CHUNK_BYTES", "128K", 1);
  const CommOptions o = options_from_env();
  EXPECT_EQ(o.transport, Transport::Shm);
  EXPECT_EQ(o.timeout_seconds, 2.5);
  EXPECT_EQ(o.chunk_bytes, size_t(128) << 10);
  setenv("RINGFLOW_RING_TRANSPORT", "carrier-pigeon", 1);
  EXPECT_THROW(options_from_env(), Error);
  unsetenv("RINGFLOW_RING_TRANSPORT");
  unsetenv("RINGFLOW_COLLECTIVE_TIMEOUT");
  unsetenv("RINGFLOW_CHUNK_BYTES");
  EXPECT_THROW(make_communicator("carrier-pigeon"), Error);
}

}  // namespace
}  // namespace rf::collective

int main(int argc, char** argv) {
  using namespace rf::collective;
  // The communicators, in the same order on every rank (construction is collective).
  auto make = [](const char* backend, Transport tr, int ranks_per_node) {
    CommOptions o;
    o.transport = tr;
    o.ranks_per_node = ranks_per_node;
    o.timeout_seconds = 60;  // a hang fails fast (RINGFLOW_COLLECTIVE_TIMEOUT overrides)
    return make_communicator(backend, o);
  };
  return rf::testing::run_mpi_tests(
      argc, argv,
      [&] {
        const int world = mpi_env().world_size;
        backends().push_back({kLabels[0], make("ring", Transport::P2P, 0)});
        backends().push_back({kLabels[1], make("ring", Transport::Shm, 0)});
        // Hierarchical: pretend nodes of 2 ranks (1 at world size 2: every rank its own node).
        backends().push_back({kLabels[2], world > 1 ? make("ring", Transport::Shm, world > 2 ? 2 : 1) : nullptr});
        backends().push_back({kLabels[3], make("mpi", Transport::Auto, 0)});
      },
      [] { backends().clear(); });
}
