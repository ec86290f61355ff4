// Checkpoints of a model's trainable Variables (safetensors, by Variable name): --save and
// --init-from, and the parameter norm the summary reports.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/data.h"
#include "runtime/graph.h"
#include "runtime/session.h"
#include "runtime/tensor.h"

namespace rf {

// The L2 norm of every trainable Variable, summed in double (NaN or inf once training diverged).
double param_norm(Session& s, const Graph& g);

// A checkpoint's Variables, read from path and checked against the model: each trainable Variable
// by name with the model's dtype and shape (matched from the header, before any data is read),
// nothing else in the file, every value finite. Returns (Variable node id, host tensor) pairs to
// copy into a session; throws rf::Error naming the file and the problem.
std::vector<std::pair<int, Tensor>> read_checkpoint(const Graph& g, const std::string& path);

// Writes every trainable Variable to path (atomically: a temporary file renamed into place),
// with `metadata` as the file's "__metadata__".
void save_checkpoint(Session& s, const Graph& g, const std::string& path,
                     const std::map<std::string, std::string>& metadata = {});

// Where the training order stood and how many steps had run, as checkpoint metadata
// ("ringflow.data_epoch", "ringflow.data_position", "ringflow.step"; --save writes them), and
// read back from a checkpoint (throws rf::Error naming the file where they are missing or bad).
std::map<std::string, std::string> data_state_metadata(const DataState& state, int64_t step);
DataState read_data_state(const std::string& path, int64_t* step = nullptr);

}  // namespace rf
