// The Trainer: trains any registered model (registry.h) on any DataSource (data.h), alone or
// data parallel under mpirun, and returns the run's one-line JSON summary. `ringflow train`
// (train() below, cli.cpp) is a thin layer over it: flags -> TrainConfig -> the registry's
// model and the image DataSource -> Trainer::fit.
//
//   rf::TrainerConfig c;  c.epochs = 1;  c.batch = 64;
//   rf::Trainer trainer(c);
//   auto summary = trainer.fit("mlp", {}, [] {
//     return rf::make_image_source("fashion-mnist", rf::kFashionMnistDefaultDir, 0, 0, 42); });
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "models/data.h"
#include "models/registry.h"
#include "runtime/error.h"

namespace rf {

// What the Trainer does, for every model and data set alike.
struct TrainerConfig {
  std::string dtype = "f32";  // f32 | f64: Variables and math
  int64_t epochs = 3;
  int64_t max_steps = -1;  // stop after this many steps in total (-1: no limit)
  double max_minutes = 0;  // stop once training steps have taken this long (rank 0's clock; 0: no limit)
  int64_t eval_every = 0;  // also evaluate every this many steps (0: at the end of each epoch only)
  int64_t batch = 64;      // global batch
  double lr = 0.05;
  std::string optimizer = "momentum";
  double momentum = 0.9;
  double weight_decay = 0;
  double beta1 = 0.9, beta2 = 0.999;  // adam, adamw
  double clip_norm = 0;               // > 0: gradients clipped to this global norm after their exchange
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  std::string device = "auto";
  uint64_t seed = 42;
  int threads = 0;  // 0: the node's cores divided by the ranks on it
  std::string metrics_path;
  int64_t metrics_every = 100;
  bool shuffle = true;
  std::string init_from;
  // With init_from: continue the run that saved it (its data order's epoch and position and its
  // step count, from the checkpoint's metadata) instead of starting a new one. Optimizer slots
  // are not saved, so the continued run is the uninterrupted one exactly for slot-free SGD.
  bool resume = false;
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

// `ringflow train`'s configuration: the Trainer's, plus which model (a registry name and its
// model-specific options) and which image data set.
struct TrainConfig : TrainerConfig {
  std::string model = "cnn";
  std::map<std::string, std::string> model_options;  // --NAME VALUE of the options the model declares
  std::string data = "auto";  // fashion-mnist | synthetic | kjv | auto (the model's own, registry.h)
  std::string data_dir;       // empty: the data set's default (resolved_data_dir)
  int64_t synthetic_train = 12000, synthetic_test = 2000;
};

// --data and --data-dir with "auto" and "" resolved: the model's data set, and its default place
// (Fashion-MNIST: Debian's /usr/share/datasets/fashion-mnist; kjv: data/kjv, or the text printed
// by Debian's `bible` program where that has no kjv.txt).
std::string resolved_data(const TrainConfig& c);
std::string resolved_data_dir(const TrainConfig& c);

// A set-up error (flags, data, output paths) that the Trainer found before training and agreed on
// across the ranks, so every rank throws it alike: the caller prints it once (where `print`, on
// rank 0) and every rank exits normally; no peer is left waiting.
struct JobError : Error {
  JobError(const std::string& what, bool print_it) : Error(what), print(print_it) {}
  bool print;
};

// Checks every value of the Trainer's configuration and their combinations that can be known
// without data, devices or peers (throws rf::Error with a one-line message).
void validate_trainer_config(const TrainerConfig& cfg);
// The same for `ringflow train`: the model (the registry) and data set too.
void validate_config(const TrainConfig& cfg);

class Trainer {
 public:
  explicit Trainer(TrainerConfig config) : cfg_(std::move(config)) {}

  // Builds registered model `model` with `options` and the data source `data` makes, trains it
  // and returns the summary (model, data, device, world_size, steps, train_seconds,
  // samples_per_second, test_loss, test_<metric> for each of the model's metrics, final_loss,
  // param_norm, ...; README "Training"). Every set-up error (the configuration, the model and
  // its options, the data, the devices, --init-from, the output paths) is agreed on by every
  // rank and thrown as JobError. An error during training throws rf::Error.
  nlohmann::json fit(const std::string& model, const std::map<std::string, std::string>& options,
                     const DataFactory& data);

  const TrainerConfig& config() const { return cfg_; }

 private:
  TrainerConfig cfg_;
};

// `ringflow train`: validates the configuration, then trains c.model on the image data set
// c.data through a Trainer (throws JobError with a one-line message on bad input).
nlohmann::json train(const TrainConfig& cfg);

}  // namespace rf
