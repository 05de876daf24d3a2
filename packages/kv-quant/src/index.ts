// Public surface of @duoattn/kv-quant: the KV-cache quantization schemes' descriptors (planes, bytes, validation), a
// reference quantizer, error metrics.
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
export {
  expectKvQuantScheme,
  INT4_GROUP,
  int4Groups,
  KV_QUANT_SCHEMES,
  type KvPlane,
  kvBytesPerTokenHead,
  kvPlanes,
  kvQuantLayout,
  kvRowBytes,
} from './scheme.js';
