// libFuzzer target: the `ringflow` command line. The input is split into argv words at newlines
// and NUL bytes and goes through what `ringflow train` runs before it touches data or devices:
// CLI11's parse (rf::parse_command_line), the flag checks (rf::validate_config) and the device
// name (rf::Device::parse). Nothing trains. A thrown exception is a rejection; a crash, a
// sanitizer report, a leak or a hang is a bug.
#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "models/cli.h"
#include "models/trainer.h"
#include "runtime/device.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> words{"ringflow"};
  std::string word;
  for (size_t i = 0; i <= size; ++i) {
    if (i == size || data[i] == '\n' || data[i] == '\0') {
      words.push_back(word);
      word.clear();
    } else {
      word.push_back(static_cast<char>(data[i]));
    }
  }
  if (size == 0) words.pop_back();  // no input: no words
  std::vector<const char*> argv;
  for (const std::string& w : words) argv.push_back(w.c_str());
  argv.push_back(nullptr);
  std::ostringstream help;  // --help's text, dropped
  try {
    const rf::CommandLine cl = rf::parse_command_line(static_cast<int>(words.size()), argv.data(), help);
    if (cl.train) {
      rf::validate_config(cl.config);
      rf::Device::parse(cl.config.device);
      rf_fuzz::verdict("cli");
    } else {
      rf_fuzz::verdict("cli", cl.error.empty() ? "exit 0 (help)" : cl.error.c_str());
    }
  } catch (const std::exception& e) {
    rf_fuzz::verdict("cli", e.what());
  }
  return 0;
}
