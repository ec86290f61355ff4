// Tests of data and checkpoint I/O: IDX loading and its error messages, the sharded batch
// iterator, synthetic data, and safetensors save/load (format compatibility and validation).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <numeric>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "models/dataset.h"
#include "models/safetensors.h"
#include "runtime/error.h"

namespace fs = std::filesystem;
using rf::Dataset;

namespace {

using Bytes = std::vector<unsigned char>;

// Each test gets its own fresh directory (tests of different binaries may share TempDir()).
class DataIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "rf_data_io_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << "mkdtemp failed for " << tmpl;
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
}

Bytes idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols, const Bytes& pixels) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, n);
  put_be32(b, rows);
  put_be32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes idx_labels(uint32_t magic, uint32_t n, const Bytes& labels) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, n);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_gz(const std::string& p, const Bytes& data) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr) << p;
  if (!data.empty()) {
    ASSERT_EQ(gzwrite(f, data.data(), static_cast<unsigned>(data.size())),
              static_cast<int>(data.size()));
  }
  ASSERT_EQ(gzclose(f), Z_OK);
}

void write_raw(const std::string& p, const void* data, size_t n) {
  std::ofstream o(p, std::ios::binary);
  o.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  ASSERT_TRUE(o.good()) << p;
}

Bytes read_raw(const std::string& p) {
  std::ifstream i(p, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(i)), std::istreambuf_iterator<char>());
}

Bytes pattern(size_t n, unsigned mul = 37) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>((i * mul + 11) % 256);
  return b;
}

// Runs fn, requires an rf::Error whose message contains every phrase.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> phrases) {
  try {
    fn();
  } catch (const rf::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : phrases)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-rf::Error: " << e.what();
    return;
  }
  ADD_FAILURE() << "no rf::Error thrown";
}

// ---------------------------------------------------------------------------------------------
// IDX loading

TEST_F(DataIoTest, LoadsGzippedIdx) {
  const Bytes px = pattern(3 * 4 * 5);
  write_gz(path("img.gz"), idx_images(0x803, 3, 4, 5, px));
  write_gz(path("lbl.gz"), idx_labels(0x801, 3, {7, 0, 9}));
  Dataset d = rf::load_idx_images_labels(path("img.gz"), path("lbl.gz"));
  EXPECT_EQ(d.n, 3);
  EXPECT_EQ(d.channels, 1);
  EXPECT_EQ(d.height, 4);
  EXPECT_EQ(d.width, 5);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.sample_size(), 20);
  ASSERT_EQ(d.images.size(), px.size());
  for (size_t i = 0; i < px.size(); ++i) EXPECT_EQ(d.images[i], static_cast<float>(px[i]) / 255.0f);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{7, 0, 9}));
}

TEST_F(DataIoTest, LoadsUncompressedIdxAndFullByteRange) {
  Bytes px(256);
  for (int i = 0; i < 256; ++i) px[i] = static_cast<unsigned char>(i);
  Bytes img = idx_images(0x803, 1, 16, 16, px), lbl = idx_labels(0x801, 1, {3});
  write_raw(path("img"), img.data(), img.size());
  write_raw(path("lbl"), lbl.data(), lbl.size());
  Dataset d = rf::load_idx_images_labels(path("img"), path("lbl"));
  ASSERT_EQ(d.images.size(), 256u);
  EXPECT_EQ(d.images[0], 0.0f);
  EXPECT_EQ(d.images[255], 1.0f);
  EXPECT_EQ(d.images[128], 128.0f / 255.0f);
  EXPECT_EQ(d.labels[0], 3);
}

TEST_F(DataIoTest, WrongMagicNamesFileAndMagic) {
  write_gz(path("img.gz"), idx_images(0x803, 2, 2, 2, pattern(8)));
  write_gz(path("lbl.gz"), idx_labels(0x801, 2, {1, 2}));
  // Arguments swapped: the label file is read as images.
  expect_error([&] { rf::load_idx_images_labels(path("lbl.gz"), path("img.gz")); },
               {path("lbl.gz"), "wrong magic", "0x00000801", "0x00000803"});
  write_gz(path("bad.gz"), idx_labels(0x12345678, 2, {1, 2}));
  expect_error([&] { rf::load_idx_images_labels(path("img.gz"), path("bad.gz")); },
               {path("bad.gz"), "wrong magic", "0x12345678"});
}

TEST_F(DataIoTest, TruncatedPixelAndLabelData) {
  write_gz(path("img.gz"), idx_images(0x803, 3, 4, 5, pattern(50)));  // header says 60
  write_gz(path("lbl.gz"), idx_labels(0x801, 3, {1, 2, 3}));
  expect_error([&] { rf::load_idx_images_labels(path("img.gz"), path("lbl.gz")); },
               {path("img.gz"), "is truncated: expected 60 bytes of pixel data, got 50"});
  write_gz(path("img2.gz"), idx_images(0x803, 3, 4, 5, pattern(60)));
  write_gz(path("lbl2.gz"), idx_labels(0x801, 3, {1}));
  expect_error([&] { rf::load_idx_images_labels(path("img2.gz"), path("lbl2.gz")); },
               {path("lbl2.gz"), "is truncated", "expected 3 bytes of label data, got 1"});
  write_gz(path("hdr.gz"), Bytes{0, 0, 8, 3, 0, 0});
  expect_error([&] { rf::load_idx_images_labels(path("hdr.gz"), path("lbl2.gz")); },
               {path("hdr.gz"), "truncated", "header"});
}

TEST_F(DataIoTest, DataPastTheHeaderIsAnError) {
  write_gz(path("img.gz"), idx_images(0x803, 3, 4, 5, pattern(61)));  // header says 60
  write_gz(path("lbl.gz"), idx_labels(0x801, 3, {1, 2, 3}));
  expect_error([&] { rf::load_idx_images_labels(path("img.gz"), path("lbl.gz")); },
               {path("img.gz"), "more data after the 60 bytes of pixels its header declares (3 images of 4x5)"});
  write_gz(path("img2.gz"), idx_images(0x803, 3, 4, 5, pattern(60)));
  write_gz(path("lbl2.gz"), idx_labels(0x801, 3, {1, 2, 3, 4}));
  expect_error([&] { rf::load_idx_images_labels(path("img2.gz"), path("lbl2.gz")); },
               {path("lbl2.gz"), "more data after the 3 labels its header declares"});
}

TEST_F(DataIoTest, CutOffGzipStreamIsAnError) {
  Bytes img = idx_images(0x803, 50, 28, 28, pattern(50 * 784, 7919));
  write_gz(path("full.gz"), img);
  Bytes gz = read_raw(path("full.gz"));
  gz.resize(gz.size() / 2);
  write_raw(path("cut.gz"), gz.data(), gz.size());
  write_gz(path("lbl.gz"), idx_labels(0x801, 50, Bytes(50, 1)));
  expect_error([&] { rf::load_idx_images_labels(path("cut.gz"), path("lbl.gz")); },
               {path("cut.gz")});
}

TEST_F(DataIoTest, CorruptGzipStreamIsAnError) {
  Bytes img = idx_images(0x803, 50, 28, 28, pattern(50 * 784, 7919));
  write_gz(path("full.gz"), img);
  Bytes gz = read_raw(path("full.gz"));
  for (size_t i = gz.size() / 2; i < gz.size() / 2 + 16; ++i) gz[i] ^= 0x5a;
  write_raw(path("bad.gz"), gz.data(), gz.size());
  write_gz(path("lbl.gz"), idx_labels(0x801, 50, Bytes(50, 1)));
  expect_error([&] { rf::load_idx_images_labels(path("bad.gz"), path("lbl.gz")); },
               {path("bad.gz"), "read error", "corrupt"});
}

TEST_F(DataIoTest, CountMismatch) {
  write_gz(path("img.gz"), idx_images(0x803, 3, 2, 2, pattern(12)));
  write_gz(path("lbl.gz"), idx_labels(0x801, 2, {1, 2}));
  expect_error([&] { rf::load_idx_images_labels(path("img.gz"), path("lbl.gz")); },
               {path("img.gz"), path("lbl.gz"), "image count 3", "label count 2"});
}

TEST_F(DataIoTest, LabelOutOfRange) {
  write_gz(path("img.gz"), idx_images(0x803, 3, 2, 2, pattern(12)));
  write_gz(path("lbl.gz"), idx_labels(0x801, 3, {1, 10, 2}));
  expect_error([&] { rf::load_idx_images_labels(path("img.gz"), path("lbl.gz")); },
               {path("lbl.gz"), "label 10 at index 1", "out of range"});
}

TEST_F(DataIoTest, AbsurdDimensions) {
  write_gz(path("lbl.gz"), idx_labels(0x801, 1, {1}));
  write_gz(path("zero.gz"), idx_images(0x803, 1, 0, 28, {}));
  expect_error([&] { rf::load_idx_images_labels(path("zero.gz"), path("lbl.gz")); },
               {path("zero.gz"), "0x28"});
  // A huge count must be rejected from the header, before any allocation.
  write_gz(path("huge.gz"), idx_images(0x803, 0xFFFFFFFFu, 28, 28, {}));
  expect_error([&] { rf::load_idx_images_labels(path("huge.gz"), path("lbl.gz")); },
               {path("huge.gz"), "4294967295 samples"});
  write_gz(path("none.gz"), idx_images(0x803, 0, 28, 28, {}));
  expect_error([&] { rf::load_idx_images_labels(path("none.gz"), path("lbl.gz")); },
               {path("none.gz"), "0 samples"});
}

TEST_F(DataIoTest, MissingFile) {
  write_gz(path("lbl.gz"), idx_labels(0x801, 1, {1}));
  expect_error([&] { rf::load_idx_images_labels(path("nope.gz"), path("lbl.gz")); },
               {"cannot open " + path("nope.gz"), "No such file",
                "install dataset-fashion-mnist or pass --data-dir"});
  expect_error([&] { rf::load_idx_images_labels(dir_.string(), path("lbl.gz")); },
               {"cannot open " + dir_.string(), "directory"});
}

TEST_F(DataIoTest, FashionMnistDirectory) {
  expect_error([&] { rf::load_fashion_mnist(path("no_such_dir")); },
               {path("no_such_dir"), "does not exist", "dataset-fashion-mnist", "--data-dir"});
  write_gz(path("a_file"), {});
  expect_error([&] { rf::load_fashion_mnist(path("a_file")); },
               {path("a_file"), "not a directory"});
  // A directory with the files missing names the first missing file.
  fs::create_directory(path("fm"));
  const std::string fm = path("fm");
  expect_error([&] { rf::load_fashion_mnist(fm); },
               {(fs::path(fm) / "train-images-idx3-ubyte.gz").string(), "cannot open"});
  write_gz(fm + "/train-images-idx3-ubyte.gz", idx_images(0x803, 4, 28, 28, pattern(4 * 784)));
  write_gz(fm + "/train-labels-idx1-ubyte.gz", idx_labels(0x801, 4, {0, 1, 2, 3}));
  write_gz(fm + "/t10k-images-idx3-ubyte.gz", idx_images(0x803, 2, 28, 28, pattern(2 * 784)));
  write_gz(fm + "/t10k-labels-idx1-ubyte.gz", idx_labels(0x801, 2, {9, 8}));
  rf::FashionMnist m = rf::load_fashion_mnist(fm);
  EXPECT_EQ(m.train.n, 4);
  EXPECT_EQ(m.test.n, 2);
  EXPECT_EQ(m.test.labels, (std::vector<int32_t>{9, 8}));
  EXPECT_EQ(m.train.images.size(), 4u * 784u);
}

TEST(DataIoReal, FashionMnistIfInstalled) {
  const std::string dir = rf::kFashionMnistDefaultDir;
  if (!fs::is_directory(dir))
    GTEST_SKIP() << dir << " not found; install the dataset-fashion-mnist package to run this test";
  auto t0 = std::chrono::steady_clock::now();
  rf::FashionMnist m = rf::load_fashion_mnist(dir);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ info     ] loaded Fashion-MNIST (70000 images) in %.3f s\n", s);
  ASSERT_EQ(m.train.n, 60000);
  ASSERT_EQ(m.test.n, 10000);
  for (const Dataset* d : {&m.train, &m.test}) {
    EXPECT_EQ(d->channels, 1);
    EXPECT_EQ(d->height, 28);
    EXPECT_EQ(d->width, 28);
    ASSERT_EQ(static_cast<int64_t>(d->images.size()), d->n * 784);
    // Fashion-MNIST is balanced: n/10 images per class.
    std::vector<int64_t> count(10, 0);
    for (int32_t l : d->labels) {
      ASSERT_GE(l, 0);
      ASSERT_LT(l, 10);
      ++count[l];
    }
    for (int c = 0; c < 10; ++c) EXPECT_EQ(count[c], d->n / 10) << "class " << c;
    float lo = 1, hi = 0;
    for (float v : d->images) lo = std::min(lo, v), hi = std::max(hi, v);
    EXPECT_EQ(lo, 0.0f);
    EXPECT_EQ(hi, 1.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// BatchIterator

// n samples of 2 floats each; sample i holds {i, -i} so a gathered batch reveals its indices.
Dataset indexed(int64_t n) {
  Dataset d;
  d.n = n;
  d.channels = 1;
  d.height = 1;
  d.width = 2;
  for (int64_t i = 0; i < n; ++i) {
    d.images.push_back(static_cast<float>(i));
    d.images.push_back(-static_cast<float>(i));
    d.labels.push_back(static_cast<int32_t>(i % 10));
  }
  return d;
}

// Runs one epoch and returns the sample indices in order, checking each gathered batch.
std::vector<int64_t> run_epoch(rf::BatchIterator& it, const Dataset& d, int64_t* steps = nullptr) {
  std::vector<float> img(static_cast<size_t>(it.batch_size() * d.sample_size()), 1e9f);
  std::vector<int32_t> lbl(static_cast<size_t>(it.batch_size()), -1);
  std::vector<int64_t> seen;
  int64_t s = 0;
  while (it.next(img.data(), lbl.data())) {
    ++s;
    for (int64_t b = 0; b < it.current_batch_size(); ++b) {
      int64_t idx = static_cast<int64_t>(img[b * 2]);
      EXPECT_EQ(img[b * 2 + 1], -static_cast<float>(idx));
      EXPECT_EQ(lbl[b], d.labels[idx]);
      seen.push_back(idx);
    }
  }
  EXPECT_FALSE(it.next(img.data(), lbl.data())) << "next() after the end must stay false";
  if (steps) *steps = s;
  return seen;
}

TEST(DataIoBatch, EpochSeesEverySampleOnce) {
  Dataset d = indexed(103);
  {
    rf::BatchIterator it(d, 10, 42, true, 0, 1, /*drop_last=*/false);
    EXPECT_EQ(it.steps_per_epoch(), 11);
    int64_t steps = 0;
    std::vector<int64_t> seen = run_epoch(it, d, &steps);
    EXPECT_EQ(steps, 11);
    std::sort(seen.begin(), seen.end());
    std::vector<int64_t> all(103);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(seen, all);
  }
  {
    rf::BatchIterator it(d, 10, 42, true);  // drop_last: 10 full batches
    EXPECT_EQ(it.steps_per_epoch(), 10);
    std::vector<int64_t> seen = run_epoch(it, d);
    EXPECT_EQ(seen.size(), 100u);
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 100u);
  }
}

TEST(DataIoBatch, ShardsAreDisjointAndEqual) {
  for (int world : {2, 3}) {
    for (int64_t n : {102, 103, 104}) {
      Dataset d = indexed(n);
      std::set<int64_t> uni;
      size_t total = 0;
      int64_t steps0 = -1;
      for (int r = 0; r < world; ++r) {
        rf::BatchIterator it(d, 1, 9, true, r, world);
        EXPECT_EQ(it.samples_per_rank(), n / world);
        int64_t steps = 0;
        std::vector<int64_t> seen = run_epoch(it, d, &steps);
        if (r == 0) steps0 = steps;
        EXPECT_EQ(steps, steps0) << "every rank must run the same number of steps";
        EXPECT_EQ(static_cast<int64_t>(seen.size()), n / world);
        uni.insert(seen.begin(), seen.end());
        total += seen.size();
      }
      EXPECT_EQ(uni.size(), total) << "shards overlap (world " << world << ", n " << n << ")";
      EXPECT_EQ(static_cast<int64_t>(uni.size()), (n / world) * world);
      if (n % world == 0) {
        EXPECT_EQ(static_cast<int64_t>(uni.size()), n);
      }
    }
  }
}

TEST(DataIoBatch, ShardFollowsPermutationModuloWorld) {
  // Rank r's shard is the permutation's positions r, r+w, ...: the world-1 order interleaved.
  Dataset d = indexed(90);
  rf::BatchIterator whole(d, 1, 5, true);
  for (int r = 0; r < 3; ++r) {
    rf::BatchIterator it(d, 1, 5, true, r, 3);
    for (int64_t k = 0; k < 30; ++k) EXPECT_EQ(it.shard()[k], whole.shard()[r + 3 * k]);
  }
}

TEST(DataIoBatch, PermutationDependsOnSeedAndEpoch) {
  Dataset d = indexed(200);
  rf::BatchIterator a(d, 8, 1234, true), b(d, 8, 1234, true), c(d, 8, 1235, true);
  std::vector<int64_t> e0 = run_epoch(a, d);
  EXPECT_EQ(e0, run_epoch(b, d));
  EXPECT_NE(e0, run_epoch(c, d));
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(e0, sorted) << "shuffle left the order unchanged";
  a.start_epoch(1);
  EXPECT_EQ(a.epoch(), 1);
  std::vector<int64_t> e1 = run_epoch(a, d);
  EXPECT_NE(e0, e1);
  // Epoch e of seed s is the permutation of seed s+e: the documented contract.
  c.start_epoch(0);
  EXPECT_EQ(e1, run_epoch(c, d));
  a.start_epoch(0);
  EXPECT_EQ(e0, run_epoch(a, d)) << "restarting an epoch must reproduce it";
}

TEST(DataIoBatch, PermutationIsPinned) {
  // mt19937_64 is fully specified and the shuffle is hand-written, so this order must be the
  // same with every compiler and standard library (ranks may be built differently).
  Dataset d = indexed(10);
  rf::BatchIterator it(d, 1, 0, true);
  const std::vector<int64_t> got = it.shard();
  EXPECT_EQ(got, (std::vector<int64_t>{7, 2, 0, 8, 3, 9, 6, 1, 5, 4}));
}

TEST(DataIoBatch, NoShuffleIsInOrder) {
  Dataset d = indexed(25);
  rf::BatchIterator it(d, 4, 77, false, 0, 1, false);
  std::vector<int64_t> seen = run_epoch(it, d);
  std::vector<int64_t> all(25);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(seen, all);
  it.start_epoch(3);
  EXPECT_EQ(run_epoch(it, d), all);
  // Rank 1 of 2 owns odd positions; 12 samples per rank in 3 batches of 4.
  rf::BatchIterator r1(d, 4, 77, false, 1, 2);
  EXPECT_EQ(run_epoch(r1, d), (std::vector<int64_t>{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23}));
}

TEST(DataIoBatch, PartialLastBatch) {
  Dataset d = indexed(10);
  rf::BatchIterator it(d, 4, 0, false, 0, 1, false);
  std::vector<float> img(8);
  std::vector<int32_t> lbl(4);
  ASSERT_TRUE(it.next(img.data(), lbl.data()));
  EXPECT_EQ(it.current_batch_size(), 4);
  ASSERT_TRUE(it.next(img.data(), lbl.data()));
  ASSERT_TRUE(it.next(img.data(), lbl.data()));
  EXPECT_EQ(it.current_batch_size(), 2);
  EXPECT_EQ(img[0], 8.0f);
  EXPECT_EQ(img[2], 9.0f);
  EXPECT_FALSE(it.next(img.data(), lbl.data()));
}

TEST(DataIoBatch, BatchLargerThanDataSet) {
  Dataset d = indexed(103);
  expect_error([&] { rf::BatchIterator it(d, 200, 0, true); },
               {"batch 200 is larger than the data set (103 samples)"});
  // Sharded: 103 / 2 = 51 samples per rank.
  expect_error([&] { rf::BatchIterator it(d, 60, 0, true, 1, 2); },
               {"batch 60 is larger than the data set (51 samples"});
  rf::BatchIterator ok(d, 51, 0, true, 1, 2);
  EXPECT_EQ(ok.steps_per_epoch(), 1);
  expect_error([&] { rf::BatchIterator it(d, 4, 0, true, 2, 2); }, {"rank 2"});
  expect_error([&] { rf::BatchIterator it(d, 0, 0, true); }, {"batch"});
}

// ---------------------------------------------------------------------------------------------
// Synthetic data

TEST(DataIoSynthetic, DeterministicAndShaped) {
  Dataset a = rf::make_synthetic(500, 3), b = rf::make_synthetic(500, 3), c = rf::make_synthetic(500, 4);
  EXPECT_EQ(a.n, 500);
  EXPECT_EQ(a.channels, 1);
  EXPECT_EQ(a.height, 28);
  EXPECT_EQ(a.width, 28);
  EXPECT_EQ(a.classes, 10);
  ASSERT_EQ(a.images.size(), 500u * 784u);
  ASSERT_EQ(a.labels.size(), 500u);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.images, c.images);
  EXPECT_NE(a.labels, c.labels);
  std::set<int32_t> classes(a.labels.begin(), a.labels.end());
  EXPECT_EQ(classes.size(), 10u);
  for (float v : a.images) ASSERT_TRUE(v >= 0.0f && v <= 1.0f) << v;
  Dataset k = rf::make_synthetic(50, 3, 4);
  EXPECT_EQ(k.classes, 4);
  for (int32_t l : k.labels) ASSERT_TRUE(l >= 0 && l < 4);
  expect_error([] { rf::make_synthetic(0, 1); }, {"n must be positive"});
}

TEST(DataIoSynthetic, Learnable) {
  // A nearest-class-mean classifier fit on one seed must beat chance by far on another seed.
  Dataset tr = rf::make_synthetic(2000, 1), te = rf::make_synthetic(1000, 2);
  const int64_t ss = tr.sample_size();
  std::vector<double> mean(10 * ss, 0.0);
  std::vector<int64_t> cnt(10, 0);
  for (int64_t i = 0; i < tr.n; ++i) {
    ++cnt[tr.labels[i]];
    for (int64_t p = 0; p < ss; ++p) mean[tr.labels[i] * ss + p] += tr.images[i * ss + p];
  }
  for (int c = 0; c < 10; ++c)
    for (int64_t p = 0; p < ss; ++p) mean[c * ss + p] /= std::max<int64_t>(cnt[c], 1);
  int64_t correct = 0;
  for (int64_t i = 0; i < te.n; ++i) {
    int best = 0;
    double best_d = 1e300;
    for (int c = 0; c < 10; ++c) {
      double dist = 0;
      for (int64_t p = 0; p < ss; ++p) {
        double diff = te.images[i * ss + p] - mean[c * ss + p];
        dist += diff * diff;
      }
      if (dist < best_d) best_d = dist, best = c;
    }
    correct += best == te.labels[i];
  }
  EXPECT_GT(static_cast<double>(correct) / te.n, 0.9);
}

// ---------------------------------------------------------------------------------------------
// safetensors

TEST_F(DataIoTest, SafetensorsRoundTrip) {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  std::vector<double> f64 = {3.141592653589793, -1e300, 0.5, 2.0};
  std::vector<int32_t> i32 = {1, -2, 3, 2147483647, -2147483647 - 1, 0, 5, 6};
  float scalar = 42.0f;
  std::vector<rf::NamedTensor> ts = {
      {"layer1.weight", rf::DType::F32, rf::Shape{2, 3}, f32.data()},
      {"stats", rf::DType::F64, rf::Shape{4}, f64.data()},
      {"counts", rf::DType::I32, rf::Shape{2, 2, 2}, i32.data()},
      {"step", rf::DType::F32, rf::Shape{}, &scalar},
      {"empty", rf::DType::F32, rf::Shape{0, 3}, nullptr},
  };
  const std::string p = path("ckpt.safetensors");
  rf::save_safetensors(p, ts, {{"format", "pt"}, {"epoch", "3"}});
  std::map<std::string, std::string> meta;
  auto m = rf::load_safetensors(p, &meta);
  EXPECT_EQ(meta, (std::map<std::string, std::string>{{"format", "pt"}, {"epoch", "3"}}));
  ASSERT_EQ(m.size(), 5u);
  auto check = [&](const char* name, rf::DType dt, rf::Shape sh, const void* data) {
    ASSERT_TRUE(m.count(name)) << name;
    const rf::LoadedTensor& t = m.at(name);
    EXPECT_EQ(t.dtype, dt) << name;
    EXPECT_EQ(t.shape, sh) << name << " " << t.shape.str();
    ASSERT_EQ(t.bytes.size(), sh.numel() * rf::dtype_size(dt)) << name;
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp(t.bytes.data(), data, t.bytes.size()), 0) << name;
    }
  };
  check("layer1.weight", rf::DType::F32, rf::Shape{2, 3}, f32.data());
  check("stats", rf::DType::F64, rf::Shape{4}, f64.data());
  check("counts", rf::DType::I32, rf::Shape{2, 2, 2}, i32.data());
  check("step", rf::DType::F32, rf::Shape{}, &scalar);
  check("empty", rf::DType::F32, rf::Shape{0, 3}, nullptr);
  EXPECT_EQ(m.at("step").shape.rank, 0);

  // Overwriting replaces the file, and without metadata none is reported.
  rf::save_safetensors(p, {ts[1]});
  auto m2 = rf::load_safetensors(p, &meta);
  EXPECT_EQ(m2.size(), 1u);
  EXPECT_TRUE(meta.empty());
}

TEST_F(DataIoTest, SafetensorsByteFormat) {
  std::vector<float> a = {1, 2, 3};
  std::vector<int32_t> b = {7, 8};
  const std::string p = path("fmt.safetensors");
  rf::save_safetensors(p, {{"a", rf::DType::F32, rf::Shape{3}, a.data()},
                           {"b", rf::DType::I32, rf::Shape{1, 2}, b.data()}},
                       {{"k", "v"}});
  Bytes raw = read_raw(p);
  ASSERT_GE(raw.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{raw[i]} << (8 * i);  // little-endian u64
  EXPECT_EQ(n % 8, 0u) << "header must pad the data start to 8 bytes";
  ASSERT_EQ(raw.size(), 8 + n + 12 + 8);
  std::string text(raw.begin() + 8, raw.begin() + 8 + n);
  EXPECT_EQ(text.front(), '{');
  EXPECT_EQ(text.find_last_not_of(' '), text.find_last_of('}')) << "padding must be spaces";
  nlohmann::json h = nlohmann::json::parse(text);
  EXPECT_EQ(h["__metadata__"], nlohmann::json({{"k", "v"}}));
  EXPECT_EQ(h["a"]["dtype"], "F32");
  EXPECT_EQ(h["a"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(h["b"]["dtype"], "I32");
  EXPECT_EQ(h["b"]["shape"], nlohmann::json({1, 2}));
  for (const char* name : {"a", "b"}) {
    auto off = h[name]["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_EQ(off.size(), 2u);
    const void* src = name[0] == 'a' ? static_cast<const void*>(a.data()) : b.data();
    EXPECT_EQ(std::memcmp(raw.data() + 8 + n + off[0], src, off[1] - off[0]), 0) << name;
  }
}

TEST_F(DataIoTest, SafetensorsSaveLeavesNoTempFile) {
  std::vector<float> a(1000, 1.0f);
  rf::save_safetensors(path("x.safetensors"), {{"a", rf::DType::F32, rf::Shape{1000}, a.data()}});
  rf::save_safetensors(path("x.safetensors"), {{"a", rf::DType::F32, rf::Shape{1000}, a.data()}});
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"x.safetensors"}));
  // An unwritable destination fails with the path and leaves nothing behind.
  const std::string bad = path("missing_dir/y.safetensors");
  expect_error([&] { rf::save_safetensors(bad, {{"a", rf::DType::F32, rf::Shape{1000}, a.data()}}); },
               {bad, "cannot save"});
  names.clear();
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"x.safetensors"}));
  // Invalid tensor lists are refused before anything is written.
  expect_error([&] {
    rf::save_safetensors(path("z.safetensors"), {{"a", rf::DType::F32, rf::Shape{1}, a.data()},
                                                 {"a", rf::DType::F32, rf::Shape{1}, a.data()}});
  }, {"'a' appears twice"});
  expect_error([&] {
    rf::save_safetensors(path("z.safetensors"), {{"a", rf::DType::F32, rf::Shape{-1, 2}, a.data()}});
  }, {"undefined shape"});
  EXPECT_FALSE(fs::exists(path("z.safetensors")));
}

// Writes a safetensors file from a literal header (padded like a real one) and data bytes.
void write_st(const std::string& p, const std::string& header, const Bytes& data) {
  std::string h = header;
  h.append((8 - h.size() % 8) % 8, ' ');
  Bytes f(8);
  for (int i = 0; i < 8; ++i) f[i] = static_cast<unsigned char>(uint64_t{h.size()} >> (8 * i));
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), data.begin(), data.end());
  write_raw(p, f.data(), f.size());
}

TEST_F(DataIoTest, SafetensorsLoadRejectsBadFiles) {
  const std::string p = path("bad.safetensors");
  expect_error([&] { rf::load_safetensors(path("none.safetensors")); },
               {path("none.safetensors"), "No such file"});

  // Truncated: a valid file cut short in the data, then in the header, then below 8 bytes.
  std::vector<float> a(16, 2.0f);
  rf::save_safetensors(p, {{"a", rf::DType::F32, rf::Shape{4, 4}, a.data()}});
  Bytes full = read_raw(p);
  write_raw(p, full.data(), full.size() - 4);
  expect_error([&] { rf::load_safetensors(p); }, {p, "out of range", "truncated"});
  write_raw(p, full.data(), 20);
  expect_error([&] { rf::load_safetensors(p); }, {p, "header length", "larger than the file"});
  write_raw(p, full.data(), 5);
  expect_error([&] { rf::load_safetensors(p); }, {p, "not a safetensors file"});

  // Corrupt JSON in the header.
  Bytes corrupt = full;
  corrupt[8 + 3] = '#';
  write_raw(p, corrupt.data(), corrupt.size());
  expect_error([&] { rf::load_safetensors(p); }, {p, "not valid JSON"});
  write_st(p, "[1,2]", {});
  expect_error([&] { rf::load_safetensors(p); }, {p, "not a JSON object"});

  const Bytes eight(8, 0);
  write_st(p, R"({"x":{"dtype":"BOOL","shape":[8],"data_offsets":[0,8]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "unsupported dtype 'BOOL'"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "span 8 bytes", "needs 12"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "out of range"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "overlap"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "belong to no tensor"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "cover only 4"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "shape"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "begin after end"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
           eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "needs more than"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[2]}})", eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "data_offsets"});
  write_st(p, R"({"__metadata__":{"a":1},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
           eight);
  expect_error([&] { rf::load_safetensors(p); }, {p, "__metadata__", "not a string"});

  // Found with tests/fuzz/fuzz_safetensors.cpp (UBSan, on a crafted input): an empty tensor whose
  // other dims overflow i64 was accepted, and Shape::numel() then overflowed before reaching the 0.
  write_st(p, R"({"x":{"dtype":"F32","shape":[4611686018427387904,4,0],"data_offsets":[0,0]}})", {});
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "[4611686018427387904,4,0]", "multiply past 64 bits"});
  write_st(p, R"({"x":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}})", {});
  EXPECT_EQ(rf::load_safetensors(p).at("x").shape.numel(), 0);  // huge but within i64: still fine

  // Found while fuzzing (a crafted input past the fuzzer's 4 KB inputs): JSON nested a million
  // deep cost ~200 bytes of memory per byte of header; nesting is now refused past 128 levels.
  write_st(p, "{\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}", {});
  expect_error([&] { rf::load_safetensors(p); }, {p, "nests JSON deeper than 128 levels"});
  write_st(p, "{\"x\":" + std::string(100, '[') + std::string(100, ']') + "}", {});
  expect_error([&] { rf::load_safetensors(p); }, {p, "'x'", "not a JSON object"});  // 100 deep: parsed

  // And a hand-written valid file (data in a different order than the keys) loads.
  Bytes data = pattern(12);
  write_st(p, R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},)"
              R"("y":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", data);
  auto m = rf::load_safetensors(p);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m.at("x").bytes, Bytes(data.begin() + 8, data.end()));
  EXPECT_EQ(m.at("y").bytes, Bytes(data.begin(), data.begin() + 8));
}

}  // namespace
