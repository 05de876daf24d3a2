// Op wrappers for the communicators of ranks in several processes (NCCL on CUDA; ADR 0011): a unique id, opening and
// closing a communicator, all-gather, broadcast and all-reduce (sum) of device tensors.
#include <string>

#include "ops.h"
#include "state.h"

namespace duo {
namespace binding {

namespace {
// The tensor with id argument `i`, which must live on `device`.
Tensor& tensorOn(const Napi::CallbackInfo& info, size_t i, const Device* device, const char* name) {
  Tensor& tensor = tensorAt(info[i]);
  if (tensor.device != device)
    throw Error("DUO_ARG", std::string(name) + ": the tensor lives on another device than the communicator");
  return tensor;
}
}  // namespace

// (device, library directory or ''): the directory is where NCCL is looked for first (DUO_NCCL_PATH).
Napi::Value communicatorId(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), deviceOf(info[0])->communicatorId(info[1].As<Napi::String>().Utf8Value()));
}

// (device, library directory or '', unique id, rank, size).
Napi::Value communicatorOpen(const Napi::CallbackInfo& info) {
  const std::string directory = info[1].As<Napi::String>().Utf8Value(), id = info[2].As<Napi::String>().Utf8Value();
  const int handle =
      deviceOf(info[0])->openCommunicator(directory, id, static_cast<int>(integer(info, 3)), static_cast<int>(integer(info, 4)));
  return Napi::Number::New(info.Env(), handle);
}

Napi::Value communicatorClose(const Napi::CallbackInfo& info) {
  deviceOf(info[0])->closeCommunicator(static_cast<int>(integer(info, 1)));
  return info.Env().Undefined();
}

Napi::Value allGather(const Napi::CallbackInfo& info) {
  Device* device = deviceOf(info[0]);
  const Tensor& input = tensorOn(info, 2, device, "allGather");
  Tensor& output = tensorOn(info, 3, device, "allGather");
  device->allGather(static_cast<int>(integer(info, 1)), input, output);
  return info.Env().Undefined();
}

Napi::Value broadcast(const Napi::CallbackInfo& info) {
  Device* device = deviceOf(info[0]);
  Tensor& tensor = tensorOn(info, 2, device, "broadcast");
  device->broadcast(static_cast<int>(integer(info, 1)), tensor, static_cast<int>(integer(info, 3)));
  return info.Env().Undefined();
}

Napi::Value allReduceSum(const Napi::CallbackInfo& info) {
  Device* device = deviceOf(info[0]);
  Tensor& tensor = tensorOn(info, 2, device, "allReduceSum");
  if (tensor.dtype != DType::F32) throw Error("DUO_ARG", "allReduceSum: expected an f32 tensor");
  device->allReduceSum(static_cast<int>(integer(info, 1)), tensor);
  return info.Env().Undefined();
}

}  // namespace binding
}  // namespace duo
