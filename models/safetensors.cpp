// safetensors writer (temp file + fsync + rename, so checkpoints are never half-written) and a
// reader that validates everything before trusting an offset, since checkpoints come from disk.
#include "models/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/error.h"

namespace rf {
namespace {

// The format stores little-endian data and we write host memory as is.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

using json = nlohmann::json;

// The reference implementation refuses larger headers; a bigger length field means corruption,
// and checking it first avoids a huge allocation.
constexpr uint64_t kMaxHeaderLen = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr int kMaxHeaderDepth = 128;

// Writes all of [p, p+n) to fd, retrying partial writes and EINTR; returns false with errno set.
bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads exactly n bytes at offset; returns false on error or end of file.
bool pread_all(int fd, void* p, size_t n, uint64_t offset) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::pread(fd, c, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (r == 0) {
      errno = 0;
      return false;
    }
    c += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

std::string errno_str() { return errno ? std::strerror(errno) : "unexpected end of file"; }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports failure (close can report a deferred write error).
  bool close() {
    int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0;
  }

 private:
  int fd_;
};

}  // namespace

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Validate and lay out before touching the file system.
  json header = json::object();
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    RF_CHECK(!t.name.empty(), "cannot save ", path, ": a tensor has an empty name");
    RF_CHECK(t.name != kMetadataKey, "cannot save ", path, ": '", kMetadataKey,
             "' is reserved and cannot name a tensor");
    RF_CHECK(names.insert(t.name).second, "cannot save ", path, ": tensor name '", t.name,
             "' appears twice");
    RF_CHECK(t.shape.defined(), "cannot save ", path, ": tensor '", t.name,
             "' has an undefined shape ", t.shape.str());
    const uint64_t bytes = static_cast<uint64_t>(t.shape.numel()) * dtype_size(t.dtype);
    RF_CHECK(bytes == 0 || t.data != nullptr, "cannot save ", path, ": tensor '", t.name,
             "' has no data");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape.vec()},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  std::string text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned (8-byte length field + header).
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len_le[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len_le[i] = static_cast<unsigned char>(n >> (8 * i));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0)
    fail("cannot save checkpoint ", path, ": cannot create ", tmp, ": ", std::strerror(errno),
         " (check that the directory exists and is writable)");
  // From here on every failure removes the temp file.
  auto fail_io = [&](const char* what) {
    const int code = errno;
    if (fd.get() >= 0) fd.close();
    ::unlink(tmp.c_str());
    fail("cannot save checkpoint ", path, ": ", what, " ", tmp, " failed: ", std::strerror(code),
         code == ENOSPC || code == EDQUOT ? " (no space left, or the quota is used up)" : "");
  };
  if (!write_all(fd.get(), len_le, 8) || !write_all(fd.get(), text.data(), text.size()))
    fail_io("writing");
  for (const NamedTensor& t : tensors) {
    const size_t bytes = static_cast<size_t>(t.shape.numel()) * dtype_size(t.dtype);
    if (bytes && !write_all(fd.get(), t.data, bytes)) fail_io("writing");
  }
  if (::fsync(fd.get()) != 0) fail_io("fsync of");
  if (!fd.close()) fail_io("closing");
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_io("renaming");
  // Make the rename itself durable; best effort (some file systems refuse fsync on directories).
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

std::map<std::string, LoadedTensor> load_safetensors(
    const std::string& path, std::map<std::string, std::string>* metadata,
    const std::function<void(const std::map<std::string, LoadedTensor>&)>& check_header) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever. It has
  // no effect on the regular file that is all we read (with pread).
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) fail("cannot open checkpoint ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    fail("cannot open checkpoint ", path, ": ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail("cannot open checkpoint ", path, ": it is a directory");
  if (!S_ISREG(st.st_mode)) fail("cannot open checkpoint ", path, ": it is not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    fail(path, " is not a safetensors file: it has ", file_size,
         " bytes, fewer than the 8-byte header length");

  unsigned char len_le[8];
  if (!pread_all(fd.get(), len_le, 8, 0)) fail("cannot read ", path, ": ", errno_str());
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t{len_le[i]} << (8 * i);
  if (header_len > file_size - 8)
    fail(path, ": header length ", header_len, " is larger than the file (", file_size,
         " bytes); the file is truncated or not safetensors");
  if (header_len > kMaxHeaderLen)
    fail(path, ": header length ", header_len, " exceeds the ", kMaxHeaderLen,
         "-byte limit; the file is corrupt");
  std::string text(header_len, '\0');
  if (!pread_all(fd.get(), text.data(), header_len, 8))
    fail("cannot read ", path, ": ", errno_str());

  json header;
  try {
    // A header is 3 levels deep. Each '[' of a deeper one costs a JSON value, a vector and a heap
    // block (~200 bytes under ASan: a 3 MB file took 650 MB), so nesting beyond 128 is refused
    // (serde_json's limit, the parser of the reference reader).
    header = json::parse(text, [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxHeaderDepth)
        fail(path, ": header nests JSON deeper than ", kMaxHeaderDepth, " levels; the file is corrupt");
      return true;
    });
  } catch (const json::exception& e) {
    fail(path, ": header is not valid JSON (", e.what(), "); the file is corrupt");
  }
  if (!header.is_object()) fail(path, ": header is not a JSON object; the file is corrupt");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = file_size - data_start;
  struct Entry {
    std::string name;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  std::map<std::string, LoadedTensor> out;
  if (metadata) metadata->clear();

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) fail(path, ": '", kMetadataKey, "' is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(path, ": '", kMetadataKey, "' entry '", m.key(), "' is not a string");
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const auto&... why) {
      fail(path, ": tensor '", name, "' ", why..., "; the file is corrupt");
    };
    if (!v.is_object()) bad("is not a JSON object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto of = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) bad("has no string \"dtype\"");
    if (sh == v.end() || !sh->is_array()) bad("has no \"shape\" array");
    if (of == v.end() || !of->is_array() || of->size() != 2 || !(*of)[0].is_number_unsigned() ||
        !(*of)[1].is_number_unsigned())
      bad("has no \"data_offsets\" pair of non-negative integers");

    LoadedTensor t;
    const std::string dname = dt->get<std::string>();
    if (!dtype_from_name(dname, &t.dtype))
      fail(path, ": tensor '", name, "' has unsupported dtype '", dname,
           "' (ringflow reads F32, F64, F16, BF16, I32, I64, U8)");
    if (sh->size() > static_cast<size_t>(Shape::kMaxRank))
      bad("has rank ", sh->size(), ", more than ", Shape::kMaxRank);
    // numel * dtype size must equal the byte range; guard the product against overflow by
    // bounding it with the data size as we go (dims of 0 make it 0).
    uint64_t numel = 1;
    bool too_big = false, empty = false;
    // The dims other than 0 must multiply within i64 even where a 0 makes the tensor empty:
    // Shape::numel() multiplies in order, so [2^62, 4, 0] would overflow before reaching the 0.
    uint64_t nonzero_product = 1;
    bool overflows = false;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) bad("has a shape entry that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<i64>::max()))
        bad("has dimension ", dim, " that is too large");
      t.shape.push_back(static_cast<i64>(dim));
      if (dim == 0) empty = true;
      else if (numel > data_len / dim) too_big = true;  // numel * dim > data_len
      if (!too_big) numel *= dim;
      if (dim != 0) {
        if (nonzero_product > static_cast<uint64_t>(std::numeric_limits<i64>::max()) / dim) overflows = true;
        else nonzero_product *= dim;
      }
    }
    if (empty && overflows) bad("has shape ", t.shape.str(), " whose dimensions multiply past 64 bits");
    const uint64_t begin = (*of)[0].get<uint64_t>(), end = (*of)[1].get<uint64_t>();
    if (begin > end) bad("has data_offsets [", begin, ",", end, "] with begin after end");
    if (end > data_len)
      fail(path, ": tensor '", name, "' data_offsets [", begin, ",", end,
           "] are out of range: the data section has ", data_len,
           " bytes (the file is truncated or corrupt)");
    if (empty) {
      if (end != begin)
        fail(path, ": tensor '", name, "' has an empty shape ", t.shape.str(),
             " but data_offsets [", begin, ",", end, "] span ", end - begin, " bytes");
    } else if (too_big || numel * dtype_size(t.dtype) != end - begin) {
      fail(path, ": tensor '", name, "' data_offsets [", begin, ",", end, "] span ", end - begin,
           " bytes but shape ", t.shape.str(), " of ", dname, " needs ",
           too_big ? std::string("more than the whole file")
                   : std::to_string(numel * dtype_size(t.dtype)));
    }
    entries.push_back({name, begin, end});
    out.emplace(name, std::move(t));
  }

  // Tensors must tile the data section exactly (as the reference implementation requires):
  // an overlap means two tensors alias, a gap or trailing bytes mean a corrupt writer.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < expect)
      fail(path, ": tensor '", e.name, "' data_offsets [", e.begin, ",", e.end,
           "] overlap tensor '", prev->name, "' [", prev->begin, ",", prev->end,
           "]; the file is corrupt");
    if (e.begin > expect)
      fail(path, ": bytes [", expect, ",", e.begin, ") of the data section belong to no tensor ",
           "(before tensor '", e.name, "'); the file is corrupt");
    expect = e.end;
    prev = &e;
  }
  if (expect != data_len)
    fail(path, ": the data section has ", data_len, " bytes but the tensors cover only ", expect,
         "; the file is corrupt");
  if (check_header) check_header(out);

  for (const Entry& e : entries) {
    LoadedTensor& t = out.at(e.name);
    t.bytes.resize(e.end - e.begin);
    if (!t.bytes.empty() && !pread_all(fd.get(), t.bytes.data(), t.bytes.size(), data_start + e.begin))
      fail("cannot read tensor '", e.name, "' from ", path, ": ", errno_str());
  }
  return out;
}

}  // namespace rf
