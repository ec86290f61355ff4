// The fused optimizer updates of a CUDA plan (FusedUpdates: every Variable of a group in one
// multi-tensor launch). The classification helpers that were here (batch gather, accuracy
// count) are models/classify_cuda.cu.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cuda.h"
#include "runtime/cuda_backend.h"
#include "runtime/error.h"
#include "runtime/exec.h"
#include "runtime/exec_cuda_common.h"

namespace rf {

namespace kc = kernels::cuda;
using cuda_exec::dispatch;
using cuda_exec::Hyper;
using cuda_exec::read_hyper;
using cuda_exec::stream_of;

namespace cuda {

namespace {

constexpr size_t kScalarSlot = 128;  // bytes per group in the scalar buffers
static_assert(sizeof(kc::UpdateScalars<double>) <= kScalarSlot);

kc::UpdateKind update_kind(Op op) {
  return op == Op::ApplySGD || op == Op::ApplySGDSparse             ? kc::UpdateKind::SGD
         : op == Op::ApplyMomentum || op == Op::ApplyMomentumSparse ? kc::UpdateKind::Momentum
                                                                    : kc::UpdateKind::Adam;
}

// (var, slots..., rows, indices, hyper): each member is its own launch (a sort, then the rows).
bool sparse_update_op(Op op) {
  return op == Op::ApplySGDSparse || op == Op::ApplyMomentumSparse || op == Op::ApplyAdamSparse;
}

bool same_update(const Node& a, const Node& b) {
  const Attrs& x = a.attrs;
  const Attrs& y = b.attrs;
  return a.op == b.op && a.inputs.back().node == b.inputs.back().node && x.weight_decay == y.weight_decay &&
         x.momentum == y.momentum && x.nesterov == y.nesterov && x.beta1 == y.beta1 && x.beta2 == y.beta2 &&
         x.eps == y.eps && x.decoupled == y.decoupled;
}

}  // namespace

struct FusedUpdates::Group {
  const Node* node = nullptr;  // the first member: op and attributes
  DType dtype = DType::F32;
  const Tensor* hyper = nullptr;
  std::vector<int> ids;
  std::vector<FusedUpdates::Update> members;
  Tensor table;  // device: entries, then chunks
  i64 nchunks = 0;
  size_t chunks_offset = 0;
};

FusedUpdates::FusedUpdates(Device device, const std::vector<Update>& updates) : device_(device), done_(device) {
  for (const Update& u : updates) {
    const int nin = int(u.node->inputs.size());
    const DType dt = u.in[0]->dtype();
    auto it = std::find_if(groups_.begin(), groups_.end(),
                           [&](const Group& g) { return g.dtype == dt && same_update(*g.node, *u.node); });
    if (it == groups_.end()) {
      groups_.emplace_back();
      it = groups_.end() - 1;
      it->node = u.node;
      it->dtype = dt;
      it->hyper = u.in[nin - 1];
    }
    it->ids.push_back(u.node->id);
    it->members.push_back(u);
  }
  pinned_ = host_alloc(groups_.size() * kScalarSlot);
  scalars_ = Tensor(Shape{i64(groups_.size() * kScalarSlot)}, DType::U8, device_);
}

FusedUpdates::~FusedUpdates() { host_free(pinned_); }

size_t FusedUpdates::groups() const { return groups_.size(); }

const std::vector<int>& FusedUpdates::nodes(size_t group) const { return groups_[group].ids; }

void FusedUpdates::prepare() {
  if (pending_) done_.synchronize();
  pending_ = false;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    const Node& n = *g.node;
    const Attrs& at = n.attrs;
    const Hyper h = read_hyper(n, *g.hyper);
    char* slot = static_cast<char*>(pinned_) + gi * kScalarSlot;
    dispatch(n, g.dtype, [&](auto tag) {
      using T = decltype(tag);
      kc::UpdateScalars<T> sc;
      switch (update_kind(n.op)) {
        case kc::UpdateKind::SGD: sc = kc::sgd_scalars<T>(h.lr, at.weight_decay); break;
        case kc::UpdateKind::Momentum:
          sc = kc::momentum_scalars<T>(h.lr, at.momentum, at.weight_decay, at.nesterov);
          break;
        case kc::UpdateKind::Adam:
          try {
            sc = sparse_update_op(n.op)
                     ? kc::lazy_adam_scalars<T>(h.lr, at.beta1, at.beta2, at.eps, h.step)
                     : kc::adam_scalars<T>(h.lr, at.beta1, at.beta2, at.eps, at.weight_decay, at.decoupled, h.step);
          } catch (const std::invalid_argument& e) {
            fail("node '", n.name, "' (", op_name(n.op), "): ", e.what());
          }
          break;
      }
      std::memcpy(slot, &sc, sizeof sc);
    });
  }
}

void FusedUpdates::upload(const ExecContext& ctx) {
  CUDA_CHECK(cudaMemcpyAsync(scalars_.raw(), pinned_, scalars_.nbytes(), cudaMemcpyHostToDevice, stream_of(ctx)));
}

void FusedUpdates::launch(size_t group, const ExecContext& ctx) {
  CUDA_CHECK(cudaSetDevice(ctx.device.index));  // a kernel launch needs its stream's device current
  Group& g = groups_[group];
  const Node& n = *g.node;
  dispatch(n, g.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* dev_scalars =
        reinterpret_cast<const kc::UpdateScalars<T>*>(static_cast<char*>(scalars_.raw()) + group * kScalarSlot);
    if (sparse_update_op(n.op)) {  // the rows present only; the sort's scratch is the device's workspace
      for (const Update& u : g.members) {
        const Node& m = *u.node;
        const int nin = int(m.inputs.size());
        Tensor& w = *u.in[0];
        const Tensor& rows = *u.in[nin - 3];
        const Tensor& idx = *u.in[nin - 2];
        const i64 V = w.shape().rank ? w.shape()[0] : 0;
        const i64 D = V ? w.numel() / V : 0;
        const i64 N = idx.numel();
        for (int i = 0; i < nin - 2; ++i)
          RF_CHECK(u.in[i]->dtype() == g.dtype && (i == nin - 3 ? rows.numel() == N * D : u.in[i]->numel() == w.numel()),
                   "node '", m.name, "' (", op_name(m.op), "): input ", i, " is ", dtype_name(u.in[i]->dtype()),
                   u.in[i]->shape().str(), ", the Variable ", dtype_name(w.dtype()), w.shape().str(), " with ", N,
                   " indices");
        T* s1 = nin >= 5 ? u.in[1]->data<T>() : nullptr;
        T* s2 = nin >= 6 ? u.in[2]->data<T>() : nullptr;
        auto run = [&](auto index_tag) {
          using I = decltype(index_tag);
          const I* ix = idx.data<I>();
          const size_t ws_bytes = kc::sparse_rows_workspace_bytes<I>(N);
          void* ws = ws_bytes ? cuda::workspace(ctx.device.index, ws_bytes) : nullptr;
          kc::sparse_update<T, I>(update_kind(m.op), w.data<T>(), s1, s2, V, D, rows.data<T>(), ix, N,
                                  kc::UpdateScalars<T>{}, dev_scalars, ws, ws_bytes, stream_of(ctx));
        };
        try {
          if (idx.dtype() == DType::I32) run(int32_t{});
          else if (idx.dtype() == DType::I64) run(int64_t{});
          else fail("node '", m.name, "' (", op_name(m.op), "): indices are ", dtype_name(idx.dtype()));
        } catch (const std::invalid_argument& e) {
          fail("node '", m.name, "' (", op_name(m.op), "): ", e.what());
        }
      }
      return;
    }
    if (!g.table.defined()) {  // first launch: every input is bound (views included)
      std::vector<kc::MultiTensorEntry<T>> entries;
      std::vector<i64> sizes;
      for (const Update& u : g.members) {
        const Node& m = *u.node;
        Tensor* const* in = u.in;
        const int nin = int(m.inputs.size());
        Tensor& w = *in[0];
        const Tensor& grad = *in[nin - 2];
        for (int i = 0; i < nin - 1; ++i)
          RF_CHECK(in[i]->dtype() == g.dtype && in[i]->numel() == w.numel(), "node '", m.name, "' (", op_name(m.op),
                   "): input ", i, " is ", dtype_name(in[i]->dtype()), in[i]->shape().str(), ", the Variable ",
                   dtype_name(w.dtype()), w.shape().str());
        T* s1 = nin >= 4 ? in[1]->data<T>() : nullptr;
        T* s2 = nin >= 5 ? in[2]->data<T>() : nullptr;
        entries.push_back({w.data<T>(), s1, s2, grad.data<T>(), w.numel()});
        sizes.push_back(w.numel());
      }
      const std::vector<kc::MultiTensorChunk> chunks = kc::multi_tensor_chunks(sizes.data(), int(sizes.size()));
      const size_t eb = entries.size() * sizeof(entries[0]);
      g.chunks_offset = (eb + 15) / 16 * 16;
      const size_t bytes = g.chunks_offset + chunks.size() * sizeof(chunks[0]);
      std::vector<char> host(bytes);
      std::memcpy(host.data(), entries.data(), eb);
      if (!chunks.empty())
        std::memcpy(host.data() + g.chunks_offset, chunks.data(), chunks.size() * sizeof(chunks[0]));
      g.table = Tensor(Shape{i64(bytes)}, DType::U8, device_);
      cuda::memcpy(g.table.raw(), device_, host.data(), Device::cpu(), bytes);  // once per plan
      g.nchunks = i64(chunks.size());
    }
    auto* base = static_cast<char*>(g.table.raw());
    kc::multi_tensor_update<T>(update_kind(n.op), reinterpret_cast<const kc::MultiTensorEntry<T>*>(base),
                               reinterpret_cast<const kc::MultiTensorChunk*>(base + g.chunks_offset), g.nchunks,
                               dev_scalars, stream_of(ctx));
  });
}

void FusedUpdates::step_queued(const Stream& stream) {
  done_.record(stream);
  pending_ = true;
}

}  // namespace cuda

}  // namespace rf
