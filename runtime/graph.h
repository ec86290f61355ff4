// The computation graph: an append-only list of nodes (so node ids are a topological order),
// each an op with inputs, attributes and output specs inferred when the node is added.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/op_list.h"
#include "runtime/tensor.h"

namespace rf {

class Graph;

// One output of one node: what graph-building code passes around (a symbolic tensor).
struct Value {
  Graph* graph = nullptr;
  int node = -1;
  int index = 0;
  bool valid() const { return graph != nullptr && node >= 0; }
  bool operator==(const Value& o) const { return graph == o.graph && node == o.node && index == o.index; }
};

struct Initializer {
  enum class Kind : unsigned char { Zeros, Constant, Uniform, Normal, GlorotUniform, HeNormal };
  Kind kind = Kind::Zeros;
  double a = 0, b = 0;  // Constant: a; Uniform: [a, b); Normal: mean a, stddev b
  static Initializer zeros() { return {}; }
  static Initializer constant(double v) { return {Kind::Constant, v, 0}; }
  static Initializer uniform(double lo, double hi) { return {Kind::Uniform, lo, hi}; }
  static Initializer normal(double mean, double stddev) { return {Kind::Normal, mean, stddev}; }
  static Initializer glorot_uniform() { return {Kind::GlorotUniform, 0, 0}; }
  static Initializer he_normal() { return {Kind::HeNormal, 0, 0}; }
};

// Attributes of every op in one flat struct: each op reads the fields it documents.
struct Attrs {
  bool transpose_a = false, transpose_b = false;  // MatMul
  // BatchMatMul reads transpose_a / transpose_b too.
  static constexpr int64_t kSliceToEnd = INT64_MAX;  // Slice end: up to the end of the axis
  static constexpr int kMaxConcatInputs = 16;        // a plan step's input slots (ops::concat nests beyond)
  double ln_eps = 1e-5;                           // LayerNorm: added to the variance inside the sqrt
  int axis = 0;                                   // Slice, Concat, Pad (negative: from the end)
  int64_t begin = 0, end = 0;                     // Slice: [begin, end) (negative: from the end; kSliceToEnd)
  int64_t pad_before = 0, pad_after = 0;          // Pad: elements added before / after along axis
  double pad_value = 0;                           // Pad: their value
  std::vector<int> axes;                          // Sum, Mean (empty: all axes)
  bool keepdims = false;                          // Sum, Mean; BroadcastLike (see op_list.h)
  bool average = false;                           // BroadcastLike: divide by the broadcast factor
  Shape shape;                                    // Placeholder, Variable, Reshape (one -1 allowed)
  std::vector<int> perm;                          // Transpose
  int64_t kernel_h = 0, kernel_w = 0;             // pools
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;  // conv, pools
  double scalar = 0;                              // *Scalar ops, Dropout rate, BroadcastLike scale
  int64_t ignore_index = INT64_MIN;               // SparseSoftmaxXent: label of rows that count 0 (INT64_MIN: none)
  double label_smoothing = 0;                     // SparseSoftmaxXent: eps in [0, 1), PyTorch's label_smoothing
  int compare = 0;                                // Compare: a kernels::CompareOp
  uint64_t seed = 0;                              // Dropout, Variable (derived from the name)
  DType dtype = DType::F32;                       // Placeholder, Variable, Cast
  Initializer init;                               // Variable
  bool trainable = true;                          // Variable
  int var = -1;                                   // InitVariable: the Variable node
  double momentum = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;  // Apply*
  bool nesterov = false, decoupled = false;       // ApplyMomentum, ApplyAdam (AdamW)
  Tensor value;                                   // Const
};

struct OutSpec {
  DType dtype = DType::F32;
  Shape shape;  // -1 where unknown until feeds fix it
};

struct Node {
  int id = -1;
  Op op = Op::Placeholder;
  std::string name;
  std::vector<Value> inputs;
  Attrs attrs;
  std::vector<OutSpec> outputs;
};

class Graph {
 public:
  explicit Graph(uint64_t seed = 0) : seed_(seed) {}
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // Adds a node after inferring its output specs; a bad input count, dtype or shape throws
  // rf::Error naming the node. name may be empty (then "<Op>_<id>"); names are unique.
  Value add(Op op, std::vector<Value> inputs, Attrs attrs = {}, const std::string& name = "");

  Value placeholder(const std::string& name, DType dtype, const Shape& shape);
  Value constant(const Tensor& value, const std::string& name = "");
  // A Variable and its InitVariable node. The initialiser's seed is derived from the graph seed
  // and the variable's name, so values do not depend on the order variables are created in.
  Value variable(const std::string& name, const Shape& shape, DType dtype, Initializer init,
                 bool trainable = true);

  const Node& node(int id) const { return nodes_.at(size_t(id)); }
  const Node& node(Value v) const { return node(v.node); }
  const OutSpec& spec(Value v) const { return nodes_.at(size_t(v.node)).outputs.at(size_t(v.index)); }
  int size() const { return int(nodes_.size()); }
  const std::vector<Node>& nodes() const { return nodes_; }
  // Variable node ids in creation order (trainable_only: skip optimizer slots etc).
  std::vector<int> variables(bool trainable_only = false) const;
  // The InitVariable targets of every Variable (the explicit initialisation op).
  std::vector<Value> initializers() const;
  int find(const std::string& name) const;  // -1 if absent
  uint64_t seed() const { return seed_; }

 private:
  uint64_t seed_;
  std::vector<Node> nodes_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<int> init_nodes_;
};

// Output specs of a node given its inputs' specs (shape_infer.cpp). Throws rf::Error with a
// message that the Graph prefixes with the node's name.
std::vector<OutSpec> infer_outputs(const Node& node, const std::vector<OutSpec>& inputs);

}  // namespace rf
