// The progress board (see progress_board.h): host names gathered once, a responder thread that
// answers "how far did you get" with a non-blocking receive it polls every few milliseconds, and
// the ask used on the timeout path.
#include "collective/progress_board.h"

#if RINGFLOW_MPI
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

#include "collective/mpi_check.h"
#include "collective/mpi_env.h"

namespace rf::collective {
namespace {
constexpr int kAskTag = 1, kAnswerTag = 2;
// How often the responder looks for a question: answers are needed only on the timeout path,
// within its patience (seconds), so this can be slow enough to cost nothing.
constexpr auto kPoll = std::chrono::milliseconds(5);
}  // namespace

ProgressBoard::ProgressBoard(MPI_Comm comm) {
  MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_CHECK(MPI_Get_processor_name(name, &len));
  std::vector<char> all(static_cast<size_t>(size_) * MPI_MAX_PROCESSOR_NAME);
  MPI_CHECK(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm_));
  for (int r = 0; r < size_; ++r) {
    const char* s = all.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME;
    hosts_.emplace_back(s, strnlen(s, MPI_MAX_PROCESSOR_NAME));
  }
  if (mpi_env().thread_level >= MPI_THREAD_MULTIPLE) responder_ = std::thread(&ProgressBoard::respond, this);
}

ProgressBoard::~ProgressBoard() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (responder_.joinable()) responder_.join();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void ProgressBoard::respond() {
  // Errors here cannot be thrown anywhere useful: the responder logs once and stops answering
  // (the asker then reports this rank as not answering).
  auto failed = [](int rc, const char* what) {
    if (rc == MPI_SUCCESS) return false;
    std::fprintf(stderr, "ringflow: warning: progress board: %s failed: %s\n", what, mpi_error_string(rc).c_str());
    return true;
  };
  uint64_t question = 0;
  MPI_Request ask = MPI_REQUEST_NULL;
  if (failed(MPI_Irecv(&question, 1, MPI_UINT64_T, MPI_ANY_SOURCE, kAskTag, comm_, &ask), "MPI_Irecv")) return;
  struct Reply {
    MPI_Request req = MPI_REQUEST_NULL;
    std::unique_ptr<uint64_t> value;  // the send buffer, alive until the send completes
  };
  std::vector<Reply> replies;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (cv_.wait_for(lk, kPoll, [&] { return stop_; })) break;
    }
    int done = 0;
    MPI_Status st;
    if (failed(MPI_Test(&ask, &done, &st), "MPI_Test")) return;
    if (done) {
      Reply r;
      r.value = std::make_unique<uint64_t>(seq_.load(std::memory_order_acquire));
      if (failed(MPI_Isend(r.value.get(), 1, MPI_UINT64_T, st.MPI_SOURCE, kAnswerTag, comm_, &r.req), "MPI_Isend"))
        return;
      replies.push_back(std::move(r));
      if (failed(MPI_Irecv(&question, 1, MPI_UINT64_T, MPI_ANY_SOURCE, kAskTag, comm_, &ask), "MPI_Irecv")) return;
    }
    for (size_t i = 0; i < replies.size();) {
      int sent = 0;
      if (MPI_Test(&replies[i].req, &sent, MPI_STATUS_IGNORE) != MPI_SUCCESS || sent) {
        replies[i] = std::move(replies.back());
        replies.pop_back();
      } else {
        ++i;
      }
    }
  }
  // Stopping: nobody asks outside a timeout, so the receive is still open; withdraw it. A reply
  // still in flight (its asker is aborting the job) is left to MPI.
  if (MPI_Cancel(&ask) == MPI_SUCCESS) MPI_Wait(&ask, MPI_STATUS_IGNORE);
  for (Reply& r : replies) {
    MPI_Request_free(&r.req);
    r.value.release();  // MPI may still read it
  }
}

ProgressBoard::Answer ProgressBoard::ask(uint64_t seq, std::chrono::milliseconds patience) {
  Answer a;
  if (!responder_.joinable()) return a;
  a.asked = true;
  // The buffers outlive this call: requests still open at the end are abandoned (we are aborting).
  auto* question = new uint64_t(seq);
  auto* answers = new std::vector<uint64_t>(static_cast<size_t>(size_), 0);
  std::vector<MPI_Request> recv(static_cast<size_t>(size_), MPI_REQUEST_NULL);
  std::vector<char> done(static_cast<size_t>(size_), 0);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    MPI_Request send = MPI_REQUEST_NULL;
    if (MPI_Irecv(&(*answers)[r], 1, MPI_UINT64_T, r, kAnswerTag, comm_, &recv[r]) != MPI_SUCCESS ||
        MPI_Isend(question, 1, MPI_UINT64_T, r, kAskTag, comm_, &send) != MPI_SUCCESS)
      continue;  // no way to ask it: it stays silent
    MPI_Request_free(&send);
  }
  const auto until = std::chrono::steady_clock::now() + patience;
  for (bool all = false; !all && std::chrono::steady_clock::now() < until;) {
    all = true;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_ || done[r]) continue;
      int flag = 0;
      if (recv[r] != MPI_REQUEST_NULL && MPI_Test(&recv[r], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag)
        done[r] = 1;
      else
        all = false;
    }
    if (!all) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    if (!done[r])
      a.silent.push_back(r);
    else if ((*answers)[r] < seq)
      a.late.push_back(r);
  }
  return a;
}

std::string ProgressBoard::describe(const std::vector<int>& ranks) const {
  std::vector<std::string> order;  // hosts in order of first appearance
  std::vector<std::string> lists;
  for (int r : ranks) {
    const std::string& h = host(r);
    auto it = std::find(order.begin(), order.end(), h);
    const size_t i = static_cast<size_t>(it - order.begin());
    if (it == order.end()) {
      order.push_back(h);
      lists.emplace_back();
    }
    if (!lists[i].empty()) lists[i] += ',';
    lists[i] += std::to_string(r);
  }
  std::string out;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i) out += "; ";
    out += lists[i] + " on host " + order[i];
  }
  return out;
}

}  // namespace rf::collective
#endif
