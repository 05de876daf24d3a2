// Op wrappers for the forward ops: each reads its tensors and attributes, checks they share a device, and calls it.
#include "../elementwise.h"
#include "../quant.h"
#include "attributes.h"
#include "ops.h"
#include "state.h"

namespace duo {
namespace binding {

Napi::Value copyRows(const Napi::CallbackInfo& info) {
  Tensor& source = tensorAt(info[0]);
  Tensor& target = tensorAt(info[1]);
  sameDevice({&source, &target});
  checkCommitted(source, "copyRows");
  checkCommitted(target, "copyRows");
  source.device->copyRows(source, target, integer(info, 2), integer(info, 3), integer(info, 4));
  return info.Env().Undefined();
}

Napi::Value convert(const Napi::CallbackInfo& info) {
  Tensor& source = tensorAt(info[0]);
  Tensor& target = tensorAt(info[1]);
  sameDevice({&source, &target});
  source.device->convert(source, target);
  return info.Env().Undefined();
}

Napi::Value fillRandom(const Napi::CallbackInfo& info) {
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
}

Napi::Value embedding(const Napi::CallbackInfo& info) {
  Tensor &table = tensorAt(info[0]), &ids = tensorAt(info[1]), &out = tensorAt(info[2]);
  sameDevice({&table, &ids, &out});
  table.device->embedding(table, ids, out);
  return info.Env().Undefined();
}

Napi::Value rmsNorm(const Napi::CallbackInfo& info) {
  Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &out = tensorAt(info[2]);
  sameDevice({&x, &weight, &out});
  x.device->rmsNorm(x, weight, out, static_cast<float>(number(info, 3)));
  return info.Env().Undefined();
}

Napi::Value matmul(const Napi::CallbackInfo& info) {
  Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &out = tensorAt(info[2]);
  const Attributes options(info[3], "matmul's options");
  Tensor* bias = optionalTensor(options.optional("bias"));
  Tensor* residual = optionalTensor(options.optional("residual"));
  sameDevice({&x, &weight, &out, bias, residual});
  x.device->matmul(x, weight, out, bias, residual);
  return info.Env().Undefined();
}

Napi::Value matmulGroup(const Napi::CallbackInfo& info) {
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
}

Napi::Value matmulSwiglu(const Napi::CallbackInfo& info) {
  Tensor &x = tensorAt(info[0]), &gate = tensorAt(info[1]), &up = tensorAt(info[2]), &out = tensorAt(info[3]);
  sameDevice({&x, &gate, &up, &out});
  x.device->matmulSwiglu(x, gate, up, out);
  return info.Env().Undefined();
}

Napi::Value rope(const Napi::CallbackInfo& info) {
  Tensor &x = tensorAt(info[0]), &positions = tensorAt(info[1]), &frequencies = tensorAt(info[2]);
  sameDevice({&x, &positions, &frequencies});
  const Attributes attributes(info[3], "rope's attributes");
  RopeArgs args = ropeArgs(attributes);
  args.inverse = attributes.flag("inverse");
  x.device->rope(x, positions, frequencies, args);
  return info.Env().Undefined();
}

Napi::Value writeCache(const Napi::CallbackInfo& info) {
  Tensor &source = tensorAt(info[0]), &cache = tensorAt(info[1]);
  sameDevice({&source, &cache});
  source.device->writeCache(source, cache, integer(info, 2));
  return info.Env().Undefined();
}

Napi::Value writeCacheQuantized(const Napi::CallbackInfo& info) {
  Tensor &source = tensorAt(info[0]), &codes = tensorAt(info[1]), &scales = tensorAt(info[2]);
  sameDevice({&source, &codes, &scales});
  const KvQuant scheme = kvQuantNamed(info[4].As<Napi::String>().Utf8Value());
  if (scheme == KvQuant::None) throw Error("DUO_ARG", "writeCacheQuantized needs a quantizing scheme");
  source.device->writeCacheQuantized(source, codes, scales, integer(info, 3), static_cast<int>(scheme));
  return info.Env().Undefined();
}

Napi::Value ropeWriteCache(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &positions = tensorAt(info[3]);
  Tensor &frequencies = tensorAt(info[4]), &keyCache = tensorAt(info[5]), &valueCache = tensorAt(info[6]);
  sameDevice({&q, &k, &v, &positions, &frequencies, &keyCache, &valueCache});
  // RopeAttributes and kvHeads, streaming?, quant?
  const Attributes attributes(info[7], "ropeWriteCache's attributes");
  const RopeArgs args = ropeArgs(attributes);
  const int kvHeads = static_cast<int>(attributes.integer("kvHeads"));
  StreamingLayout streaming = streamingLayout(attributes.optional("streaming"), keyCache, kvHeads);
  streaming.shard = contextShard(attributes.optional("shard"));
  const KvQuantPlanes quant = quantPlanes(attributes.optional("quant"), args.headDim, keyCache);
  q.device->ropeWriteCache(q, k, v, positions, frequencies, args, kvHeads, keyCache, valueCache, streaming, quant);
  return info.Env().Undefined();
}

Napi::Value attentionPrefill(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &out = tensorAt(info[3]);
  sameDevice({&q, &k, &v, &out});
  const Attributes attributes(info[4], "attentionPrefill's attributes");
  AttentionArgs args = attentionArgs(attributes, k);
  args.queryStart = attributes.integer("queryStart");
  q.device->attentionPrefill(q, k, v, out, args);
  return info.Env().Undefined();
}

// attentionPrefill's arithmetic with each row's heads' log-sum-exps after its outputs, over a rank's shard of the keys.
Napi::Value attentionPartial(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &partial = tensorAt(info[3]);
  sameDevice({&q, &k, &v, &partial});
  const Attributes attributes(info[4], "attentionPartial's attributes");
  AttentionArgs args = attentionArgs(attributes, k);
  args.queryStart = attributes.integer("queryStart");
  args.partial = true;
  if (partial.dtype != DType::F32 || partial.rows() != q.rows() || partial.cols() != static_cast<int64_t>(args.heads) * (args.headDim + 1))
    throw Error("DUO_ARG", "attentionPartial: expected an f32 partial of [n, heads · (headDim + 1)]");
  q.device->attentionPrefill(q, k, v, partial, args);
  return info.Env().Undefined();
}

Napi::Value mergeAttention(const Napi::CallbackInfo& info) {
  Tensor &parts = tensorAt(info[0]), &out = tensorAt(info[1]);
  sameDevice({&parts, &out});
  const Attributes attributes(info[2], "mergeAttention's attributes");
  const int64_t count = attributes.integer("parts"), heads = attributes.integer("heads"), headDim = attributes.integer("headDim");
  if (parts.dtype != DType::F32 || out.dtype != DType::F32 || count < 1 || out.cols() != heads * headDim ||
      parts.cols() != heads * headDim + heads || parts.rows() != count * out.rows())
    throw Error("DUO_ARG", "mergeAttention: expected f32 parts [parts · n, heads · (headDim + 1)] and out [n, heads · headDim]");
  out.device->mergeAttention(parts, out, static_cast<int>(count), static_cast<int>(heads), static_cast<int>(headDim));
  return info.Env().Undefined();
}

Napi::Value attentionDecode(const Napi::CallbackInfo& info) {
  Tensor &q = tensorAt(info[0]), &k = tensorAt(info[1]), &v = tensorAt(info[2]), &out = tensorAt(info[3]);
  const Attributes attributes(info[4], "attentionDecode's attributes");
  Tensor* lengthFrom = optionalTensor(attributes.optional("lengthFrom"));
  sameDevice({&q, &k, &v, &out, lengthFrom});
  AttentionArgs args = attentionArgs(attributes, k);
  args.lengthFrom = lengthFrom ? lengthFrom->as<int32_t>() : nullptr;
  q.device->attentionDecode(q, k, v, out, args);
  return info.Env().Undefined();
}

Napi::Value decodeAdvance(const Napi::CallbackInfo& info) {
  Tensor &next = tensorAt(info[0]), &ids = tensorAt(info[1]), &positions = tensorAt(info[2]);
  sameDevice({&next, &ids, &positions});
  next.device->decodeAdvance(next, ids, positions);
  return info.Env().Undefined();
}

Napi::Value argmax(const Napi::CallbackInfo& info) {
  Tensor &logits = tensorAt(info[0]), &out = tensorAt(info[1]);
  sameDevice({&logits, &out});
  logits.device->argmax(logits, out);
  return info.Env().Undefined();
}

Napi::Value softmax(const Napi::CallbackInfo& info) {
  Tensor &logits = tensorAt(info[0]), &out = tensorAt(info[1]);
  sameDevice({&logits, &out});
  logits.device->softmax(logits, out, static_cast<float>(number(info, 2)));
  return info.Env().Undefined();
}

Napi::Value elementwise(const Napi::CallbackInfo& info, ElementwiseOp op) {
  const int inputs = elementwiseInputs(op);
  const Tensor* tensors[kMaxElementwiseInputs];
  Tensor& out = tensorAt(info[inputs]);
  for (int i = 0; i < inputs; i++) {
    tensors[i] = &tensorAt(info[i]);
    sameDevice({tensors[i], &out});
    if (tensors[i]->dtype != DType::F32 || tensors[i]->size != out.size)
      throw Error("DUO_ARG", std::string(elementwiseName(op)) + " takes f32 tensors of out's size");
  }
  if (out.dtype != DType::F32) throw Error("DUO_ARG", std::string(elementwiseName(op)) + " writes an f32 tensor");
  out.device->elementwise(op, tensors, out);
  return info.Env().Undefined();
}

}  // namespace binding
}  // namespace duo
