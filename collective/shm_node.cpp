// Shared-memory node collectives (see shm_node.h). Protocol: block j of a collective has the
// global number g = base + j. A rank publishes in = g+1 once its contributions to block j are
// staged (or, with the data already in the window, on arrival), red = g+1 once it has reduced
// block j of its own slice, out = g+1 once it has copied block j of everyone else's slices.
// Staging slots are reused every kSlots blocks, guarded by red/out of the block kSlots back;
// done = c once a rank has finished collective c, and every collective starts by waiting for
// all done >= c-1, so a new collective never overwrites what a slow rank still reads.
#include "collective/shm_node.h"

#if RINGFLOW_MPI
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "collective/reduce.h"

namespace rf::collective {

struct ShmNode::Counters {
  alignas(128) uint64_t in;
  alignas(128) uint64_t red;
  alignas(128) uint64_t out;
  alignas(128) uint64_t done;
  struct alignas(128) Flag {
    uint64_t v;
  } flag[PeerWindow::kFlags];  // PeerWindow's
};


namespace {
constexpr size_t kCtrlBytes = 4096;  // counters, then the staging slots page-aligned

inline void release_store(uint64_t* at, uint64_t v) { __atomic_store_n(at, v, __ATOMIC_RELEASE); }
inline uint64_t peek(const uint64_t* at) { return __atomic_load_n(at, __ATOMIC_ACQUIRE); }

// Open MPI's shared windows need not start a segment on a page (one header in front was seen:
// +0x108), and the counters want 128-byte lines, the staging slots and gradients whole pages.
// Each window asks for kPage more and every rank rounds each segment up to the page: mappings
// are page-aligned, so every process rounds a segment to the same byte of it.
constexpr size_t kPage = 4096;
char* page_up(char* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<char*>((a + kPage - 1) / kPage * kPage);
}

// MPI_Win_allocate_shared of `bytes` per rank on `comm`; seg[q]: rank q's page-aligned segment.
void allocate_shared_pages(MPI_Comm comm, size_t bytes, MPI_Win* win, std::vector<char*>& seg) {
  MPI_Info info;
  MPI_CHECK(MPI_Info_create(&info));
  MPI_CHECK(MPI_Info_set(info, "alloc_shared_noncontig", "true"));  // each segment NUMA-local
  char* base = nullptr;
  MPI_CHECK(MPI_Win_allocate_shared(static_cast<MPI_Aint>(bytes + kPage), 1, info, comm, &base, win));
  MPI_CHECK(MPI_Info_free(&info));
  for (size_t q = 0; q < seg.size(); ++q) {
    MPI_Aint sz;
    int disp;
    char* at = nullptr;
    MPI_CHECK(MPI_Win_shared_query(*win, static_cast<int>(q), &sz, &disp, &at));
    seg[q] = page_up(at);
  }
}
}  // namespace

struct ShmNode::Reduce {
  const char* in = nullptr;   // null: the data region, from byte `base` on
  size_t base = 0;
  char* out = nullptr;        // where copied-out slices go (the data region when in is null)
  char* own_out = nullptr;    // where this rank's slice goes; null: only the shared result slot
  std::vector<size_t> off, len;
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int avg_div = 0;
  bool gather_all = true;
  int root = 0;               // with !gather_all: the one rank that copies out
};

ShmNode::ShmNode(HostCommunicator& owner, MPI_Comm node, size_t block_bytes)
    : owner_(owner), node_(node), block_bytes_(std::max<size_t>(4096, block_bytes / 4096 * 4096)) {
  MPI_CHECK(MPI_Comm_size(node_, &L_));
  MPI_CHECK(MPI_Comm_rank(node_, &p_));
  MPI_Group g, wg;
  MPI_CHECK(MPI_Comm_group(node_, &g));
  MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &wg));
  std::vector<int> mine(static_cast<size_t>(L_));
  for (int i = 0; i < L_; ++i) mine[i] = i;
  world_of_.resize(static_cast<size_t>(L_));
  MPI_CHECK(MPI_Group_translate_ranks(g, L_, mine.data(), wg, world_of_.data()));
  MPI_CHECK(MPI_Group_free(&g));
  MPI_CHECK(MPI_Group_free(&wg));

  ctrl_.resize(static_cast<size_t>(L_));
  allocate_shared_pages(node_, kCtrlBytes + kSlots * static_cast<size_t>(L_) * block_bytes_, &ctrl_win_, ctrl_);
  std::memset(ctrl_[p_], 0, kCtrlBytes);
  data_.assign(static_cast<size_t>(L_), nullptr);
  MPI_CHECK(MPI_Barrier(node_));  // every rank's counters are zero before anyone reads them
}

ShmNode::~ShmNode() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (data_win_ != MPI_WIN_NULL) MPI_Win_free(&data_win_);
  if (ctrl_win_ != MPI_WIN_NULL) MPI_Win_free(&ctrl_win_);
}

ShmNode::Counters& ShmNode::ctr(int q) const {
  static_assert(sizeof(Counters) <= kCtrlBytes, "the counters must fit in front of the staging slots");
  return *reinterpret_cast<Counters*>(ctrl_[q]);
}

char* ShmNode::slot(int q, uint64_t j) const {
  return ctrl_[q] + kCtrlBytes + (j % kSlots) * static_cast<size_t>(L_) * block_bytes_;
}

void ShmNode::wait(const Task& t, int q, const uint64_t Counters::*field, uint64_t v) const {
  const uint64_t* at = &(ctr(q).*field);
  if (peek(at) >= v) return;
  Poller poll(owner_, t);
  const int who = world_of_[q];
  while (peek(at) < v) poll.idle([&] { return std::vector<int>{who}; });
}

uint64_t ShmNode::begin(const Task& t) {
  const uint64_t c = ++coll_;
  for (int q = 0; q < L_; ++q)
    if (q != p_) wait(t, q, &Counters::done, c - 1);
  return c;
}

void ShmNode::end(uint64_t c, uint64_t blocks) {
  base_ += blocks;
  release_store(&ctr(p_).done, c);
}

void ShmNode::reduce(const Task& t, const Reduce& r) {
  const uint64_t c = begin(t);
  const size_t es = dtype_size(r.dtype);
  const size_t be = block_bytes_ / es;  // elements per block of a slice
  size_t maxlen = 0;
  for (size_t l : r.len) maxlen = std::max(maxlen, l);
  const uint64_t nb = (maxlen + be - 1) / be;
  const bool shm = r.in == nullptr;
  auto blen = [&](int s, uint64_t j) {
    const size_t b = j * be;
    return b >= r.len[s] ? size_t(0) : std::min(be, r.len[s] - b);
  };
  auto at = [&](int s, uint64_t j) { return (r.off[s] + j * be) * es; };  // byte offset of block j of slice s
  auto copies = [&](int q) { return r.gather_all || q == r.root; };
  bool others_copy = false;
  for (int q = 0; q < L_; ++q) others_copy |= q != p_ && copies(q);
  Counters& me = ctr(p_);
  std::vector<const void*> srcs(static_cast<size_t>(L_));

  // Stage block j: copy this rank's parts of the other slices into its slot.
  auto stage = [&](uint64_t j) {
    const uint64_t g = base_ + j;
    if (!shm) {
      if (j >= kSlots)
        for (int s = 0; s < L_; ++s)
          if (s != p_) wait(t, s, &Counters::red, g - kSlots + 1);
      char* sl = slot(p_, j);
      for (int s = 0; s < L_; ++s)
        if (s != p_ && blen(s, j)) std::memcpy(sl + static_cast<size_t>(s) * block_bytes_, r.in + at(s, j), blen(s, j) * es);
    }
    release_store(&me.in, g + 1);
  };
  // Reduce block j of this rank's slice from everyone's staged (or in-window) data.
  auto reduce_block = [&](uint64_t j) {
    const uint64_t g = base_ + j;
    for (int q = 0; q < L_; ++q)
      if (q != p_) wait(t, q, &Counters::in, g + 1);
    if (!shm && others_copy && j >= kSlots)
      for (int q = 0; q < L_; ++q)
        if (q != p_ && copies(q)) wait(t, q, &Counters::out, g - kSlots + 1);
    if (const size_t n = blen(p_, j)) {
      for (int q = 0; q < L_; ++q)
        srcs[q] = shm ? data_[q] + r.base + at(p_, j)
                      : q == p_ ? static_cast<const void*>(r.in + at(p_, j))
                                : slot(q, j) + static_cast<size_t>(p_) * block_bytes_;
      char* result = shm ? data_[p_] + r.base + at(p_, j) : slot(p_, j) + static_cast<size_t>(p_) * block_bytes_;
      char* dst = r.own_out ? r.own_out + j * be * es : result;
      char* dst2 = !shm && r.own_out && others_copy ? result : nullptr;
      reduce_into(dst, dst2, srcs.data(), L_, n, r.dtype, r.op, r.avg_div);
    }
    release_store(&me.red, g + 1);
  };
  // Copy block j of every other slice, as its owner reduced it, into the output.
  auto copy_out = [&](uint64_t j) {
    const uint64_t g = base_ + j;
    if (copies(p_))
      for (int s = 0; s < L_; ++s) {
        if (s == p_) continue;
        wait(t, s, &Counters::red, g + 1);
        if (const size_t n = blen(s, j)) {
          const char* from = shm ? data_[s] + r.base + at(s, j) : slot(s, j) + static_cast<size_t>(s) * block_bytes_;
          std::memcpy(r.out + at(s, j), from, n * es);
        }
      }
    release_store(&me.out, g + 1);
  };
  // Skewed so that the other ranks' staging of block j+1 and reduction of block j-1 are
  // usually done by the time this rank needs them.
  for (uint64_t i = 0; i < nb + 2; ++i) {
    if (i < nb) stage(i);
    if (i >= 1 && i <= nb) reduce_block(i - 1);
    if (i >= 2) copy_out(i - 2);
  }
  // In the window the results sit in the ranks' own data regions: before the caller may write
  // there again, everyone must have copied them.
  if (shm)
    for (int q = 0; q < L_; ++q)
      if (q != p_) wait(t, q, &Counters::out, base_ + nb);
  end(c, nb);
}

void ShmNode::slices(size_t count, DType dtype, std::vector<size_t>& off, std::vector<size_t>& len) const {
  const size_t line = 64 / dtype_size(dtype);
  const size_t slice = ((count + L_ - 1) / L_ + line - 1) / line * line;
  off.clear();
  len.clear();
  for (int i = 0; i < L_; ++i) {
    const size_t b = std::min(count, static_cast<size_t>(i) * slice);
    off.push_back(b);
    len.push_back(std::min(count, b + slice) - b);
  }
}

void ShmNode::allreduce(const Task& t, const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                        int avg_div, Gather gather, int root) {
  const size_t es = dtype_size(dtype);
  Reduce r;
  slices(count, dtype, r.off, r.len);
  r.in = static_cast<const char*>(in);
  if (!in) r.base = t.offset * es;
  r.out = in ? static_cast<char*>(out) : data_[p_] + r.base;
  r.gather_all = gather == Gather::All;
  r.root = gather == Gather::Root ? root : -1;
  if (in && (gather != Gather::Root || p_ == root)) r.own_out = r.out + r.off[p_] * es;
  r.dtype = dtype;
  r.op = op;
  r.avg_div = avg_div;
  RF_CHECK(in || r.base + count * es <= data_bytes_, "allreduce_shm of ", count * es, " bytes at byte ", r.base,
           ", but shm_buffer holds ", data_bytes_);
  reduce(t, r);
}

void ShmNode::reduce_scatter(const Task& t, const void* in, void* out, size_t rc, DType dtype, ReduceOp op,
                             int avg_div) {
  Reduce r;
  for (int i = 0; i < L_; ++i) {
    r.off.push_back(static_cast<size_t>(i) * rc);
    r.len.push_back(rc);
  }
  r.in = static_cast<const char*>(in);
  r.own_out = static_cast<char*>(out);
  r.gather_all = false;
  r.root = -1;  // nobody copies out
  r.dtype = dtype;
  r.op = op;
  r.avg_div = avg_div;
  reduce(t, r);
}

// A pipe: the root stages blocks of a whole slot, the others copy them out.
void ShmNode::broadcast(const Task& t, void* buf, size_t count, DType dtype, int root) {
  const uint64_t c = begin(t);
  const size_t bytes = count * dtype_size(dtype), bb = static_cast<size_t>(L_) * block_bytes_;
  const uint64_t nb = (bytes + bb - 1) / bb;
  char* b = static_cast<char*>(buf);
  for (uint64_t j = 0; j < nb; ++j) {
    const uint64_t g = base_ + j;
    const size_t n = std::min(bb, bytes - j * bb);
    if (p_ == root) {
      if (j >= kSlots)
        for (int q = 0; q < L_; ++q)
          if (q != p_) wait(t, q, &Counters::out, g - kSlots + 1);
      std::memcpy(slot(p_, j), b + j * bb, n);
      release_store(&ctr(p_).in, g + 1);
    } else {
      wait(t, root, &Counters::in, g + 1);
      std::memcpy(b + j * bb, slot(root, j), n);
      release_store(&ctr(p_).out, g + 1);
    }
  }
  end(c, nb);
}

// Every rank a pipe root for its own piece at once.
void ShmNode::allgatherv(const Task& t, const void* send, void* recv, const std::vector<size_t>& counts,
                         DType dtype) {
  const uint64_t c = begin(t);
  const size_t es = dtype_size(dtype), bb = static_cast<size_t>(L_) * block_bytes_;
  std::vector<size_t> displ(static_cast<size_t>(L_) + 1, 0);
  size_t maxb = 0;
  for (int q = 0; q < L_; ++q) {
    displ[q + 1] = displ[q] + counts[q] * es;
    maxb = std::max(maxb, counts[q] * es);
  }
  char* out = static_cast<char*>(recv);
  if (send != out + displ[p_] && counts[p_]) std::memcpy(out + displ[p_], send, counts[p_] * es);
  const char* own = out + displ[p_];
  const uint64_t nb = (maxb + bb - 1) / bb;
  auto blen = [&](int q, uint64_t j) {
    const size_t b = j * bb, l = counts[q] * es;
    return b >= l ? size_t(0) : std::min(bb, l - b);
  };
  for (uint64_t j = 0; j < nb; ++j) {
    const uint64_t g = base_ + j;
    if (j >= kSlots)
      for (int q = 0; q < L_; ++q)
        if (q != p_) wait(t, q, &Counters::out, g - kSlots + 1);
    if (const size_t n = blen(p_, j)) std::memcpy(slot(p_, j), own + j * bb, n);
    release_store(&ctr(p_).in, g + 1);
    for (int q = 0; q < L_; ++q) {
      if (q == p_) continue;
      wait(t, q, &Counters::in, g + 1);
      if (const size_t n = blen(q, j)) std::memcpy(out + displ[q] + j * bb, slot(q, j), n);
    }
    release_store(&ctr(p_).out, g + 1);
  }
  end(c, nb);
}

void ShmNode::barrier(const Task& t) {
  const uint64_t c = begin(t);
  end(c, 0);
  for (int q = 0; q < L_; ++q)
    if (q != p_) wait(t, q, &Counters::done, c);
}

const void* ShmNode::buffer(int world_rank) const {
  for (int q = 0; q < L_; ++q)
    if (world_of_[q] == world_rank) return data_[q];
  RF_CHECK(false, "PeerWindow: rank ", world_rank, " does not share this node's memory");
  return nullptr;
}

uint64_t ShmNode::flag(int f) const { return peek(&ctr(p_).flag[f].v); }

void ShmNode::publish(int f, uint64_t value) { release_store(&ctr(p_).flag[f].v, value); }

void ShmNode::wait(int f, uint64_t value, const char* what) {
  Task t;
  t.what = what;
  t.deadline = owner_.options().deadline();
  for (int q = 0; q < L_; ++q) {
    if (q == p_) continue;
    const uint64_t* at = &ctr(q).flag[f].v;
    if (peek(at) >= value) continue;
    Poller poll(owner_, t);
    const int who = world_of_[q];
    while (peek(at) < value) poll.idle([&] { return std::vector<int>{who}; });
  }
}

void* ShmNode::data(const Task& t, size_t bytes) {
  if (bytes <= data_bytes_ && data_win_ != MPI_WIN_NULL) return data_[p_];
  // Freeing the old window is collective, and nobody may still be reading it.
  barrier(t);
  if (data_win_ != MPI_WIN_NULL) MPI_CHECK(MPI_Win_free(&data_win_));
  const size_t want = std::max<size_t>(bytes, size_t(1) << 20);
  allocate_shared_pages(node_, want, &data_win_, data_);
  data_bytes_ = want;
  return data_[p_];
}

}  // namespace rf::collective
#endif
