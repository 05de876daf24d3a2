// The per-environment state: the registry, the devices by name, tensor lookups.
#include "state.h"

#include <algorithm>
#include <thread>

#include "../cpu/cpu-device.h"
#include "../cuda/cuda-device.h"

namespace duo {
namespace binding {

AddonState::~AddonState() {
  for (Tensor* tensor : registry) {
    if (!tensor) continue;
    try {
      releaseMemory(*tensor);
    } catch (...) {
      // Tearing down: a device error here has nobody left to report to.
    }
    delete tensor;
  }
}

const std::shared_ptr<Device>& sharedDeviceOf(const Napi::Value& value) {
  AddonState& state = stateOf(value.Env());
  const std::string name = value.IsString() ? value.As<Napi::String>().Utf8Value() : std::string();
  if (name != "cpu" && name != "cuda") throw Error("DUO_ARG", "expected a device kind, 'cpu' or 'cuda'");
  if (name == "cpu") {
    if (!state.cpuDevice) state.cpuDevice = std::make_shared<CpuDevice>(std::max(1u, std::thread::hardware_concurrency()));
    return state.cpuDevice;
  }
  if (!state.cudaProbed) {
    state.cudaProbed = true;
    state.cudaDevice.reset(createCudaDevice(state.cudaReason));
  }
  if (!state.cudaDevice) throw Error("DUO_NO_BACKEND", "CUDA backend unavailable: " + state.cudaReason);
  return state.cudaDevice;
}

std::shared_ptr<Device> sharedDeviceOf(Napi::Env env, const Tensor& tensor) {
  AddonState& state = stateOf(env);
  return tensor.device == state.cpuDevice.get() ? state.cpuDevice : state.cudaDevice;
}

Tensor& tensorAt(const Napi::Value& value) {
  const std::vector<Tensor*>& registry = stateOf(value.Env()).registry;
  int64_t id = value.As<Napi::Number>().Int64Value();
  if (id <= 0 || id >= static_cast<int64_t>(registry.size()) || registry[id] == nullptr)
    throw Error("DUO_DISPOSED", "tensor #" + std::to_string(id) + " was disposed or never existed");
  return *registry[id];
}

Tensor* optionalTensor(const Napi::Value& value) {
  if (value.IsUndefined() || value.IsNull()) return nullptr;
  if (value.As<Napi::Number>().Int64Value() <= 0) return nullptr;
  return &tensorAt(value);
}

void sameDevice(std::initializer_list<const Tensor*> tensors) {
  Device* device = nullptr;
  for (const Tensor* t : tensors) {
    if (!t) continue;
    if (device && t->device != device) throw Error("DUO_ARG", "tensors of one op must live on the same device");
    device = t->device;
  }
}

Napi::Value registerTensor(Napi::Env env, std::unique_ptr<Tensor> tensor, Device* device) {
  std::vector<Tensor*>& registry = stateOf(env).registry;
  tensor->device = device;
  tensor->id = static_cast<uint32_t>(registry.size());
  registry.push_back(tensor.release());
  return Napi::Number::New(env, registry.back()->id);
}

void releaseMemory(Tensor& tensor) {
  if (tensor.paged) tensor.device->releasePaged(tensor);
  else tensor.device->release(tensor.data, tensor.bytes);
}

}  // namespace binding
}  // namespace duo
