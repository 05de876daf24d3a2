// Op wrappers of continuous batching: the cache batch (which caches each sequence of a step uses, per layer), its
// per-step rows, the batched RoPE + cache write and attention, and sampling on the device.
#include <algorithm>
#include <string>
#include <utility>

#include "attributes.h"
#include "ops.h"
#include "state.h"

namespace duo {
namespace binding {

namespace {

CacheBatch& batchAt(const Napi::Value& value) {
  auto& batches = stateOf(value.Env()).batches;
  const int64_t id = value.As<Napi::Number>().Int64Value();
  if (id < 1 || id > static_cast<int64_t>(batches.size()) || !batches[static_cast<size_t>(id - 1)])
    throw Error("DUO_DISPOSED", "cache batch #" + std::to_string(id) + " was disposed or never existed");
  return *batches[static_cast<size_t>(id - 1)];
}

// The slices of `layer` for this step, each checked: its tensors still alive where they were, on `device`.
std::vector<BatchSlice> slicesOf(Napi::Env env, const CacheBatch& batch, int64_t layer, const Device* device,
                                 int64_t rows) {
  if (layer < 0 || layer >= batch.layers)
    throw Error("DUO_ARG", "layer " + std::to_string(layer) + " is not in the cache batch (" + std::to_string(batch.layers) + " layers)");
  const std::vector<Tensor*>& registry = stateOf(env).registry;
  std::vector<BatchSlice> slices;
  slices.reserve(batch.sequences.size());
  int64_t rowStart = 0;
  for (size_t s = 0; s < batch.sequences.size(); s++) {
    const CacheBatch::Entry& entry = batch.sequences[s][static_cast<size_t>(layer)];
    for (const auto& [id, data] : entry.tensors) {
      if (id >= registry.size() || registry[id] == nullptr || registry[id]->data != data)
        throw Error("DUO_DISPOSED", "a cache of sequence " + std::to_string(s) + " of the batch was disposed");
    }
    if (entry.slice.keyCache->device != device) throw Error("DUO_ARG", "a cache batch's caches must live on the op's device");
    BatchSlice slice = entry.slice;
    slice.rowStart = rowStart;
    slice.rows = batch.rows[s];
    slice.queryStart = batch.queryStarts[s];
    // The keys must be where the caches have memory, the streaming ring room for the rows beside its window.
    const Tensor& key = *slice.keyCache;
    const size_t rowBytes = static_cast<size_t>(key.shape.back()) * dtypeBytes(key.dtype);
    const int64_t backed = key.paged ? static_cast<int64_t>(key.committedPerSpan / std::max<size_t>(rowBytes, 1)) : key.shape[1];
    if (key.shape[0] > 0 && slice.rows > 0 && slice.queryStart + slice.rows > backed)
      throw Error("DUO_ARG", "sequence " + std::to_string(s) + " of the batch reaches " + std::to_string(slice.queryStart + slice.rows) +
                                 " keys but its caches hold " + std::to_string(backed));
    if (slice.streaming.active() && slice.streaming.ring < slice.streaming.recent + slice.rows)
      throw Error("DUO_ARG", "sequence " + std::to_string(s) + " of the batch runs " + std::to_string(slice.rows) +
                                 " rows but its streaming ring holds recent + " + std::to_string(slice.streaming.ring - slice.streaming.recent));
    rowStart += slice.rows;
    slices.push_back(slice);
  }
  if (rowStart != rows)
    throw Error("DUO_ARG", "the cache batch's spans hold " + std::to_string(rowStart) + " rows but the op's tensors " + std::to_string(rows));
  return slices;
}

}  // namespace

// (device, sequences: per sequence, per layer { keyCache, valueCache, streaming?, quant? }, { layers, kvHeads, headDim })
Napi::Value cacheBatchCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Device* device = deviceOf(info[0]);
  if (!info[1].IsArray()) throw Error("DUO_ARG", "cacheBatchCreate's sequences must be an array");
  const Attributes attributes(info[2], "cacheBatchCreate's attributes");
  const int64_t layers = attributes.integer("layers");
  const int kvHeads = static_cast<int>(attributes.integer("kvHeads"));
  const int headDim = static_cast<int>(attributes.integer("headDim"));
  auto batch = std::make_unique<CacheBatch>();
  batch->layers = static_cast<int>(layers);
  const Napi::Array sequences = info[1].As<Napi::Array>();
  for (uint32_t s = 0; s < sequences.Length(); s++) {
    const Napi::Value perLayer = sequences.Get(s);
    if (!perLayer.IsArray() || perLayer.As<Napi::Array>().Length() != static_cast<uint32_t>(layers))
      throw Error("DUO_ARG", "sequence " + std::to_string(s) + " of a cache batch must give one cache per layer (" + std::to_string(layers) + ")");
    std::vector<CacheBatch::Entry> entries;
    for (uint32_t l = 0; l < static_cast<uint32_t>(layers); l++) {
      const Attributes fields(perLayer.As<Napi::Array>().Get(l), "a cache batch's layer");
      CacheBatch::Entry entry;
      Tensor &key = tensorAt(fields.at("keyCache")), &value = tensorAt(fields.at("valueCache"));
      if (key.device != device || value.device != device) throw Error("DUO_ARG", "a cache batch's caches must live on its device");
      entry.slice.keyCache = &key;
      entry.slice.valueCache = &value;
      entry.slice.streaming = streamingLayout(fields.optional("streaming"), key, kvHeads);
      entry.slice.quant = quantPlanes(fields.optional("quant"), headDim, key);
      const auto remember = [&](const Tensor& tensor) { entry.tensors.emplace_back(tensor.id, tensor.data); };
      remember(key);
      remember(value);
      const auto rememberField = [&](const Napi::Value& holder, const char* name) {
        if (absent(holder)) return;
        if (Tensor* tensor = optionalTensor(holder.As<Napi::Object>().Get(name))) remember(*tensor);
      };
      const Napi::Value streaming = fields.optional("streaming"), quant = fields.optional("quant");
      rememberField(streaming, "keyCache");
      rememberField(streaming, "valueCache");
      for (const char* name : {"keyScales", "valueScales", "streamKeyScales", "streamValueScales"}) rememberField(quant, name);
      entries.push_back(std::move(entry));
    }
    batch->sequences.push_back(std::move(entries));
  }
  batch->rows.assign(batch->sequences.size(), 0);
  batch->queryStarts.assign(batch->sequences.size(), 0);
  auto& batches = stateOf(env).batches;
  batches.push_back(std::move(batch));
  return Napi::Number::New(env, static_cast<double>(batches.size()));
}

// (batch, Int32Array [rows₀, queryStart₀, rows₁, queryStart₁, …]): this step's rows of each sequence, in order.
Napi::Value cacheBatchSpans(const Napi::CallbackInfo& info) {
  CacheBatch& batch = batchAt(info[0]);
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Error("DUO_ARG", "cacheBatchSpans takes an Int32Array of (rows, queryStart) pairs");
  const Napi::Int32Array spans = info[1].As<Napi::Int32Array>();
  if (spans.ElementLength() != 2 * batch.sequences.size())
    throw Error("DUO_ARG", "cacheBatchSpans needs one (rows, queryStart) pair per sequence of the batch");
  for (size_t s = 0; s < batch.sequences.size(); s++) {
    const int32_t rows = spans[2 * s], start = spans[2 * s + 1];
    if (rows < 0 || start < 0) throw Error("DUO_ARG", "a cache batch's rows and positions must be ≥ 0");
    batch.rows[s] = rows;
    batch.queryStarts[s] = start;
  }
  return info.Env().Undefined();
}

Napi::Value cacheBatchFree(const Napi::CallbackInfo& info) {
  auto& batches = stateOf(info.Env()).batches;
  const int64_t id = info[0].As<Napi::Number>().Int64Value();
  if (id >= 1 && id <= static_cast<int64_t>(batches.size())) batches[static_cast<size_t>(id - 1)].reset();
  return info.Env().Undefined();
}

// (q, k, v, positions, frequencies, batch, layer, { heads, headDim, interleaved, kvHeads })
Napi::Value ropeWriteCacheBatch(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &positions = tensorAt(info[3]);
  Tensor& frequencies = tensorAt(info[4]);
  sameDevice({&q, &k, &v, &positions, &frequencies});
  const CacheBatch& batch = batchAt(info[5]);
  const Attributes attributes(info[7], "ropeWriteCacheBatch's attributes");
  const RopeArgs args = ropeArgs(attributes);
  const int kvHeads = static_cast<int>(attributes.integer("kvHeads"));
  const std::vector<BatchSlice> slices = slicesOf(info.Env(), batch, integer(info, 6), q.device, q.rows());
  q.device->ropeWriteCacheBatch(q, k, v, positions, frequencies, args, kvHeads, slices);
  return info.Env().Undefined();
}

// (q, out, batch, layer, { heads, kvHeads, headDim, scale })
Napi::Value attentionBatch(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &out = tensorAt(info[1]);
  sameDevice({&q, &out});
  const CacheBatch& batch = batchAt(info[2]);
  const Attributes attributes(info[4], "attentionBatch's attributes");
  AttentionArgs shape{};
  shape.heads = static_cast<int>(attributes.integer("heads"));
  shape.kvHeads = static_cast<int>(attributes.integer("kvHeads"));
  shape.headDim = static_cast<int>(attributes.integer("headDim"));
  shape.scale = static_cast<float>(attributes.number("scale"));
  const std::vector<BatchSlice> slices = slicesOf(info.Env(), batch, integer(info, 3), q.device, q.rows());
  q.device->attentionBatch(q, out, shape, slices);
  return info.Env().Undefined();
}

// (logits, settings, out)
Napi::Value sample(const Napi::CallbackInfo& info) {
  Tensor &logits = tensorAt(info[0]), &settings = tensorAt(info[1]), &out = tensorAt(info[2]);
  sameDevice({&logits, &settings, &out});
  if (logits.dtype != DType::F32 || settings.dtype != DType::F32 || out.dtype != DType::I32)
    throw Error("DUO_ARG", "sample takes f32 logits, f32 settings and an i32 out");
  if (settings.size != logits.rows() * 4 || out.size != logits.rows())
    throw Error("DUO_ARG", "sample needs settings [rows, 4] and out [rows] for logits of " + std::to_string(logits.rows()) + " rows");
  logits.device->sample(logits, settings, out);
  return info.Env().Undefined();
}

}  // namespace binding
}  // namespace duo
