// Switches a user sets in the environment (MOBA_ATTN_KERNEL,
// MOBA_DECODE_LAUNCH): each is read once, at first use, by its caller.
#pragma once
#include <cstdlib>
#include <cstring>

namespace moba {

// Whether environment variable `name` holds exactly `value`.
inline bool envIs(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

}  // namespace moba
