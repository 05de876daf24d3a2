// The op wrappers, one per entry of ops.def: binding::name reads its JavaScript arguments and calls the device.
// addon.cc registers them (with the argument count and the error mapping around each call).
#pragma once
#include <napi.h>

#include "../common.h"

namespace duo {
namespace binding {

#define DUO_OP(name, arity) Napi::Value name(const Napi::CallbackInfo& info);
#include "../ops.def"

// Every DUO_ELEMENTWISE op: its inputs' ids, then out's (napi/forward-ops.cc).
Napi::Value elementwise(const Napi::CallbackInfo& info, ElementwiseOp op);

}  // namespace binding
}  // namespace duo
