// Point-to-point latency and bandwidth, ping-pong: rank 0 and each peer r in turn exchange a
// message of m bytes (0 sends, r receives and sends it back; the others wait at a barrier), for
// m = 8 B .. 64 MiB. One-way time = round trip / 2, the median over the repetitions (at least
// --min-reps and until --min-time seconds per size, at most --max-reps). Each row names the peer's
// host and whether it shares rank 0's node ("local": shared memory within a host; "remote": the
// network between hosts), so one run under scripts/multihost.sh (e.g. --host h1:2,h2:1) gives
// both link classes. bench/model.py fits t(m) = alpha + m * beta per class from these rows.
//   mpirun -np 2 build/bench/p2p_bench [-b 8] [-e 64M] [-f 4] [--peers all|1,3]
//     [--min-reps 5] [--max-reps 1000] [--min-time 0.2] [--warmup 2]
// Output: one JSON line per (peer, size) on stdout: {"bench":"p2p","peer":r,"host":"h1",
// "peer_host":"h2","link":"remote","bytes":m,"one_way_us":..,"min_us":..,"reps":..,"gbps":..}
// (gbps = bytes / one-way time, in Gbit/s). Every received message is checked (a byte pattern
// per repetition); a wrong one ends the run with exit 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if RINGFLOW_MPI
#include <mpi.h>

#include "collective/communicator.h"
#include "collective/mpi_env.h"
#include "runtime/error.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  size_t min_bytes = 8, max_bytes = size_t(64) << 20;
  double factor = 4;
  std::vector<int> peers;  // empty: all
  int min_reps = 5, max_reps = 1000, warmup = 2;
  double min_time = 0.2;
};

[[noreturn]] void usage_error(const std::string& why) {
  std::fprintf(stderr, "p2p_bench: error: %s (see the comment at the top of bench/p2p_bench.cpp)\n", why.c_str());
  std::exit(1);
}

size_t bytes_flag(const std::string& flag, const std::string& v) {
  size_t n = 0;
  try {
    n = rf::collective::parse_size(flag, v);
  } catch (const rf::Error& e) {
    usage_error(e.what());
  }
  if (n == 0) usage_error(flag + " must be at least 1 byte");
  return n;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(f + " needs a value");
      return argv[++i];
    };
    if (f == "-b") a.min_bytes = bytes_flag(f, next());
    else if (f == "-e") a.max_bytes = bytes_flag(f, next());
    else if (f == "-f") a.factor = std::atof(next().c_str());
    else if (f == "--peers") {
      const std::string v = next();
      if (v != "all")
        for (size_t p = 0; p <= v.size();) {
          const size_t q = std::min(v.find(',', p), v.size());
          a.peers.push_back(std::atoi(v.substr(p, q - p).c_str()));
          p = q + 1;
        }
    } else if (f == "--min-reps") a.min_reps = std::atoi(next().c_str());
    else if (f == "--max-reps") a.max_reps = std::atoi(next().c_str());
    else if (f == "--min-time") a.min_time = std::atof(next().c_str());
    else if (f == "--warmup") a.warmup = std::atoi(next().c_str());
    else usage_error("unknown flag " + f);
  }
  if (!(a.factor > 1)) usage_error("-f must be > 1");
  if (a.min_bytes > a.max_bytes) usage_error("-b must not exceed -e");
  if (a.min_reps < 1 || a.max_reps < a.min_reps || a.warmup < 0) usage_error("need 1 <= --min-reps <= --max-reps");
  return a;
}

#if RINGFLOW_MPI
std::vector<size_t> sizes(const Args& a) {
  std::vector<size_t> v;
  for (double s = double(a.min_bytes); s <= double(a.max_bytes) * 1.0001; s *= a.factor) v.push_back(size_t(s));
  if (v.back() != a.max_bytes) v.push_back(a.max_bytes);
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The byte every message of repetition `rep` carries at index i (cheap to check, differs per rep).
inline char pattern(size_t i, int rep) { return char((i * 131 + size_t(rep) * 7 + 1) & 0xff); }
#endif

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
#if !RINGFLOW_MPI
  (void)a;
  std::fprintf(stderr, "p2p_bench: built without MPI; nothing to measure\n");
  return 77;
#else
  const auto& env = rf::collective::mpi_env();
  if (!env.active || env.world_size < 2) {
    std::fprintf(stderr, "p2p_bench: error: needs at least 2 ranks under mpirun\n");
    return 1;
  }
  const int rank = env.world_rank, n = env.world_size;
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  std::vector<char> names(size_t(n) * MPI_MAX_PROCESSOR_NAME, 0);
  MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                MPI_COMM_WORLD);
  auto host = [&](int r) { return std::string(&names[size_t(r) * MPI_MAX_PROCESSOR_NAME]); };

  std::vector<int> peers = a.peers;
  if (peers.empty())
    for (int r = 1; r < n; ++r) peers.push_back(r);
  for (int p : peers)
    if (p < 1 || p >= n) usage_error("--peers: " + std::to_string(p) + " is not a rank in 1.." + std::to_string(n - 1));

  const std::vector<size_t> ms = sizes(a);
  std::vector<char> buf(ms.back());
  long long wrong = 0;
  if (rank == 0)
    std::fprintf(stderr, "# p2p_bench: %d ranks, ping-pong between rank 0 (%s) and ranks", n, host(0).c_str());
  if (rank == 0)
    for (int p : peers) std::fprintf(stderr, " %d (%s)", p, host(p).c_str());
  if (rank == 0) std::fprintf(stderr, "; one-way = round trip / 2, median\n");

  for (int peer : peers) {
    for (size_t m : ms) {
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank != 0 && rank != peer) continue;
      const int other = rank == 0 ? peer : 0;
      std::vector<double> rtts;
      // Rank 0 decides when to stop (reps and time) and tells the peer with the message's tag.
      bool more = true;
      for (int rep = 0; more; ++rep) {
        int stop = 0;
        if (rank == 0) {
          for (size_t i = 0; i < m; i += 4093) buf[i] = pattern(i, rep);
          const auto t0 = Clock::now();
          MPI_Send(buf.data(), int(m), MPI_CHAR, other, 0, MPI_COMM_WORLD);
          MPI_Recv(buf.data(), int(m), MPI_CHAR, other, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          const double t = std::chrono::duration<double>(Clock::now() - t0).count();
          for (size_t i = 0; i < m; i += 4093) wrong += buf[i] != pattern(i, rep);
          if (rep >= a.warmup) rtts.push_back(t);
          double total = 0;
          for (double x : rtts) total += x;
          const int reps = int(rtts.size());
          stop = reps >= a.max_reps || (reps >= a.min_reps && total >= a.min_time);
          MPI_Send(&stop, 1, MPI_INT, other, 1, MPI_COMM_WORLD);
        } else {
          MPI_Recv(buf.data(), int(m), MPI_CHAR, other, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          for (size_t i = 0; i < m; i += 4093) wrong += buf[i] != pattern(i, rep);
          MPI_Send(buf.data(), int(m), MPI_CHAR, other, 0, MPI_COMM_WORLD);
          MPI_Recv(&stop, 1, MPI_INT, other, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        more = !stop;
      }
      if (rank == 0) {
        const double one_way = median(rtts) / 2, best = *std::min_element(rtts.begin(), rtts.end()) / 2;
        std::printf(
            "{\"bench\":\"p2p\",\"peer\":%d,\"host\":\"%s\",\"peer_host\":\"%s\",\"link\":\"%s\",\"bytes\":%zu,"
            "\"one_way_us\":%.3f,\"min_us\":%.3f,\"reps\":%zu,\"gbps\":%.4f}\n",
            peer, host(0).c_str(), host(peer).c_str(), host(peer) == host(0) ? "local" : "remote", m, one_way * 1e6,
            best * 1e6, rtts.size(), double(m) * 8 / one_way / 1e9);
        std::fflush(stdout);
      }
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (wrong > 0) {
    if (rank == 0) std::fprintf(stderr, "p2p_bench: error: %lld wrong bytes received\n", wrong);
    return 2;
  }
  return 0;
#endif
}
