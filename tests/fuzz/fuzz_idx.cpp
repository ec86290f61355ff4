// libFuzzer target: the IDX reader (rf::load_idx_images_labels), gzipped or plain, on an image
// file and a label file cut from one input. A thrown exception is a rejection; a crash, a
// sanitizer report, a leak, a hang or memory beyond -rss_limit_mb is a bug.
//
// Input layout: byte 0 flags (bit 0: gzip the image bytes, bit 1: gzip the label bytes, so
// mutations of plain bytes also reach the reader through a valid gzip stream), bytes 1-2 the
// label file's length L (little-endian, clamped to what is left), then L label bytes, then the
// image file's bytes.
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <vector>

#include "models/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const unsigned flags = data[0];
  size_t label_len = data[1] | (size_t{data[2]} << 8);
  data += 3;
  size -= 3;
  if (label_len > size) label_len = size;
  const uint8_t* labels = data;
  const uint8_t* images = data + label_len;
  const size_t images_len = size - label_len;

  static rf_fuzz::MemFile img("idx_images"), lbl("idx_labels");
  std::vector<uint8_t> gz_img, gz_lbl;
  if (flags & 1) gz_img = rf_fuzz::gzip(images, images_len);
  if (flags & 2) gz_lbl = rf_fuzz::gzip(labels, label_len);
  const std::string& img_path = flags & 1 ? img.hold(gz_img.data(), gz_img.size()) : img.hold(images, images_len);
  const std::string& lbl_path = flags & 2 ? lbl.hold(gz_lbl.data(), gz_lbl.size()) : lbl.hold(labels, label_len);
  try {
    const rf::Dataset d = rf::load_idx_images_labels(img_path, lbl_path);
    // What the loader promises of a data set it returns.
    if (d.n < 1 || d.channels != 1 || d.height < 1 || d.width < 1 ||
        d.images.size() != static_cast<size_t>(d.n * d.sample_size()) || d.labels.size() != static_cast<size_t>(d.n))
      std::abort();
    for (float v : d.images)
      if (!(v >= 0.0f && v <= 1.0f)) std::abort();
    for (int32_t l : d.labels)
      if (l < 0 || l >= d.classes) std::abort();
    rf_fuzz::verdict("idx");
  } catch (const std::exception& e) {  // a rejected file: what the reader is for
    rf_fuzz::verdict("idx", e.what());
  }
  return 0;
}
