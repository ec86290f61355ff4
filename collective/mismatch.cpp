#include "collective/mismatch.h"

#include <cctype>
#include <map>
#include <sstream>
#include <tuple>

namespace rf::collective {

namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? "," : "") << ranks[i];
  return os.str();
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

bool CollDesc::operator==(const CollDesc& o) const {
  return count == o.count && counts_hash == o.counts_hash && kind == o.kind && dtype == o.dtype && op == o.op &&
         root == o.root;
}

bool CollDesc::operator<(const CollDesc& o) const {
  return std::tie(kind, count, dtype, op, root, counts_hash) <
         std::tie(o.kind, o.count, o.dtype, o.op, o.root, o.counts_hash);
}

CollDesc describe(const Collective& t, uint64_t seq) {
  CollDesc d{};
  d.seq = seq;
  d.kind = static_cast<uint8_t>(t.kind);
  d.dtype = static_cast<uint8_t>(t.dtype);
  d.count = t.count;
  d.counts_hash = 1469598103934665603ull;  // FNV-1a over the allgatherv counts
  for (size_t c : t.counts) d.counts_hash = (d.counts_hash ^ c) * 1099511628211ull;
  d.count = t.kind == CollKind::Allgatherv ? 0 : t.count;
  for (size_t c : t.counts) d.count += c;
  const bool reduces = t.kind == CollKind::Allreduce || t.kind == CollKind::ReduceScatter ||
                       t.kind == CollKind::AllreduceShm;
  d.op = reduces ? static_cast<uint8_t>(t.op) : 0;
  d.root = t.kind == CollKind::Broadcast ? t.root : 0;
  if (t.kind == CollKind::Barrier) d.count = d.dtype = 0;
  return d;
}

std::string to_string(const CollDesc& d) {
  const auto kind = static_cast<CollKind>(d.kind);
  std::ostringstream os;
  os << coll_kind_name(kind) << "(";
  switch (kind) {
    case CollKind::Barrier: break;
    case CollKind::ShmAlloc: os << "bytes=" << d.count; break;
    case CollKind::Allgatherv:
      os << "total=" << d.count << ", counts#" << std::hex << (d.counts_hash & 0xffff) << std::dec << ", "
         << lower(dtype_name(static_cast<DType>(d.dtype)));
      break;
    default:
      os << "count=" << d.count << ", " << lower(dtype_name(static_cast<DType>(d.dtype)));
      if (kind == CollKind::Broadcast) os << ", root=" << d.root;
      if (kind == CollKind::Allreduce || kind == CollKind::ReduceScatter || kind == CollKind::AllreduceShm)
        os << ", " << reduce_op_name(static_cast<ReduceOp>(d.op));
  }
  os << ")";
  return os.str();
}

std::string mismatch_report(const std::vector<CollDesc>& all, uint64_t seq) {
  std::map<CollDesc, std::vector<int>> groups;
  for (size_t r = 0; r < all.size(); ++r) groups[all[r]].push_back(int(r));
  if (groups.size() <= 1) return "";
  auto ref = groups.begin();
  for (auto it = groups.begin(); it != groups.end(); ++it)
    if (it->second.size() > ref->second.size() ||
        (it->second.size() == ref->second.size() && it->second[0] < ref->second[0]))
      ref = it;
  std::ostringstream os;
  os << "collective #" << seq << " mismatch: ";
  bool first = true;
  for (auto it = groups.begin(); it != groups.end(); ++it) {
    if (it == ref) continue;
    os << (first ? "" : "; ") << rank_list(it->second) << " called " << to_string(it->first);
    first = false;
  }
  os << " but " << rank_list(ref->second) << " called " << to_string(ref->first);
  return os.str();
}

}  // namespace rf::collective
