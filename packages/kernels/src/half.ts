// The f16 / bf16 conversions live in @duoattn/core (kv-quant, below this package, needs them too); re-exported here.
export { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from '@duoattn/core';
