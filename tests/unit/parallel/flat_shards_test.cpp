// The distributed optimizer's arithmetic of shards (parallel/distributed_optimizer.h): the flat ranges of
// the ranks tile the vector, and a flat range of a tensor is exactly the union of its boxes, in order.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "parallel/distributed_optimizer.h"

namespace moetrain::parallel {
namespace {

TEST(ShardRange, RanksTileTheVectorInEqualShardsButTheLast) {
  for (int64_t n : {0, 1, 7, 8, 9, 100}) {
    for (int64_t d : {1, 2, 3, 4}) {
      int64_t next = 0;
      for (int64_t r = 0; r < d; ++r) {
        const auto range = shard_range(n, d, r);
        EXPECT_EQ(range.begin, next) << n << " over " << d;
        EXPECT_LE(range.end - range.begin, (n + d - 1) / d);
        next = range.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

// Marks the elements every box covers; they must be exactly [begin, end), each once, in flat order.
void expect_exact_cover(const std::vector<int64_t>& shape, int64_t begin, int64_t end) {
  auto marks = torch::zeros(shape, torch::kInt64);
  int64_t last_flat = -1;
  const auto boxes = flat_range_boxes(shape, begin, end);
  EXPECT_LE(static_cast<int64_t>(boxes.size()),
            std::max<int64_t>(1, 2 * static_cast<int64_t>(shape.size()) - 1));
  for (const auto& box : boxes) {
    ASSERT_EQ(box.offsets.size(), shape.size());
    auto view = marks;
    for (size_t d = 0; d < shape.size(); ++d)
      view = view.narrow(static_cast<int64_t>(d), box.offsets[d], box.sizes[d]);
    view += 1;
    int64_t flat = 0;  // the box's first element, flat: boxes come in order
    for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + box.offsets[d];
    EXPECT_GT(flat, last_flat);
    last_flat = flat;
  }
  auto expected = torch::zeros({marks.numel()}, torch::kInt64);
  expected.narrow(0, begin, end - begin).fill_(1);
  EXPECT_TRUE(torch::equal(marks.reshape({-1}), expected)) << "range [" << begin << ", " << end << ")";
}

TEST(FlatRangeBoxes, EveryRangeOfSeveralShapesIsCoveredExactlyOnce) {
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{10}, std::vector<int64_t>{4, 5},
                                            std::vector<int64_t>{3, 4, 5}, std::vector<int64_t>{2, 3, 2, 3}}) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    for (int64_t begin = 0; begin < n; ++begin) {
      for (int64_t end = begin + 1; end <= n; ++end) expect_exact_cover(shape, begin, end);
    }
  }
}

}  // namespace
}  // namespace moetrain::parallel
