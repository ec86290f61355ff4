// Image classification data (Fashion-MNIST, or its synthetic stand-in) as a DataSource: feeds
// "images" F32 [C, H, W] in [0, 1] and "labels" I32 (one per image), in BatchIterator's order.
// On a CUDA device it offers DeviceBatches: the training set is uploaded once and each step
// copies only the batch's indices (pinned memory) and gathers the batch on the device.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "models/data.h"
#include "models/dataset.h"

namespace rf {

class ImageClassificationSource : public DataSource {
 public:
  ImageClassificationSource(std::string name, FashionMnist data);

  std::string name() const override { return name_; }
  std::vector<FeedSpec> feeds() const override;
  int64_t train_size() const override { return data_.train.n; }
  int64_t test_size() const override { return data_.test.n; }
  void set_order(const DataOrder& order) override;
  int64_t steps_per_epoch() const override;
  void start_epoch(int64_t epoch) override;
  bool next(std::vector<Tensor>& out) override;
  DataState state() const override;
  void restore(const DataState& state) override;
  std::vector<Tensor> test_batch(int64_t first, int64_t count) const override;
  bool has_device_batches() const override;
  std::unique_ptr<DeviceBatches> device_batches(Device device) override;

  const FashionMnist& data() const { return data_; }

 private:
  BatchIterator& order() const;
  std::string name_;
  FashionMnist data_;
  DataOrder order_;
  std::unique_ptr<BatchIterator> it_;
};

// The image data sets of `ringflow train --data`: "fashion-mnist" (the IDX files in `dir`, whose
// images must be 28x28) or "synthetic" (synthetic_train and synthetic_test samples, drawn from
// `seed` and seed + 1). Throws rf::Error naming the problem.
std::unique_ptr<DataSource> make_image_source(const std::string& data, const std::string& dir,
                                              int64_t synthetic_train, int64_t synthetic_test, uint64_t seed);

// The checks of those arguments that need no file (an unknown data set, a synthetic size out of range).
void check_image_source_args(const std::string& data, int64_t synthetic_train);

}  // namespace rf
