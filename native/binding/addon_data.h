// Per-environment state of the addon (one per Node.js thread that loads it).
#pragma once
#include <napi.h>

#include <memory>
#include <unordered_set>
#include <vector>

namespace moba {

struct DeviceCore;
class BufferWrap;

// Every BufferWrap alive in this environment (disposed ones too, until
// collected): how an argument is recognized as one of ours. Shared by the
// wraps themselves, so it outlives the last of them at teardown.
using BufferRegistry = std::unordered_set<const BufferWrap*>;

struct AddonData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference bufferClass;
  std::shared_ptr<BufferRegistry> buffers = std::make_shared<BufferRegistry>();
  // Devices still alive, shut down at environment teardown so no backend
  // thread outlives the environment.
  std::vector<std::weak_ptr<DeviceCore>> devices;

  static AddonData* get(Napi::Env env) { return env.GetInstanceData<AddonData>(); }
};

}  // namespace moba
