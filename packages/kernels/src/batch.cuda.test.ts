// Runs the continuous-batching suite on the CUDA backend; skips visibly, with the reason, where there is no usable GPU.
// Batched decode shares the wave of blocks among the sequences, so its split-K partition (and the order in which
// partial sums merge) differs from a single-sequence launch: the outputs may then differ by what the single ops' own
// CUDA tests allow against float64 (quantized-attention.cuda.test.ts): 1e-2 where 16-bit tiles go to the tensor cores
// (P rounded to bf16 per split), 1e-4 on the CUDA cores. The RoPE + cache write shares the single op's arithmetic, so
// caches and rotated rows must match bit for bit. `sample` sums f32 weights in a block-reduction order: its pick may
// differ from the float64 reference only where u · total (or topP · total) falls within 1e-4 of a cumulative weight.
// The suite runs again with every split-K merge in the combine launch and with every one in the decode kernel.
import { batchConformanceSuite } from './batch-conformance-suite.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';

const reason = cudaUnavailableReason();
const options = {
  attentionTolerance: (headDim: number, cache: string) =>
    (headDim === 64 || headDim === 128) && cache !== 'f32' ? 1e-2 : 1e-4,
  sampleSlack: 1e-4,
};
const cuda = () => (reason === undefined ? createBackend('cuda') : undefined);
batchConformanceSuite('cuda', cuda, options, reason);
// Every split-K merge of a batch's decode in the combine launch, then every one in the decode kernel.
batchConformanceSuite('cuda, merges in the combine', cuda, { ...options, tuning: { decodeBatchMerge: 1 } }, reason);
batchConformanceSuite('cuda, merges in the kernel', cuda, { ...options, tuning: { decodeBatchMerge: 64 } }, reason);
