// Helpers of the libFuzzer targets: a memfd that holds one input and is reachable by path, for
// readers that take a file name (the bytes then go through the very open/fstat/read code a real
// file does), and gzip compression of a buffer in memory.
#pragma once
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace rf_fuzz {

class MemFile {
 public:
  explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the contents with [data, data + n) and returns the path that opens them.
  const std::string& hold(const void* data, size_t n) {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    const char* p = static_cast<const char*>(data);
    size_t off = 0;
    while (off < n) {
      const ssize_t w = ::pwrite(fd_, p + off, n - off, static_cast<off_t>(off));
      if (w <= 0) std::abort();
      off += static_cast<size_t>(w);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

// The bytes as one gzip member (what gzip(1) and Python's gzip module write).
inline std::vector<uint8_t> gzip(const uint8_t* data, size_t n) {
  z_stream s{};
  if (deflateInit2(&s, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::vector<uint8_t> out(deflateBound(&s, static_cast<uLong>(n)) + 32);
  s.next_in = const_cast<Bytef*>(data);
  s.avail_in = static_cast<uInt>(n);
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  if (deflate(&s, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

// RF_FUZZ_VERBOSE=1 in the environment: each input's verdict on stderr ("accepted", or the
// reader's error line), e.g. to see why a seed is refused: fuzz_idx tests/fuzz/corpus/idx/*
inline void verdict(const char* what, const char* error = nullptr) {
  static const bool verbose = std::getenv("RF_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", what, error ? error : "accepted");
}

}  // namespace rf_fuzz
