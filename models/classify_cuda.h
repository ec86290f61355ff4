// Device helpers of image classification (classify_cuda.cu), moved out of the runtime: the batch
// gather from a data set held on the device, and the accuracy count of a step's logits. Both are
// queued on the tensors' device's compute stream and never synchronise, so a step that uses
// them keeps its one wait and can be captured as a CUDA graph.
#pragma once
#if RINGFLOW_CUDA
#include "runtime/tensor.h"

namespace rf::classify {

// out_images[b] = images[idx[b]], out_labels[b] = labels[idx[b]]: images F32 [n, ...], labels
// I32 [n], idx I32 [>= B], outputs [B, ...] and [B], all on one CUDA device.
void gather_batch(const Tensor& images, const Tensor& labels, const Tensor& idx, Tensor& out_images,
                  Tensor& out_labels);

// out (F64 [2] on the device) = {rows of logits [rows, cols] (F32 or F64) whose first largest
// entry is at the label (std::max_element's rule, as count_correct on the host), rows}.
void accuracy_stats(const Tensor& logits, const Tensor& labels, Tensor& out);

}  // namespace rf::classify
#endif
