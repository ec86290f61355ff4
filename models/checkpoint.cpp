// Checkpoints: the trainable Variables to and from safetensors files, checked against the model.
#include "models/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "models/safetensors.h"
#include "runtime/error.h"

namespace rf {

double param_norm(Session& s, const Graph& g) {
  double acc = 0;
  for (int id : g.variables(true)) {
    const Tensor& t = s.variable(id);
    if (t.dtype() == DType::F32)
      for (float v : t.to_vector<float>()) acc += double(v) * double(v);
    else
      for (double v : t.to_vector<double>()) acc += v * v;
  }
  return std::sqrt(acc);
}

// Read in the trainer's set-up, before training starts, so a bad file is a set-up error every
// rank agrees on.
std::vector<std::pair<int, Tensor>> read_checkpoint(const Graph& g, const std::string& path) {
  const std::vector<int> vars = g.variables(true);
  // Names, dtypes and shapes from the header, before any data is read.
  auto fits = [&](const std::map<std::string, LoadedTensor>& header) {
    for (int id : vars) {
      const Node& n = g.node(id);
      auto it = header.find(n.name);
      RF_CHECK(it != header.end(), path, ": Variable '", n.name, "' is missing from the checkpoint");
      RF_CHECK(it->second.dtype == n.attrs.dtype && it->second.shape == n.attrs.shape, path, ": Variable '",
               n.name, "' is ", dtype_name(it->second.dtype), it->second.shape.str(),
               " in the checkpoint, the model has ", dtype_name(n.attrs.dtype), n.attrs.shape.str());
    }
    for (const auto& [name, t] : header) {
      const int id = g.find(name);
      RF_CHECK(id >= 0 && std::find(vars.begin(), vars.end(), id) != vars.end(), path, ": the checkpoint has '",
               name, "', which is not a Variable of this model");
    }
  };
  auto tensors = load_safetensors(path, nullptr, fits);
  std::vector<std::pair<int, Tensor>> out;
  for (int id : vars) {
    const Node& n = g.node(id);
    auto it = tensors.find(n.name);
    Tensor host(n.attrs.shape, n.attrs.dtype);
    std::memcpy(host.raw(), it->second.bytes.data(), host.nbytes());
    auto check = [&](const auto* v) {
      for (int64_t i = 0; i < host.numel(); ++i)
        RF_CHECK(std::isfinite(v[i]), path, ": Variable '", n.name, "' holds ", double(v[i]), " at index ", i,
                 " (the checkpoint is corrupt, or was saved from a run that diverged)");
    };
    if (host.dtype() == DType::F32)
      check(host.data<float>());
    else if (host.dtype() == DType::F64)
      check(host.data<double>());
    out.emplace_back(id, std::move(host));
  }
  return out;
}

void save_checkpoint(Session& s, const Graph& g, const std::string& path,
                     const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> host;
  std::vector<NamedTensor> named;
  for (int id : g.variables(true)) host.push_back(s.variable(id).to(Device::cpu()));
  size_t i = 0;
  for (int id : g.variables(true)) {
    const Tensor& t = host[i++];
    named.push_back({g.node(id).name, t.dtype(), t.shape(), t.raw()});
  }
  save_safetensors(path, named, metadata);
}

std::map<std::string, std::string> data_state_metadata(const DataState& state, int64_t step) {
  return {{"ringflow.data_epoch", std::to_string(state.epoch)},
          {"ringflow.data_position", std::to_string(state.position)},
          {"ringflow.step", std::to_string(step)}};
}

DataState read_data_state(const std::string& path, int64_t* step) {
  std::map<std::string, std::string> meta;
  // Only the header is wanted: refusing every tensor from the header check stops before the data.
  struct HeaderRead {};
  try {
    load_safetensors(path, &meta, [](const std::map<std::string, LoadedTensor>&) { throw HeaderRead{}; });
  } catch (const HeaderRead&) {
  }
  auto number = [&](const char* key) {
    auto it = meta.find(key);
    RF_CHECK(it != meta.end(), path, ": no ", key, " in the checkpoint's metadata (not saved by ringflow --save)");
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(it->second, &used);
    } catch (const std::exception&) {
    }
    RF_CHECK(used == it->second.size() && v >= 0, path, ": ", key, " is '", it->second, "', not a count");
    return int64_t(v);
  };
  if (step) *step = number("ringflow.step");
  return {number("ringflow.data_epoch"), number("ringflow.data_position")};
}

}  // namespace rf
