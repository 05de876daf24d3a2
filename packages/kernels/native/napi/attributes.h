// Attributes across the native boundary: each op's attributes object, read by the spec's field names, into the C++
// argument structs the devices take. TypeScript builds these objects (NativeFields in src/native.ts).
#pragma once
#include <napi.h>

#include <string>

#include "../common.h"

namespace duo {
namespace binding {

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
inline bool absent(const Napi::Value& value) { return value.IsUndefined() || value.IsNull(); }

// RopeAttributes (rope, ropeWriteCache): heads, headDim, interleaved.
RopeArgs ropeArgs(const Attributes& attributes);
// ContextShard { ranks, rank, chunk }; absent: one rank holds every position.
ContextShard contextShard(const Napi::Value& value);
// StreamingHeads { retrievalHeads, keyCache, valueCache, sink, recent, mask? } beside the main cache `alongside`;
// absent: every head is full.
StreamingLayout streamingLayout(const Napi::Value& value, const Tensor& alongside, int kvHeads);
// QuantizedKv { scheme, keyScales, valueScales, streamKeyScales?, streamValueScales? }; absent: not quantized.
KvQuantPlanes quantPlanes(const Napi::Value& value, int headDim, const Tensor& cache);
// AttentionAttributes { heads, kvHeads, headDim, scale, keyLength, streaming?, quant? } over caches `k`.
AttentionArgs attentionArgs(const Attributes& attributes, const Tensor& k);
// GateMixAttributes { heads, kvHeads, headDim }.
GateMixArgs gateMixArgs(const Napi::Value& value);

}  // namespace binding
}  // namespace duo
