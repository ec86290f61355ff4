// Image classification data as a DataSource (image_data.h).
#include "models/image_data.h"

#include <cstring>

#include "runtime/error.h"
#if RINGFLOW_CUDA
#include "models/classify_cuda.h"
#include "runtime/cuda_backend.h"
#endif

namespace rf {

namespace {

// A synthetic set of more samples than this would not fit in memory as floats (7.8 GB).
constexpr int64_t kMaxSynthetic = 2'500'000;

#if RINGFLOW_CUDA
// The training set uploaded once; each step's indices go up from pinned memory with one
// cudaMemcpyAsync and a kernel gathers the batch (the prologue). Both are stream work at fixed
// addresses, so a captured step replays them.
class ImageDeviceBatches : public DeviceBatches {
 public:
  ImageDeviceBatches(const Dataset& d, BatchIterator& it, Device device)
      : dev_(device),
        it_(it),
        all_images_(Shape{d.n, d.channels, d.height, d.width}, DType::F32, dev_),
        all_labels_(Shape{d.n}, DType::I32, dev_),
        idx_(Shape{it.batch_size()}, DType::I32, dev_),
        idx_host_(static_cast<int32_t*>(cuda::host_alloc(size_t(it.batch_size()) * sizeof(int32_t)))) {
    copy_bytes(all_images_.raw(), dev_, d.images.data(), Device::cpu(), all_images_.nbytes());
    copy_bytes(all_labels_.raw(), dev_, d.labels.data(), Device::cpu(), all_labels_.nbytes());
    tensors_.emplace_back(Shape{it.batch_size(), d.channels, d.height, d.width}, DType::F32, dev_);
    tensors_.emplace_back(Shape{it.batch_size()}, DType::I32, dev_);
  }
  ~ImageDeviceBatches() override { cuda::host_free(idx_host_); }
  const std::vector<Tensor>& tensors() const override { return tensors_; }
  bool next() override { return it_.next_indices(idx_host_); }
  void prologue(void*) override {
    cuda::copy_async(idx_.raw(), idx_host_, idx_.nbytes(), dev_.index);
    classify::gather_batch(all_images_, all_labels_, idx_, tensors_[0], tensors_[1]);
  }

 private:
  Device dev_;
  BatchIterator& it_;
  Tensor all_images_, all_labels_, idx_;
  std::vector<Tensor> tensors_;
  int32_t* idx_host_;  // pinned: written by next() before each step
};
#endif

}  // namespace

ImageClassificationSource::ImageClassificationSource(std::string name, FashionMnist data)
    : name_(std::move(name)), data_(std::move(data)) {}

std::vector<FeedSpec> ImageClassificationSource::feeds() const {
  const Dataset& d = data_.train;
  return {{"images", DType::F32, Shape{d.channels, d.height, d.width}}, {"labels", DType::I32, Shape{}}};
}

void ImageClassificationSource::set_order(const DataOrder& o) {
  order_ = o;
  it_ = std::make_unique<BatchIterator>(data_.train, o.batch, o.seed, o.shuffle, o.rank, o.world);
}

BatchIterator& ImageClassificationSource::order() const {
  RF_CHECK(it_ != nullptr, "data set ", name_, ": set_order() was not called");
  return *it_;
}

int64_t ImageClassificationSource::steps_per_epoch() const { return order().steps_per_epoch(); }

void ImageClassificationSource::start_epoch(int64_t epoch) { order().start_epoch(epoch); }

bool ImageClassificationSource::next(std::vector<Tensor>& out) {
  return order().next(out.at(0).data<float>(), out.at(1).data<int32_t>());
}

DataState ImageClassificationSource::state() const { return {order().epoch(), order().batches_done()}; }

void ImageClassificationSource::restore(const DataState& s) {
  BatchIterator& it = order();
  it.start_epoch(s.epoch);
  for (int64_t k = 0; k < s.position; ++k)
    RF_CHECK(it.skip(), "data set ", name_, ": position ", s.position, " is past the end of epoch ", s.epoch, " (",
             it.steps_per_epoch(), " batches)");
}

std::vector<Tensor> ImageClassificationSource::test_batch(int64_t first, int64_t count) const {
  const Dataset& d = data_.test;
  RF_CHECK(first >= 0 && count >= 0 && first + count <= d.n, "test batch [", first, ", ", first + count,
           ") is outside the test set (", d.n, " samples)");
  const int64_t per = d.sample_size();
  Tensor x(Shape{count, d.channels, d.height, d.width}, DType::F32);
  Tensor y(Shape{count}, DType::I32);
  std::memcpy(x.raw(), d.images.data() + first * per, size_t(count * per) * sizeof(float));
  std::memcpy(y.raw(), d.labels.data() + first, size_t(count) * sizeof(int32_t));
  return {std::move(x), std::move(y)};
}

bool ImageClassificationSource::has_device_batches() const {
#if RINGFLOW_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<DeviceBatches> ImageClassificationSource::device_batches(Device device) {
#if RINGFLOW_CUDA
  if (device.is_cuda()) return std::make_unique<ImageDeviceBatches>(data_.train, order(), device);
#endif
  (void)device;
  return nullptr;
}

void check_image_source_args(const std::string& data, int64_t synthetic_train) {
  RF_CHECK(data == "fashion-mnist" || data == "synthetic", "unknown data set '", data,
           "': expected fashion-mnist or synthetic");
  RF_CHECK(data != "synthetic" || (synthetic_train > 0 && synthetic_train <= kMaxSynthetic),
           "--synthetic-train must be in [1, ", kMaxSynthetic, "], got ", synthetic_train);
}

std::unique_ptr<DataSource> make_image_source(const std::string& data, const std::string& dir,
                                              int64_t synthetic_train, int64_t synthetic_test, uint64_t seed) {
  check_image_source_args(data, synthetic_train);
  FashionMnist d;
  if (data == "fashion-mnist") {
    d = load_fashion_mnist(dir);
    for (const Dataset* s : {&d.train, &d.test})
      RF_CHECK(s->channels == 1 && s->height == 28 && s->width == 28, "the images in ", dir, " are ", s->height,
               "x", s->width, "; the models take Fashion-MNIST's 28x28");
  } else {
    d.train = make_synthetic(synthetic_train, seed);
    d.test = make_synthetic(synthetic_test, seed + 1);
  }
  return std::make_unique<ImageClassificationSource>(data, std::move(d));
}

}  // namespace rf
