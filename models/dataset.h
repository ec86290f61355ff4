// Training data: Fashion-MNIST from gzipped IDX files, a learnable synthetic stand-in, and the
// shuffled, rank-sharded mini-batch iterator that feeds the trainer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rf {

// An image classification data set held in host memory. images is [n, channels, height, width]
// float32 in [0,1] (byte/255), labels is [n] in [0, classes).
struct Dataset {
  std::vector<float> images;
  std::vector<int32_t> labels;
  int64_t n = 0, channels = 1, height = 0, width = 0, classes = 10;
  // Floats per sample (channels * height * width).
  int64_t sample_size() const { return channels * height * width; }
};

// Reads one IDX image file (magic 0x00000803) and its IDX label file (magic 0x00000801), gzipped
// or not (zlib reads plain files transparently). Every inconsistency (missing file, wrong magic,
// absurd dimensions, truncated data, count mismatch, label >= 10) throws rf::Error naming the file.
Dataset load_idx_images_labels(const std::string& images_gz, const std::string& labels_gz);

struct FashionMnist {
  Dataset train, test;
};

// Where Debian's dataset-fashion-mnist package installs the four files.
inline constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";

// Loads train-{images-idx3,labels-idx1}-ubyte.gz and t10k-{...}.gz from dir.
FashionMnist load_fashion_mnist(const std::string& dir);

// n samples shaped like Fashion-MNIST ([n,1,28,28], 10 classes by default). Each class has a
// fixed prototype image (the same for every seed, so make_synthetic(n, s1) and
// make_synthetic(m, s2) are a train/test split of one task); the seed picks the labels and the
// per-sample noise. Deterministic across platforms and standard libraries.
Dataset make_synthetic(int64_t n, uint64_t seed, int64_t classes = 10);

// The permutation of [0, n) that epoch `epoch` visits: Fisher-Yates from the end with
// std::mt19937_64(seed + epoch) and rejection-sampled bounded draws (library-independent; the
// order docs/GPT.md specifies and bench/gpt/kjv.py reproduces). Every data source shuffles with it.
void epoch_permutation(int64_t n, uint64_t seed, int64_t epoch, std::vector<int64_t>& perm);

// Shuffled mini-batches over a Dataset, sharded across data-parallel ranks like PyTorch's
// DistributedSampler: every rank computes the same permutation of all n samples for epoch e
// (from seed + e), and rank r takes permuted positions r, r + world, r + 2*world, ... The tail
// that does not divide evenly by world is dropped so every rank runs the same number of steps.
// The Dataset must outlive the iterator.
class BatchIterator {
 public:
  // drop_last: skip the final partial batch (true) or return it smaller (false; see
  // current_batch_size). Throws rf::Error if batch exceeds the samples of one rank.
  BatchIterator(const Dataset& data, int64_t batch, uint64_t seed, bool shuffle, int rank = 0,
                int world = 1, bool drop_last = true);
  // The iterator keeps a pointer to the data: refuse temporaries at compile time.
  BatchIterator(Dataset&&, int64_t, uint64_t, bool, int = 0, int = 1, bool = true) = delete;

  // Batches this rank yields per epoch (the same on every rank).
  int64_t steps_per_epoch() const;
  // Samples this rank owns per epoch (n / world).
  int64_t samples_per_rank() const { return per_rank_; }
  int64_t batch_size() const { return batch_; }
  int64_t epoch() const { return epoch_; }
  // Samples in the batch the last next() returned: batch_size() except a final partial batch.
  int64_t current_batch_size() const { return current_; }

  // Rewinds to the start of epoch `epoch` and computes its permutation. The constructor has
  // already started epoch 0.
  void start_epoch(int64_t epoch);

  // Copies the next batch into images_out [batch, sample_size] and labels_out [batch]; returns
  // false (writing nothing) once the epoch is exhausted. Never allocates.
  bool next(float* images_out, int32_t* labels_out);
  // The same batch as next() would copy, as data set indices into idx_out [batch] (for a caller
  // that gathers the batch itself, e.g. from a copy of the data set on a GPU).
  bool next_indices(int32_t* idx_out);

  // Advances over the next batch without copying it (false at the end of the epoch): how a
  // resumed run skips what it has already trained on.
  bool skip() {
    int64_t first = 0;
    return advance(&first);
  }
  // Batches yielded since start_epoch.
  int64_t batches_done() const { return (pos_ + batch_ - 1) / batch_; }

  // Dataset indices this rank visits in the current epoch, in order (for tests and debugging).
  const std::vector<int64_t>& shard() const { return shard_; }

 private:
  const Dataset* data_;
  int64_t batch_;
  uint64_t seed_;
  bool shuffle_;
  int rank_, world_;
  bool drop_last_;
  int64_t per_rank_ = 0;
  int64_t epoch_ = 0;
  int64_t pos_ = 0;  // next position in shard_
  int64_t current_ = 0;
  std::vector<int64_t> perm_;   // permutation of all n samples (reused across epochs)
  std::vector<int64_t> shard_;  // this rank's slice of perm_

  // Advances over the next batch: its samples are shard_[*first .. *first + current_).
  bool advance(int64_t* first);
};

}  // namespace rf
