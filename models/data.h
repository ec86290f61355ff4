// The DataSource interface: what the Trainer needs from a data set. A source yields batches of
// named, typed feeds (one per model input) in a seeded, rank-sharded order that it can report and
// restore (epoch + position: what a checkpoint stores to resume), and a test set for evaluation.
// A source that can hold its training set on a GPU and gather each batch there offers
// DeviceBatches (the GPU fast path: no host copy of a batch, a step capturable as a CUDA graph).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/tensor.h"

namespace rf {

// One feed: the model input it goes to, its dtype and the shape of one sample (a batch is
// [batch, sample...]).
struct FeedSpec {
  std::string name;
  DType dtype = DType::F32;
  Shape sample;
};

// Where a source's training order stands: `position` batches of epoch `epoch` have been
// yielded. The order is a function of (seed, rank, world, batch), so this is all a checkpoint
// needs to resume it.
struct DataState {
  int64_t epoch = 0, position = 0;
  bool operator==(const DataState& o) const { return epoch == o.epoch && position == o.position; }
};

// How the trainer reads a source: this rank of `world`, `batch` samples per rank and step.
struct DataOrder {
  int rank = 0, world = 1;
  int64_t batch = 1;
  uint64_t seed = 0;
  bool shuffle = true;
};

// Optional: the training batches gathered on a device. tensors() are the step's feeds (in the
// source's feeds() order, [batch, ...], at fixed addresses); next() picks the next batch on the
// host (in the source's order, advancing it as DataSource::next does) and prologue() queues the
// device work that fills tensors() on the step's stream (captured with a CUDA graph, so it may
// only read fixed addresses, e.g. pinned memory that next() wrote).
class DeviceBatches {
 public:
  virtual ~DeviceBatches() = default;
  virtual const std::vector<Tensor>& tensors() const = 0;
  virtual bool next() = 0;
  virtual void prologue(void* stream) = 0;
};

class DataSource {
 public:
  virtual ~DataSource() = default;

  virtual std::string name() const = 0;             // the summary's "data"
  virtual std::vector<FeedSpec> feeds() const = 0;
  virtual int64_t train_size() const = 0;           // training samples (all ranks)
  virtual int64_t test_size() const = 0;            // test samples

  // Fixes the order (throws rf::Error where a rank's shard cannot fill a batch). Called once,
  // before anything below; the source then stands at epoch 0, position 0.
  virtual void set_order(const DataOrder& order) = 0;
  virtual int64_t steps_per_epoch() const = 0;      // full batches per rank and epoch (same on every rank)
  virtual void start_epoch(int64_t epoch) = 0;      // rewinds to position 0 of `epoch`
  // Copies the next batch into `out` (host tensors [batch, ...] in feeds() order, made by
  // make_batch); false, writing nothing, at the end of the epoch.
  virtual bool next(std::vector<Tensor>& out) = 0;
  virtual DataState state() const = 0;
  // Puts the order where `state` says (start_epoch, then `position` batches skipped).
  virtual void restore(const DataState& state) = 0;

  // Test samples [first, first + count) in order (host tensors, feeds() order).
  virtual std::vector<Tensor> test_batch(int64_t first, int64_t count) const = 0;

  // The GPU fast path, or null where the source has none (the trainer then feeds host batches).
  virtual bool has_device_batches() const { return false; }
  virtual std::unique_ptr<DeviceBatches> device_batches(Device) { return nullptr; }

  // Host tensors for one training batch of `batch` samples, in feeds() order.
  std::vector<Tensor> make_batch(int64_t batch) const;
};

// Makes the data source for a run. The Trainer calls it during its set-up, where an error (a
// missing file, a bad option) is agreed on by every rank and reported once.
using DataFactory = std::function<std::unique_ptr<DataSource>()>;

}  // namespace rf
