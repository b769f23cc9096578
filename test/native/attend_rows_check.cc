// The CPU tile loop (attendRows, attendRowsHalf) on random inputs, as a plain
// program: test/cpu-builds.test.ts builds it against native/cpu/online_softmax.cc
// for several instruction sets and compares the hashes it prints, which must
// be equal (every build rounds every product and sum alike). Within one build
// it also checks that bf16 and f16 rows read in place give the bits of fp32
// rows holding the same values. Prints "hash <hex>" and exits 0, or prints
// what differed and exits 1.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../native/common/dtype.h"
#include "../../native/cpu/online_softmax.h"

using namespace moba;

namespace {

uint64_t hash = 1469598103934665603ull;

// FNV-1a over the floats' bits, every NaN as one value (builds may differ in
// which NaN payload comes out).
void mix(const float* f, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float x = std::isnan(f[i]) ? NAN : f[i];
    unsigned char c[4];
    std::memcpy(c, &x, 4);
    for (unsigned char b : c) hash = (hash ^ b) * 1099511628211ull;
  }
}

bool sameBits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; }

// The states of rows after the same tiles, fp32 rows against 16-bit rows of
// the same values (stored last key first, so the pointers are what counts).
bool halfRowsAgree(DType dtype, const std::vector<float>& q, int d, int n, int numQ, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<int32_t>& rows, const std::vector<int32_t>& counts) {
  std::vector<uint16_t> kb(n * d), vb(n * d);
  std::vector<float> kw(n * d), vw(n * d);
  auto narrow = [&](float x, uint16_t* bits) {
    *bits = dtype == DType::BF16 ? floatToBf16Bits(x) : floatToF16Bits(x);
    return dtype == DType::BF16 ? bf16BitsToFloat(*bits) : f16BitsToFloat(*bits);
  };
  for (int i = 0; i < n * d; ++i) {
    const int at = (n - 1 - i / d) * d + i % d;
    kw[i] = narrow(k[i], &kb[at]);
    vw[i] = narrow(v[i], &vb[at]);
  }
  std::vector<const uint16_t*> kr(n), vr(n);
  for (int i = 0; i < n; ++i) {
    kr[i] = kb.data() + (n - 1 - i) * d;
    vr[i] = vb.data() + (n - 1 - i) * d;
  }
  std::vector<float> a1(numQ * d), a2(numQ * d);
  std::vector<OnlineSoftmax> s1(numQ), s2(numQ);
  for (int r = 0; r < numQ; ++r) {
    s1[r].reset(a1.data() + r * d, d);
    s2[r].reset(a2.data() + r * d, d);
  }
  const int m = static_cast<int>(rows.size());
  attendRows(s1.data(), q.data(), d, rows.data(), counts.data(), m, kw.data(), vw.data());
  attendRowsHalf(s2.data(), q.data(), d, rows.data(), counts.data(), m, dtype, kr.data(), vr.data());
  for (int r = 0; r < numQ; ++r) {
    if (!sameBits(s1[r].max, s2[r].max) || !sameBits(s1[r].sum, s2[r].sum)) return false;
  }
  for (int i = 0; i < numQ * d; ++i) {
    if (!sameBits(a1[i], a2[i])) return false;
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  // Head dims around the vector widths (8, 16) and the usual 64 and 128.
  const int dims[] = {1, 7, 8, 9, 16, 20, 24, 64, 100, 128, 136};
  int cases = 0;
  for (int rep = 0; rep < 200; ++rep) {
    for (int d : dims) {
      // Up to 20 rows: groups of eight, four and one.
      const int n = 1 + rng() % 150, numQ = 1 + rng() % 20;
      const bool special = rep % 7 == 0;  // some Inf, -Inf and NaN
      auto value = [&](float scale) {
        float x = normal(rng) * scale;
        if (special) {
          const float u = uniform(rng);
          if (u < 0.01f) x = INFINITY;
          else if (u < 0.02f) x = -INFINITY;
          else if (u < 0.03f) x = NAN;
        }
        return x;
      };
      std::vector<float> q(numQ * d), k(n * d), v(n * d);
      const float scale = rep % 3 == 0 ? 4.f : 0.3f;
      for (float& x : q) x = value(scale);
      for (float& x : k) x = value(1.f);
      for (float& x : v) x = value(1.f);
      std::vector<float> acc(numQ * d);
      std::vector<OnlineSoftmax> st(numQ);
      for (int r = 0; r < numQ; ++r) st[r].reset(acc.data() + r * d, d);
      // Several tiles over the same states, rows in a random subset and order,
      // some seeing fewer keys (causal rows).
      for (int tile = 0; tile < 3; ++tile) {
        std::vector<int32_t> rows, counts;
        for (int r = 0; r < numQ; ++r) {
          if (rng() % 5) {
            rows.push_back(r);
            counts.push_back(rng() % 3 ? n : 1 + static_cast<int>(rng() % n));
          }
        }
        for (size_t i = rows.size(); i > 1; --i) {
          const size_t j = rng() % i;
          std::swap(rows[i - 1], rows[j]);
          std::swap(counts[i - 1], counts[j]);
        }
        attendRows(st.data(), q.data(), d, rows.data(), counts.data(), static_cast<int>(rows.size()), k.data(),
                   v.data());
        if (tile == 0) {
          for (DType t : {DType::BF16, DType::F16}) {
            if (!halfRowsAgree(t, q, d, n, numQ, k, v, rows, counts)) {
              std::printf("%s rows differ from fp32 rows: head dim %d, %d keys, %d rows\n", dtypeName(t), d, n, numQ);
              return 1;
            }
          }
        }
      }
      for (int r = 0; r < numQ; ++r) {
        mix(&st[r].max, 1);
        mix(&st[r].sum, 1);
      }
      mix(acc.data(), acc.size());
      ++cases;
    }
  }
  std::printf("hash %016llx (%d cases)\n", static_cast<unsigned long long>(hash), cases);
  return 0;
}
