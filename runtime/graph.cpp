// Graph construction: node ids are assigned in order, so every node comes after its inputs.
#include "runtime/graph.h"

namespace rf {

namespace {
// FNV-1a over the name, mixed with the graph seed: a variable's initial values depend only on
// (graph seed, name).
uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

Value Graph::add(Op op, std::vector<Value> inputs, Attrs attrs, const std::string& name) {
  Node n;
  n.id = int(nodes_.size());
  n.op = op;
  n.name = name.empty() ? std::string(op_name(op)) + "_" + std::to_string(n.id) : name;
  RF_CHECK(!by_name_.count(n.name), "a node named '", n.name, "' already exists in the graph");
  const OpInfo& info = op_info(op);
  RF_CHECK(info.num_inputs < 0 || int(inputs.size()) == info.num_inputs, "node '", n.name, "' (",
           info.name, "): expected ", info.num_inputs, " inputs, got ", inputs.size());
  std::vector<OutSpec> in_specs;
  in_specs.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Value& v = inputs[i];
    RF_CHECK(v.valid() && v.graph == this && v.node < n.id, "node '", n.name, "' (", info.name,
             "): input ", i, " is not a value of this graph");
    const Node& src = nodes_[size_t(v.node)];
    RF_CHECK(v.index < int(src.outputs.size()), "node '", n.name, "': input ", i, " refers to output ",
             v.index, " of '", src.name, "', which has ", src.outputs.size());
    in_specs.push_back(src.outputs[size_t(v.index)]);
  }
  n.inputs = std::move(inputs);
  n.attrs = std::move(attrs);
  try {
    n.outputs = infer_outputs(n, in_specs);
  } catch (const Error& e) {
    fail("node '", n.name, "' (", info.name, "): ", e.what());
  }
  by_name_[n.name] = n.id;
  nodes_.push_back(std::move(n));
  return Value{this, nodes_.back().id, 0};
}

Value Graph::placeholder(const std::string& name, DType dtype, const Shape& shape) {
  Attrs a;
  a.dtype = dtype;
  a.shape = shape;
  return add(Op::Placeholder, {}, std::move(a), name);
}

Value Graph::constant(const Tensor& value, const std::string& name) {
  RF_CHECK(value.defined() && value.device().is_cpu(), "constant '", name, "' must be a host tensor");
  Attrs a;
  a.value = value;
  a.dtype = value.dtype();
  a.shape = value.shape();
  return add(Op::Const, {}, std::move(a), name);
}

Value Graph::variable(const std::string& name, const Shape& shape, DType dtype, Initializer init,
                      bool trainable) {
  RF_CHECK(!name.empty(), "a Variable needs a name");
  RF_CHECK(shape.defined(), "Variable '", name, "' needs a fully defined shape, got ", shape.str());
  Attrs a;
  a.dtype = dtype;
  a.shape = shape;
  a.init = init;
  a.trainable = trainable;
  a.seed = name_seed(seed_, name);
  Value v = add(Op::Variable, {}, std::move(a), name);
  Attrs ia;
  ia.var = v.node;
  Value init_node = add(Op::InitVariable, {}, std::move(ia), name + "/init");
  init_nodes_.push_back(init_node.node);
  return v;
}

std::vector<int> Graph::variables(bool trainable_only) const {
  std::vector<int> out;
  for (const Node& n : nodes_)
    if (n.op == Op::Variable && (!trainable_only || n.attrs.trainable)) out.push_back(n.id);
  return out;
}

std::vector<Value> Graph::initializers() const {
  std::vector<Value> out;
  for (int id : init_nodes_) out.push_back(Value{const_cast<Graph*>(this), id, 0});
  return out;
}

int Graph::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? -1 : it->second;
}

}  // namespace rf
