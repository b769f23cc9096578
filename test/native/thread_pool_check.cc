// The CPU backend's thread pool under exceptions, as a plain program:
// test/thread-pool.test.ts compiles it against native/cpu/thread_pool.cc and
// runs it. Prints "ok" and exits 0 when every check holds.
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "../../native/cpu/thread_pool.h"

namespace {
int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what.c_str());
    ++failures;
  }
}
}  // namespace

int main() {
  moba::ThreadPool pool(4);
  for (int round = 0; round < 200; ++round) {
    // A chunk on some worker (or the caller) throws: the exception comes out
    // of parallelFor, after every worker has left the job, and chunks not yet
    // started are skipped.
    const int64_t thrower = (round * 7919) % 1000;
    std::atomic<int64_t> ran{0};
    std::string caught;
    try {
      pool.parallelFor(1000, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          if (i == thrower) throw std::runtime_error("chunk " + std::to_string(i));
          ran.fetch_add(1);
        }
      });
    } catch (const std::runtime_error& err) {
      caught = err.what();
    }
    check(caught == "chunk " + std::to_string(thrower), "round " + std::to_string(round) + ": caught '" + caught + "'");
    check(ran.load() < 1000, "round " + std::to_string(round) + ": a chunk after the throw still ran everything");
    // The pool runs the next job whole, on a new std::function each time.
    std::atomic<int64_t> sum{0};
    pool.parallelFor(1000, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
    });
    check(sum.load() == 999 * 1000 / 2, "round " + std::to_string(round) + ": the next job's sum");
  }
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
