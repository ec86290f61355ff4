// The model registry (registry.h) and ModelConfig's option readers.
#include "models/registry.h"

#include <cerrno>
#include <cstdlib>

#include "runtime/error.h"

namespace rf {

namespace detail {
// One anchor per file of built-in models (defined there): referencing it links that file.
void link_classifier_models();
void link_gpt_model();
}  // namespace detail

void link_models() {
  detail::link_classifier_models();
  detail::link_gpt_model();
}

std::string ModelConfig::get(const std::string& name, const std::string& fallback) const {
  auto it = options.find(name);
  return it == options.end() ? fallback : it->second;
}

int64_t ModelConfig::get_int(const std::string& name, int64_t fallback, int64_t min) const {
  auto it = options.find(name);
  if (it == options.end()) return fallback;
  const std::string& v = it->second;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  RF_CHECK(!v.empty() && end && *end == '\0' && errno != ERANGE, "--", name, " must be an integer, got '", v, "'");
  RF_CHECK(x >= min, "--", name, " must be >= ", min, ", got ", x);
  return x;
}

double ModelConfig::get_double(const std::string& name, double fallback) const {
  auto it = options.find(name);
  if (it == options.end()) return fallback;
  const std::string& v = it->second;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  RF_CHECK(!v.empty() && end && *end == '\0', "--", name, " must be a number, got '", v, "'");
  return x;
}

const Tensor& MetricBatch::feed(const std::string& name) const {
  auto it = feeds.find(name);
  RF_CHECK(it != feeds.end() && it->second, "metric: no feed named '", name, "'");
  return *it->second;
}

Metric Metric::mean_of(std::string name, Value scalar, double scale) {
  Metric m;
  m.name = std::move(name);
  m.scalar = scalar;
  m.scale = scale;
  return m;
}

Metric Metric::on_host(std::string name, std::vector<Value> fetch, HostFn host, DeviceFn device) {
  Metric m;
  m.name = std::move(name);
  m.fetch = std::move(fetch);
  m.host = std::move(host);
  m.device = std::move(device);
  return m;
}

Value ModelSpec::input(const std::string& n) const {
  for (const auto& [key, v] : inputs)
    if (key == n) return v;
  fail("model '", name, "' has no input '", n, "'");
}

void ModelRegistry::add(ModelEntry e) {
  RF_CHECK(!e.name.empty(), "a model needs a name");
  RF_CHECK(e.build != nullptr, "model '", e.name, "' has no builder");
  RF_CHECK(!entries_.count(e.name), "model '", e.name, "' is registered twice");
  const std::string name = e.name;
  entries_.emplace(name, std::move(e));
}

const ModelEntry* ModelRegistry::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> ModelRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

std::string ModelRegistry::names_text() const {
  const std::vector<std::string> n = names();
  std::string s;
  for (size_t i = 0; i < n.size(); ++i) s += (i == 0 ? "" : i + 1 == n.size() ? " or " : ", ") + n[i];
  return s.empty() ? "(no models registered)" : s;
}

const ModelEntry& ModelRegistry::get(const std::string& name) const {
  const ModelEntry* e = find(name);
  RF_CHECK(e, "unknown model '", name, "': expected ", names_text(), " (`ringflow models` lists them)");
  return *e;
}

ModelRegistry& models() {
  static ModelRegistry registry;
  static const bool linked = (link_models(), true);
  (void)linked;
  return registry;
}

ModelSpec build_model_spec(Graph& g, const std::string& name, const ModelConfig& config) {
  const ModelEntry& e = models().get(name);
  for (const auto& [key, value] : config.options) {
    bool declared = false;
    for (const ModelOption& o : e.options) declared = declared || o.name == key;
    RF_CHECK(declared, "--", key, " is not an option of model '", name, "'");
  }
  RF_CHECK(config.dtype == DType::F32 || config.dtype == DType::F64, "models are F32 or F64, not ",
           dtype_name(config.dtype));
  const int first_node = g.size();
  ModelSpec spec = e.build(g, config);
  spec.name = name;
  RF_CHECK(spec.loss.valid() && spec.loss.graph == &g, "model '", name, "' has no loss");
  RF_CHECK(g.spec(spec.loss).shape.numel() == 1 && g.spec(spec.loss).shape.rank == 0, "model '", name,
           "': the loss must be a scalar, it is ", g.spec(spec.loss).shape.str());
  for (const auto& [in, v] : spec.inputs)
    RF_CHECK(v.valid() && g.node(v).op == Op::Placeholder, "model '", name, "': input '", in,
             "' is not a placeholder");
  for (const Metric& m : spec.metrics)
    RF_CHECK(!m.name.empty() && (m.scalar.valid() || m.host), "model '", name,
             "': a metric needs a name and a scalar or a host function");
  spec.variables.clear();
  for (int id : g.variables(true))
    if (id >= first_node) spec.variables.push_back(id);
  return spec;
}

}  // namespace rf
