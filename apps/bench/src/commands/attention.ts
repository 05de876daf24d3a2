// duo-bench attention: the prefill attention kernel alone — causal attention over S tokens in one call — in TFLOP/s as
// FlashAttention counts it, for full attention and for a share of streaming heads (Λ mask: their work is linear in S),
// beside PyTorch's scaled_dot_product_attention at the same shapes when python3 has torch with CUDA.
import { execFileSync } from 'node:child_process';
import {
  choiceOption,
  figurePath,
  integerListOption,
  integerOption,
  kvQuantList,
  lineChart,
  median,
  numberOption,
  outputOption,
  parseOptions,
  UsageError,
  writeFigure,
  writeResult,
} from '@duoattn/app-kit';
import type { Backend, KvQuantScheme, QuantizedKv, StreamingHeads, TensorHandle } from '@duoattn/core';
import { kvQuantLayout } from '@duoattn/kv-quant';
import { causalFlops, visibleFlops, visitedTiles } from '../attention-work.js';
import { benchBackend } from '../model-options.js';
import { readJsonOption } from '../read-json.js';

export const attentionHelp = `duo-bench attention [--device auto|cpu|cuda] [--lengths 16k,64k] [--streaming 0,0.5]
                    [--heads 32] [--kv-heads 8] [--head-dim 128] [--dtype bf16|f16] [--kv-quant none,int8,int4,fp8]
                    [--sink 128] [--recent 256] [--repeats N] [--peer torch|none] [--out FILE] [--plot FILE.svg|FILE.png]
       duo-bench attention --from FILE --plot FILE.svg|FILE.png
  Causal prefill attention over S tokens in one call (queries and keys 0 … S − 1, the cache in --dtype), for each
  length and each share of streaming KV heads (0: full attention; DuoAttention's Λ mask with --sink and --recent for
  the rest). Reports ms, TFLOP/s counted as FlashAttention counts causal attention (4·S²·D·heads / 2) and TFLOP/s of
  the pairs the masks leave visible; --peer torch: PyTorch's scaled_dot_product_attention (is_causal; the faster of
  GQA and K/V expanded to every head) at the same shapes in the same run (python3 with torch and CUDA). Defaults:
  16k,64k on CUDA, 256,1k on the CPU; Llama-3-8B heads. --kv-quant: each scheme in turn (the caches hold codes and
  scales of random keys and values; the peer stays bf16). --from: draws an earlier run's record (the GPU machine writes
  JSON; figures are drawn where the fonts are).`;

const TORCH = `
import json, sys
out = {"torch": None, "device": None, "ms": {}}
try:
    import torch
    import torch.nn.functional as F
    out["torch"] = torch.__version__
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    out["device"] = torch.cuda.get_device_name()
    lengths, heads, kv_heads, dim, dtype, repeats = json.loads(sys.argv[1])
    dt = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    for s in lengths:
        q = torch.randn(1, heads, s, dim, device="cuda", dtype=dt)
        k = torch.randn(1, kv_heads, s, dim, device="cuda", dtype=dt)
        v = torch.randn(1, kv_heads, s, dim, device="cuda", dtype=dt)
        # GQA as SDPA takes it, and with K/V expanded to every query head (the FlashAttention backend's own shape):
        # the faster of the two is the peer's figure.
        group = heads // kv_heads
        ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        runs = {
            "gqa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            "expanded": lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True),
        }
        best = None
        for name, run in runs.items():
            for _ in range(3):
                run()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(); run(); end.record(); torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            times.sort()
            out.setdefault("variants", {}).setdefault(str(s), {})[name] = times[len(times) // 2]
            best = times[len(times) // 2] if best is None else min(best, times[len(times) // 2])
        out["ms"][str(s)] = best
        del q, k, v, ke, ve
except Exception as error:
    out["error"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
`;

interface PeerFigures {
  torch?: string | null;
  device?: string | null;
  ms: Record<string, number>;
  /** Per length, ms of SDPA with GQA (enable_gqa) and with K/V expanded to every query head; `ms` holds the faster. */
  variants?: Record<string, Record<string, number>>;
  error?: string;
}

function torchFigures(lengths: number[], shape: Shape, dtype: string, repeats: number): PeerFigures {
  try {
    const args = JSON.stringify([lengths, shape.heads, shape.kvHeads, shape.headDim, dtype, repeats]);
    return JSON.parse(execFileSync('python3', ['-c', TORCH, args], { encoding: 'utf8', maxBuffer: 1 << 20 }));
  } catch (error) {
    return { ms: {}, error: `python3 failed: ${(error as Error).message.split('\n')[0]}` };
  }
}

interface AttentionRow {
  length: number;
  streaming: number;
  /** The caches' KV quantization (absent in records written before the option). */
  kvQuant?: KvQuantScheme;
  ms: number;
  tflops: number;
  visibleTflops: number;
  visibleShare: number;
  /** Key tiles the heads visit against full attention's (64 × 64 tiles, as the CUDA tensor-core kernel walks them). */
  tileShare: number;
  /** 1 − ms / the full row's ms at this length (streaming rows). */
  saving?: number;
}

const KERNEL_TILES = { queryRows: 64, keyTile: 64 };

/** Three significant digits: TFLOP/s of a CPU run are small. */
const figure = (value: number) => (value >= 100 ? value.toFixed(0) : value.toPrecision(3));

interface Shape {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** A cache as the op takes it: the values (or a quantized cache's codes) and, quantized, the scales. */
interface CacheTensors {
  codes: TensorHandle;
  scales?: TensorHandle;
}

/** One configuration of a length: the caches' scheme and how many KV heads stream. */
interface Variant {
  kvQuant: KvQuantScheme;
  streamingKvHeads: number;
}

/**
 * Causal attention over `length` tokens for each variant; ms per call, median of `repeats`. The variants take turns
 * within each repeat (one warm-up call each first), so a drift of the card's clock over the run moves them alike and
 * their ratios — the saving of streaming heads — hold.
 */
async function measureLength(
  backend: Backend,
  shape: Shape,
  dtype: 'bf16' | 'f16',
  length: number,
  variants: readonly Variant[],
  window: { sink: number; recent: number },
  repeats: number,
): Promise<number[]> {
  const made: TensorHandle[] = [];
  const make = (type: 'f32' | 'bf16' | 'f16' | 'u8', dims: number[], seed?: number) => {
    const tensor = backend.alloc(type, dims);
    if (seed !== undefined) backend.fillRandom(tensor, seed, 0.5);
    made.push(tensor);
    return tensor;
  };
  try {
    const { heads, kvHeads, headDim } = shape;
    // Queries and outputs are shared by every variant.
    const q = make('f32', [length, heads * headDim], 1);
    const out = make('f32', [length, heads * headDim], 2);
    const runs = variants.map(({ kvQuant, streamingKvHeads }) => {
      const retrieval = kvHeads - streamingKvHeads;
      // A cache of `count` KV heads and `slots` rows: random values in --dtype, or the codes and scales of random
      // values (the first `length` slots written; a streaming ring of recent + length slots never wraps here).
      const cache = (count: number, slots: number, seed: number): CacheTensors => {
        if (kvQuant === 'none') return { codes: make(dtype, [count, slots, headDim], seed) };
        const { codeBytes, scaleHalves } = kvQuantLayout(kvQuant, headDim);
        const codes = make('u8', [count, slots, codeBytes]);
        const scales = make('f16', [count, slots, scaleHalves]);
        const source = backend.alloc('f32', [length, count * headDim]);
        try {
          backend.fillRandom(source, seed, 0.5);
          backend.writeCacheQuantized(source, codes, scales, 0, kvQuant);
        } finally {
          source.dispose();
        }
        return { codes, scales };
      };
      // Retrieval heads keep every key in the main caches; streaming heads keep sinks + a ring of recent + length slots.
      const keys = cache(Math.max(1, retrieval), length, 3);
      const values = cache(Math.max(1, retrieval), length, 4);
      let streaming: StreamingHeads | undefined;
      let region: { keys: CacheTensors; values: CacheTensors } | undefined;
      if (streamingKvHeads > 0) {
        const slots = window.sink + window.recent + length;
        region = { keys: cache(streamingKvHeads, slots, 5), values: cache(streamingKvHeads, slots, 6) };
        streaming = {
          retrievalHeads: Array.from({ length: retrieval }, (_, h) => h),
          keyCache: region.keys.codes,
          valueCache: region.values.codes,
          sink: window.sink,
          recent: window.recent,
        };
      }
      let quant: QuantizedKv | undefined;
      if (kvQuant !== 'none' && keys.scales && values.scales) {
        quant = {
          scheme: kvQuant,
          keyScales: keys.scales,
          valueScales: values.scales,
          ...(region?.keys.scales && region.values.scales
            ? { streamKeyScales: region.keys.scales, streamValueScales: region.values.scales }
            : {}),
        };
      }
      const attributes = {
        heads,
        kvHeads,
        headDim,
        scale: 1 / Math.sqrt(headDim),
        keyLength: length,
        queryStart: 0,
        ...(streaming ? { streaming } : {}),
        ...(quant ? { quant } : {}),
      };
      return () => backend.attentionPrefill(q, keys.codes, values.codes, out, attributes);
    });
    for (const run of runs) run();
    await backend.synchronize();
    const times: number[][] = runs.map(() => []);
    for (let i = 0; i < repeats; i++) {
      for (const [index, run] of runs.entries()) {
        const start = performance.now();
        run();
        await backend.synchronize();
        times[index]?.push(performance.now() - start);
      }
    }
    return times.map(median);
  } finally {
    for (const tensor of made) tensor.dispose();
  }
}

export async function attentionCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    device: { type: 'string' },
    lengths: { type: 'string' },
    streaming: { type: 'string' },
    heads: { type: 'string' },
    'kv-heads': { type: 'string' },
    'head-dim': { type: 'string' },
    dtype: { type: 'string' },
    'kv-quant': { type: 'string' },
    sink: { type: 'string' },
    recent: { type: 'string' },
    repeats: { type: 'string' },
    peer: { type: 'string' },
    out: { type: 'string' },
    plot: { type: 'string' },
    from: { type: 'string' },
  });
  if (options.from !== undefined) return redraw(String(options.from), options.plot as string | undefined, log);
  outputOption('out', options.out);
  if (options.plot !== undefined) outputOption('plot', figurePath('plot', String(options.plot)));
  const dtype = choiceOption('dtype', options.dtype, ['bf16', 'f16'] as const, 'bf16');
  const schemes = kvQuantList(options['kv-quant']);
  const shape: Shape = {
    heads: integerOption('heads', options.heads, 32, 1, 256),
    kvHeads: integerOption('kv-heads', options['kv-heads'], 8, 1, 128),
    headDim: integerOption('head-dim', options['head-dim'], 128, 8, 256),
  };
  if (shape.heads % shape.kvHeads !== 0) {
    throw new UsageError(`--heads: expected a multiple of --kv-heads (${shape.kvHeads}) but received ${shape.heads}`);
  }
  const shares =
    options.streaming === undefined
      ? [0, 0.5]
      : String(options.streaming)
          .split(',')
          .map((value) => numberOption('streaming', value, 0, 0, 1));
  const window = {
    sink: integerOption('sink', options.sink, 128, 0),
    recent: integerOption('recent', options.recent, 256, 1),
  };
  const peer = choiceOption('peer', options.peer, ['torch', 'none'] as const, 'torch');
  const backend = benchBackend(choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto'));
  const gpu = backend.device === 'cuda';
  const lengths = integerListOption('lengths', options.lengths, gpu ? [16384, 65536] : [256, 1024]);
  const repeats = integerOption('repeats', options.repeats, gpu ? 9 : 3, 1);
  const rows: AttentionRow[] = [];
  for (const length of lengths) {
    const variants = schemes.flatMap((kvQuant) =>
      shares.map((share) => ({ kvQuant, streamingKvHeads: Math.round(share * shape.kvHeads) })),
    );
    const times = await measureLength(backend, shape, dtype, length, variants, window, repeats);
    for (const [index, { kvQuant, streamingKvHeads }] of variants.entries()) {
      const group = shape.heads / shape.kvHeads;
      const ms = times[index] as number;
      const counted = causalFlops(length, shape.headDim, shape.heads);
      const visible = visibleFlops(
        length,
        shape.headDim,
        { full: (shape.kvHeads - streamingKvHeads) * group, streaming: streamingKvHeads * group },
        window,
      );
      const row: AttentionRow = {
        length,
        streaming: streamingKvHeads / shape.kvHeads,
        kvQuant,
        ms,
        tflops: counted / (ms / 1000) / 1e12,
        visibleTflops: visible / (ms / 1000) / 1e12,
        visibleShare: visible / (4 * shape.headDim * shape.heads * ((length * (length + 1)) / 2)),
        tileShare:
          (shape.kvHeads -
            streamingKvHeads +
            (streamingKvHeads * visitedTiles(length, KERNEL_TILES, window)) / visitedTiles(length, KERNEL_TILES)) /
          shape.kvHeads,
      };
      const full = rows.find((other) => other.length === length && other.streaming === 0 && other.kvQuant === kvQuant);
      if (full && streamingKvHeads > 0) row.saving = 1 - ms / full.ms;
      rows.push(row);
      log(
        `attention ${length} tokens, ${(row.streaming * 100).toFixed(0)} % streaming` +
          `${kvQuant === 'none' ? '' : `, ${kvQuant} KV`}: ${ms.toFixed(2)} ms, ` +
          `${figure(row.tflops)} TFLOP/s (causal count), ${figure(row.visibleTflops)} TFLOP/s of visible pairs ` +
          `(${(row.visibleShare * 100).toFixed(1)} % of full)` +
          (row.saving === undefined
            ? ''
            : `; saves ${(row.saving * 100).toFixed(1)} % of full's time, the skipped tiles ${((1 - row.tileShare) * 100).toFixed(1)} %`),
      );
    }
  }
  const torch = peer === 'torch' ? torchFigures(lengths, shape, dtype, repeats) : undefined;
  if (torch?.error) log(`peer: ${torch.error}`);
  const peerRows = Object.entries(torch?.ms ?? {}).map(([length, ms]) => {
    const tflops = causalFlops(Number(length), shape.headDim, shape.heads) / (ms / 1000) / 1e12;
    log(`PyTorch SDPA ${length} tokens (full): ${ms.toFixed(2)} ms, ${figure(tflops)} TFLOP/s`);
    return { length: Number(length), ms, tflops };
  });
  const settings = {
    shape,
    dtype,
    kvQuant: schemes,
    window,
    repeats,
    timing:
      'one call between synchronisations, host clock, median of --repeats after one warm-up call; the variants of a length take turns in each repeat',
    flops:
      'tflops: 4·S²·D·heads / 2 (FlashAttention’s causal count) over the time; visibleTflops: 4·D per visible (query, key) pair',
    tiles:
      'tileShare: key tiles of 64 visited by blocks of 64 queries (sinks, then the window of the block’s first query) against full attention’s; saving: 1 − ms / the full row’s ms',
    peer: torch
      ? { torch: torch.torch ?? null, device: torch.device ?? null, error: torch.error, variants: torch.variants }
      : 'none',
  };
  const figures = { attention: rows, peer: peerRows };
  // The record first: a figure that cannot be drawn must not lose the measurements.
  const record = options.out ? writeResult(String(options.out), backend.deviceName, settings, figures) : figures;
  if (options.plot) {
    await drawAttention(String(options.plot), rows, peerRows);
    log(`wrote ${String(options.plot)}`);
  }
  return record;
}

/**
 * TFLOP/s against tokens: one line per share of streaming heads (full attention as FlashAttention counts it, streaming
 * shares over the pairs their masks leave visible) and PyTorch's SDPA.
 */
async function drawAttention(
  plot: string,
  rows: readonly AttentionRow[],
  peerRows: readonly { length: number; tflops: number }[],
): Promise<void> {
  const runs = [...new Map(rows.map((row) => [`${row.kvQuant ?? 'none'}|${row.streaming}`, row])).values()].sort(
    (a, b) => a.streaming - b.streaming,
  );
  const quantized = runs.some((row) => (row.kvQuant ?? 'none') !== 'none');
  const series = runs.map(({ kvQuant = 'none', streaming: share }) => ({
    label:
      (share === 0 ? 'full' : `${(share * 100).toFixed(0)} % streaming (visible pairs)`) +
      (quantized ? `, ${kvQuant === 'none' ? 'bf16' : kvQuant} KV` : ''),
    points: rows
      .filter((row) => row.streaming === share && (row.kvQuant ?? 'none') === kvQuant)
      .map((row) => ({ x: row.length, y: share === 0 ? row.tflops : row.visibleTflops })),
  }));
  if (peerRows.length > 0)
    series.push({ label: 'PyTorch SDPA (full)', points: peerRows.map((r) => ({ x: r.length, y: r.tflops })) });
  await writeFigure(
    plot,
    lineChart({
      panels: [{ title: 'Prefill attention, one call', xTitle: 'tokens', yTitle: 'TFLOP/s', series, xScale: 'log2' }],
      legendTitle: 'heads',
    }),
  );
}

/** --from FILE: draws an earlier run's figure. */
async function redraw(file: string, plot: string | undefined, log: (line: string) => void): Promise<object> {
  const record = readJsonOption<{ attention?: AttentionRow[]; peer?: { length: number; tflops: number }[] }>(
    'from',
    file,
  );
  if (!Array.isArray(record.attention))
    throw new UsageError(`--from: "${file}" has no attention rows (not a duo-bench attention record)`);
  if (plot) {
    await drawAttention(plot, record.attention, record.peer ?? []);
    log(`wrote ${plot}`);
  }
  return record;
}
