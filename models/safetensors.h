// Checkpoints in the safetensors format (readable by the Python `safetensors` package): atomic
// save and strictly validated load of named tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/common.h"
#include "runtime/dtype.h"

namespace rf {

// A tensor to write; data points at shape.numel() * dtype_size(dtype) bytes of host memory in
// row-major order, which must stay valid during save_safetensors.
struct NamedTensor {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;
};

// Writes the tensors (data laid out in the given order) and optional string metadata
// ("__metadata__") to path. Writes PATH.tmp.<pid>, fsyncs it, then renames it onto path, so a
// crash leaves either the old file or the new one, never a half-written one. Throws rf::Error on
// duplicate/empty names, undefined shapes or any I/O error (the temp file is removed).
void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct LoadedTensor {
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;  // shape.numel() * dtype_size(dtype) bytes, little-endian
};

// Reads every tensor of a safetensors file. Throws rf::Error naming the file and the problem for
// a missing file, a header length beyond the file, bad JSON, an unknown dtype, or data offsets
// that are out of range, overlap, leave gaps, or do not match shape * dtype size. If metadata is
// given, it receives "__metadata__" (empty when absent). Matching names and shapes against a
// model is the caller's job: check_header, if given, sees every tensor's name, dtype and shape
// (bytes still empty) once the header is validated and before any data is read, and throws to
// refuse the file (a checkpoint of another model is then rejected without reading gigabytes).
std::map<std::string, LoadedTensor> load_safetensors(
    const std::string& path, std::map<std::string, std::string>* metadata = nullptr,
    const std::function<void(const std::map<std::string, LoadedTensor>&)>& check_header = nullptr);

}  // namespace rf
