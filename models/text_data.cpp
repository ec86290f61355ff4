// The gpt model's text windows as a DataSource (text_data.h).
#include "models/text_data.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "models/dataset.h"
#include "runtime/error.h"

namespace rf {

TextWindowSource::TextWindowSource(TextCorpus corpus, int64_t context)
    : corpus_(std::move(corpus)), context_(context) {
  RF_CHECK(context >= 1, "the context must be positive, got ", context);
  train_windows_ = (int64_t(corpus_.train.size()) - 1) / context;
  test_windows_ = (int64_t(corpus_.test.size()) - 1) / context;
  RF_CHECK(train_windows_ >= 1 && test_windows_ >= 1, "a context of ", context, " leaves ", train_windows_,
           " train and ", test_windows_, " test windows");
}

std::vector<FeedSpec> TextWindowSource::feeds() const {
  return {{"tokens", DType::I32, Shape{context_}}, {"targets", DType::I32, Shape{context_}}};
}

void TextWindowSource::set_order(const DataOrder& o) {
  RF_CHECK(o.world >= 1 && o.rank >= 0 && o.rank < o.world && o.batch >= 1, "bad data order (rank ", o.rank,
           " of ", o.world, ", batch ", o.batch, ")");
  per_rank_ = train_windows_ / o.world;
  RF_CHECK(o.batch <= per_rank_, "batch ", o.batch, " is larger than the ", per_rank_,
           " training windows of a rank (", train_windows_, " windows over ", o.world, " ranks)");
  order_ = o;
  ordered_ = true;
  start_epoch(0);
}

int64_t TextWindowSource::steps_per_epoch() const {
  RF_CHECK(ordered_, "text windows: set_order() was not called");
  return per_rank_ / order_.batch;
}

void TextWindowSource::start_epoch(int64_t epoch) {
  RF_CHECK(ordered_, "text windows: set_order() was not called");
  RF_CHECK(epoch >= 0, "epoch must be non-negative, got ", epoch);
  epoch_ = epoch;
  position_ = 0;
  if (order_.shuffle) {
    epoch_permutation(train_windows_, order_.seed, epoch, perm_);
  } else {
    perm_.resize(size_t(train_windows_));
    std::iota(perm_.begin(), perm_.end(), int64_t{0});
  }
}

void TextWindowSource::copy_window(const std::vector<int32_t>& text, int64_t w, int32_t* tokens,
                                   int32_t* targets) const {
  const int32_t* src = text.data() + w * context_;
  std::memcpy(tokens, src, size_t(context_) * sizeof(int32_t));
  std::memcpy(targets, src + 1, size_t(context_) * sizeof(int32_t));
}

bool TextWindowSource::next(std::vector<Tensor>& out) {
  if (position_ >= steps_per_epoch()) return false;
  int32_t* tokens = out.at(0).data<int32_t>();
  int32_t* targets = out.at(1).data<int32_t>();
  for (int64_t k = 0; k < order_.batch; ++k) {
    // This rank's k-th window of the epoch is perm[rank + k * world] (docs/GPT.md).
    const int64_t i = position_ * order_.batch + k;
    const int64_t w = perm_[size_t(order_.rank + i * order_.world)];
    copy_window(corpus_.train, w, tokens + k * context_, targets + k * context_);
  }
  ++position_;
  return true;
}

void TextWindowSource::restore(const DataState& s) {
  start_epoch(s.epoch);
  RF_CHECK(s.position >= 0 && s.position <= steps_per_epoch(), "text windows: position ", s.position,
           " is outside epoch ", s.epoch, " (", steps_per_epoch(), " batches)");
  position_ = s.position;
}

std::vector<Tensor> TextWindowSource::test_batch(int64_t first, int64_t count) const {
  RF_CHECK(first >= 0 && count >= 0 && first + count <= test_windows_, "test windows [", first, ", ", first + count,
           ") are outside the ", test_windows_, " test windows");
  Tensor tokens(Shape{count, context_}, DType::I32), targets(Shape{count, context_}, DType::I32);
  for (int64_t k = 0; k < count; ++k)
    copy_window(corpus_.test, first + k, tokens.data<int32_t>() + k * context_, targets.data<int32_t>() + k * context_);
  return {std::move(tokens), std::move(targets)};
}

std::unique_ptr<DataSource> make_kjv_source(const std::string& dir, int64_t context, bool bible_fallback) {
  const std::string path = dir + "/kjv.txt";
  if (std::filesystem::exists(path) || !bible_fallback)
    return std::make_unique<TextWindowSource>(load_text_corpus(path), context);
  // No staged copy: what the `bible` program (Debian's bible-kjv) prints is the corpus.
  std::FILE* p = ::popen("bible gen1:1-rev22:21 2>/dev/null", "r");
  RF_CHECK(p != nullptr, "cannot run `bible`: ", std::strerror(errno));
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  const int status = ::pclose(p);
  RF_CHECK(status == 0 && !text.empty(), "no ", path, " and `bible gen1:1-rev22:21` failed (install Debian's "
           "bible-kjv: scripts/install_deps.sh; or stage the text: scripts/stage_data.sh)");
  return std::make_unique<TextWindowSource>(text_corpus_from(text, "the output of `bible gen1:1-rev22:21`"), context);
}

}  // namespace rf
