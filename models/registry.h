// The model registry: every model `ringflow train --model NAME` can train is registered once, in
// the file that defines it, with RF_REGISTER_MODEL. A model is a builder that adds its graph to a
// Graph and describes it as a ModelSpec: the named inputs a DataSource feeds, the scalar loss, the
// metrics to report and the trainable Variables. Nothing else lists model names: the command
// line's --model check, its error message and `ringflow models` read the registry.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/graph.h"
#include "runtime/tensor.h"

namespace rf {

// What a builder is given: the dtype of its Variables and math, and its model-specific options
// (`ringflow train --NAME VALUE` for each option the model declares), as strings.
struct ModelConfig {
  DType dtype = DType::F32;
  std::map<std::string, std::string> options;
  // Option `name`, or `fallback` where it was not given. The typed readers throw rf::Error
  // naming the option (as --NAME) when the value does not parse or, for get_int, is below `min`.
  std::string get(const std::string& name, const std::string& fallback) const;
  int64_t get_int(const std::string& name, int64_t fallback, int64_t min = INT64_MIN) const;
  double get_double(const std::string& name, double fallback) const;
};

// One batch as a metric sees it: the metric's `fetch` values in order, the batch's feeds by
// input name, and its number of samples. Host functions get host tensors; device functions get
// tensors on the training device.
struct MetricBatch {
  const std::vector<Tensor>& fetched;
  const std::map<std::string, const Tensor*>& feeds;
  int64_t rows = 0;
  const Tensor& feed(const std::string& name) const;  // throws rf::Error naming a missing feed
};

// What a metric adds up over batches; its value is sum / count (summed over the steps of a
// reporting window, or the batches of an evaluation, and over the ranks).
struct MetricSum {
  double sum = 0, count = 0;
};

// A number reported beside the loss: in every metrics line (over the training window, named
// `name`), and in every epoch line and the summary over the test set (the summary names it
// `test_<name>`). Either
//  - a scalar of the graph (`scalar` valid): each batch adds scalar * scale * rows to the sum and
//    rows to the count, so the value is the per-sample mean (bits per character: the loss with
//    scale 1/ln 2), or
//  - a host function over fetched tensors and the feeds (`host`), with an optional `device`
//    version for a GPU: queued on the step's stream after its last node, it writes {sum, count}
//    into `out` (F64 [2] on the device) without synchronising, so a step keeps its one wait and
//    can be captured as a CUDA graph. Without it a GPU step copies the metric's tensors to the
//    host.
struct Metric {
  using HostFn = std::function<MetricSum(const MetricBatch&)>;
  using DeviceFn = std::function<void(const MetricBatch&, Tensor& out)>;
  std::string name;
  Value scalar;
  double scale = 1;
  std::vector<Value> fetch;
  HostFn host;
  DeviceFn device;

  static Metric mean_of(std::string name, Value scalar, double scale = 1);
  static Metric on_host(std::string name, std::vector<Value> fetch, HostFn host, DeviceFn device = nullptr);
};

// A built model.
struct ModelSpec {
  std::string name;                                   // the registry's name (filled in by build_model_spec)
  std::vector<std::pair<std::string, Value>> inputs;  // placeholders [batch, ...] a DataSource feeds, by name
  Value loss;                                         // scalar, minimised
  std::vector<Metric> metrics;
  std::vector<int> variables;  // trainable Variables (node ids; filled in by build_model_spec: what checkpoints hold)

  Value input(const std::string& name) const;  // throws rf::Error for an unknown input
};

using ModelBuilder = std::function<ModelSpec(Graph&, const ModelConfig&)>;

// A model-specific option: `ringflow train --NAME VALUE` (help and default for --help).
struct ModelOption {
  std::string name, default_value, help;
};

struct ModelEntry {
  std::string name;
  std::string description;  // one line, for `ringflow models`
  ModelBuilder build;
  std::vector<ModelOption> options;
  std::string data = "fashion-mnist";  // the data set `ringflow train --data auto` gives it
};

class ModelRegistry {
 public:
  void add(ModelEntry entry);  // throws rf::Error for an empty or duplicate name
  const ModelEntry* find(const std::string& name) const;
  // The entry, or rf::Error "unknown model 'NAME': expected one of a, b, c".
  const ModelEntry& get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, ModelEntry>& entries() const { return entries_; }
  // "a, b or c": the names for an error message.
  std::string names_text() const;

 private:
  std::map<std::string, ModelEntry> entries_;
};

// The process's registry, with the built-in models linked in (see link_models()).
ModelRegistry& models();

// Builds model `name` into g: checks the options against the ones the model declares (an
// undeclared one is an error naming it), runs the builder and completes the spec (its name and
// trainable Variables, a scalar loss).
ModelSpec build_model_spec(Graph& g, const std::string& name, const ModelConfig& config = {});

// A static library drops an object file nobody references, and with it the static registration
// objects in it. models() calls link_models(), which references one anchor function in each
// file of built-in models, so every file that registers a built-in model is linked wherever the
// registry is used. A new file of built-in models adds its anchor there (registry.cpp). A
// program's own models (examples/) live in its own objects, which are always linked.
void link_models();

struct ModelRegistration {
  ModelRegistration(std::string name, std::string description, ModelBuilder build,
                    std::vector<ModelOption> options = {}, std::string data = "fashion-mnist") {
    models().add(ModelEntry{std::move(name), std::move(description), std::move(build), std::move(options),
                            std::move(data)});
  }
};

#define RF_MODEL_CONCAT_(a, b) a##b
#define RF_MODEL_CONCAT(a, b) RF_MODEL_CONCAT_(a, b)
// RF_REGISTER_MODEL("name", "one-line description", builder [, {{"option", "default", "help"}, ...}
// [, "default data set"]])
// at namespace scope registers a model when the program starts.
#define RF_REGISTER_MODEL(name, description, ...) \
  static const ::rf::ModelRegistration RF_MODEL_CONCAT(rf_model_registration_, __LINE__)(name, description, __VA_ARGS__)

}  // namespace rf
