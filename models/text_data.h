// The gpt model's data (docs/GPT.md) as a DataSource: windows of T + 1 token ids of a text split,
// fed as "tokens" I32 [T] (the first T) and "targets" I32 [T] (the last T), in the order every
// source uses (epoch_permutation, rank r taking permuted windows r, r + world, ...).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/data.h"
#include "models/text_corpus.h"

namespace rf {

class TextWindowSource : public DataSource {
 public:
  TextWindowSource(TextCorpus corpus, int64_t context);

  std::string name() const override { return "kjv"; }
  std::vector<FeedSpec> feeds() const override;
  int64_t train_size() const override { return train_windows_; }
  int64_t test_size() const override { return test_windows_; }
  void set_order(const DataOrder& order) override;
  int64_t steps_per_epoch() const override;
  void start_epoch(int64_t epoch) override;
  bool next(std::vector<Tensor>& out) override;
  DataState state() const override { return {epoch_, position_}; }
  void restore(const DataState& state) override;
  std::vector<Tensor> test_batch(int64_t first, int64_t count) const override;

  const TextCorpus& corpus() const { return corpus_; }

 private:
  void copy_window(const std::vector<int32_t>& text, int64_t w, int32_t* tokens, int32_t* targets) const;
  TextCorpus corpus_;
  int64_t context_;
  int64_t train_windows_, test_windows_;
  DataOrder order_;
  bool ordered_ = false;
  int64_t epoch_ = 0, position_ = 0, per_rank_ = 0;
  std::vector<int64_t> perm_;
};

// The King James text (docs/GPT.md: checked to be that corpus) in windows of `context`: dir/kjv.txt
// (scripts/stage_data.sh writes data/kjv/kjv.txt), or, where that file is missing and
// `bible_fallback`, the text Debian's `bible gen1:1-rev22:21` prints. Throws rf::Error naming
// what is missing.
std::unique_ptr<DataSource> make_kjv_source(const std::string& dir, int64_t context, bool bible_fallback);

}  // namespace rf
