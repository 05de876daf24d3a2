// Public surface of @duoattn/kernels.
export { callNative, mapNativeError } from './errors.js';
export { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from './half.js';
export { createInProcessGroup } from './in-process-group.js';
export { type BackendTuning, loadNative, type NativeAddon } from './native.js';
export { hostArrayFor, NativeBackend } from './native-backend.js';
export {
  NcclCommunicator,
  type NcclCommunicatorOptions,
  ncclUniqueId,
  openNcclCommunicator,
} from './nccl-communicator.js';
export {
  type BackendRequest,
  createBackend,
  cudaUnavailableReason,
  environmentTuning,
  type ResolveOptions,
  resolveBackend,
} from './resolve-backend.js';
export { Tensor } from './tensor.js';
export { describeValue, expectInteger, expectPositive, expectTensor, type TensorExpectation } from './validate.js';
