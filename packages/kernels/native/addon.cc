// The addon's entry: per-environment state, and one exported function per entry of ops.def, each called with its
// argument count checked and native errors turned into JS errors with a stable `code`.
#include <napi.h>

#include <new>
#include <string>

#include "common.h"
#include "cuda/cuda-device.h"
#include "elementwise.h"
#include "napi/ops.h"
#include "napi/state.h"

namespace duo {
namespace {

[[noreturn]] void throwJs(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  throw error;
}

// Runs `body`, turning native errors into JS errors that carry a stable `code`.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F body) {
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

// Every op has exactly its table's argument count: a binding that drifted from ops.def fails here, by name.
void checkArity(const Napi::CallbackInfo& info, size_t arity) {
  if (info.Length() == arity) return;
  throw Error("DUO_ARG", std::string("the native op ") + static_cast<const char*>(info.Data()) + " takes " +
                             std::to_string(arity) + " arguments but received " + std::to_string(info.Length()));
}

template <Napi::Value (*kOp)(const Napi::CallbackInfo&), size_t kArity>
Napi::Value op(const Napi::CallbackInfo& info) {
  return guarded(info, [&] {
    checkArity(info, kArity);
    return kOp(info);
  });
}

template <ElementwiseOp kOp, size_t kArity>
Napi::Value elementwiseOp(const Napi::CallbackInfo& info) {
  return guarded(info, [&] {
    checkArity(info, kArity);
    return binding::elementwise(info, kOp);
  });
}

// `name` as data: the function's own name, for checkArity's message.
void* nameData(const char* name) { return const_cast<char*>(name); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new binding::AddonState());  // deleted by Node when this environment is torn down
  exports.Set("cudaCompiled", Napi::Boolean::New(env, cudaCompiled()));
#define DUO_OP(name, arity) \
  exports.Set(#name, Napi::Function::New(env, op<binding::name, arity>, #name, nameData(#name)));
#include "ops.def"
#define DUO_ELEMENTWISE(name, parameters, formula)                                                                 \
  exports.Set(#name, Napi::Function::New(env, elementwiseOp<ElementwiseOp::name, elementwise::kInputs<elementwise::name> + 1>, \
                                         #name, nameData(#name)));
#include "ops.def"
  return exports;
}

}  // namespace
}  // namespace duo

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return duo::Init(env, exports); }

NODE_API_MODULE(duoattn, InitAddon)
