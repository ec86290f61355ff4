// Gradient compression on a Reducer bucket (a DDP "comm hook"): compress, collective,
// decompress, in place on the bucket's gradients.
//   none       allreduce (average) of the f32/f64 bucket
//   fp16/bf16  scaled by 1/world before the cast (no overflow), allreduce of 16-bit values (the
//              host ring accumulates in f32), cast back
//   powersgd:R Vogels et al. 2019, as PyTorch's powerSGD_hook: each matrix M (a gradient of
//              rank >= 2 viewed as shape[0] x rest) plus its error feedback is approximated by
//              P Q^T with P = M Q (allreduced, orthogonalised), Q = M^T P (allreduced); Q is warm-
//              started from the previous step; the error M - P Q^T is carried to the next step
//   topk:F     Deep Gradient Compression: the ceil(F n) largest magnitudes of gradient + residual
//              (ties: the lower index wins), allgathered as (index, value) pairs and summed
//              sparsely in rank order; what was not sent stays in the residual. Optional
//              momentum correction (DGC sec. 3.2).
// Tensors under `min_elements` (biases) and matrices PowerSGD would not shrink go uncompressed,
// in one f32 allreduce per bucket. PowerSGD and top-k run plain allreduces for `warmup_steps`
// first. Every rank computes the same result from the same reduced data, so replicas stay
// bit-identical.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collective/communicator.h"
#include "runtime/tensor.h"

namespace rf::collective {

struct CompressSpec {
  enum class Kind : uint8_t { None, FP16, BF16, PowerSGD, TopK };
  Kind kind = Kind::None;
  int rank = 0;                // powersgd
  double ratio = 0;            // topk: fraction of each tensor's elements sent
  size_t min_elements = 1024;  // smaller tensors go uncompressed
  int64_t warmup_steps = 0;    // powersgd/topk: plain allreduce steps before compression starts
  double momentum = 0;         // topk: DGC momentum correction factor (0: off)
  uint64_t seed = 0;           // powersgd: seed of the initial Q (the same on every rank)
  bool compressing() const { return kind != Kind::None; }
  std::string str() const;     // the --compress spelling
};

// "none", "fp16", "bf16", "powersgd:R" (R >= 1), "topk:F" (0 < F <= 1); throws rf::Error.
CompressSpec parse_compress(const std::string& s);

// Bytes one rank sends in a bandwidth-optimal ring (what the ring backend does; the measure we
// report for every backend): allreduce 2 (N-1)/N S, allgather (N-1) S_rank.
size_t ring_allreduce_bytes(size_t bytes, int world);
size_t ring_allgather_bytes(size_t bytes_per_rank, int world);

// One bucket's compression state. `grads` are views into the bucket's fusion buffer (F32, or F64
// with kind None), on the host.
class BucketCompressor {
 public:
  virtual ~BucketCompressor() = default;
  // Replaces every gradient by (an approximation of) its average over the ranks. Collective
  // (blocking calls on `comm`). Returns the bytes this rank sent.
  virtual size_t reduce(Communicator& comm, int64_t step) = 0;
  // Error feedback still owed, per gradient (empty where the compressor keeps none).
  virtual std::vector<std::vector<float>> residuals() const { return {}; }
};

std::unique_ptr<BucketCompressor> make_bucket_compressor(const CompressSpec& spec, std::vector<Tensor> grads);

// Kernels of the compressors, exposed for tests (host, f32).
namespace compress {
// The k entries of largest |x|, ties broken by the lower index; indices in increasing order.
std::vector<uint32_t> topk_indices(const float* x, size_t n, size_t k);
// Gram-Schmidt (two passes, f64 accumulation) on the columns of the row-major n x r matrix p; a
// column that loses all but 1e-4 of its norm to the earlier columns (linearly dependent, up to
// rounding) becomes zero.
void orthonormalize_columns(float* p, size_t n, size_t r);
}  // namespace compress

}  // namespace rf::collective
