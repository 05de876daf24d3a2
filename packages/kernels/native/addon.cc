// N-API surface of the native addon: a tensor registry and one function per op, dispatched to the tensor's device.
#include <napi.h>

#include <memory>
#include <mutex>
#include <thread>

#include "common.h"
#include "quant.h"
#include "cpu/cpu-device.h"
#include "cuda/cuda-device.h"

namespace duo {
namespace {

// Everything the addon holds for one JS environment (the main thread, each worker thread): its tensor registry and its
// devices. Node keeps one per environment (napi_set_instance_data) and deletes it when the environment is torn down (a
// worker exits), which frees the tensors still registered there. Nothing is shared between environments but cuBLAS,
// whose library and per-stream handles are process-wide and guarded (cuda/cublas-loader.cc).
struct AddonState {
  std::vector<Tensor*> registry{nullptr};  // id 0 is never used: -1/0 mean "none" on the JS side
  // Shared so that a read or synchronisation still running on the libuv pool keeps its device alive.
  std::shared_ptr<Device> cpuDevice;
  std::shared_ptr<Device> cudaDevice;
  std::string cudaReason;
  bool cudaProbed = false;

  AddonState() = default;
  AddonState(const AddonState&) = delete;
  AddonState& operator=(const AddonState&) = delete;
  ~AddonState() {
    for (Tensor* tensor : registry) {
      if (!tensor) continue;
      try {
        if (tensor->paged) tensor->device->releasePaged(*tensor);
        else tensor->device->release(tensor->data, tensor->bytes);
      } catch (...) {
        // Tearing down: a device error here has nobody left to report to.
      }
      delete tensor;
    }
  }
};

AddonState& stateOf(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }

[[noreturn]] void throwJs(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  throw error;
}

// Runs `body`, turning native errors into JS errors that carry a stable `code`.
template <typename F>
auto guarded(const Napi::CallbackInfo& info, F body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& error) {
    throwJs(info.Env(), error.code, error.what());
  } catch (const std::bad_alloc&) {
    throwJs(info.Env(), "DUO_OOM", "host allocation failed");
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& error) {
    throwJs(info.Env(), "DUO_NATIVE", error.what());
  }
}

// The environment's device named by `value` ('cpu' or 'cuda', a DeviceKind), created on first use.
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
Device* deviceOf(const Napi::Value& value) { return sharedDeviceOf(value).get(); }

// The shared handle of a tensor's device (for work that outlives the call).
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
int64_t integer(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }
double number(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().DoubleValue(); }

// An op's attributes as the spec names them (a "baton"): one object whose fields are read by name, tensors as ids.
// Missing or mistyped fields throw DUO_ARG naming the field (TypeScript validates first; this guards the boundary).
class Attributes {
 public:
  Attributes(const Napi::Value& value, const char* what) : what_(what) {
    if (!value.IsObject()) throw Error("DUO_ARG", std::string("expected an object of ") + what);
    object_ = value.As<Napi::Object>();
  }
  // The field, undefined when absent.
  Napi::Value optional(const char* name) const { return object_.Get(name); }
  Napi::Value at(const char* name) const {
    Napi::Value value = optional(name);
    if (value.IsUndefined() || value.IsNull()) throw missing(name, "present");
    return value;
  }
  double number(const char* name) const {
    const Napi::Value value = at(name);
    if (!value.IsNumber()) throw missing(name, "a number");
    return value.As<Napi::Number>().DoubleValue();
  }
  int64_t integer(const char* name) const { return static_cast<int64_t>(number(name)); }
  // An optional boolean: absent is false.
  bool flag(const char* name) const {
    const Napi::Value value = optional(name);
    if (value.IsUndefined() || value.IsNull()) return false;
    if (!value.IsBoolean()) throw missing(name, "a boolean");
    return value.As<Napi::Boolean>().Value();
  }
  std::string text(const char* name) const {
    const Napi::Value value = at(name);
    if (!value.IsString()) throw missing(name, "a string");
    return value.As<Napi::String>().Utf8Value();
  }

 private:
  Error missing(const char* name, const char* wanted) const {
    return Error("DUO_ARG", std::string("`") + name + "` of " + what_ + " must be " + wanted);
  }
  Napi::Object object_;
  const char* what_;
};

// Absent (undefined or null) attributes: an optional field of the spec left out.
bool absent(const Napi::Value& value) { return value.IsUndefined() || value.IsNull(); }

// `rope`'s and `ropeWriteCache`'s RopeAttributes: heads, headDim, interleaved.
RopeArgs ropeArgs(const Attributes& attributes) {
  return RopeArgs{static_cast<int>(attributes.integer("heads")), static_cast<int>(attributes.integer("headDim")),
                  attributes.flag("interleaved")};
}

// Gives an allocated tensor its id (its index in the registry) and returns the id to JS.
Napi::Value registerTensor(Napi::Env env, std::unique_ptr<Tensor> tensor, Device* device) {
  std::vector<Tensor*>& registry = stateOf(env).registry;
  tensor->device = device;
  tensor->id = static_cast<uint32_t>(registry.size());
  registry.push_back(tensor.release());
  return Napi::Number::New(env, registry.back()->id);
}

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
  tensor->bytes = static_cast<size_t>(tensor->size) * dtypeBytes(tensor->dtype);
  return tensor;
}

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Device* device = deviceOf(info[0]);
    auto tensor = describedTensor(info);
    tensor->data = device->allocate(tensor->bytes);
    return registerTensor(info.Env(), std::move(tensor), device);
  });
}

// A paged tensor [spans, length, width]: address space for all of it, memory committed per span by CommitPaged.
Napi::Value AllocPaged(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
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
  });
}

Napi::Value CommitPaged(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& tensor = tensorAt(info[0]);
    if (!tensor.paged) throw Error("DUO_ARG", "commitPaged needs a paged tensor");
    const int64_t rows = integer(info, 1);
    tensor.device->commitPaged(tensor, static_cast<size_t>(rows * tensor.shape[2]) * dtypeBytes(tensor.dtype));
    return Napi::Number::New(info.Env(), static_cast<double>(tensor.committedPerSpan / (tensor.shape[2] * dtypeBytes(tensor.dtype))));
  });
}

Napi::Value PageBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(deviceOf(info[0])->pageBytes()));
  });
}

// Paged tensors may be read and written only where memory is committed: the whole tensor, once fully committed.
void checkCommitted(const Tensor& tensor, const char* what) {
  if (tensor.paged && tensor.committedPerSpan < tensor.spanBytes)
    throw Error("DUO_ARG", std::string(what) + " of a paged tensor needs all of it committed");
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& tensor = tensorAt(info[0]);
    if (tensor.paged) tensor.device->releasePaged(tensor);
    else tensor.device->release(tensor.data, tensor.bytes);
    stateOf(info.Env()).registry[tensor.id] = nullptr;
    delete &tensor;
    return info.Env().Undefined();
  });
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
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
  });
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

Napi::Value Read(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
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
  });
}

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

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto* worker = new SyncWorker(info.Env(), sharedDeviceOf(info[0]));
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  });
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    MemoryInfo memory = deviceOf(info[0])->memory();
    Napi::Object result = Napi::Object::New(info.Env());
    result.Set("allocatedBytes", static_cast<double>(memory.allocated));
    result.Set("peakBytes", static_cast<double>(memory.peak));
    result.Set("deviceFreeBytes", static_cast<double>(memory.deviceFree));
    result.Set("deviceTotalBytes", static_cast<double>(memory.deviceTotal));
    return result;
  });
}

Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    deviceOf(info[0])->resetPeak();
    return info.Env().Undefined();
  });
}

// Per-op device times collected since the last call, as [{ name, count, milliseconds }] (CUDA with DUO_CUDA_PROFILE=1).
Napi::Value TakeProfile(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
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
  });
}

// { available, name, reason } for a device index, without throwing.
Napi::Value Probe(const Napi::CallbackInfo& info) {
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

Napi::Value CopyRows(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& source = tensorAt(info[0]);
    Tensor& target = tensorAt(info[1]);
    sameDevice({&source, &target});
    checkCommitted(source, "copyRows");
    checkCommitted(target, "copyRows");
    source.device->copyRows(source, target, integer(info, 2), integer(info, 3), integer(info, 4));
    return info.Env().Undefined();
  });
}

Napi::Value Convert(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& source = tensorAt(info[0]);
    Tensor& target = tensorAt(info[1]);
    sameDevice({&source, &target});
    source.device->convert(source, target);
    return info.Env().Undefined();
  });
}

Napi::Value FillRandom(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& tensor = tensorAt(info[0]);
    const uint64_t seed = static_cast<uint64_t>(integer(info, 1));
    const float deviation = static_cast<float>(number(info, 2));
    if (!tensor.paged) {
      tensor.device->fillRandom(tensor, seed, deviation);
      return info.Env().Undefined();
    }
    // A paged tensor: the committed part of each span, each span from its own seed.
    for (int64_t span = 0; span < tensor.spans && tensor.committedPerSpan > 0; span++) {
      Tensor view;
      view.dtype = tensor.dtype;
      view.device = tensor.device;
      view.size = static_cast<int64_t>(tensor.committedPerSpan / dtypeBytes(tensor.dtype));
      view.shape = {view.size};
      view.bytes = tensor.committedPerSpan;
      view.data = static_cast<char*>(tensor.data) + span * tensor.spanBytes;
      tensor.device->fillRandom(view, seed * 1000003ull + static_cast<uint64_t>(span), deviation);
    }
    return info.Env().Undefined();
  });
}

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &table = tensorAt(info[0]), &ids = tensorAt(info[1]), &out = tensorAt(info[2]);
    sameDevice({&table, &ids, &out});
    table.device->embedding(table, ids, out);
    return info.Env().Undefined();
  });
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &out = tensorAt(info[2]);
    sameDevice({&x, &weight, &out});
    x.device->rmsNorm(x, weight, out, static_cast<float>(number(info, 3)));
    return info.Env().Undefined();
  });
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &out = tensorAt(info[2]);
    const Attributes options(info[3], "matmul's options");
    Tensor* bias = optionalTensor(options.optional("bias"));
    Tensor* residual = optionalTensor(options.optional("residual"));
    sameDevice({&x, &weight, &out, bias, residual});
    x.device->matmul(x, weight, out, bias, residual);
    return info.Env().Undefined();
  });
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &x = tensorAt(info[0]), &positions = tensorAt(info[1]), &frequencies = tensorAt(info[2]);
    sameDevice({&x, &positions, &frequencies});
    const Attributes attributes(info[3], "rope's attributes");
    RopeArgs args = ropeArgs(attributes);
    args.inverse = attributes.flag("inverse");
    x.device->rope(x, positions, frequencies, args);
    return info.Env().Undefined();
  });
}

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &gate = tensorAt(info[0]), &up = tensorAt(info[1]), &out = tensorAt(info[2]);
    sameDevice({&gate, &up, &out});
    gate.device->swiglu(gate, up, out);
    return info.Env().Undefined();
  });
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &a = tensorAt(info[0]), &b = tensorAt(info[1]), &out = tensorAt(info[2]);
    sameDevice({&a, &b, &out});
    a.device->add(a, b, out);
    return info.Env().Undefined();
  });
}

Napi::Value WriteCache(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &source = tensorAt(info[0]), &cache = tensorAt(info[1]);
    sameDevice({&source, &cache});
    source.device->writeCache(source, cache, integer(info, 2));
    return info.Env().Undefined();
  });
}

// The streaming heads of a DuoAttention layer, the spec's StreamingHeads: { retrievalHeads, keyCache, valueCache, sink,
// recent, mask } with the caches as ids (absent: every head is full). `alongside` is the main cache: the region must
// share its device and dtype; the main cache's rows are the retrieval heads, the region's the other `kvHeads`.
StreamingLayout streamingLayout(const Napi::Value& value, const Tensor& alongside, int kvHeads) {
  StreamingLayout layout;
  if (absent(value)) return layout;
  const Attributes fields(value, "streaming");
  Tensor &key = tensorAt(fields.at("keyCache")), &values = tensorAt(fields.at("valueCache"));
  sameDevice({&alongside, &key, &values});
  if (key.dtype != alongside.dtype || values.dtype != alongside.dtype) throw Error("DUO_ARG", "the streaming region must have the cache's dtype");
  if (kvHeads < 1 || kvHeads > kMaxKvHeads) throw Error("DUO_ARG", "a layer with streaming heads has 1 to 128 KV heads");
  layout.key = key.data;
  layout.value = values.data;
  layout.retrievalKvHeads = static_cast<int>(alongside.shape[0]);
  const Napi::Value retrievalValue = fields.at("retrievalHeads");
  if (!retrievalValue.IsArray()) throw Error("DUO_ARG", "`retrievalHeads` of streaming must be an array");
  const Napi::Array retrieval = retrievalValue.As<Napi::Array>();
  if (static_cast<int64_t>(retrieval.Length()) != alongside.shape[0])
    throw Error("DUO_ARG", "the main caches must hold one row per retrieval head");
  uint64_t retrievalMask[2] = {0, 0};
  for (uint32_t i = 0; i < retrieval.Length(); i++) {
    const int head = retrieval.Get(i).As<Napi::Number>().Int32Value();
    if (head < 0 || head >= kvHeads || ((retrievalMask[head >> 6] >> (head & 63)) & 1u))
      throw Error("DUO_ARG", "retrieval heads must be distinct KV heads of the layer");
    retrievalMask[head >> 6] |= 1ull << (head & 63);
  }
  for (int head = 0; head < kvHeads; head++)
    if (!((retrievalMask[head >> 6] >> (head & 63)) & 1u)) layout.streamingMask[head >> 6] |= 1ull << (head & 63);
  if (kvHeads - static_cast<int64_t>(retrieval.Length()) != key.shape[0])
    throw Error("DUO_ARG", "the streaming region must hold one row per streaming head");
  layout.sink = fields.integer("sink");
  layout.recent = fields.integer("recent");
  const Napi::Value mask = fields.optional("mask");
  const std::string maskName = absent(mask) ? "exact" : fields.text("mask");
  if (maskName != "exact" && maskName != "chunked") throw Error("DUO_ARG", "`mask` of streaming must be 'exact' or 'chunked'");
  layout.chunked = maskName == "chunked";
  layout.ring = key.shape[1] - layout.sink;
  if (layout.ring < 1) throw Error("DUO_ARG", "the streaming region needs at least one ring slot after the sinks");
  return layout;
}

// A quantized cache's scale planes, the spec's QuantizedKv: { scheme, keyScales, valueScales, streamKeyScales?,
// streamValueScales? } with the planes as ids (absent: the caches are not quantized).
KvQuantPlanes quantPlanes(const Napi::Value& value, int headDim, const Tensor& cache) {
  KvQuantPlanes planes;
  if (absent(value)) return planes;
  const Attributes fields(value, "quant");
  const KvQuant scheme = kvQuantNamed(fields.text("scheme"));
  if (scheme == KvQuant::None) throw Error("DUO_ARG", "`scheme` of quant must name a quantizing scheme");
  planes.scheme = static_cast<int>(scheme);
  const auto scalesAt = [&](const char* name) -> const uint16_t* {
    Tensor* tensor = optionalTensor(fields.optional(name));
    if (!tensor) return nullptr;
    sameDevice({&cache, tensor});
    if (tensor->dtype != DType::F16) throw Error("DUO_ARG", "KV scale planes must be f16");
    return tensor->as<uint16_t>();
  };
  planes.keyScales = scalesAt("keyScales");
  planes.valueScales = scalesAt("valueScales");
  planes.streamKeyScales = scalesAt("streamKeyScales");
  planes.streamValueScales = scalesAt("streamValueScales");
  planes.codeBytes = kvCodeBytes(scheme, headDim);
  planes.scaleHalves = kvScaleHalves(scheme, headDim);
  return planes;
}

// The spec's AttentionAttributes (heads, kvHeads, headDim, scale, keyLength, streaming?, quant?) for caches k.
AttentionArgs attentionArgs(const Attributes& attributes, const Tensor& k) {
  AttentionArgs args{};
  args.heads = static_cast<int>(attributes.integer("heads"));
  args.kvHeads = static_cast<int>(attributes.integer("kvHeads"));
  args.headDim = static_cast<int>(attributes.integer("headDim"));
  args.scale = static_cast<float>(attributes.number("scale"));
  args.keyLength = attributes.integer("keyLength");
  args.queryStart = args.keyLength - 1;
  args.streaming = streamingLayout(attributes.optional("streaming"), k, args.kvHeads);
  args.quant = quantPlanes(attributes.optional("quant"), args.headDim, k);
  return args;
}

Napi::Value AttentionPrefill(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &out = tensorAt(info[3]);
    sameDevice({&q, &k, &v, &out});
    const Attributes attributes(info[4], "attentionPrefill's attributes");
    AttentionArgs args = attentionArgs(attributes, k);
    args.queryStart = attributes.integer("queryStart");
    q.device->attentionPrefill(q, k, v, out, args);
    return info.Env().Undefined();
  });
}

Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &out = tensorAt(info[3]);
    const Attributes attributes(info[4], "attentionDecode's attributes");
    Tensor* lengthFrom = optionalTensor(attributes.optional("lengthFrom"));
    sameDevice({&q, &k, &v, &out, lengthFrom});
    AttentionArgs args = attentionArgs(attributes, k);
    args.lengthFrom = lengthFrom ? lengthFrom->as<int32_t>() : nullptr;
    q.device->attentionDecode(q, k, v, out, args);
    return info.Env().Undefined();
  });
}

Napi::Value WriteCacheQuantized(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &source = tensorAt(info[0]), &codes = tensorAt(info[1]), &scales = tensorAt(info[2]);
    sameDevice({&source, &codes, &scales});
    const KvQuant scheme = kvQuantNamed(info[4].As<Napi::String>().Utf8Value());
    if (scheme == KvQuant::None) throw Error("DUO_ARG", "writeCacheQuantized needs a quantizing scheme");
    source.device->writeCacheQuantized(source, codes, scales, integer(info, 3), static_cast<int>(scheme));
    return info.Env().Undefined();
  });
}

Napi::Value MatmulBackward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &gradOut = tensorAt(info[0]), &weight = tensorAt(info[1]), &gradInput = tensorAt(info[2]);
    sameDevice({&gradOut, &weight, &gradInput});
    gradOut.device->matmulBackward(gradOut, weight, gradInput, Attributes(info[3], "matmulBackward's options").flag("accumulate"));
    return info.Env().Undefined();
  });
}

Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &gradOut = tensorAt(info[2]), &gradInput = tensorAt(info[3]);
    sameDevice({&x, &weight, &gradOut, &gradInput});
    const bool accumulate = Attributes(info[5], "rmsNormBackward's options").flag("accumulate");
    x.device->rmsNormBackward(x, weight, gradOut, gradInput, static_cast<float>(number(info, 4)), accumulate);
    return info.Env().Undefined();
  });
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &gate = tensorAt(info[0]), &up = tensorAt(info[1]), &gradOut = tensorAt(info[2]);
    Tensor &gradGate = tensorAt(info[3]), &gradUp = tensorAt(info[4]);
    sameDevice({&gate, &up, &gradOut, &gradGate, &gradUp});
    gate.device->swigluBackward(gate, up, gradOut, gradGate, gradUp);
    return info.Env().Undefined();
  });
}

// The spec's GateMixAttributes: heads, kvHeads, headDim.
GateMixArgs gateMixArgs(const Napi::Value& value) {
  const Attributes attributes(value, "the gate mix's attributes");
  return GateMixArgs{static_cast<int>(attributes.integer("heads")), static_cast<int>(attributes.integer("kvHeads")),
                     static_cast<int>(attributes.integer("headDim"))};
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &out = tensorAt(info[3]);
    Tensor &gradOut = tensorAt(info[4]), &gradQuery = tensorAt(info[5]), &gradKey = tensorAt(info[6]), &gradValue = tensorAt(info[7]);
    sameDevice({&q, &k, &v, &out, &gradOut, &gradQuery, &gradKey, &gradValue});
    // The spec's AttentionBackwardAttributes: heads, kvHeads, headDim, scale, length, window? { sink, recent }.
    const Attributes attributes(info[8], "attentionBackward's attributes");
    AttentionBackwardArgs args{};
    args.heads = static_cast<int>(attributes.integer("heads"));
    args.kvHeads = static_cast<int>(attributes.integer("kvHeads"));
    args.headDim = static_cast<int>(attributes.integer("headDim"));
    args.scale = static_cast<float>(attributes.number("scale"));
    args.length = attributes.integer("length");
    args.capacity = k.shape[1];
    const Napi::Value window = attributes.optional("window");
    args.window = !absent(window);  // absent: causal
    if (args.window) {
      const Attributes fields(window, "window");
      args.sink = fields.integer("sink");
      args.recent = fields.integer("recent");
    }
    q.device->attentionBackward(q, k, v, out, gradOut, gradQuery, gradKey, gradValue, args);
    return info.Env().Undefined();
  });
}

Napi::Value GateMix(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &streaming = tensorAt(info[0]), &full = tensorAt(info[1]), &gates = tensorAt(info[2]), &out = tensorAt(info[3]);
    sameDevice({&streaming, &full, &gates, &out});
    streaming.device->gateMix(streaming, full, gates, out, gateMixArgs(info[4]));
    return info.Env().Undefined();
  });
}

Napi::Value GateMixBackward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &gradOut = tensorAt(info[0]), &streaming = tensorAt(info[1]), &full = tensorAt(info[2]), &gates = tensorAt(info[3]);
    Tensor &gradStreaming = tensorAt(info[4]), &gradGates = tensorAt(info[5]);
    sameDevice({&gradOut, &streaming, &full, &gates, &gradStreaming, &gradGates});
    gradOut.device->gateMixBackward(gradOut, streaming, full, gates, gradStreaming, gradGates, gateMixArgs(info[6]));
    return info.Env().Undefined();
  });
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &logits = tensorAt(info[0]), &out = tensorAt(info[1]);
    sameDevice({&logits, &out});
    logits.device->argmax(logits, out);
    return info.Env().Undefined();
  });
}

Napi::Value Softmax(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &logits = tensorAt(info[0]), &out = tensorAt(info[1]);
    sameDevice({&logits, &out});
    logits.device->softmax(logits, out, static_cast<float>(number(info, 2)));
    return info.Env().Undefined();
  });
}

Napi::Value MatmulGroup(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& x = tensorAt(info[0]);
    Napi::Array weightIds = info[1].As<Napi::Array>(), outIds = info[2].As<Napi::Array>(), biasIds = info[3].As<Napi::Array>();
    int count = static_cast<int>(weightIds.Length());
    if (count < 1 || count > 3) throw Error("DUO_ARG", "matmulGroup takes one to three matrices");
    const Tensor* weights[3];
    Tensor* outs[3];
    const Tensor* biases[3];
    for (int i = 0; i < count; i++) {
      weights[i] = &tensorAt(weightIds.Get(i));
      outs[i] = &tensorAt(outIds.Get(i));
      biases[i] = optionalTensor(biasIds.Get(i));
      sameDevice({&x, weights[i], outs[i], biases[i]});
    }
    x.device->matmulGroup(x, weights, outs, biases, count);
    return info.Env().Undefined();
  });
}

Napi::Value MatmulSwiglu(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &x = tensorAt(info[0]), &gate = tensorAt(info[1]), &up = tensorAt(info[2]), &out = tensorAt(info[3]);
    sameDevice({&x, &gate, &up, &out});
    x.device->matmulSwiglu(x, gate, up, out);
    return info.Env().Undefined();
  });
}

Napi::Value RopeWriteCache(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &positions = tensorAt(info[3]);
    Tensor &frequencies = tensorAt(info[4]), &keyCache = tensorAt(info[5]), &valueCache = tensorAt(info[6]);
    sameDevice({&q, &k, &v, &positions, &frequencies, &keyCache, &valueCache});
    // RopeAttributes and kvHeads, streaming?, quant?
    const Attributes attributes(info[7], "ropeWriteCache's attributes");
    const RopeArgs args = ropeArgs(attributes);
    const int kvHeads = static_cast<int>(attributes.integer("kvHeads"));
    const StreamingLayout streaming = streamingLayout(attributes.optional("streaming"), keyCache, kvHeads);
    const KvQuantPlanes quant = quantPlanes(attributes.optional("quant"), args.headDim, keyCache);
    q.device->ropeWriteCache(q, k, v, positions, frequencies, args, kvHeads, keyCache, valueCache, streaming, quant);
    return info.Env().Undefined();
  });
}

Napi::Value DecodeAdvance(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor &next = tensorAt(info[0]), &ids = tensorAt(info[1]), &positions = tensorAt(info[2]);
    sameDevice({&next, &ids, &positions});
    next.device->decodeAdvance(next, ids, positions);
    return info.Env().Undefined();
  });
}

Napi::Value GraphBegin(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    deviceOf(info[0])->beginCapture();
    return info.Env().Undefined();
  });
}

Napi::Value GraphEnd(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), deviceOf(info[0])->endCapture());
  });
}

Napi::Value GraphLaunch(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    deviceOf(info[0])->launchGraph(static_cast<int>(integer(info, 1)));
    return info.Env().Undefined();
  });
}

Napi::Value GraphFree(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    deviceOf(info[0])->freeGraph(static_cast<int>(integer(info, 1)));
    return info.Env().Undefined();
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonState());  // deleted by Node when this environment is torn down
  exports.Set("cudaCompiled", Napi::Boolean::New(env, cudaCompiled()));
  exports.Set("probe", Napi::Function::New(env, Probe));
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("write", Napi::Function::New(env, Write));
  exports.Set("read", Napi::Function::New(env, Read));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("memory", Napi::Function::New(env, Memory));
  exports.Set("resetPeak", Napi::Function::New(env, ResetPeak));
  exports.Set("allocPaged", Napi::Function::New(env, AllocPaged));
  exports.Set("commitPaged", Napi::Function::New(env, CommitPaged));
  exports.Set("pageBytes", Napi::Function::New(env, PageBytes));
  exports.Set("takeProfile", Napi::Function::New(env, TakeProfile));
  exports.Set("copyRows", Napi::Function::New(env, CopyRows));
  exports.Set("convert", Napi::Function::New(env, Convert));
  exports.Set("fillRandom", Napi::Function::New(env, FillRandom));
  exports.Set("embedding", Napi::Function::New(env, Embedding));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu));
  exports.Set("add", Napi::Function::New(env, Add));
  exports.Set("writeCache", Napi::Function::New(env, WriteCache));
  exports.Set("attentionPrefill", Napi::Function::New(env, AttentionPrefill));
  exports.Set("attentionDecode", Napi::Function::New(env, AttentionDecode));
  exports.Set("argmax", Napi::Function::New(env, Argmax));
  exports.Set("writeCacheQuantized", Napi::Function::New(env, WriteCacheQuantized));
  exports.Set("matmulBackward", Napi::Function::New(env, MatmulBackward));
  exports.Set("rmsNormBackward", Napi::Function::New(env, RmsNormBackward));
  exports.Set("swigluBackward", Napi::Function::New(env, SwigluBackward));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  exports.Set("gateMix", Napi::Function::New(env, GateMix));
  exports.Set("gateMixBackward", Napi::Function::New(env, GateMixBackward));
  exports.Set("softmax", Napi::Function::New(env, Softmax));
  exports.Set("matmulGroup", Napi::Function::New(env, MatmulGroup));
  exports.Set("matmulSwiglu", Napi::Function::New(env, MatmulSwiglu));
  exports.Set("ropeWriteCache", Napi::Function::New(env, RopeWriteCache));
  exports.Set("decodeAdvance", Napi::Function::New(env, DecodeAdvance));
  exports.Set("graphBegin", Napi::Function::New(env, GraphBegin));
  exports.Set("graphEnd", Napi::Function::New(env, GraphEnd));
  exports.Set("graphLaunch", Napi::Function::New(env, GraphLaunch));
  exports.Set("graphFree", Napi::Function::New(env, GraphFree));
  return exports;
}

}  // namespace
}  // namespace duo

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return duo::Init(env, exports); }

NODE_API_MODULE(duoattn, InitAddon)
