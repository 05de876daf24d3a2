// Op wrappers for the gate trainer's ops: input gradients and the gate mix.
#include "attributes.h"
#include "ops.h"
#include "state.h"

namespace duo {
namespace binding {

Napi::Value matmulBackward(const Napi::CallbackInfo& info) {
  Tensor &gradOut = tensorAt(info[0]), &weight = tensorAt(info[1]), &gradInput = tensorAt(info[2]);
  sameDevice({&gradOut, &weight, &gradInput});
  gradOut.device->matmulBackward(gradOut, weight, gradInput, Attributes(info[3], "matmulBackward's options").flag("accumulate"));
  return info.Env().Undefined();
}

Napi::Value rmsNormBackward(const Napi::CallbackInfo& info) {
  Tensor &x = tensorAt(info[0]), &weight = tensorAt(info[1]), &gradOut = tensorAt(info[2]), &gradInput = tensorAt(info[3]);
  sameDevice({&x, &weight, &gradOut, &gradInput});
  const bool accumulate = Attributes(info[5], "rmsNormBackward's options").flag("accumulate");
  x.device->rmsNormBackward(x, weight, gradOut, gradInput, static_cast<float>(number(info, 4)), accumulate);
  return info.Env().Undefined();
}

Napi::Value swigluBackward(const Napi::CallbackInfo& info) {
  Tensor &gate = tensorAt(info[0]), &up = tensorAt(info[1]), &gradOut = tensorAt(info[2]);
  Tensor &gradGate = tensorAt(info[3]), &gradUp = tensorAt(info[4]);
  sameDevice({&gate, &up, &gradOut, &gradGate, &gradUp});
  gate.device->swigluBackward(gate, up, gradOut, gradGate, gradUp);
  return info.Env().Undefined();
}

Napi::Value attentionBackward(const Napi::CallbackInfo& info) {
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
}

Napi::Value gateMix(const Napi::CallbackInfo& info) {
  Tensor &streaming = tensorAt(info[0]), &full = tensorAt(info[1]), &gates = tensorAt(info[2]), &out = tensorAt(info[3]);
  sameDevice({&streaming, &full, &gates, &out});
  streaming.device->gateMix(streaming, full, gates, out, gateMixArgs(info[4]));
  return info.Env().Undefined();
}

Napi::Value gateMixBackward(const Napi::CallbackInfo& info) {
  Tensor &gradOut = tensorAt(info[0]), &streaming = tensorAt(info[1]), &full = tensorAt(info[2]), &gates = tensorAt(info[3]);
  Tensor &gradStreaming = tensorAt(info[4]), &gradGates = tensorAt(info[5]);
  sameDevice({&gradOut, &streaming, &full, &gates, &gradStreaming, &gradGates});
  gradOut.device->gateMixBackward(gradOut, streaming, full, gates, gradStreaming, gradGates, gateMixArgs(info[6]));
  return info.Env().Undefined();
}

}  // namespace binding
}  // namespace duo
