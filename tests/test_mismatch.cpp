// The collective mismatch report (collective/mismatch.h), shared by the host engine and the NCCL
// backend: what counts as the same collective, and how a difference is reported.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "collective/mismatch.h"

using namespace rf;
using namespace rf::collective;

namespace {
Collective allreduce(size_t count, DType t = DType::F32, ReduceOp op = ReduceOp::Sum) {
  Collective c;
  c.kind = CollKind::Allreduce;
  c.count = count;
  c.dtype = t;
  c.op = op;
  return c;
}
}  // namespace

TEST(Mismatch, SameCallsAgree) {
  const std::vector<CollDesc> all(3, describe(allreduce(4), 7));
  EXPECT_EQ(mismatch_report(all, 7), "");
  // The root only matters to a broadcast; buffers never matter.
  Collective a = allreduce(4), b = allreduce(4);
  b.root = 2;
  b.send = &b;
  EXPECT_EQ(mismatch_report({describe(a, 1), describe(b, 1)}, 1), "");
}

TEST(Mismatch, TheMinorityIsReportedAgainstTheMajority) {
  std::vector<CollDesc> all(3, describe(allreduce(4), 17));
  all[1] = describe(allreduce(5), 17);
  EXPECT_EQ(mismatch_report(all, 17),
            "collective #17 mismatch: rank 1 called allreduce(count=5, f32, sum) but ranks 0,2 called "
            "allreduce(count=4, f32, sum)");
}

TEST(Mismatch, EveryFieldThatMattersCounts) {
  Collective bcast;
  bcast.kind = CollKind::Broadcast;
  bcast.count = 4;
  Collective other_root = bcast;
  other_root.root = 1;
  const std::pair<Collective, Collective> pairs[] = {
      {allreduce(4), allreduce(4, DType::F64)},
      {allreduce(4), allreduce(4, DType::F32, ReduceOp::Max)},
      {bcast, other_root},
      {allreduce(4), bcast},
  };
  for (const auto& [x, y] : pairs) {
    const std::string r = mismatch_report({describe(x, 3), describe(y, 3)}, 3);
    EXPECT_NE(r.find("collective #3 mismatch: rank 1 called "), std::string::npos) << r;  // ties: rank 0 is the reference
  }
}
