// Op wrappers for devices, tensors and transfers: probe, allocation, paging, reads and writes, synchronisation,
// memory, profiles, graphs.
#include <algorithm>
#include <memory>
#include <string>

#include "attributes.h"
#include "ops.h"
#include "state.h"

namespace duo {
namespace binding {

namespace {
// A tensor described by (device, dtype, shape) arguments: shape, element count and bytes filled in, nothing allocated.
std::unique_ptr<Tensor> describedTensor(const Napi::CallbackInfo& info) {
  auto tensor = std::make_unique<Tensor>();
  tensor->dtype = dtypeNamed(info[1].As<Napi::String>().Utf8Value());
  Napi::Array shape = info[2].As<Napi::Array>();
  tensor->size = 1;
  for (uint32_t i = 0; i < shape.Length(); i++) {
    int64_t extent = shape.Get(i).As<Napi::Number>().Int64Value();
    tensor->shape.push_back(extent);
    tensor->size *= extent;
  }
  if (isBlockType(tensor->dtype) && (tensor->shape.empty() || tensor->shape.back() % blockValues(tensor->dtype) != 0))
    throw Error("DUO_ARG", std::string(dtypeName(tensor->dtype)) + " tensors need rows of whole " +
                               std::to_string(blockValues(tensor->dtype)) + "-value blocks");
  tensor->bytes = tensorBytes(tensor->dtype, tensor->size);
  return tensor;
}

class ReadWorker final : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, std::shared_ptr<Device> device, Device::PendingRead* pending, char* buffer, size_t bytes)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        device_(std::move(device)),
        pending_(pending),
        buffer_(buffer),
        bytes_(bytes) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      pending_->wait();
    } catch (const Error& error) {
      code_ = error.code;
      SetError(error.what());
    }
  }
  void OnOK() override {
    char* buffer = buffer_;
    buffer_ = nullptr;
    auto arrayBuffer = Napi::ArrayBuffer::New(Env(), buffer, bytes_, [](Napi::Env, void* data) { delete[] static_cast<char*>(data); });
    deferred_.Resolve(arrayBuffer);
  }
  void OnError(const Napi::Error& error) override {
    error.Set("code", Napi::String::New(Env(), code_.empty() ? "DUO_NATIVE" : code_));
    deferred_.Reject(error.Value());
  }
  ~ReadWorker() override { delete[] buffer_; }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Device> device_;  // declared before pending_: the pending read (its staging buffer) goes first
  std::unique_ptr<Device::PendingRead> pending_;
  char* buffer_;
  size_t bytes_;
  std::string code_;
};

class SyncWorker final : public Napi::AsyncWorker {
 public:
  SyncWorker(Napi::Env env, std::shared_ptr<Device> device)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), device_(std::move(device)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      device_->synchronize();
    } catch (const Error& error) {
      code_ = error.code;
      SetError(error.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override {
    error.Set("code", Napi::String::New(Env(), code_.empty() ? "DUO_NATIVE" : code_));
    deferred_.Reject(error.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Device> device_;
  std::string code_;
};
}  // namespace

// { available, name, reason } for a device index, without throwing.
Napi::Value probe(const Napi::CallbackInfo& info) {
  Napi::Object result = Napi::Object::New(info.Env());
  try {
    Device* device = deviceOf(info[0]);
    result.Set("available", true);
    result.Set("name", device->name());
  } catch (const Error& error) {
    result.Set("available", false);
    result.Set("reason", std::string(error.what()));
  }
  return result;
}

Napi::Value alloc(const Napi::CallbackInfo& info) {
  Device* device = deviceOf(info[0]);
  auto tensor = describedTensor(info);
  tensor->data = device->allocate(tensor->bytes);
  return registerTensor(info.Env(), std::move(tensor), device);
}

// A paged tensor [spans, length, width]: address space for all of it, memory committed per span by CommitPaged.
Napi::Value allocPaged(const Napi::CallbackInfo& info) {
  Device* device = deviceOf(info[0]);
  auto tensor = describedTensor(info);
  if (tensor->shape.size() != 3) throw Error("DUO_ARG", "a paged tensor is [spans, length, width]");
  tensor->paged = true;
  tensor->spans = tensor->shape[0];
  tensor->spanBytes = static_cast<size_t>(tensor->shape[1] * tensor->shape[2]) * dtypeBytes(tensor->dtype);
  if (tensor->spanBytes % device->pageBytes() != 0)
    throw Error("DUO_ARG", "a paged tensor's span (" + std::to_string(tensor->spanBytes) + " bytes) must be a whole number of " +
                               std::to_string(device->pageBytes()) + "-byte pages");
  device->reservePaged(*tensor);
  return registerTensor(info.Env(), std::move(tensor), device);
}

Napi::Value commitPaged(const Napi::CallbackInfo& info) {
  Tensor& tensor = tensorAt(info[0]);
  if (!tensor.paged) throw Error("DUO_ARG", "commitPaged needs a paged tensor");
  const int64_t rows = integer(info, 1);
  tensor.device->commitPaged(tensor, static_cast<size_t>(rows * tensor.shape[2]) * dtypeBytes(tensor.dtype));
  return Napi::Number::New(info.Env(), static_cast<double>(tensor.committedPerSpan / (tensor.shape[2] * dtypeBytes(tensor.dtype))));
}

// Maps the pages of `source` that hold rows 0 … rows − 1 of each span into `target` (nothing committed yet), copying
// the last partial page; returns the rows of `target` now backed.
Napi::Value sharePaged(const Napi::CallbackInfo& info) {
  Tensor& target = tensorAt(info[0]);
  Tensor& source = tensorAt(info[1]);
  const int64_t rows = integer(info, 2);
  sameDevice({&target, &source});
  if (!target.paged || !source.paged) throw Error("DUO_ARG", "sharePaged needs two paged tensors");
  if (&target == &source) throw Error("DUO_ARG", "sharePaged needs two different tensors");
  if (target.dtype != source.dtype || target.spans != source.spans || target.shape[2] != source.shape[2])
    throw Error("DUO_ARG", "sharePaged needs tensors of one dtype, span count and width");
  const size_t rowBytes = static_cast<size_t>(target.shape[2]) * dtypeBytes(target.dtype);
  const size_t bytes = static_cast<size_t>(rows) * rowBytes;
  if (rows < 0 || rows > target.shape[1] || bytes > source.committedPerSpan)
    throw Error("DUO_ARG", "sharePaged: rows must be committed in the source and fit the target");
  if (target.committedPerSpan != 0) throw Error("DUO_ARG", "sharePaged needs a target with nothing committed");
  if (rows > 0) target.device->sharePaged(target, source, bytes);
  return Napi::Number::New(info.Env(), static_cast<double>(target.committedPerSpan / std::max<size_t>(rowBytes, 1)));
}

Napi::Value pageBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(deviceOf(info[0])->pageBytes()));
}

Napi::Value free(const Napi::CallbackInfo& info) {
  Tensor& tensor = tensorAt(info[0]);
  releaseMemory(tensor);
  stateOf(info.Env()).registry[tensor.id] = nullptr;
  delete &tensor;
  return info.Env().Undefined();
}

Napi::Value write(const Napi::CallbackInfo& info) {
  Tensor& tensor = tensorAt(info[0]);
  Napi::TypedArray array = info[1].As<Napi::TypedArray>();
  size_t elementBytes = dtypeBytes(tensor.dtype);
  size_t byteOffset = static_cast<size_t>(integer(info, 2)) * elementBytes;
  size_t bytes = array.ByteLength();
  if (byteOffset + bytes > tensor.bytes) throw Error("DUO_ARG", "write past the end of the tensor");
  checkCommitted(tensor, "a write");
  const char* source = static_cast<const char*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  tensor.device->write(tensor, source, byteOffset, bytes);
  return info.Env().Undefined();
}

Napi::Value read(const Napi::CallbackInfo& info) {
  Tensor& tensor = tensorAt(info[0]);
  size_t elementBytes = dtypeBytes(tensor.dtype);
  size_t byteOffset = static_cast<size_t>(integer(info, 1)) * elementBytes;
  size_t bytes = static_cast<size_t>(integer(info, 2)) * elementBytes;
  if (byteOffset + bytes > tensor.bytes) throw Error("DUO_ARG", "read past the end of the tensor");
  checkCommitted(tensor, "a read");
  char* buffer = new char[std::max<size_t>(bytes, 1)];
  if (std::string(tensor.device->kind()) == "cpu") {
    // CPU ops have already run: copy now and resolve without a trip through the libuv thread pool.
    std::unique_ptr<Device::PendingRead>(tensor.device->read(tensor, buffer, byteOffset, bytes))->wait();
    auto deferred = Napi::Promise::Deferred::New(info.Env());
    deferred.Resolve(Napi::ArrayBuffer::New(info.Env(), buffer, bytes, [](Napi::Env, void* data) { delete[] static_cast<char*>(data); }));
    return deferred.Promise();
  }
  Device::PendingRead* pending;
  try {
    pending = tensor.device->read(tensor, buffer, byteOffset, bytes);
  } catch (...) {
    delete[] buffer;
    throw;
  }
  auto* worker = new ReadWorker(info.Env(), sharedDeviceOf(info.Env(), tensor), pending, buffer, bytes);
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

Napi::Value synchronize(const Napi::CallbackInfo& info) {
  auto* worker = new SyncWorker(info.Env(), sharedDeviceOf(info[0]));
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

Napi::Value memory(const Napi::CallbackInfo& info) {
  MemoryInfo memory = deviceOf(info[0])->memory();
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("allocatedBytes", static_cast<double>(memory.allocated));
  result.Set("peakBytes", static_cast<double>(memory.peak));
  result.Set("deviceFreeBytes", static_cast<double>(memory.deviceFree));
  result.Set("deviceTotalBytes", static_cast<double>(memory.deviceTotal));
  return result;
}

Napi::Value resetPeak(const Napi::CallbackInfo& info) {
  deviceOf(info[0])->resetPeak();
  return info.Env().Undefined();
}

// Per-op device times collected since the last call, as [{ name, count, milliseconds }] (CUDA with DUO_CUDA_PROFILE=1).
Napi::Value takeProfile(const Napi::CallbackInfo& info) {
  auto times = deviceOf(info[0])->takeProfile();
  Napi::Array result = Napi::Array::New(info.Env(), times.size());
  for (size_t i = 0; i < times.size(); i++) {
    Napi::Object entry = Napi::Object::New(info.Env());
    entry.Set("name", times[i].name);
    entry.Set("count", times[i].count);
    entry.Set("milliseconds", times[i].milliseconds);
    result.Set(static_cast<uint32_t>(i), entry);
  }
  return result;
}

// Device::Tuning from { profile, chainLaunches, gemvMinSlice, gemvWaveRule, gemvPinnedSplits, batchInvariant,
// skinnyRowsMax, longSplitsFirst, decodeMmaBlocks, decodeBatchMerge, cpuIntegerQ8 } (all optional).
Napi::Value tune(const Napi::CallbackInfo& info) {
  const Attributes attributes(info[1], "the backend's tuning");
  Device::Tuning tuning;
  tuning.profile = attributes.flag("profile");
  if (!absent(attributes.optional("chainLaunches"))) tuning.chainLaunches = attributes.flag("chainLaunches");
  if (!absent(attributes.optional("gemvMinSlice"))) tuning.gemvMinSlice = attributes.integer("gemvMinSlice");
  if (!absent(attributes.optional("gemvWaveRule"))) tuning.gemvWaveRule = static_cast<int>(attributes.integer("gemvWaveRule"));
  if (!absent(attributes.optional("gemvPinnedSplits"))) tuning.gemvPinnedSplits = attributes.text("gemvPinnedSplits");
  tuning.batchInvariant = attributes.flag("batchInvariant");
  if (!absent(attributes.optional("skinnyRowsMax"))) tuning.skinnyRowsMax = attributes.integer("skinnyRowsMax");
  if (!absent(attributes.optional("longSplitsFirst"))) tuning.longSplitsFirst = attributes.flag("longSplitsFirst");
  if (!absent(attributes.optional("decodeMmaBlocks"))) tuning.decodeMmaBlocks = static_cast<int>(attributes.integer("decodeMmaBlocks"));
  if (!absent(attributes.optional("decodeBatchMerge"))) tuning.decodeBatchMerge = static_cast<int>(attributes.integer("decodeBatchMerge"));
  if (!absent(attributes.optional("cpuIntegerQ8"))) tuning.integerQ8 = attributes.flag("cpuIntegerQ8");
  deviceOf(info[0])->tune(tuning);
  return info.Env().Undefined();
}

Napi::Value graphBegin(const Napi::CallbackInfo& info) {
  deviceOf(info[0])->beginCapture();
  return info.Env().Undefined();
}

Napi::Value graphEnd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), deviceOf(info[0])->endCapture());
}

Napi::Value graphLaunch(const Napi::CallbackInfo& info) {
  deviceOf(info[0])->launchGraph(static_cast<int>(integer(info, 1)));
  return info.Env().Undefined();
}

Napi::Value graphFree(const Napi::CallbackInfo& info) {
  deviceOf(info[0])->freeGraph(static_cast<int>(integer(info, 1)));
  return info.Env().Undefined();
}

}  // namespace binding
}  // namespace duo
