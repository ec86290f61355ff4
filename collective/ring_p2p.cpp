// Pipelined point-to-point ring (see ring_p2p.h). One schedule serves allreduce (reduce-scatter
// + allgather), reduce_scatter and allgather(v): work item (g, s) is chunk g of the segment that
// step s moves. Items run in round-major order, so a partial sum lives in a chunk slot for one
// hop instead of a pass over the whole buffer, and rounds overlap: while chunk g is reduced,
// the receives of the next items are already posted.
#include "collective/ring_p2p.h"

#if RINGFLOW_MPI
#include <algorithm>
#include <cstring>

#include "collective/reduce.h"

namespace rf::collective {

struct P2PRing::Plan {
  std::vector<size_t> off, len;  // the n segments, in elements
  int rs = 0, ag = 0;            // reduce-scatter and allgather steps (n-1 or 0 each)
  int F = 0;                     // the segment this rank holds fully reduced after the reduce-scatter
  const char* src = nullptr;     // input, all segments (reduce-scatter reads it)
  char* dst = nullptr;           // output, all segments (allgather writes it)
  char* rs_out = nullptr;        // where segment F's reduction goes
  const char* ag_own = nullptr;  // segment F as allgather step 0 sends it
  bool hazard = false;           // in place: allgather step 0 lands where reduce-scatter step 0 sent from
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int avg_div = 0;
};

P2PRing::P2PRing(HostCommunicator& owner, MPI_Comm comm, size_t chunk_bytes)
    : owner_(owner), comm_(comm), chunk_bytes_(std::max<size_t>(chunk_bytes, 64)) {
  MPI_CHECK(MPI_Comm_size(comm_, &n_));
  MPI_CHECK(MPI_Comm_rank(comm_, &r_));
  left_ = (r_ + n_ - 1) % n_;
  right_ = (r_ + 1) % n_;
  MPI_Group g, wg;
  MPI_CHECK(MPI_Comm_group(comm_, &g));
  MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &wg));
  std::vector<int> mine(static_cast<size_t>(n_));
  for (int i = 0; i < n_; ++i) mine[i] = i;
  world_of_.resize(static_cast<size_t>(n_));
  MPI_CHECK(MPI_Group_translate_ranks(g, n_, mine.data(), wg, world_of_.data()));
  MPI_CHECK(MPI_Group_free(&g));
  MPI_CHECK(MPI_Group_free(&wg));
  left_world_ = world_of_[left_];
  right_world_ = world_of_[right_];
}

namespace {
constexpr int kTagSpace = 32768;  // MPI guarantees tags up to 32767
constexpr long kRecvAhead = 4;    // items whose receives are posted ahead of the one processed
constexpr long kRoundsAhead = 2;  // rounds whose first sends may run ahead
// The exchange keeps this many chunks in flight each way, so the link stays busy while a busy
// peer is slow to answer (across nodes 16 x 60 KiB eager chunks: ~1 MiB of receive slots; see
// kNetChunk in ring_backend.cpp).
constexpr long kExchangeAhead = 16;
int tag_of(long t) { return static_cast<int>(t % kTagSpace); }
}  // namespace

void P2PRing::run(const Task& t, const Plan& p) {
  const size_t es = dtype_size(p.dtype);
  const long S = p.rs + p.ag;
  size_t maxlen = 0;
  for (size_t l : p.len) maxlen = std::max(maxlen, l);
  // Chunks of whole cache lines, so every chunk but a segment's last starts aligned.
  const size_t ce = std::max<size_t>(64 / es, chunk_bytes_ / es / (64 / es) * (64 / es));
  const long G = static_cast<long>((maxlen + ce - 1) / ce);
  if (S == 0 || G == 0) return;
  const long T = G * S;
  auto mod = [&](long s) { return static_cast<int>(((s % n_) + n_) % n_); };
  auto recv_seg = [&](long s) { return s < p.rs ? mod(p.F - 2 - s) : mod(p.F - (s - p.rs) - 1); };
  // Chunk g of segment seg: its length, and its offset within the segment.
  auto clen = [&](int seg, long g) {
    const size_t b = static_cast<size_t>(g) * ce;
    return b >= p.len[seg] ? size_t(0) : std::min(ce, p.len[seg] - b);
  };
  // Partial sums wait in slots until the next hop has taken them; enough that the ring cannot
  // run out (a rank runs at most about a ring's length of items ahead of its right neighbour).
  const size_t nslots = static_cast<size_t>(kRecvAhead + kRoundsAhead * S + n_ + 2);
  if (slots_.size() < nslots * ce * es) slots_.assign(nslots * ce * es, std::byte{0});
  auto slot_ptr = [&](int s) { return reinterpret_cast<char*>(slots_.data()) + static_cast<size_t>(s) * ce * es; };
  std::vector<int> free_slots;
  for (int s = static_cast<int>(nslots) - 1; s >= 0; --s) free_slots.push_back(s);

  std::vector<MPI_Request> rreq(static_cast<size_t>(T), MPI_REQUEST_NULL);
  std::vector<int> rslot(static_cast<size_t>(T), -1);
  std::vector<char> step0_sent(static_cast<size_t>(G), 0);  // round g's first send has completed
  struct Out { MPI_Request req; int slot; long g0; };
  std::vector<Out> outs;
  auto post_send = [&](const void* buf, size_t n, long t, int slot, long g0) {
    if (n == 0) {
      if (g0 >= 0) step0_sent[g0] = 1;
      if (slot >= 0) free_slots.push_back(slot);
      return;
    }
    Out o{MPI_REQUEST_NULL, slot, g0};
    MPI_CHECK(MPI_Isend(buf, static_cast<int>(n * es), MPI_BYTE, right_, tag_of(t), comm_, &o.req));
    outs.push_back(o);
  };
  auto test_sends = [&] {
    bool any = false;
    for (size_t i = 0; i < outs.size();) {
      int done = 0;
      MPI_CHECK(MPI_Test(&outs[i].req, &done, MPI_STATUS_IGNORE));
      if (!done) {
        ++i;
        continue;
      }
      if (outs[i].slot >= 0) free_slots.push_back(outs[i].slot);
      if (outs[i].g0 >= 0) step0_sent[outs[i].g0] = 1;
      outs[i] = outs.back();
      outs.pop_back();
      any = true;
    }
    return any;
  };
  // Round g's first send: segment F-1 of the input (reduce-scatter) or this rank's own piece.
  auto send_step0 = [&](long g) {
    const size_t b = static_cast<size_t>(g) * ce;
    if (p.rs > 0) {
      const int seg = mod(p.F - 1);
      post_send(p.src + (p.off[seg] + b) * es, clen(seg, g), g * S, -1, g);
    } else {
      post_send(p.ag_own + b * es, clen(p.F, g), g * S, -1, g);
    }
  };

  Poller poll(owner_, t);
  long tp = 0, tr = 0, g0 = 0;
  while (tp < T) {
    bool progress = false;
    // Post the receives of the next items.
    while (tr < T && tr < tp + kRecvAhead) {
      const long g = tr / S, s = tr % S;
      const int seg = recv_seg(s);
      const size_t n = clen(seg, g);
      if (n > 0) {
        if (s < p.rs) {
          if (free_slots.empty()) break;
          rslot[tr] = free_slots.back();
          free_slots.pop_back();
          MPI_CHECK(MPI_Irecv(slot_ptr(rslot[tr]), static_cast<int>(n * es), MPI_BYTE, left_, tag_of(tr), comm_,
                              &rreq[tr]));
        } else {
          if (p.hazard && s == p.rs && !step0_sent[g]) break;
          char* at = p.dst + (p.off[seg] + static_cast<size_t>(g) * ce) * es;
          MPI_CHECK(MPI_Irecv(at, static_cast<int>(n * es), MPI_BYTE, left_, tag_of(tr), comm_, &rreq[tr]));
        }
      }
      ++tr;
      progress = true;
    }
    while (g0 < G && g0 < tp / S + kRoundsAhead) send_step0(g0++), progress = true;
    if (tp < tr) {
      int done = 1;
      if (rreq[tp] != MPI_REQUEST_NULL) MPI_CHECK(MPI_Test(&rreq[tp], &done, MPI_STATUS_IGNORE));
      if (done) {
        const long g = tp / S, s = tp % S;
        const int seg = recv_seg(s);
        const size_t n = clen(seg, g), b = static_cast<size_t>(g) * ce;
        if (s < p.rs) {
          const char* mine = p.src + (p.off[seg] + b) * es;
          if (s + 1 < p.rs) {  // partial sum: into the slot, on to the right
            char* slot = n ? slot_ptr(rslot[tp]) : nullptr;
            if (n) reduce2(slot, mine, slot, n, p.dtype, p.op, 0);
            post_send(slot, n, tp + 1, rslot[tp], -1);
          } else {  // the last hop: segment F is complete here
            char* out = p.rs_out + b * es;
            if (n) reduce2(out, mine, slot_ptr(rslot[tp]), n, p.dtype, p.op, p.avg_div);
            if (rslot[tp] >= 0) free_slots.push_back(rslot[tp]);
            if (p.ag > 0) post_send(p.ag_own + b * es, n, tp + 1, -1, -1);
          }
        } else if (s + 1 < S) {  // allgather: forward what just arrived
          post_send(p.dst + (p.off[seg] + b) * es, n, tp + 1, -1, -1);
        }
        ++tp;
        progress = true;
      }
    }
    if (test_sends()) progress = true;
    if (progress) {
      poll.progressed();
    } else {
      const int peer = tp < tr ? left_world_ : right_world_;
      poll.idle([&] { return std::vector<int>{peer}; });
    }
  }
  while (!outs.empty()) {
    if (test_sends()) poll.progressed();
    else poll.idle([&] { return std::vector<int>{right_world_}; });
  }
}

// Two ranks: each sends its whole input in chunks and combines each arriving chunk with its own
// copy, so a chunk crosses the link once and waits one hop (a ring of two pays two). The operands
// go in rank order, so both ranks compute op(rank 0's, rank 1's) and hold the same bits.
void P2PRing::exchange(const Task& t, const void* send, void* recv, size_t count, DType dtype, ReduceOp op,
                       int avg_div) {
  const size_t es = dtype_size(dtype);
  const size_t ce = std::max<size_t>(64 / es, chunk_bytes_ / es / (64 / es) * (64 / es));
  const long G = static_cast<long>((count + ce - 1) / ce);
  const char* in = static_cast<const char*>(send);
  char* out = static_cast<char*>(recv);
  const bool in_place = send == recv;
  const int peer = right_;
  auto len = [&](long g) { return std::min(ce, count - static_cast<size_t>(g) * ce); };
  const size_t nslots = static_cast<size_t>(kExchangeAhead);
  if (slots_.size() < nslots * ce * es) slots_.assign(nslots * ce * es, std::byte{0});
  auto slot = [&](long g) { return reinterpret_cast<char*>(slots_.data()) + static_cast<size_t>(g % kExchangeAhead) * ce * es; };
  std::vector<MPI_Request> rreq(static_cast<size_t>(G), MPI_REQUEST_NULL), sreq(static_cast<size_t>(G), MPI_REQUEST_NULL);
  std::vector<char> sent(static_cast<size_t>(G), 0);
  Poller poll(owner_, t);
  long tp = 0, tr = 0, ts = 0, tsdone = 0;  // processed, receives posted, sends posted, sends completed in order
  while (tp < G) {
    bool progress = false;
    for (; tr < G && tr < tp + kExchangeAhead; ++tr, progress = true)
      MPI_CHECK(MPI_Irecv(slot(tr), static_cast<int>(len(tr) * es), MPI_BYTE, peer, tag_of(tr), comm_, &rreq[tr]));
    for (; ts < G && ts < tp + kExchangeAhead; ++ts, progress = true)
      MPI_CHECK(MPI_Isend(in + static_cast<size_t>(ts) * ce * es, static_cast<int>(len(ts) * es), MPI_BYTE, peer,
                          tag_of(ts), comm_, &sreq[ts]));
    for (long g = tsdone; g < ts; ++g) {
      if (sent[g]) continue;
      int done = 0;
      MPI_CHECK(MPI_Test(&sreq[g], &done, MPI_STATUS_IGNORE));
      sent[g] = static_cast<char>(done);
    }
    while (tsdone < ts && sent[tsdone]) ++tsdone, progress = true;
    int done = 0;
    if (tp < tr) MPI_CHECK(MPI_Test(&rreq[tp], &done, MPI_STATUS_IGNORE));
    if (done && (!in_place || sent[tp])) {  // in place, chunk tp is overwritten only once it has left
      const size_t off = static_cast<size_t>(tp) * ce * es;
      const void* mine = in + off;
      const void* theirs = slot(tp);
      reduce2(out + off, r_ == 0 ? mine : theirs, r_ == 0 ? theirs : mine, len(tp), dtype, op, avg_div);
      ++tp;
      progress = true;
    }
    if (progress) poll.progressed();
    else poll.idle([&] { return std::vector<int>{left_world_}; });
  }
  while (tsdone < ts) {
    int done = 0;
    MPI_CHECK(MPI_Test(&sreq[tsdone], &done, MPI_STATUS_IGNORE));
    if (done) ++tsdone, poll.progressed();
    else poll.idle([&] { return std::vector<int>{right_world_}; });
  }
}

void P2PRing::allreduce(const Task& t, const void* send, void* recv, size_t count, DType dtype, ReduceOp op,
                        int avg_div) {
  const size_t es = dtype_size(dtype);
  if (n_ == 1) {
    if (send != recv && count) std::memmove(recv, send, count * es);
    if (op == ReduceOp::Avg && avg_div > 1) {
      const void* s[1] = {recv};
      reduce_into(recv, nullptr, s, 1, count, dtype, op, avg_div);
    }
    return;
  }
  if (n_ == 2) return exchange(t, send, recv, count, dtype, op, avg_div);
  Plan p;
  // Segments of ceil(count / n) elements rounded to whole cache lines; the last ones may be
  // shorter or empty (count < n, count 0).
  const size_t line = 64 / es;
  const size_t seg = ((count + n_ - 1) / n_ + line - 1) / line * line;
  for (int i = 0; i < n_; ++i) {
    const size_t b = std::min(count, static_cast<size_t>(i) * seg);
    p.off.push_back(b);
    p.len.push_back(std::min(count, b + seg) - b);
  }
  p.rs = p.ag = n_ - 1;
  p.F = (r_ + 1) % n_;
  p.src = static_cast<const char*>(send);
  p.dst = static_cast<char*>(recv);
  p.rs_out = p.dst + p.off[p.F] * es;
  p.ag_own = p.rs_out;
  p.hazard = send == recv;
  p.dtype = dtype;
  p.op = op;
  p.avg_div = avg_div;
  run(t, p);
}

void P2PRing::reduce_scatter(const Task& t, const void* send, void* recv, size_t rc, DType dtype, ReduceOp op,
                             int avg_div) {
  if (n_ == 1) return allreduce(t, send, recv, rc, dtype, op, avg_div);
  Plan p;
  for (int i = 0; i < n_; ++i) {
    p.off.push_back(static_cast<size_t>(i) * rc);
    p.len.push_back(rc);
  }
  p.rs = n_ - 1;
  p.F = r_;
  p.src = static_cast<const char*>(send);
  p.rs_out = static_cast<char*>(recv);
  p.dtype = dtype;
  p.op = op;
  p.avg_div = avg_div;
  run(t, p);
}

void P2PRing::allgatherv(const Task& t, const void* send, void* recv, const std::vector<size_t>& counts,
                         DType dtype) {
  const size_t es = dtype_size(dtype);
  Plan p;
  size_t off = 0;
  for (int i = 0; i < n_; ++i) {
    p.off.push_back(off);
    p.len.push_back(counts[i]);
    off += counts[i];
  }
  char* own = static_cast<char*>(recv) + p.off[r_] * es;
  if (send != own && counts[r_]) std::memcpy(own, send, counts[r_] * es);
  if (n_ == 1) return;
  p.ag = n_ - 1;
  p.F = r_;
  p.dst = static_cast<char*>(recv);
  p.ag_own = own;
  p.dtype = dtype;
  run(t, p);
}

// Pipelined chain from the root around the ring: every link carries the buffer once.
void P2PRing::broadcast(const Task& t, void* buf, size_t count, DType dtype, int root) {
  if (n_ == 1 || count == 0) return;
  const size_t es = dtype_size(dtype);
  const size_t ce = std::max<size_t>(1, chunk_bytes_ / es);
  const long G = static_cast<long>((count + ce - 1) / ce);
  const int pos = (r_ - root + n_) % n_;
  const bool receives = pos != 0, sends = pos != n_ - 1;
  char* base = static_cast<char*>(buf);
  auto len = [&](long g) { return std::min(ce, count - static_cast<size_t>(g) * ce); };
  std::vector<MPI_Request> rreq(static_cast<size_t>(G), MPI_REQUEST_NULL);
  std::vector<MPI_Request> sreq;
  Poller poll(owner_, t);
  long tp = 0, tr = receives ? 0 : G;
  while (tp < G || !sreq.empty()) {
    bool progress = false;
    for (; tr < G && tr < tp + kRecvAhead; ++tr, progress = true)
      MPI_CHECK(MPI_Irecv(base + static_cast<size_t>(tr) * ce * es, static_cast<int>(len(tr) * es), MPI_BYTE, left_,
                          tag_of(tr), comm_, &rreq[tr]));
    if (tp < G && (!receives || tp < tr)) {
      int done = 1;
      if (receives) MPI_CHECK(MPI_Test(&rreq[tp], &done, MPI_STATUS_IGNORE));
      if (done && sends && sreq.size() >= static_cast<size_t>(kRecvAhead)) done = 0;  // bound sends in flight
      if (done) {
        if (sends) {
          sreq.push_back(MPI_REQUEST_NULL);
          MPI_CHECK(MPI_Isend(base + static_cast<size_t>(tp) * ce * es, static_cast<int>(len(tp) * es), MPI_BYTE,
                              right_, tag_of(tp), comm_, &sreq.back()));
        }
        ++tp;
        progress = true;
      }
    }
    for (size_t i = 0; i < sreq.size();) {
      int done = 0;
      MPI_CHECK(MPI_Test(&sreq[i], &done, MPI_STATUS_IGNORE));
      if (done) {
        sreq[i] = sreq.back();
        sreq.pop_back();
        progress = true;
      } else {
        ++i;
      }
    }
    if (progress) {
      poll.progressed();
    } else {
      const int peer = tp < G && receives ? left_world_ : right_world_;
      poll.idle([&] { return std::vector<int>{peer}; });
    }
  }
}

}  // namespace rf::collective
#endif
