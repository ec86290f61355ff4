/* A tiny MPI program to probe the multi-host harness (scripts/multihost.sh): where ranks run,
 * whether MPI sees the hosts as different nodes, point-to-point latency and bandwidth across a
 * link, one-sided windows, and a long-running job for fault tests. Built by the harness's tests
 * with `mpicc -O2 -o probe probe.c`.
 *
 *   probe hello              every rank: "rank R/N host H node_ranks K nodes M"; rank 0 last:
 *                            "nodes M" (M from an MPI_COMM_TYPE_SHARED split)
 *   probe pingpong [ITERS]   rank 0 <-> rank N-1 (on another host): one-way latency of 8 B and
 *                            bandwidth for 64 KiB .. 16 MiB messages
 *   probe win [multiple]     MPI_Win_allocate + MPI_Put/MPI_Get across ranks (with
 *                            MPI_THREAD_MULTIPLE when asked); prints "win ok" or the MPI error
 *   probe loop [SECONDS]     barrier every 100 ms, rank 0 prints a tick each second, for SECONDS
 *                            (default: forever) -- for kill-host / link-down tests
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int rank, size;

static void check(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  printf("rank %d: %s failed: %s\n", rank, what, msg);
  fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, 3);
}

static int hello(void) {
  char host[MPI_MAX_PROCESSOR_NAME];
  int len = 0, node_ranks = 0, node_rank = 0, nodes = 0, leader;
  MPI_Get_processor_name(host, &len);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &node_ranks);
  MPI_Comm_rank(node, &node_rank);
  leader = node_rank == 0;
  MPI_Allreduce(&leader, &nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  for (int r = 0; r < size; ++r) {
    if (r == rank) {
      printf("rank %d/%d host %s node_ranks %d nodes %d\n", rank, size, host, node_ranks, nodes);
      fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (rank == 0) printf("nodes %d\n", nodes);
  MPI_Comm_free(&node);
  return 0;
}

static int pingpong(int iters) {
  const int peer = size - 1;
  if (size < 2) { if (rank == 0) printf("pingpong needs 2 ranks\n"); return 1; }
  const size_t max = 16u << 20;
  char *buf = malloc(max);
  memset(buf, 1, max);
  if (rank == 0) {
    char a[MPI_MAX_PROCESSOR_NAME], b[MPI_MAX_PROCESSOR_NAME];
    int len;
    MPI_Get_processor_name(a, &len);
    MPI_Recv(b, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, peer, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    printf("pingpong rank 0 (%s) <-> rank %d (%s)\n", a, peer, b);
  } else if (rank == peer) {
    char b[MPI_MAX_PROCESSOR_NAME] = {0};
    int len;
    MPI_Get_processor_name(b, &len);
    MPI_Send(b, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, 9, MPI_COMM_WORLD);
  }
  for (size_t bytes = 8; bytes <= max; bytes = bytes == 8 ? 65536 : bytes * 4) {
    int n = bytes <= 65536 ? iters : (bytes <= (1u << 20) ? iters / 4 + 1 : iters / 16 + 1);
    double t0 = 0;
    for (int i = -2; i < n; ++i) {  /* two warm-up round trips */
      if (i == 0) t0 = MPI_Wtime();
      if (rank == 0) {
        MPI_Send(buf, (int)bytes, MPI_CHAR, peer, 0, MPI_COMM_WORLD);
        MPI_Recv(buf, (int)bytes, MPI_CHAR, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == peer) {
        MPI_Recv(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
      }
    }
    double one_way = (MPI_Wtime() - t0) / n / 2;
    if (rank == 0)
      printf("pingpong %9zu B  one-way %9.1f us  %8.3f Gbit/s\n", bytes, one_way * 1e6,
             bytes * 8 / one_way / 1e9);
    fflush(stdout);
  }
  free(buf);
  return 0;
}

static int win(void) {
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  double *base = NULL;
  MPI_Win w;
  check(MPI_Win_allocate(1024 * sizeof(double), sizeof(double), MPI_INFO_NULL, MPI_COMM_WORLD,
                         &base, &w), "MPI_Win_allocate");
  for (int i = 0; i < 1024; ++i) base[i] = rank;
  MPI_Win_set_errhandler(w, MPI_ERRORS_RETURN);
  check(MPI_Win_fence(0, w), "MPI_Win_fence");
  double got = -1, mine = rank + 100;
  const int right = (rank + 1) % size;
  check(MPI_Put(&mine, 1, MPI_DOUBLE, right, 1, 1, MPI_DOUBLE, w), "MPI_Put");
  check(MPI_Get(&got, 1, MPI_DOUBLE, right, 0, 1, MPI_DOUBLE, w), "MPI_Get");
  check(MPI_Win_fence(0, w), "MPI_Win_fence");
  const int left = (rank + size - 1) % size;
  int ok = got == right && base[1] == left + 100, all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  MPI_Win_free(&w);
  if (rank == 0) printf(all ? "win ok\n" : "win WRONG VALUES\n");
  return all ? 0 : 1;
}

static int loop(double seconds) {
  double t0 = MPI_Wtime(), next = 1;
  while (seconds <= 0 || MPI_Wtime() - t0 < seconds) {
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0 && MPI_Wtime() - t0 >= next) {
      printf("tick %.0f s\n", next);
      fflush(stdout);
      next += 1;
    }
    usleep(100000);
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "hello";
  int want = MPI_THREAD_SINGLE, got = 0;
  if (!strcmp(mode, "win") && argc > 2 && !strcmp(argv[2], "multiple")) want = MPI_THREAD_MULTIPLE;
  MPI_Init_thread(&argc, &argv, want, &got);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 2;
  if (!strcmp(mode, "hello")) rc = hello();
  else if (!strcmp(mode, "pingpong")) rc = pingpong(argc > 2 ? atoi(argv[2]) : 1000);
  else if (!strcmp(mode, "win")) {
    if (rank == 0 && want == MPI_THREAD_MULTIPLE) printf("thread level provided %d (MULTIPLE=%d)\n", got, MPI_THREAD_MULTIPLE);
    rc = win();
  } else if (!strcmp(mode, "loop")) rc = loop(argc > 2 ? atof(argv[2]) : 0);
  else if (rank == 0) fprintf(stderr, "probe: unknown mode '%s' (hello|pingpong|win|loop)\n", mode);
  MPI_Finalize();
  return rc;
}
