// A user's own model in one file: a classifier that reads a Fashion-MNIST image as a sequence of
// 28 row tokens, registered with RF_REGISTER_MODEL and trained (data parallel under mpirun)
// through the same rf::Trainer as `ringflow train`.
//
//   mpirun -np 2 build/examples/rows_classifier [--data-dir DIR] [--steps N] [--width D]
//                                               [--min-accuracy A] [--world-size P]
//
// Prints the Trainer's JSON summary (rank 0) and exits 1 when the test accuracy is below
// --min-accuracy or the job's world size is not --world-size (the ctest example_rows_np2 asks
// for both), 77 when Fashion-MNIST is not installed (ctest: skipped).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "models/classify.h"
#include "models/dataset.h"
#include "models/image_data.h"
#include "models/nn.h"
#include "models/registry.h"
#include "models/trainer.h"
#include "runtime/ops.h"

namespace {

using namespace rf;

// Rows as tokens: each of the 28 rows (28 pixels) is embedded by one Linear shared by every row
// (a reshape to [N*28, 28] and one MatMul), plus a learned position per row; one pre-LN
// Transformer block (multi-head self-attention over the 28 rows, no mask, and an MLP) mixes
// them; the mean over the rows goes to a Linear head.
ModelSpec build_rows(Graph& g, const ModelConfig& c) {
  const int64_t width = c.get_int("width", 32, 1), heads = c.get_int("heads", 4, 1);
  return image_classifier(g, c, Shape{1, 28, 28}, [&](Value images) {
    Value h = nn::linear(ops::reshape(images, Shape{-1, 28}), width, "embed");  // [N*28, D]
    const Value pos = g.variable("pos.weight", Shape{28, width}, g.spec(h).dtype, Initializer::normal(0, 0.02));
    h = ops::reshape(ops::add(ops::reshape(h, Shape{-1, 28, width}), pos), Shape{-1, width});
    h = nn::transformer_block(h, 28, heads, Value{}, "block");                   // attention over the rows
    h = ops::mean(ops::reshape(nn::layer_norm(h, "ln"), Shape{-1, 28, width}), {1});  // [N, D]
    return nn::linear(h, 10, "head");
  });
}

}  // namespace

RF_REGISTER_MODEL("rows", "Fashion-MNIST rows as 28 tokens: row embedding, a Transformer block, linear head", build_rows,
                  {{"width", "32", "features per row token"}, {"heads", "4", "attention heads"}});

int main(int argc, char** argv) {
  std::string dir = rf::kFashionMnistDefaultDir, width = "32";
  double min_accuracy = 0;
  int world_size = 0;
  rf::TrainerConfig c;
  c.epochs = 1;
  c.max_steps = 800;
  c.batch = 64;
  c.optimizer = "adam";
  c.lr = 3e-3;
  c.device = "cpu";
  c.threads = 1;
  c.progress = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--data-dir") dir = value;
    else if (flag == "--steps") c.max_steps = std::atoll(value.c_str());
    else if (flag == "--width") width = value;
    else if (flag == "--min-accuracy") min_accuracy = std::atof(value.c_str());
    else if (flag == "--world-size") world_size = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "rows_classifier: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (!std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz")) {
    std::fprintf(stderr, "rows_classifier: SKIP: no Fashion-MNIST in %s\n", dir.c_str());
    return 77;
  }
  nlohmann::json s;
  try {
    rf::Trainer trainer(c);
    s = trainer.fit("rows", {{"width", width}}, [&] { return rf::make_image_source("fashion-mnist", dir, 0, 0, c.seed); });
  } catch (const rf::JobError& e) {  // a set-up error, agreed by every rank: rank 0 prints it
    if (e.print) std::fprintf(stderr, "rows_classifier: error: %s\n", e.what());
    return 1;
  }
  if (s["rank"].get<int>() != 0) return 0;
  std::cout << s.dump() << std::endl;
  const double acc = s["test_accuracy"].get<double>();
  if (acc < min_accuracy || (world_size > 0 && s["world_size"].get<int>() != world_size)) {
    std::fprintf(stderr, "rows_classifier: FAIL: test accuracy %.4f (want >= %.4f), world size %d (want %d)\n", acc,
                 min_accuracy, s["world_size"].get<int>(), world_size);
    return 1;
  }
  return 0;
}
