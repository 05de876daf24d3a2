// Public surface of @duoattn/kv-quant: KV-cache quantization schemes, their bytes, a reference quantizer, metrics.
export {
  attendOne,
  attentionOutputError,
  type HeadCache,
  meanSquaredError,
  signalToNoiseDb,
} from './metrics.js';
export {
  decodeE4m3,
  dequantizeRow,
  encodeE4m3,
  type QuantizedRow,
  quantizeRow,
  roundHalfEven,
  roundTrip,
} from './reference.js';
export { expectKvQuantScheme, INT4_GROUP, int4Groups, kvBytesPerTokenHead } from './scheme.js';
