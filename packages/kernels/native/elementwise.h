// The element-wise ops of ops.def as C++ (the enum ElementwiseOp is in common.h): one functor per op, for the host
// and the device, with its name and arity, and a dispatch from the enum to the functor.
#pragma once
#include <cmath>
#include <cstddef>

#include "common.h"

namespace duo {

// Most inputs an element-wise op may take.
constexpr int kMaxElementwiseInputs = 4;

namespace elementwise {
// elementwise::name{}(inputs...) is the op's value for one element.
#define DUO_ELEMENTWISE(name, parameters, formula) \
  struct name {                                    \
    static constexpr const char* kName = #name;    \
    DUO_HD float operator() parameters const { return formula; } \
  };
#include "ops.def"

template <typename Member> struct ArityOf;
template <typename Functor, typename... Inputs> struct ArityOf<float (Functor::*)(Inputs...) const> {
  static constexpr int value = static_cast<int>(sizeof...(Inputs));
};
// Inputs of functor F.
template <typename F> constexpr int kInputs = ArityOf<decltype(&F::operator())>::value;
}  // namespace elementwise

#define DUO_ELEMENTWISE(name, parameters, formula) \
  static_assert(elementwise::kInputs<elementwise::name> <= kMaxElementwiseInputs, #name " takes too many inputs");
#include "ops.def"

// Calls body(functor) with the functor of `op`.
template <typename F>
void dispatchElementwise(ElementwiseOp op, F body) {
  switch (op) {
#define DUO_ELEMENTWISE(name, parameters, formula) \
  case ElementwiseOp::name: body(elementwise::name{}); return;
#include "ops.def"
  }
  throw Error("DUO_ARG", "unknown element-wise op");
}

inline const char* elementwiseName(ElementwiseOp op) {
  const char* name = "?";
  dispatchElementwise(op, [&](auto functor) { name = decltype(functor)::kName; });
  return name;
}
inline int elementwiseInputs(ElementwiseOp op) {
  int inputs = 0;
  dispatchElementwise(op, [&](auto functor) { inputs = elementwise::kInputs<decltype(functor)>; });
  return inputs;
}

}  // namespace duo
