// Shared by every kernel file: host/device qualifiers and the small Shape type that kernels and
// the runtime both use (kernels sit at the bottom of the layering, so the type lives here).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define RF_HD __host__ __device__ __forceinline__
#else
#define RF_HD inline
#endif

namespace rf {

using i64 = int64_t;

// A tensor shape with inline storage: copying one never allocates (the executor copies shapes
// on the hot path). -1 marks a dimension not known until a feed fixes it (e.g. the batch).
struct Shape {
  static constexpr int kMaxRank = 6;
  int rank = 0;
  i64 dims[kMaxRank] = {};

  Shape() = default;
  Shape(std::initializer_list<i64> d) {
    if (d.size() > kMaxRank) throw std::invalid_argument("shape rank exceeds 6");
    for (i64 v : d) dims[rank++] = v;
  }
  explicit Shape(const std::vector<i64>& d) {
    if (d.size() > kMaxRank) throw std::invalid_argument("shape rank exceeds 6");
    for (i64 v : d) dims[rank++] = v;
  }
  i64 operator[](int i) const { return dims[i]; }
  i64& operator[](int i) { return dims[i]; }
  // Dimension by possibly negative axis (-1 is the last).
  i64 dim(int axis) const { return dims[axis < 0 ? axis + rank : axis]; }
  i64 numel() const {
    i64 n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[i];
    return n;
  }
  bool defined() const {
    for (int i = 0; i < rank; ++i)
      if (dims[i] < 0) return false;
    return true;
  }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  void push_back(i64 v) {
    if (rank == kMaxRank) throw std::invalid_argument("shape rank exceeds 6");
    dims[rank++] = v;
  }
  std::vector<i64> vec() const { return std::vector<i64>(dims, dims + rank); }
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank; ++i) {
      if (i) s += ',';
      s += dims[i] < 0 ? std::string("?") : std::to_string(dims[i]);
    }
    s += ']';
    return s;
  }
};

namespace kernels {

// Convolution and pooling geometry, shared by the CPU and CUDA kernels; NCHW, filters OIHW.
struct ConvGeom {
  i64 N, C, H, W;   // input
  i64 K, R, S;      // output channels, filter height, width
  i64 stride_h, stride_w, pad_h, pad_w;
  i64 P, Q;         // output height, width: (H + 2 pad_h - R) / stride_h + 1
};

struct PoolGeom {
  i64 N, C, H, W;
  i64 R, S, stride_h, stride_w, pad_h, pad_w;
  i64 P, Q;
};

// The preconditions both backends' kernels rely on; std::invalid_argument names what is wrong.
inline void check_conv_geom(const ConvGeom& g) {
  if (g.N < 0 || g.C <= 0 || g.H <= 0 || g.W <= 0 || g.K <= 0 || g.R <= 0 || g.S <= 0)
    throw std::invalid_argument("conv2d: non-positive dimension");
  if (g.stride_h <= 0 || g.stride_w <= 0 || g.pad_h < 0 || g.pad_w < 0)
    throw std::invalid_argument("conv2d: stride must be positive and padding non-negative");
  if (g.H + 2 * g.pad_h < g.R || g.W + 2 * g.pad_w < g.S)
    throw std::invalid_argument("conv2d: filter larger than the padded input");
  if (g.P != (g.H + 2 * g.pad_h - g.R) / g.stride_h + 1 || g.Q != (g.W + 2 * g.pad_w - g.S) / g.stride_w + 1)
    throw std::invalid_argument("conv2d: output size P, Q does not match the geometry");
}

// Every window must hold at least one real input (PyTorch requires pad <= kernel/2; this is the
// weaker condition the kernels rely on, and it also admits ceil-mode output sizes).
inline void check_pool_geom(const PoolGeom& g, const char* op) {
  if (g.N < 0 || g.C < 0 || g.H <= 0 || g.W <= 0 || g.R <= 0 || g.S <= 0 || g.P <= 0 || g.Q <= 0)
    throw std::invalid_argument(std::string(op) + ": non-positive dimension");
  if (g.stride_h <= 0 || g.stride_w <= 0 || g.pad_h < 0 || g.pad_w < 0)
    throw std::invalid_argument(std::string(op) + ": stride must be positive and padding non-negative");
  if (g.pad_h >= g.R || g.pad_w >= g.S || (g.P - 1) * g.stride_h - g.pad_h >= g.H ||
      (g.Q - 1) * g.stride_w - g.pad_w >= g.W)
    throw std::invalid_argument(std::string(op) + ": a pooling window lies entirely in the padding");
  if (g.H * g.W > INT32_MAX) throw std::invalid_argument(std::string(op) + ": plane too large for int32 argmax");
}

}  // namespace kernels

}  // namespace rf
