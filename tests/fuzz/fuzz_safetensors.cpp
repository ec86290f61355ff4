// libFuzzer target: the safetensors reader (rf::load_safetensors: header length, JSON header,
// dtypes, shapes, data offsets) and --init-from's checks built on it (rf::read_checkpoint against
// a small model). A thrown exception is a rejection; a crash, a sanitizer report, a leak, a hang
// or memory beyond -rss_limit_mb is a bug. The input is the file, byte for byte.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>

#include "models/checkpoint.h"
#include "models/safetensors.h"
#include "runtime/graph.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

// The model --init-from checks against: trainable Variables of both dtypes the models use
// (w F32 [2,3], b F32 [3], v F64 [2]), and a Variable that is not trainable (slot), which a
// checkpoint must not name. tests/fuzz/corpus/safetensors/checkpoint fits it.
const rf::Graph& model() {
  static rf::Graph* g = [] {
    auto* g = new rf::Graph(1);
    g->variable("w", rf::Shape{2, 3}, rf::DType::F32, rf::Initializer::zeros());
    g->variable("b", rf::Shape{3}, rf::DType::F32, rf::Initializer::zeros());
    g->variable("v", rf::Shape{2}, rf::DType::F64, rf::Initializer::zeros());
    g->variable("slot", rf::Shape{2}, rf::DType::F32, rf::Initializer::zeros(), /*trainable=*/false);
    return g;
  }();
  return *g;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static rf_fuzz::MemFile file("safetensors");
  const std::string& path = file.hold(data, size);
  try {
    std::map<std::string, std::string> metadata;
    const auto tensors = rf::load_safetensors(path, &metadata);
    // What the reader promises of a file it accepts: every tensor's bytes are its shape's.
    for (const auto& [name, t] : tensors)
      if (!t.shape.defined() ||
          t.bytes.size() != static_cast<size_t>(t.shape.numel()) * rf::dtype_size(t.dtype))
        std::abort();
    rf_fuzz::verdict("load_safetensors");
  } catch (const std::exception& e) {
    rf_fuzz::verdict("load_safetensors", e.what());
  }
  try {
    const auto vars = rf::read_checkpoint(model(), path);
    if (vars.size() != 3) std::abort();
    for (const auto& [id, t] : vars) {
      if (t.dtype() == rf::DType::F32) {
        for (float x : t.to_vector<float>())
          if (!std::isfinite(x)) std::abort();
      } else {
        for (double x : t.to_vector<double>())
          if (!std::isfinite(x)) std::abort();
      }
    }
    rf_fuzz::verdict("read_checkpoint");
  } catch (const std::exception& e) {
    rf_fuzz::verdict("read_checkpoint", e.what());
  }
  return 0;
}
