// The CPU backend's block selection (selectBlocks, selectBlocksPair) against
// a plain sort, as a plain program: test/select-blocks.test.ts builds it
// against native/cpu/moba_select.cc and runs it. Head dim 8, q = e0 and
// centroid j = s_j e0, so block j scores exactly s_j (-0 as +0). Row
// lengths and kept counts (none to 255) cover each way the selection takes
// (insertion, one selection over all, a buffer cut back as it fills), with
// scores that are i.i.d., tied, rising, falling, or holding NaN, infinities
// and zeros.
// Prints "ok" and exits 0, or what differed and exits 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../../native/cpu/moba_select.h"

using namespace moba;

namespace {

constexpr int kDim = 8;
int failures = 0;

// The order the gate promises: higher score first, NaN below everything,
// -0 equal to +0, ties to the lower block.
bool ranksAbove(float a, int ia, float b, int ib) {
  const bool an = std::isnan(a), bn = std::isnan(b);
  if (an != bn) return bn;
  if (!an && a != b) return a > b;
  return ia < ib;
}

std::vector<int32_t> expected(const std::vector<float>& s, int current, int topK) {
  std::vector<int32_t> order(current);
  for (int j = 0; j < current; ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return ranksAbove(s[a], a, s[b], b); });
  const int keep = std::min(topK - 1, current);
  std::vector<int32_t> out(order.begin(), order.begin() + keep);
  std::sort(out.begin(), out.end());
  out.push_back(current);
  while (static_cast<int>(out.size()) < topK) out.push_back(-1);
  return out;
}

std::vector<float> scoresOf(std::mt19937& rng, int n, int kind) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small(0, 5), pick(0, 9);
  std::vector<float> s(n);
  for (int j = 0; j < n; ++j) {
    switch (kind) {
      case 0: s[j] = normal(rng); break;
      case 1: s[j] = static_cast<float>(small(rng)); break;  // ties everywhere
      case 2: s[j] = static_cast<float>(j); break;           // every block enters a running list
      case 3: s[j] = static_cast<float>(n - j); break;
      default: {
        const int r = pick(rng);
        s[j] = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r == 3 ? -0.f : r == 4 ? 0.f : normal(rng);
      }
    }
  }
  return s;
}

void check(const std::vector<int32_t>& got, const std::vector<int32_t>& want, int n, int topK, int kind, const char* how) {
  if (got == want) return;
  if (++failures <= 5) {
    std::printf("FAILED: %s n=%d topK=%d kind=%d:", how, n, topK, kind);
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != want[i]) {
        std::printf(" first difference at %zu: %d, expected %d", i, got[i], want[i]);
        break;
      }
    std::printf("\n");
  }
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  const float q[kDim] = {1, 0, 0, 0, 0, 0, 0, 0};
  SelectScratch scratch;
  const int keeps[] = {0, 1, 2, 3, 5, 7, 8, 12, 15, 16, 24, 31, 32, 40, 63, 64, 100, 127, 255};
  for (int keep : keeps) {
    // Lengths either side of each switch (n = 4 keep^2, n = 24 keep), the
    // smallest with a choice (keep + 1), one the row keeps whole, and long.
    const int lengths[] = {keep, keep + 1, 2 * keep, 24 * keep - 1, 24 * keep + 1, 4 * keep * keep - 1,
                           4 * keep * keep + 1, 3000};
    for (int n : lengths) {
      if (n < 1 || n > 70000) continue;
      for (int kind = 0; kind < 5; ++kind) {
        const std::vector<float> s = scoresOf(rng, n + 1, kind);
        std::vector<float> cent(static_cast<size_t>(n + 1) * kDim, 0.f);
        for (int j = 0; j <= n; ++j) cent[static_cast<size_t>(j) * kDim] = s[j];
        const int topK = keep + 1;
        // Position n: blocks [0, n) are past (chunk size 1).
        std::vector<int32_t> got(topK);
        selectBlocks(q, cent.data(), kDim, kDim, n, 1, topK, scratch, got.data());
        check(got, expected(s, n, topK), n, topK, kind, "selectBlocks");
        // Two rows over the same centroids, positions n - 1 and n.
        if (n >= 2) {
          std::vector<int32_t> got0(topK), got1(topK);
          selectBlocksPair(q, q, cent.data(), kDim, kDim, n - 1, n, 1, topK, scratch, got0.data(), got1.data());
          check(got0, expected(s, n - 1, topK), n - 1, topK, kind, "selectBlocksPair row 0");
          check(got1, expected(s, n, topK), n, topK, kind, "selectBlocksPair row 1");
        }
      }
    }
  }
  if (failures) {
    std::printf("%d selections differed\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
