// The training loop behind `ringflow train`: data, model, optimizer, session, metrics,
// checkpoints and the one-line JSON summary.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace rf {

struct TrainConfig {
  std::string model = "cnn";
  std::string dtype = "f32";  // f32 | f64: Variables and math
  std::string data = "fashion-mnist";  // or "synthetic"
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t synthetic_train = 12000, synthetic_test = 2000;
  int64_t epochs = 3;
  int64_t max_steps = -1;  // stop after this many steps in total (-1: no limit)
  int64_t batch = 64;      // global batch
  double lr = 0.05;
  std::string optimizer = "momentum";
  double momentum = 0.9;
  double weight_decay = 0;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  std::string device = "auto";
  uint64_t seed = 42;
  int threads = 0;  // 0: the node's cores divided by the ranks on it
  std::string metrics_path;
  int64_t metrics_every = 100;
  bool shuffle = true;
  std::string init_from;
  std::string save_path;
  int64_t eval_batch = 1000;
  bool progress = true;
  // Data parallel (under mpirun): one replica per rank, --batch split evenly.
  std::string collective = "auto";  // auto | ring | mpi
  double bucket_mb = 25;
  int64_t check_every = 0;          // cross-rank checksum of the Variables every K steps (0: off)
  std::string timeline_path;        // Chrome trace of ops and bucket allreduces
  std::string compress = "none";    // none | fp16 | bf16 | powersgd:RANK | topk:RATIO
  int64_t compress_warmup = 0;      // powersgd/topk: plain allreduce steps first
  double compress_momentum = 0;     // topk: DGC momentum correction factor (0: off)
  std::string cuda_graph = "auto";  // auto | on | off: replay each training step as a captured CUDA graph
                                    // (auto: where it can, i.e. one replica on a GPU without --timeline)
  std::string fuse_epilogues = "on"; // on | off: MatMul/Conv2D -> BiasAdd [-> Relu] run as one step
  std::string fuse_update = "auto"; // auto | on | off: updates average the peers' gradients in place (one node)
  std::string memory_reuse = "on";  // on | off: node outputs share memory by liveness (Session::set_memory_reuse)
  int64_t plan_cache = 0;           // plans the session keeps (least recently used out); 0: the Session's default
  bool no_gradient_exchange = false; // diagnostics: replicas skip the gradient exchange (and drift apart)
};

// A set-up error (flags, data, output paths) that train() found before training and agreed on
// across the ranks, so every rank throws it alike: the caller prints it once (where `print`, on
// rank 0) and every rank exits normally; no peer is left waiting.
struct JobError : Error {
  JobError(const std::string& what, bool print_it) : Error(what), print(print_it) {}
  bool print;
};

// Checks every flag's value and their combinations that can be known without data, devices or
// peers (throws rf::Error with a one-line message); train() starts with it.
void validate_config(const TrainConfig& cfg);

// Validates the configuration (throws JobError with a one-line message on bad input), trains
// and returns the summary (model, device, world_size, steps, train_seconds, samples_per_second,
// test_accuracy, final_loss, param_norm, ...).
nlohmann::json train(const TrainConfig& cfg);

}  // namespace rf
