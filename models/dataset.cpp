// IDX/Fashion-MNIST loading through zlib, the synthetic data set and the sharded batch iterator.
// Errors name the file and the fix, because a bad data path is the most common first-run failure.
#include "models/dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>

#include "runtime/error.h"

namespace rf {
namespace {

constexpr uint32_t kIdxImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
constexpr const char* kInstallHint = "install dataset-fashion-mnist or pass --data-dir";
// Bounds that no real image data set reaches; beyond them the header is corrupt, and trusting it
// would mean a multi-gigabyte allocation before the truncation check could fire.
constexpr int64_t kMaxSamples = 100'000'000;
constexpr int64_t kMaxSide = 4096;
constexpr int64_t kMaxPixelBytes = int64_t{1} << 32;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// A gzip (or plain) file opened for reading; closes on scope exit so every error path is clean.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    // open(2) first: gzopen does not reliably report why it failed, and "No such file" vs
    // "Permission denied" tells the user what to fix.
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno), " (", kInstallHint, ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      fail("cannot open ", path, ": ", std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      fail("cannot open ", path, ": it is ", S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
           ", not an IDX file (", kInstallHint, ")");
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    f_ = gzdopen(fd, "rb");
    if (!f_) {
      ::close(fd);
      fail("cannot open ", path, ": zlib could not allocate a reader (out of memory?)");
    }
    // Fewer, larger read(2) calls than zlib's 8 KiB default; no larger than the file, since zlib
    // allocates three times this (input and output buffers) for every file it opens.
    gzbuffer(f_, static_cast<unsigned>(std::clamp<int64_t>(st.st_size, 8 << 10, 1 << 20)));
  }
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to len bytes; returns how many arrived (fewer only at end of data). A corrupt
  // gzip stream throws.
  int64_t read(void* buf, int64_t len) {
    int64_t got = 0;
    auto* out = static_cast<unsigned char*>(buf);
    while (got < len) {
      unsigned chunk = static_cast<unsigned>(std::min<int64_t>(len - got, 1 << 30));
      int r = gzread(f_, out + got, chunk);
      if (r < 0) {
        int errnum = 0;
        std::string msg = gzerror(f_, &errnum);
        // gzdopen names the stream "<fd:N>" and zlib prefixes that; we print the real path.
        if (msg.rfind("<fd:", 0) == 0 && msg.find(": ") != std::string::npos)
          msg = msg.substr(msg.find(": ") + 2);
        fail(path_, ": read error: ", msg, " (the file is corrupt; re-download or reinstall it)");
      }
      if (r == 0) break;
      got += r;
    }
    return got;
  }

  // Explains a short read: zlib distinguishes a cut-off gzip stream from a short plain file.
  std::string why_short() {
    int errnum = 0;
    gzerror(f_, &errnum);
    return errnum == Z_BUF_ERROR ? " (the gzip stream ends early)" : "";
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

struct IdxHeader {
  int64_t n = 0, rows = 0, cols = 0;
};

IdxHeader read_idx_header(GzReader& r, const std::string& path, bool images) {
  const uint32_t want = images ? kIdxImagesMagic : kIdxLabelsMagic;
  const int64_t header_len = images ? 16 : 8;
  unsigned char h[16];
  int64_t got = r.read(h, header_len);
  if (got < 4)
    fail(path, " is truncated: expected a ", header_len, "-byte IDX header, got ", got,
         " bytes", r.why_short());
  uint32_t magic = be32(h);
  if (magic != want) {
    std::string hint;
    if (magic == (images ? kIdxLabelsMagic : kIdxImagesMagic))
      hint = images ? "; this looks like a label file, not an image file"
                    : "; this looks like an image file, not a label file";
    else if ((magic >> 16) == 0x1f8b)
      hint = "; the data is gzipped twice";
    fail(path, ": wrong magic ", hex32(magic), " (expected ", hex32(want), " for an IDX ",
         images ? "image" : "label", " file", hint, ")");
  }
  if (got < header_len)
    fail(path, " is truncated: expected a ", header_len, "-byte IDX header, got ", got,
         " bytes", r.why_short());
  IdxHeader hd;
  hd.n = be32(h + 4);
  if (images) {
    hd.rows = be32(h + 8);
    hd.cols = be32(h + 12);
  }
  if (hd.n < 1 || hd.n > kMaxSamples)
    fail(path, ": header says ", hd.n, " samples (expected 1..", kMaxSamples,
         "); the file is corrupt");
  if (images) {
    if (hd.rows < 1 || hd.rows > kMaxSide || hd.cols < 1 || hd.cols > kMaxSide)
      fail(path, ": header says images of ", hd.rows, "x", hd.cols, " pixels (expected 1..",
           kMaxSide, " per side); the file is corrupt");
    if (hd.n * hd.rows * hd.cols > kMaxPixelBytes)
      fail(path, ": header says ", hd.n, " images of ", hd.rows, "x", hd.cols,
           " pixels, more than ", kMaxPixelBytes, " bytes; the file is corrupt");
  }
  return hd;
}

// Rejection sampling for an unbiased value in [0, range): std::uniform_int_distribution's
// algorithm differs between standard libraries, and every rank must agree on the permutation.
uint64_t bounded(std::mt19937_64& rng, uint64_t range) {
  const uint64_t threshold = (0 - range) % range;  // 2^64 mod range
  uint64_t r;
  do r = rng();
  while (r < threshold);
  return r % range;
}

// Uniform float in [0,1) from the top 24 bits: exact in float and library-independent.
float unit_float(std::mt19937_64& rng) { return static_cast<float>(rng() >> 40) * 0x1p-24f; }

}  // namespace

Dataset load_idx_images_labels(const std::string& images_gz, const std::string& labels_gz) {
  GzReader img(images_gz);
  GzReader lbl(labels_gz);
  IdxHeader ih = read_idx_header(img, images_gz, true);
  IdxHeader lh = read_idx_header(lbl, labels_gz, false);
  // Compare counts before reading megabytes of pixels.
  if (ih.n != lh.n)
    fail("image count ", ih.n, " in ", images_gz, " does not match label count ", lh.n, " in ",
         labels_gz, " (the two files are from different data sets)");

  Dataset d;
  d.n = ih.n;
  d.channels = 1;
  d.height = ih.rows;
  d.width = ih.cols;
  d.classes = 10;

  // Pixels: decompress in 1 MiB chunks and convert through a table while the chunk is in cache,
  // instead of holding the whole byte image next to the float image. The buffer grows with the
  // data that arrives (capacity first: reserving touches no memory), so a header that promises
  // far more than the file holds costs no more than the file before the truncation check fires.
  const int64_t total = d.n * d.sample_size();
  constexpr int64_t kFirstReserve = int64_t{1} << 26;  // floats: 256 MiB, Fashion-MNIST's 47M fit
  d.images.reserve(static_cast<size_t>(std::min(total, kFirstReserve)));
  float lut[256];
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<float>(i) / 255.0f;
  std::vector<unsigned char> chunk(static_cast<size_t>(std::min<int64_t>(total, 1 << 20)));
  int64_t done = 0;
  while (done < total) {
    int64_t want = std::min<int64_t>(total - done, static_cast<int64_t>(chunk.size()));
    int64_t got = img.read(chunk.data(), want);
    if (done + got > static_cast<int64_t>(d.images.capacity()))
      d.images.reserve(static_cast<size_t>(std::min(total, 2 * static_cast<int64_t>(d.images.capacity()))));
    d.images.resize(static_cast<size_t>(done + got));
    float* out = d.images.data() + done;
    for (int64_t i = 0; i < got; ++i) out[i] = lut[chunk[i]];
    done += got;
    if (got < want)
      fail(images_gz, " is truncated: expected ", total, " bytes of pixel data, got ", done,
           img.why_short());
  }
  // Data past what the header declares means the header (or the file) is wrong: a silently
  // ignored tail would train on a misread data set.
  unsigned char extra;
  if (img.read(&extra, 1) > 0)
    fail(images_gz, ": more data after the ", total, " bytes of pixels its header declares (", d.n, " images of ",
         d.height, "x", d.width, "); the file is corrupt or its header is wrong");

  std::vector<unsigned char> raw(static_cast<size_t>(d.n));
  int64_t got = lbl.read(raw.data(), d.n);
  if (got < d.n)
    fail(labels_gz, " is truncated: expected ", d.n, " bytes of label data, got ", got,
         lbl.why_short());
  if (lbl.read(&extra, 1) > 0)
    fail(labels_gz, ": more data after the ", d.n, " labels its header declares; the file is corrupt or its "
         "header is wrong");
  d.labels.resize(static_cast<size_t>(d.n));
  for (int64_t i = 0; i < d.n; ++i) {
    if (raw[i] >= d.classes)
      fail(labels_gz, ": label ", int{raw[i]}, " at index ", i, " is out of range (expected 0..",
           d.classes - 1, "); the file is corrupt or not Fashion-MNIST");
    d.labels[i] = raw[i];
  }
  return d;
}

FashionMnist load_fashion_mnist(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto st = fs::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    fail("cannot access Fashion-MNIST directory ", dir, ": ", ec.message(),
         " (check its permissions or pass another --data-dir)");
  if (!fs::exists(st))
    fail("Fashion-MNIST directory ", dir, " does not exist (install dataset-fashion-mnist, which ",
         "puts the files in ", kFashionMnistDefaultDir, ", or pass --data-dir)");
  if (!fs::is_directory(st))
    fail("Fashion-MNIST directory ", dir, " is not a directory (pass the directory that holds ",
         "train-images-idx3-ubyte.gz with --data-dir)");
  const fs::path p(dir);
  FashionMnist m;
  m.train = load_idx_images_labels((p / "train-images-idx3-ubyte.gz").string(),
                                   (p / "train-labels-idx1-ubyte.gz").string());
  m.test = load_idx_images_labels((p / "t10k-images-idx3-ubyte.gz").string(),
                                  (p / "t10k-labels-idx1-ubyte.gz").string());
  return m;
}

Dataset make_synthetic(int64_t n, uint64_t seed, int64_t classes) {
  RF_CHECK(n >= 1, "make_synthetic: n must be positive, got ", n);
  RF_CHECK(classes >= 2 && classes <= 1000, "make_synthetic: classes must be in 2..1000, got ",
           classes);
  Dataset d;
  d.n = n;
  d.channels = 1;
  d.height = 28;
  d.width = 28;
  d.classes = classes;
  const int64_t ss = d.sample_size();

  // Prototypes come from a fixed seed per class, not from `seed`: data sets made with different
  // seeds then share one task, so a held-out set made with another seed measures generalization.
  std::vector<float> proto(static_cast<size_t>(classes * ss));
  for (int64_t c = 0; c < classes; ++c) {
    std::mt19937_64 prng(0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(c));
    for (int64_t p = 0; p < ss; ++p) proto[c * ss + p] = unit_float(prng);
  }

  // Half prototype, half noise: classes stay far apart over 784 pixels (easily learnable) while
  // no two samples are identical. Values stay in [0,1) like byte/255 pixels.
  std::mt19937_64 rng(seed);
  d.images.resize(static_cast<size_t>(n * ss));
  d.labels.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = static_cast<int64_t>(bounded(rng, static_cast<uint64_t>(classes)));
    d.labels[i] = static_cast<int32_t>(c);
    const float* pr = proto.data() + c * ss;
    float* out = d.images.data() + i * ss;
    for (int64_t p = 0; p < ss; ++p) out[p] = 0.5f * pr[p] + 0.5f * unit_float(rng);
  }
  return d;
}

void epoch_permutation(int64_t n, uint64_t seed, int64_t epoch, std::vector<int64_t>& perm) {
  perm.resize(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  // Fisher-Yates written out (std::shuffle's algorithm is implementation-defined), seeded the
  // same on every rank so their shards are disjoint.
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(bounded(rng, static_cast<uint64_t>(i) + 1));
    std::swap(perm[size_t(i)], perm[size_t(j)]);
  }
}

BatchIterator::BatchIterator(const Dataset& data, int64_t batch, uint64_t seed, bool shuffle,
                             int rank, int world, bool drop_last)
    : data_(&data), batch_(batch), seed_(seed), shuffle_(shuffle), rank_(rank), world_(world),
      drop_last_(drop_last) {
  RF_CHECK(batch >= 1, "batch size must be positive, got ", batch);
  RF_CHECK(world >= 1, "world size must be positive, got ", world);
  RF_CHECK(rank >= 0 && rank < world, "rank ", rank, " is out of range for world size ", world);
  RF_CHECK(data.n >= 1, "the data set is empty");
  RF_CHECK(static_cast<int64_t>(data.images.size()) == data.n * data.sample_size() &&
               static_cast<int64_t>(data.labels.size()) == data.n,
           "inconsistent Dataset: n=", data.n, " sample_size=", data.sample_size(), " but ",
           data.images.size(), " floats and ", data.labels.size(), " labels");
  per_rank_ = data.n / world;
  if (batch > per_rank_) {
    if (world == 1) fail("batch ", batch, " is larger than the data set (", data.n, " samples)");
    fail("batch ", batch, " is larger than the data set (", per_rank_,
         " samples per rank: ", data.n, " samples sharded over ", world,
         " ranks); use a smaller --batch");
  }
  perm_.resize(static_cast<size_t>(data.n));
  shard_.resize(static_cast<size_t>(per_rank_));
  start_epoch(0);
}

int64_t BatchIterator::steps_per_epoch() const {
  return drop_last_ ? per_rank_ / batch_ : (per_rank_ + batch_ - 1) / batch_;
}

void BatchIterator::start_epoch(int64_t epoch) {
  RF_CHECK(epoch >= 0, "epoch must be non-negative, got ", epoch);
  epoch_ = epoch;
  pos_ = 0;
  current_ = 0;
  const int64_t n = data_->n;
  if (shuffle_) {
    epoch_permutation(n, seed_, epoch, perm_);
  } else {
    std::iota(perm_.begin(), perm_.end(), int64_t{0});
  }
  for (int64_t k = 0; k < per_rank_; ++k) shard_[k] = perm_[rank_ + k * world_];
}

bool BatchIterator::advance(int64_t* first) {
  const int64_t end = drop_last_ ? steps_per_epoch() * batch_ : per_rank_;
  if (pos_ >= end) {
    current_ = 0;
    return false;
  }
  current_ = std::min(batch_, end - pos_);
  *first = pos_;
  pos_ += current_;
  return true;
}

bool BatchIterator::next(float* images_out, int32_t* labels_out) {
  int64_t first = 0;
  if (!advance(&first)) return false;
  const int64_t ss = data_->sample_size();
  const float* src = data_->images.data();
  for (int64_t b = 0; b < current_; ++b) {
    const int64_t idx = shard_[first + b];
    std::memcpy(images_out + b * ss, src + idx * ss, static_cast<size_t>(ss) * sizeof(float));
    labels_out[b] = data_->labels[idx];
  }
  return true;
}

bool BatchIterator::next_indices(int32_t* idx_out) {
  RF_CHECK(data_->n <= INT32_MAX, "next_indices: ", data_->n, " samples do not fit 32-bit indices");
  int64_t first = 0;
  if (!advance(&first)) return false;
  for (int64_t b = 0; b < current_; ++b) idx_out[b] = static_cast<int32_t>(shard_[first + b]);
  return true;
}

}  // namespace rf
