// Per-environment state of the addon (one per Node.js thread that loads it).
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

namespace moba {

struct DeviceCore;

struct AddonData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference bufferClass;
  // Devices still alive, shut down at environment teardown so no backend
  // thread outlives the environment.
  std::vector<std::weak_ptr<DeviceCore>> devices;

  static AddonData* get(Napi::Env env) { return env.GetInstanceData<AddonData>(); }
};

}  // namespace moba
