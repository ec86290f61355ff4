// The `ringflow` command line: every flag of `ringflow train`, parsed and checked (CLI11), apart
// from the program so that tests and the fuzzer (tests/fuzz/fuzz_cli.cpp) run the same code.
#pragma once
#include <iosfwd>
#include <string>

#include "models/gpt.h"
#include "models/trainer.h"

namespace rf {

// What the arguments ask for.
struct CommandLine {
  bool train = false;  // `ringflow train` with flags that parsed: run rf::train(config)
  bool list_models = false;  // `ringflow models`: print the registry (print_models)
  bool sample = false;       // `ringflow sample`: generate text from a gpt checkpoint (sample_gpt)
  SampleConfig sample_config;
  int exit_code = 0;   // otherwise the program exits with this: 0 after --help, 2 after a bad flag
  std::string error;   // after a bad flag (exit_code 2): CLI11's message, one line
  TrainConfig config;
};

// Parses argv (argv[0] is the program) into a TrainConfig; --help prints the help to `out`. Flag
// values are checked as far as CLI11 can (members of a set, integers that fit their type); the
// checks of values and their combinations are rf::validate_config's.
CommandLine parse_command_line(int argc, const char* const* argv, std::ostream& out);

// `ringflow models`: one line per registered model (name and description), then its options.
void print_models(std::ostream& out);

}  // namespace rf
