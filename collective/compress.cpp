// The bucket compressors: fp16/bf16, PowerSGD and top-k with error feedback (host, f32).
#include "collective/compress.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "kernels/cpu.h"
#include "kernels/random.h"
#include "runtime/error.h"

namespace rf::collective {

std::string CompressSpec::str() const {
  std::ostringstream os;
  switch (kind) {
    case Kind::None: os << "none"; break;
    case Kind::FP16: os << "fp16"; break;
    case Kind::BF16: os << "bf16"; break;
    case Kind::PowerSGD: os << "powersgd:" << rank; break;
    case Kind::TopK: os << "topk:" << ratio; break;
  }
  return os.str();
}

CompressSpec parse_compress(const std::string& s) {
  CompressSpec c;
  const size_t colon = s.find(':');
  const std::string name = s.substr(0, colon), arg = colon == std::string::npos ? "" : s.substr(colon + 1);
  auto number = [&](double& out) {
    size_t used = 0;
    try {
      out = std::stod(arg, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    RF_CHECK(!arg.empty() && used == arg.size() && std::isfinite(out), "--compress ", s, ": '", arg,
             "' is not a number");
  };
  if (name == "none" || name == "fp16" || name == "bf16") {
    RF_CHECK(colon == std::string::npos, "--compress ", name, " takes no argument, got '", s, "'");
    c.kind = name == "none" ? CompressSpec::Kind::None
             : name == "fp16" ? CompressSpec::Kind::FP16 : CompressSpec::Kind::BF16;
  } else if (name == "powersgd") {
    double r = 0;
    number(r);
    RF_CHECK(r >= 1 && r <= 1024 && r == std::floor(r), "--compress powersgd:RANK needs an integer rank in [1, 1024], got '",
             arg, "'");
    c.kind = CompressSpec::Kind::PowerSGD;
    c.rank = int(r);
  } else if (name == "topk") {
    number(c.ratio);
    RF_CHECK(c.ratio > 0 && c.ratio <= 1, "--compress topk:RATIO needs 0 < RATIO <= 1, got '", arg, "'");
    c.kind = CompressSpec::Kind::TopK;
  } else {
    RF_CHECK(false, "unknown --compress '", s, "': expected none, fp16, bf16, powersgd:RANK or topk:RATIO");
  }
  return c;
}

size_t ring_allreduce_bytes(size_t bytes, int world) {
  return world <= 1 ? 0 : 2 * size_t(world - 1) * bytes / size_t(world);
}
size_t ring_allgather_bytes(size_t bytes_per_rank, int world) {
  return world <= 1 ? 0 : size_t(world - 1) * bytes_per_rank;
}

namespace compress {

std::vector<uint32_t> topk_indices(const float* x, size_t n, size_t k) {
  k = std::min(k, n);
  std::vector<uint32_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = uint32_t(i);
  // A strict total order (magnitude down, index up), so the chosen set is unique.
  auto before = [x](uint32_t a, uint32_t b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa > fb || (fa == fb && a < b);
  };
  if (k < n) std::nth_element(idx.begin(), idx.begin() + std::ptrdiff_t(k), idx.end(), before);
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

void orthonormalize_columns(float* p, size_t n, size_t r) {
  auto norm_of = [&](size_t j) {
    double s = 0;
    for (size_t row = 0; row < n; ++row) s += double(p[row * r + j]) * p[row * r + j];
    return std::sqrt(s);
  };
  for (size_t j = 0; j < r; ++j) {
    const double before = norm_of(j);
    // Remove the components along the earlier columns, twice ("twice is enough": one pass
    // leaves a small column far from orthogonal after the cancellation).
    for (int pass = 0; pass < 2; ++pass)
      for (size_t i = 0; i < j; ++i) {
        double dot = 0;
        for (size_t row = 0; row < n; ++row) dot += double(p[row * r + i]) * p[row * r + j];
        for (size_t row = 0; row < n; ++row) p[row * r + j] -= float(dot * p[row * r + i]);
      }
    const double after = norm_of(j);
    // A column (all but) in the span of the earlier ones is rounding noise: drop it rather than
    // blow the noise up into a spurious direction.
    const double scale = after > 1e-4 * before && after > 0 ? 1.0 / after : 0.0;
    for (size_t row = 0; row < n; ++row) p[row * r + j] = float(p[row * r + j] * scale);
  }
}

}  // namespace compress

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

// The uncompressed tensors of a bucket: staged back to back, one f32 allreduce.
class Plain {
 public:
  void add(const Tensor& t) {
    tensors_.push_back(t);
    elements_ += size_t(t.numel());
  }
  size_t reduce(Communicator& comm) {
    if (tensors_.empty()) return 0;
    stage_.resize(elements_);
    size_t at = 0;
    for (const Tensor& t : tensors_) {
      std::memcpy(stage_.data() + at, f32(t), t.nbytes());
      at += size_t(t.numel());
    }
    comm.allreduce(stage_.data(), elements_, DType::F32, ReduceOp::Avg);
    at = 0;
    for (const Tensor& t : tensors_) {
      std::memcpy(f32(t), stage_.data() + at, t.nbytes());
      at += size_t(t.numel());
    }
    return ring_allreduce_bytes(elements_ * sizeof(float), comm.size());
  }

 private:
  std::vector<Tensor> tensors_;
  std::vector<float> stage_;
  size_t elements_ = 0;
};

// Every gradient of the bucket, averaged as it is (also the warm-up of the lossy compressors).
size_t allreduce_all(Communicator& comm, const std::vector<Tensor>& grads) {
  size_t bytes = 0;
  for (const Tensor& g : grads) {
    comm.allreduce(g.raw(), size_t(g.numel()), g.dtype(), ReduceOp::Avg);
    bytes += ring_allreduce_bytes(g.nbytes(), comm.size());
  }
  return bytes;
}

class NoneCompressor final : public BucketCompressor {
 public:
  explicit NoneCompressor(std::vector<Tensor> grads) : grads_(std::move(grads)) {}
  size_t reduce(Communicator& comm, int64_t) override { return allreduce_all(comm, grads_); }

 private:
  std::vector<Tensor> grads_;
};

class HalfCompressor final : public BucketCompressor {
 public:
  HalfCompressor(const CompressSpec& spec, std::vector<Tensor> grads) : bf16_(spec.kind == CompressSpec::Kind::BF16) {
    for (Tensor& g : grads) {
      if (size_t(g.numel()) < spec.min_elements) {
        plain_.add(g);
      } else {
        elements_ += size_t(g.numel());
        halves_.push_back(std::move(g));
      }
    }
  }

  size_t reduce(Communicator& comm, int64_t) override {
    size_t bytes = plain_.reduce(comm);
    if (halves_.empty()) return bytes;
    const float inv = 1.0f / float(comm.size());
    scaled_.resize(elements_);
    bits_.resize(elements_);
    size_t at = 0;
    for (const Tensor& g : halves_) {  // pre-divide: the 16-bit sum cannot overflow
      const float* x = f32(g);
      for (i64 i = 0; i < g.numel(); ++i) scaled_[at + size_t(i)] = x[i] * inv;
      at += size_t(g.numel());
    }
    const i64 n = i64(elements_);
    if (bf16_) kernels::cpu::f32_to_bf16(scaled_.data(), bits_.data(), n);
    else kernels::cpu::f32_to_f16(scaled_.data(), bits_.data(), n);
    comm.allreduce(bits_.data(), elements_, bf16_ ? DType::BF16 : DType::F16, ReduceOp::Sum);
    if (bf16_) kernels::cpu::bf16_to_f32(bits_.data(), scaled_.data(), n);
    else kernels::cpu::f16_to_f32(bits_.data(), scaled_.data(), n);
    at = 0;
    for (const Tensor& g : halves_) {
      std::memcpy(f32(g), scaled_.data() + at, g.nbytes());
      at += size_t(g.numel());
    }
    return bytes + ring_allreduce_bytes(elements_ * 2, comm.size());
  }

 private:
  bool bf16_;
  Plain plain_;
  std::vector<Tensor> halves_;
  size_t elements_ = 0;
  std::vector<float> scaled_;
  std::vector<uint16_t> bits_;
};

class PowerSGDCompressor final : public BucketCompressor {
 public:
  PowerSGDCompressor(const CompressSpec& spec, std::vector<Tensor> grads)
      : r_(size_t(spec.rank)), warmup_(spec.warmup_steps), all_(grads) {
    for (size_t k = 0; k < grads.size(); ++k) {
      const Tensor& g = grads[k];
      const Shape& s = g.shape();
      const size_t n = s.rank >= 2 ? size_t(s[0]) : 0, m = n ? size_t(g.numel()) / n : 0;
      // PyTorch's rule: compress only what shrinks, and nothing small.
      if (n == 0 || size_t(g.numel()) < spec.min_elements || r_ * (n + m) >= n * m) {
        plain_.add(g);
        continue;
      }
      Matrix mat{g, k, n, m, p_elems_, q_elems_, std::vector<float>(n * m, 0.0f)};
      p_elems_ += n * r_;
      q_elems_ += m * r_;
      mats_.push_back(std::move(mat));
    }
    p_.assign(p_elems_, 0.0f);
    q_.assign(q_elems_, 0.0f);
    // The initial Q: standard normals from a seed shared by every rank (then warm-started).
    const uint64_t key = kernels::rng::stream_key(spec.seed, 0x9051d);
    for (size_t i = 0; i < q_elems_; ++i) q_[i] = float(kernels::rng::normal(key, i));
  }

  size_t reduce(Communicator& comm, int64_t step) override {
    if (step < warmup_) return allreduce_all(comm, all_);
    size_t bytes = plain_.reduce(comm);
    if (mats_.empty()) return bytes;
    using kernels::cpu::gemm;
    const i64 r = i64(r_);
    for (Matrix& a : mats_) {  // M = G + E (kept in E), P = M Q
      float* g = f32(a.grad);
      for (size_t i = 0; i < a.err.size(); ++i) a.err[i] += g[i];
      gemm<float>(false, false, i64(a.n), r, i64(a.m), 1.0f, a.err.data(), i64(a.m), &q_[a.q], r, 0.0f, &p_[a.p], r);
    }
    comm.allreduce(p_.data(), p_elems_, DType::F32, ReduceOp::Avg);
    for (Matrix& a : mats_) {  // orthonormal P, Q = M^T P
      compress::orthonormalize_columns(&p_[a.p], a.n, r_);
      gemm<float>(true, false, i64(a.m), r, i64(a.n), 1.0f, a.err.data(), i64(a.m), &p_[a.p], r, 0.0f, &q_[a.q], r);
    }
    comm.allreduce(q_.data(), q_elems_, DType::F32, ReduceOp::Avg);
    for (Matrix& a : mats_) {  // G = P Q^T, E = M - P Q^T
      float* g = f32(a.grad);
      gemm<float>(false, true, i64(a.n), i64(a.m), r, 1.0f, &p_[a.p], r, &q_[a.q], r, 0.0f, g, i64(a.m));
      for (size_t i = 0; i < a.err.size(); ++i) a.err[i] -= g[i];
    }
    return bytes + ring_allreduce_bytes((p_elems_ + q_elems_) * sizeof(float), comm.size());
  }

  std::vector<std::vector<float>> residuals() const override {
    std::vector<std::vector<float>> out(all_.size());
    for (const Matrix& a : mats_) out[a.index] = a.err;
    return out;
  }

 private:
  struct Matrix {
    Tensor grad;
    size_t index;            // in the bucket
    size_t n, m;             // grad viewed as n x m
    size_t p, q;          // offsets of its P (n x r) and Q (m x r) in p_ and q_
    std::vector<float> err;  // error feedback
  };
  size_t r_;
  int64_t warmup_;
  std::vector<Tensor> all_;
  Plain plain_;
  std::vector<Matrix> mats_;
  size_t p_elems_ = 0, q_elems_ = 0;
  std::vector<float> p_, q_;  // every matrix's P and Q back to back: one allreduce each
};

class TopKCompressor final : public BucketCompressor {
 public:
  TopKCompressor(const CompressSpec& spec, std::vector<Tensor> grads)
      : warmup_(spec.warmup_steps), momentum_(spec.momentum), all_(grads) {
    for (size_t index = 0; index < grads.size(); ++index) {
      const Tensor& g = grads[index];
      const size_t n = size_t(g.numel());
      RF_CHECK(n <= size_t(UINT32_MAX), "topk: a gradient of ", n, " elements is too large for 32-bit indices");
      if (n < spec.min_elements) {
        plain_.add(g);
        continue;
      }
      const size_t k = std::max<size_t>(1, size_t(std::ceil(spec.ratio * double(n))));
      sparse_.push_back(Sparse{g, index, k, pairs_, std::vector<float>(n, 0.0f),
                               momentum_ > 0 ? std::vector<float>(n, 0.0f) : std::vector<float>{}});
      pairs_ += k;
    }
  }

  size_t reduce(Communicator& comm, int64_t step) override {
    if (step < warmup_) return allreduce_all(comm, all_);
    size_t bytes = plain_.reduce(comm);
    if (sparse_.empty()) return bytes;
    const int world = comm.size();
    // Each pair is two 32-bit words: the index's bits and the value.
    send_.resize(2 * pairs_);
    recv_.resize(2 * pairs_ * size_t(world));
    for (Sparse& s : sparse_) {
      float* g = f32(s.grad);
      const size_t n = s.residual.size();
      if (momentum_ > 0) {  // DGC momentum correction: u = m u + g, v += u
        for (size_t i = 0; i < n; ++i) {
          s.velocity[i] = float(momentum_) * s.velocity[i] + g[i];
          s.residual[i] += s.velocity[i];
        }
      } else {
        for (size_t i = 0; i < n; ++i) s.residual[i] += g[i];
      }
      const std::vector<uint32_t> idx = compress::topk_indices(s.residual.data(), n, s.k);
      for (size_t j = 0; j < s.k; ++j) {
        const uint32_t i = idx[j];
        std::memcpy(&send_[2 * (s.at + j)], &i, sizeof i);
        send_[2 * (s.at + j) + 1] = s.residual[i];
        s.residual[i] = 0;  // sent: no longer owed
        if (momentum_ > 0) s.velocity[i] = 0;  // DGC momentum factor masking
      }
    }
    comm.allgather(send_.data(), recv_.data(), 2 * pairs_, DType::F32);
    const float inv = 1.0f / float(world);
    for (Sparse& s : sparse_) {  // sum in rank order: the same bits on every rank
      float* g = f32(s.grad);
      std::fill(g, g + s.residual.size(), 0.0f);
      for (int q = 0; q < world; ++q) {
        const float* pairs = &recv_[2 * (size_t(q) * pairs_ + s.at)];
        for (size_t j = 0; j < s.k; ++j) {
          uint32_t i;
          std::memcpy(&i, &pairs[2 * j], sizeof i);
          g[i] += pairs[2 * j + 1];
        }
      }
      for (size_t i = 0; i < s.residual.size(); ++i) g[i] *= inv;
    }
    return bytes + ring_allgather_bytes(2 * pairs_ * sizeof(float), world);
  }

  std::vector<std::vector<float>> residuals() const override {
    std::vector<std::vector<float>> out(all_.size());
    for (const Sparse& s : sparse_) out[s.index] = s.residual;
    return out;
  }

 private:
  struct Sparse {
    Tensor grad;
    size_t index;                 // in the bucket
    size_t k;
    size_t at;                    // first pair in send_
    std::vector<float> residual;  // error feedback (DGC: the accumulated velocity v)
    std::vector<float> velocity;  // momentum correction u (empty when off)
  };
  int64_t warmup_;
  double momentum_;
  std::vector<Tensor> all_;
  Plain plain_;
  std::vector<Sparse> sparse_;
  size_t pairs_ = 0;
  std::vector<float> send_, recv_;
};

}  // namespace

std::unique_ptr<BucketCompressor> make_bucket_compressor(const CompressSpec& spec, std::vector<Tensor> grads) {
  for (const Tensor& g : grads)
    RF_CHECK(g.device().is_cpu() && (g.dtype() == DType::F32 || (g.dtype() == DType::F64 && !spec.compressing())),
             "--compress ", spec.str(), " needs f32 gradients on the host, got ", dtype_name(g.dtype()), " on ",
             g.device().str());
  switch (spec.kind) {
    case CompressSpec::Kind::None: return std::make_unique<NoneCompressor>(std::move(grads));
    case CompressSpec::Kind::FP16:
    case CompressSpec::Kind::BF16: return std::make_unique<HalfCompressor>(spec, std::move(grads));
    case CompressSpec::Kind::PowerSGD: return std::make_unique<PowerSGDCompressor>(spec, std::move(grads));
    case CompressSpec::Kind::TopK: return std::make_unique<TopKCompressor>(spec, std::move(grads));
  }
  RF_CHECK(false, "unreachable compressor kind");
  return nullptr;
}

}  // namespace rf::collective
