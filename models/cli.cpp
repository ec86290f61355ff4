// The `ringflow` command line (CLI11): every flag of `ringflow train` and the checks CLI11 makes
// of each value.
#include "models/cli.h"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <ostream>
#include <string>
#include <type_traits>

#include "models/registry.h"
#include "runtime/error.h"
#include "runtime/session.h"

namespace rf {
namespace {

// An integer flag's value, checked before CLI11 converts it (which would wrap "-1" into an
// unsigned flag and clamp a number beyond the type's range): digits (a sign for signed T) that
// fit in T.
template <class T> CLI::Validator integer() {
  return CLI::Validator(
      [](const std::string& v) -> std::string {
        const size_t digits = std::is_signed_v<T> && !v.empty() && v[0] == '-' ? 1 : 0;
        if (v.size() == digits || v.find_first_not_of("0123456789", digits) != std::string::npos)
          return std::is_signed_v<T> ? "must be an integer" : "must be a non-negative integer";
        errno = 0;
        char* end = nullptr;
        const long long s = std::is_signed_v<T> ? std::strtoll(v.c_str(), &end, 10) : 0;
        const unsigned long long u = std::is_signed_v<T> ? 0 : std::strtoull(v.c_str(), &end, 10);
        const bool fits = errno != ERANGE && (std::is_signed_v<T> ? s >= std::numeric_limits<T>::min() &&
                                                                        s <= std::numeric_limits<T>::max()
                                                                  : u <= std::numeric_limits<T>::max());
        return fits ? "" : "is out of range (" + std::to_string(std::numeric_limits<T>::min()) + " to " +
                               std::to_string(std::numeric_limits<T>::max()) + ")";
      },
      "");  // no text: the help already says INT
}

}  // namespace

CommandLine parse_command_line(int argc, const char* const* argv, std::ostream& out) {
  CLI::App app{"ringflow: a data-parallel deep-learning trainer (graph runtime, autodiff, ring-allreduce)"};
  app.require_subcommand(1);
  CommandLine cl;
  TrainConfig& c = cl.config;
  bool no_shuffle = false, quiet = false;
  CLI::App* tr = app.add_subcommand("train", "train a model and print a one-line JSON summary on stdout");
  std::string model_names;
  for (const std::string& n : models().names()) model_names += (model_names.empty() ? "" : " | ") + n;
  tr->add_option("--model", c.model, model_names + " (`ringflow models` describes them)")
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            try {
              models().get(v);
            } catch (const Error& e) {
              return e.what();
            }
            return "";
          },
          ""))
      ->capture_default_str();
  tr->add_option("--dtype", c.dtype, "f32 | f64 (Variables and math)")
      ->check(CLI::IsMember({"f32", "f64"}))
      ->capture_default_str();
  tr->add_option("--data", c.data, "fashion-mnist | synthetic | kjv | auto (the model's: `ringflow models`)")
      ->check(CLI::IsMember({"fashion-mnist", "synthetic", "kjv", "auto"}))
      ->capture_default_str();
  tr->add_option("--data-dir", c.data_dir,
                 "directory of the data set's files (default: /usr/share/datasets/fashion-mnist for Fashion-MNIST, "
                 "data/kjv for kjv, falling back to Debian's `bible` program)");
  tr->add_option("--epochs", c.epochs, "epochs over the training set")
      ->check(integer<int64_t>())->capture_default_str();
  tr->add_option("--max-minutes", c.max_minutes,
                 "stop once the training steps have taken this many minutes (rank 0's clock; 0: no limit)")
      ->capture_default_str();
  tr->add_option("--eval-every", c.eval_every, "also evaluate on the test set every this many steps (0: per epoch)")
      ->check(integer<int64_t>())
      ->capture_default_str();
  tr->add_option("--max-steps", c.max_steps, "stop after this many steps (default: no limit)")
      ->check(integer<int64_t>())
      // The default, -1 (no limit), is not a value a user can pass.
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            return v[0] == '-' || v.find_first_not_of('0') == std::string::npos ? "must be positive" : "";
          },
          ""));
  tr->add_option("--batch", c.batch, "global batch size")->check(integer<int64_t>())->capture_default_str();
  tr->add_option("--lr", c.lr, "base learning rate")->capture_default_str();
  tr->add_option("--optimizer", c.optimizer, "sgd | momentum | nesterov | adam | adamw")
      ->check(CLI::IsMember({"sgd", "momentum", "nesterov", "adam", "adamw"}))
      ->capture_default_str();
  tr->add_option("--momentum", c.momentum, "momentum factor (momentum, nesterov)")->capture_default_str();
  tr->add_option("--weight-decay", c.weight_decay, "L2 (decoupled for adamw)")->capture_default_str();
  tr->add_option("--beta1", c.beta1, "Adam's first-moment decay (adam, adamw)")->capture_default_str();
  tr->add_option("--beta2", c.beta2, "Adam's second-moment decay (adam, adamw)")->capture_default_str();
  tr->add_option("--clip-grad-norm", c.clip_norm,
                 "clip the gradients to this global norm after their exchange (torch's clip_grad_norm_; 0: off)")
      ->capture_default_str();
  tr->add_option("--lr-schedule", c.schedule, "constant | step | cosine | invsqrt (warm-up then inverse square root)")
      ->check(CLI::IsMember({"constant", "step", "cosine", "invsqrt"}))
      ->capture_default_str();
  tr->add_option("--warmup-steps", c.warmup_steps, "linear learning-rate warm-up steps")
      ->check(integer<int64_t>())->capture_default_str();
  tr->add_option("--device", c.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  tr->add_option("--seed", c.seed, "seed of initialisation and shuffling")
      ->check(integer<uint64_t>())->capture_default_str();
  tr->add_option("--threads", c.threads, "CPU threads for kernels and BLAS (0: cores / ranks on the node)")
      ->check(integer<int>())->capture_default_str();
  tr->add_option("--metrics", c.metrics_path, "write JSON lines (every --metrics-every steps and every epoch)");
  tr->add_option("--metrics-every", c.metrics_every, "steps between metrics lines")
      ->check(integer<int64_t>())->capture_default_str();
  tr->add_flag("--no-shuffle", no_shuffle, "keep the data set order");
  tr->add_option("--init-from", c.init_from, "start from a safetensors checkpoint");
  tr->add_flag("--resume", c.resume,
               "with --init-from: continue the saved run's data order and step count (optimizer slots are not "
               "saved: exact for sgd)");
  tr->add_option("--save", c.save_path, "write the trained Variables as safetensors");
  tr->add_option("--eval-batch", c.eval_batch, "batch size of the test-set evaluation")
      ->check(integer<int64_t>())->capture_default_str();
  tr->add_option("--synthetic-train", c.synthetic_train, "samples in the synthetic training set")
      ->capture_default_str()->check(integer<int64_t>());
  tr->add_flag("--quiet", quiet, "no progress line on stderr");
  tr->add_option("--collective", c.collective,
                 "data parallel under mpirun: auto (nccl for GPU replicas, else ring), ring, mpi or nccl")
      ->check(CLI::IsMember({"auto", "ring", "mpi", "nccl"}))
      ->capture_default_str();
  tr->add_option("--bucket-mb", c.bucket_mb, "gradient bucket cap in MiB")->capture_default_str();
  tr->add_option("--check-every", c.check_every, "compare Variables across ranks every K steps (0: off)")
      ->capture_default_str()->check(integer<int64_t>());
  tr->add_option("--timeline", c.timeline_path, "write a Chrome trace of ops and allreduces (all ranks)");
  tr->add_option("--compress", c.compress, "gradient compression: none, fp16, bf16, powersgd:RANK or topk:RATIO")
      ->capture_default_str();
  tr->add_option("--compress-warmup", c.compress_warmup, "plain allreduce steps before powersgd/topk start")
      ->capture_default_str()->check(integer<int64_t>());
  tr->add_option("--compress-momentum", c.compress_momentum,
                 "topk: momentum correction factor (Deep Gradient Compression; use with --optimizer sgd)")
      ->capture_default_str();
  tr->add_option("--fuse-update", c.fuse_update,
                 "one node, ring collective: each update averages every rank's gradient straight from shared "
                 "memory instead of an allreduce (auto: where possible with at most 4 ranks)")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  tr->add_flag("--no-gradient-exchange", c.no_gradient_exchange,
               "diagnostics: skip the gradient exchange, so replicas drift apart; measures the step without "
               "communication (bench/scaling.sh --ceiling)")
      ->group("Diagnostics");
  tr->add_option("--fuse-epilogues", c.fuse_epilogues,
                 "run each MatMul/Conv2D -> BiasAdd [-> Relu] chain as one step (CUDA dense layers: one "
                 "cuBLASLt matmul with the bias/ReLU epilogue)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  tr->add_option("--memory-reuse", c.memory_reuse,
                 "node outputs share memory once their last reader has run (off: a buffer per output; the "
                 "summary's peak_plan_bytes compares the two)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  tr->add_option("--plan-cache", c.plan_cache,
                 "compiled plans the session keeps, least recently used out first (0: the default, " +
                     std::to_string(Session::kDefaultPlanCache) + ")")
      ->check(integer<int64_t>())
      ->capture_default_str();
  tr->add_option("--cuda-graph", c.cuda_graph,
                 "capture the training step as a CUDA graph after two warm-up steps and replay it (auto: where "
                 "it can, i.e. one replica on a GPU without --timeline; a bare --cuda-graph means on)")
      ->expected(0, 1)
      ->default_str("on")  // the value of a bare --cuda-graph; the default is c.cuda_graph's "auto"
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->option_text("[auto|on|off]=auto");

  // Each model's own options (registry.h: ModelOption), as --NAME VALUE; a name several models
  // declare is one flag. validate_config refuses an option the chosen model does not declare.
  std::map<std::string, std::string> given;
  std::map<std::string, CLI::Option*> model_flags;
  for (const auto& [name, entry] : models().entries())
    for (const ModelOption& o : entry.options) {
      auto it = model_flags.find(o.name);
      if (it != model_flags.end()) {
        it->second->description(it->second->get_description() + "; " + name + ": " + o.help);
        continue;
      }
      model_flags[o.name] = tr->add_option("--" + o.name, given[o.name], name + ": " + o.help)
                                ->default_str(o.default_value)
                                ->group("Model options");
    }
  CLI::App* list = app.add_subcommand("models", "list the models `ringflow train --model` can train");
  SampleConfig& sc = cl.sample_config;
  CLI::App* smp = app.add_subcommand("sample", "generate text from a checkpoint of the gpt model (docs/GPT.md)");
  smp->add_option("--init-from", sc.init_from, "the checkpoint (ringflow train --model gpt --save FILE)")->required();
  smp->add_option("--prompt", sc.prompt, "the text to continue")->capture_default_str();
  smp->add_option("--chars", sc.chars, "characters to generate")->check(integer<int64_t>())->capture_default_str();
  smp->add_option("--temperature", sc.temperature, "softmax temperature (0: the most likely character)")
      ->capture_default_str();
  smp->add_option("--seed", sc.seed, "seed of the sampling")->capture_default_str();
  smp->add_option("--data-dir", sc.data_dir, "where kjv.txt is, for the vocabulary (as ringflow train)");
  smp->add_option("--layers", sc.model.layers, "as in training")->check(integer<int64_t>())->capture_default_str();
  smp->add_option("--heads", sc.model.heads, "as in training")->check(integer<int64_t>())->capture_default_str();
  smp->add_option("--width", sc.model.width, "as in training")->check(integer<int64_t>())->capture_default_str();
  smp->add_option("--context", sc.model.context, "as in training")->check(integer<int64_t>())->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    cl.exit_code = app.exit(e, out);
    return cl;
  } catch (const CLI::CallForAllHelp& e) {
    cl.exit_code = app.exit(e, out);
    return cl;
  } catch (const CLI::ParseError& e) {
    cl.exit_code = 2;
    cl.error = e.what();
    return cl;
  }
  if (list->parsed()) {
    cl.list_models = true;
    return cl;
  }
  if (smp->parsed()) {
    cl.sample = true;
    return cl;
  }
  for (const auto& [name, flag] : model_flags)
    if (flag->count() > 0) c.model_options[name] = given[name];
  c.shuffle = !no_shuffle;
  c.progress = !quiet;
  cl.train = true;
  return cl;
}

void print_models(std::ostream& out) {
  size_t width = 0;
  for (const std::string& n : models().names()) width = std::max(width, n.size());
  for (const auto& [name, e] : models().entries()) {
    out << name << std::string(width + 2 - name.size(), ' ') << e.description << '\n';
    for (const ModelOption& o : e.options)
      out << std::string(width + 2, ' ') << "--" << o.name << " (default " << o.default_value << "): " << o.help
          << '\n';
  }
}

}  // namespace rf
