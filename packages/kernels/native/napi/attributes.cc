// Readers of the spec's attribute objects into the devices' argument structs.
#include "attributes.h"

#include "../quant.h"
#include "state.h"

namespace duo {
namespace binding {

RopeArgs ropeArgs(const Attributes& attributes) {
  return RopeArgs{static_cast<int>(attributes.integer("heads")), static_cast<int>(attributes.integer("headDim")),
                  attributes.flag("interleaved")};
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
  HeadMask retrievalHeads;
  for (uint32_t i = 0; i < retrieval.Length(); i++) {
    const int head = retrieval.Get(i).As<Napi::Number>().Int32Value();
    if (head < 0 || head >= kvHeads || retrievalHeads.has(head))
      throw Error("DUO_ARG", "retrieval heads must be distinct KV heads of the layer");
    retrievalHeads.add(head);
  }
  for (int head = 0; head < kvHeads; head++)
    if (!retrievalHeads.has(head)) layout.streamingHeads.add(head);
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

// The spec's ContextShard { ranks, rank, chunk } (absent: one rank holds every position).
ContextShard contextShard(const Napi::Value& value) {
  ContextShard shard;
  if (absent(value)) return shard;
  const Attributes fields(value, "shard");
  const int64_t ranks = fields.integer("ranks"), rank = fields.integer("rank"), chunk = fields.integer("chunk");
  if (ranks < 1 || ranks > 1024 || rank < 0 || rank >= ranks || chunk < 1)
    throw Error("DUO_ARG", "shard: expected 1 ≤ ranks ≤ 1024, 0 ≤ rank < ranks and chunk ≥ 1");
  shard.ranks = static_cast<int>(ranks);
  shard.rank = static_cast<int>(rank);
  shard.chunk = chunk;
  return shard;
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
  args.streaming.shard = contextShard(attributes.optional("shard"));
  return args;
}

// The spec's GateMixAttributes: heads, kvHeads, headDim.
GateMixArgs gateMixArgs(const Napi::Value& value) {
  const Attributes attributes(value, "the gate mix's attributes");
  return GateMixArgs{static_cast<int>(attributes.integer("heads")), static_cast<int>(attributes.integer("kvHeads")),
                     static_cast<int>(attributes.integer("headDim"))};
}

}  // namespace binding
}  // namespace duo
