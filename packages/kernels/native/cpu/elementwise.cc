// The CPU backend's element-wise ops: every DUO_ELEMENTWISE formula of ops.def, run over the thread pool.
#include <utility>

#include "../elementwise.h"
#include "cpu-device.h"

namespace duo {

namespace {
template <typename Op, size_t... I>
void runElementwise(ThreadPool& pool, const Tensor* const* inputs, Tensor& out, std::index_sequence<I...>) {
  const float* data[] = {inputs[I]->as<float>()..., nullptr};
  float* target = out.as<float>();
  pool.parallelFor(out.size, 1 << 14, [data, target](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) target[i] = Op{}(data[I][i]...);
  });
}
}  // namespace

void CpuDevice::elementwise(ElementwiseOp op, const Tensor* const* inputs, Tensor& out) {
  dispatchElementwise(op, [&](auto functor) {
    using Op = decltype(functor);
    runElementwise<Op>(pool_, inputs, out, std::make_index_sequence<elementwise::kInputs<Op>>{});
  });
}

}  // namespace duo
