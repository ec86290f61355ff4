// Allreduce bandwidth, nccl-tests style: for each size, each backend validates the result
// (#wrong elements over all ranks), then times --iters allreduces after --warmup, each started
// together (barrier) and taken as the slowest rank's time; the row reports the median.
// algbw = bytes / time, busbw = algbw * 2(n-1)/n. A memcpy line gives this machine's copy
// bandwidth for reference.
//   mpirun -np 2 build/bench/allreduce_bench -b 4K -e 256M -f 4 --backend all [--iters 20]
//     [--warmup 3] [--out-of-place] [--shm-buffer] [--json]
// --shm-buffer: the data lives in the communicator's shm_buffer and is reduced there in place
// (allreduce_shm: no copy into the shared window; for mpi and ring:p2p, private memory).
// Backends: ring (transport from RINGFLOW_RING_TRANSPORT, default auto), ring:p2p, ring:shm,
// mpi, nccl, all (= ring, mpi, and nccl when built and a CUDA device is present). nccl works on
// device buffers (filled and validated through host copies; a blocking allreduce returns after
// the device finished, so the host clock times it); without a CUDA device it prints a
// "skipped" line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "collective/communicator.h"
#include "runtime/device.h"
#include "runtime/error.h"

using namespace rf::collective;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  size_t min_bytes = 4 << 10, max_bytes = 64 << 20;
  double factor = 4;
  std::vector<std::string> backends = {"all"};
  int iters = 20, warmup = 3;
  bool json = false, in_place = true, shm_buffer = false;
};

size_t bytes_flag(const std::string& flag, const std::string& v) {
  const size_t n = rf::collective::parse_size(flag, v);
  RF_CHECK(n > 0, flag, " must be at least 1 byte");
  return n;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> std::string {
      RF_CHECK(i + 1 < argc, f, " needs a value");
      return argv[++i];
    };
    if (f == "-b" || f == "--minbytes") a.min_bytes = bytes_flag(f, next());
    else if (f == "-e" || f == "--maxbytes") a.max_bytes = bytes_flag(f, next());
    else if (f == "-f" || f == "--stepfactor") a.factor = std::atof(next().c_str());
    else if (f == "--backend") {
      a.backends.clear();
      std::string v = next();
      for (size_t p = 0; p <= v.size();) {
        const size_t q = std::min(v.find(',', p), v.size());
        a.backends.push_back(v.substr(p, q - p));
        p = q + 1;
      }
    } else if (f == "--iters" || f == "-n") a.iters = std::atoi(next().c_str());
    else if (f == "--warmup" || f == "-w") a.warmup = std::atoi(next().c_str());
    else if (f == "--json") a.json = true;
    else if (f == "--out-of-place") a.in_place = false;
    else if (f == "--shm-buffer") a.shm_buffer = true;
    else rf::fail("unknown flag ", f, " (see the comment at the top of bench/allreduce_bench.cpp)");
  }
  RF_CHECK(a.factor > 1, "-f must be > 1");
  RF_CHECK(a.iters > 0 && a.warmup >= 0, "--iters must be > 0 and --warmup >= 0");
  RF_CHECK(a.min_bytes <= a.max_bytes, "-b must not exceed -e");
  RF_CHECK(!(a.shm_buffer && !a.in_place), "--shm-buffer reduces in place; drop --out-of-place");
  return a;
}

struct Row {
  std::string backend;
  size_t bytes;
  double time_us, algbw, busbw;
  long long wrong;
};

void print(const Row& r, const Args& a) {
  if (a.json)
    std::printf("{\"backend\":\"%s\",\"bytes\":%zu,\"time_us\":%.2f,\"algbw\":%.3f,\"busbw\":%.3f,\"wrong\":%lld}\n",
                r.backend.c_str(), r.bytes, r.time_us, r.algbw, r.busbw, r.wrong);
  else
    std::printf("%12s %12zu %12.1f %10.2f %10.2f %8lld\n", r.backend.c_str(), r.bytes, r.time_us, r.algbw, r.busbw,
                r.wrong);
  std::fflush(stdout);
}

// A buffer of the backend's device: host memory, or for nccl CUDA memory from the caching
// allocator.
struct DeviceBuffer {
  rf::Device dev;
  size_t bytes = 0;
  void* p = nullptr;
  DeviceBuffer(rf::Device d, size_t n) : dev(d), bytes(n) {
    if (dev.is_cuda()) p = rf::allocator_for(dev).allocate(bytes);
  }
  ~DeviceBuffer() {
    if (p) rf::allocator_for(dev).deallocate(p, bytes);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

struct Bench {
  std::string label;
  std::unique_ptr<Communicator> comm;
  rf::Device dev;                          // where its buffers live
  std::unique_ptr<DeviceBuffer> in, out;   // device buffers (nccl only)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    // Barriers and the cross-rank max of the timings go through plain MPI, the same for all.
    auto sync = make_communicator("mpi");
    const int n = sync->size(), rank = sync->rank();
    const size_t max_count = std::max<size_t>(1, a.max_bytes / sizeof(float));
    std::vector<Bench> comms;
    long long total_wrong = 0;  // any wrong element fails the run (exit 2)
    for (const std::string& b : a.backends) {
      std::vector<std::string> names = {b};
      if (b == "all") names = {"ring", "mpi", "nccl"};
      for (const std::string& name : names) {
        CommOptions o = options_from_env();
        std::string kind = name;
        if (name == "ring:p2p" || name == "ring:shm") {
          o.transport = name == "ring:p2p" ? Transport::P2P : Transport::Shm;
          kind = "ring";
        }
        if (kind == "nccl" && rf::cuda_device_count() == 0) {
          if (rank == 0)
            std::fprintf(a.json ? stderr : stdout, "# nccl skipped: no CUDA device (%s)\n",
                         rf::cuda_unavailable_reason().c_str());
          continue;
        }
        try {
          auto c = make_communicator(kind, o);
          Bench entry;
          entry.label = c->name();
          if (kind == "nccl") {
            entry.dev = rf::Device::cuda(c->local_rank() % rf::cuda_device_count());
            entry.in = std::make_unique<DeviceBuffer>(entry.dev, max_count * sizeof(float));
            entry.out = std::make_unique<DeviceBuffer>(entry.dev, max_count * sizeof(float));
          }
          entry.comm = std::move(c);
          comms.push_back(std::move(entry));
        } catch (const rf::Error& e) {
          if (b != "all") throw;
          if (rank == 0) std::fprintf(a.json ? stderr : stdout, "# %s skipped: %s\n", name.c_str(), e.what());
        }
      }
    }
    std::vector<float> in(max_count), out(max_count);
    std::fill(out.begin(), out.end(), 0.0f);

    if (rank == 0) {
      // With --json, stdout holds only the JSON rows; the header goes to stderr.
      std::fprintf(a.json ? stderr : stdout, "# allreduce_bench: %d ranks, f32 sum, %s, median of %d iterations after %d warm-up\n", n,
                  a.shm_buffer ? "in place in shm_buffer" : a.in_place ? "in place" : "out of place", a.iters,
                  a.warmup);
      // Reference: one core copying a buffer of the largest size (at least 64 MiB), median of 5.
      const size_t mb = std::max<size_t>(a.max_bytes, 64 << 20);
      std::vector<char> x(mb, 1), y(mb, 2);
      std::vector<double> ts;
      for (int i = 0; i < 6; ++i) {
        const auto t0 = Clock::now();
        std::memcpy(y.data(), x.data(), mb);
        ts.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      ts.erase(ts.begin());
      const double t = median(ts);
      if (a.json)
        print({"memcpy", mb, t * 1e6, mb / t / 1e9, mb / t / 1e9, 0}, a);
      else
        std::printf("# memcpy reference: %zu bytes in %.1f us = %.2f GB/s (one core)\n", mb, t * 1e6, mb / t / 1e9);
      if (!a.json)
        std::printf("%12s %12s %12s %10s %10s %8s\n", "#backend", "size(B)", "time(us)", "algbw(GB/s)", "busbw(GB/s)",
                    "#wrong");
    }
    sync->barrier();

    for (double sz = static_cast<double>(a.min_bytes); sz <= static_cast<double>(a.max_bytes) * 1.0001; sz *= a.factor) {
      const size_t count = std::max<size_t>(1, static_cast<size_t>(sz) / sizeof(float));
      const size_t bytes = count * sizeof(float);
      for (Bench& bench : comms) {
        const std::string& label = bench.label;
        Communicator* c = bench.comm.get();
        const bool on_device = bench.dev.is_cuda();
        float* src = on_device ? static_cast<float*>(bench.in->p) : in.data();
        if (a.shm_buffer) src = static_cast<float*>(c->shm_buffer(bytes));
        float* dst = a.in_place ? src : on_device ? static_cast<float*>(bench.out->p) : out.data();
        auto run = [&] {
          if (a.shm_buffer) c->allreduce_shm(count, rf::DType::F32, ReduceOp::Sum);
          else c->allreduce(src, dst, count, rf::DType::F32, ReduceOp::Sum);
        };
        // Validate: rank r holds (r+1)(i%8+1), so the sum is n(n+1)/2 (i%8+1), exact in f32.
        // Device buffers are filled and read back through the host vectors.
        float* host_src = on_device ? in.data() : src;
        for (size_t i = 0; i < count; ++i) host_src[i] = static_cast<float>((rank + 1) * (i % 8 + 1));
        if (on_device) rf::copy_bytes(src, bench.dev, host_src, rf::Device::cpu(), bytes);
        run();
        const float* host_dst = dst;
        if (on_device) {
          rf::copy_bytes(out.data(), rf::Device::cpu(), dst, bench.dev, bytes);
          host_dst = out.data();
        }
        long long wrong = 0;
        for (size_t i = 0; i < count; ++i)
          wrong += host_dst[i] != static_cast<float>(n * (n + 1) / 2 * (i % 8 + 1));
        sync->allreduce(&wrong, 1, rf::DType::I64, ReduceOp::Sum);

        std::vector<double> ts;
        for (int it = 0; it < a.warmup + a.iters; ++it) {
          sync->barrier();
          const auto t0 = Clock::now();
          run();
          const double t = std::chrono::duration<double>(Clock::now() - t0).count();
          if (it >= a.warmup) ts.push_back(t);
        }
        sync->allreduce(ts.data(), ts.size(), rf::DType::F64, ReduceOp::Max);  // an iteration ends with its slowest rank
        const double t = median(ts);
        const double algbw = bytes / t / 1e9;
        if (rank == 0) print({label, bytes, t * 1e6, algbw, algbw * 2.0 * (n - 1) / n, wrong}, a);
        total_wrong += wrong;
      }
    }
    comms.clear();
    if (total_wrong > 0) {
      if (rank == 0) std::fprintf(stderr, "allreduce_bench: error: %lld wrong elements in all\n", total_wrong);
      return 2;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "allreduce_bench: error: %s\n", e.what());
    return 1;
  }
}
