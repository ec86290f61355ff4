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

}  // namespace kernels

}  // namespace rf
