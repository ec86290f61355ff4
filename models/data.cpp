// DataSource's shared helper (data.h).
#include "models/data.h"

namespace rf {

std::vector<Tensor> DataSource::make_batch(int64_t batch) const {
  std::vector<Tensor> out;
  for (const FeedSpec& f : feeds()) {
    std::vector<i64> dims{batch};
    for (int i = 0; i < f.sample.rank; ++i) dims.push_back(f.sample[i]);
    out.emplace_back(Shape(dims), f.dtype);
  }
  return out;
}

}  // namespace rf
