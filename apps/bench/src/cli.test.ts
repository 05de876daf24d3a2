// duo-bench end to end on the CPU: generate on stories260K, speed on a tiny shape, retrieval and gate training on the
// demo model, and usage errors.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadPattern } from '@duoattn/dual-cache';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cli = join(root, 'apps/bench/dist/cli.js');
const stories = resolve(root, '..', 'shared', 'models', 'stories260K', 'stories260K.bin');
const out = mkdtempSync(join(tmpdir(), 'duo-bench-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));
const demoHaystack = join(root, 'models/duo-demo/MODEL_CARD.md');
/** A train-gates run small enough for the CPU: the demo model on short samples of keyed facts it can retrieve. */
const SMALL_TRAINING = [
  'train-gates',
  '--device',
  'cpu',
  '--haystack',
  demoHaystack,
  '--ctx-min',
  '500',
  '--ctx-max',
  '600',
  '--format',
  'magic-number',
  '--passkeys',
  '3',
  '--words',
  '4',
  '--sink',
  '16',
  '--recent',
  '32',
];

/** Runs the CLI to its end (killed after `timeout` ms, if given: `code` is then null). */
async function bench(args: string[], timeout?: number): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cli, ...args], { cwd: root, timeout });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('duo-bench', () => {
  (existsSync(stories) ? it : it.skip)('generate streams the golden story and reports tokens per second', async () => {
    const result = await bench(['generate', '--model', stories, '--max-tokens', '30', '--device', 'cpu']);
    expect(result.code).toBe(0);
    expect(result.stdout.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
    expect(result.stderr).toMatch(/prefill [\d.]+ tok\/s; generated 30 tokens: decode [\d.]+ tok\/s/);
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) &&
    existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'))
    ? it
    : it.skip)('niah scores the demo model with ROUGE-1 over lengths × depths, JSON and a PNG heatmap', async () => {
    const file = join(out, 'niah.json');
    const heatmap = join(out, 'niah.png');
    const args = ['niah', '--device', 'cpu', '--lengths', '512,768', '--depths', '2', '--trials', '2'];
    const result = await bench([...args, '--out', file, '--heatmap', heatmap]);
    expect(result.code).toBe(0);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.niah.map((row: { length: number }) => row.length)).toEqual([512, 768]);
    for (const row of document.niah) {
      expect(row.trials).toBe(2);
      expect(row.accuracy).toBeGreaterThanOrEqual(0);
      expect(row.accuracy).toBeLessThanOrEqual(1);
    }
    expect(document.settings.decoding).toMatch(/ROUGE-1/);
    const png = readFileSync(heatmap);
    expect(Array.from(png.subarray(1, 4))).toEqual([0x50, 0x4e, 0x47]);
    // Two lengths × two depths of cells, with a title, axes and a colour legend around them, at twice the SVG's size.
    expect(png.readUInt32BE(16)).toBeGreaterThan(2 * 240);
    expect(png.readUInt32BE(20)).toBeGreaterThan(2 * 120);
    expect(result.stdout).toContain(`wrote ${heatmap}`);
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) &&
    existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'))
    ? it
    : it.skip)('passkey scores the demo model over lengths × depths and writes JSON', async () => {
    const file = join(out, 'passkey.json');
    const passkey = ['passkey', '--device', 'cpu', '--lengths', '512', '--depths', '2', '--trials', '2'];
    const result = await bench([...passkey, '--out', file]);
    expect(result.code).toBe(0);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.passkey[0].length).toBe(512);
    expect(document.passkey[0].trials).toBe(2);
    expect(document.passkey[0].depths.map((cell: { depth: number }) => cell.depth)).toEqual([0.25, 0.75]);
    expect(document.passkey[0].accuracy).toBe(1);
    const heatmap = join(out, 'passkey.svg');
    const streaming = await bench([
      ...passkey,
      '--attention',
      'streaming',
      '--sink',
      '16',
      '--recent',
      '64',
      '--out',
      file,
      '--heatmap',
      heatmap,
    ]);
    expect(streaming.code).toBe(0);
    const window = JSON.parse(readFileSync(file, 'utf8'));
    expect(window.settings).toMatchObject({ attention: 'streaming', sink: 16, recent: 64 });
    expect(window.passkey[0].window.inside.trials + window.passkey[0].window.outside.trials).toBe(2);
    const svg = readFileSync(heatmap, 'utf8');
    for (const text of [
      'Passkey accuracy (%), streaming',
      'needle depth',
      'context (tokens)',
      'accuracy (%)',
      '>512<',
    ]) {
      expect(svg).toContain(text);
    }
    const badFigure = await bench([...passkey, '--heatmap', join(out, 'passkey.jpg')]);
    expect(badFigure.code).toBe(2);
    expect(badFigure.stderr).toContain('--heatmap: expected a figure file ending in .svg or .png');
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'generate defaults to the embedded demo model and streams its text',
    async () => {
      const result = await bench([
        'generate',
        '--device',
        'cpu',
        '--max-tokens',
        '24',
        '--prompt',
        'It was a bright cold day',
      ]);
      expect(result.code).toBe(0);
      expect(result.stderr).toContain(join('models', 'duo-demo'));
      expect(result.stdout.startsWith('It was a bright cold day')).toBe(true);
      expect(result.stdout.length).toBeGreaterThan('It was a bright cold day'.length + 10);
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'generate runs DuoAttention from the command line and says which policy ran',
    async () => {
      const result = await bench([
        'generate',
        '--attention',
        'duo',
        '--pattern',
        'models/duo-demo/pattern',
        '--sparsity',
        '0.75',
        '--max-tokens',
        '8',
        '--device',
        'cpu',
      ]);
      expect(result.code).toBe(0);
      expect(result.stdout.startsWith('Once upon a time')).toBe(true);
      expect(result.stdout.trim().length).toBeGreaterThan('Once upon a time'.length);
      expect(result.stderr).toContain(
        'policy: duo 25 % retrieval heads (3 of 12; sparsity 0.75, pattern models/duo-demo/pattern), sink 128, recent 256',
      );
      expect(result.stderr).toMatch(/generated \d+ tokens: decode [\d.]+ tok\/s/);
    },
  );

  it('plan reports 128 KiB per token for full attention and 64 KiB at 50 % retrieval (Llama-3-8B, bf16)', async () => {
    const file = join(out, 'plan.json');
    const result = await bench(['plan', '--shape', 'llama-3-8b', '--sparsity', '0.5', '--out', file]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/full\s+0\.000\s+128\.0/);
    expect(result.stdout).toMatch(/duo\s+0\.500\s+64\.0/);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    const perToken = document.settings.policies.map(
      (row: { memory: { bytesPerToken: number } }) => row.memory.bytesPerToken,
    );
    expect(perToken).toEqual([131072, 65536, 0]);
    expect(document.settings.policies[1].maxContext).toBeGreaterThan(1.99 * document.settings.policies[0].maxContext);
    // int4 codes with fp16 scales: 68 B per token and head (the reference's layout).
    const int4 = await bench(['plan', '--shape', 'llama-3-8b', '--sparsity', '0.5', '--kv-quant', 'int4']);
    expect(int4.code).toBe(0);
    expect(int4.stdout).toContain('KV cache int4 codes with fp16 scales');
    expect(int4.stdout).toMatch(/full\s+0\.000\s+34\.0/);
    expect(int4.stdout).toMatch(/duo\s+0\.500\s+17\.0/);
    const bad = await bench(['plan', '--shape', 'llama-3-8b', '--kv-quant', 'int3']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--kv-quant');
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'gguf writes a random model of the demo shape that our loader reads back, and checks its options',
    async () => {
      const file = join(out, 'demo-q8.gguf');
      const result = await bench(['gguf', '--model', join(root, 'models/duo-demo'), '--type', 'q8_0', '--out', file]);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toMatch(/wrote .*demo-q8\.gguf: .*6 layers, q8_0/);
      const { openCheckpoint } = await import('@duoattn/model');
      const demo = await openCheckpoint(join(root, 'models/duo-demo'));
      const written = await openCheckpoint(file);
      for (const field of [
        'hiddenSize',
        'intermediateSize',
        'numLayers',
        'numHeads',
        'numKvHeads',
        'vocabSize',
      ] as const)
        expect(written.config[field]).toBe(demo.config[field]);
      const oneLayer = await bench(['gguf', '--model', join(root, 'models/duo-demo'), '--layers', '1', '--out', file]);
      expect(oneLayer.code, oneLayer.stderr).toBe(0);
      expect((await openCheckpoint(file)).config.numLayers).toBe(1);
      const both = await bench(['gguf', '--shape', 'llama-3-8b', '--model', 'x', '--out', file]);
      expect(both.code).toBe(2);
      expect(both.stderr).toContain(
        '--shape / --model: expected exactly one of --shape NAME and --model PATH but received --shape "llama-3-8b" and --model "x"',
      );
      const type = await bench(['gguf', '--shape', 'llama-3-8b', '--type', 'q3_k', '--out', file]);
      expect(type.code).toBe(2);
      expect(type.stderr).toContain('--type: expected one of f32, f16, bf16, q8_0, q4_k, q5_k, q6_k');
    },
  );

  it('plan --weight-quant counts matrices in GGUF block formats (int8 = Q8_0, int4 = Q4_K) and lengthens the context', async () => {
    const file = join(out, 'plan-weights.json');
    const args = ['plan', '--shape', 'llama-3-8b', '--attention', 'duo', '--sparsity', '0.5', '--kv-quant', 'int4'];
    expect((await bench([...args, '--out', file])).code).toBe(0);
    const plain = JSON.parse(readFileSync(file, 'utf8'));
    const int8 = await bench([...args, '--weight-quant', 'int8', '--out', file]);
    expect(int8.code, int8.stderr).toBe(0);
    expect(int8.stdout).toContain('(q8_0 for int8)');
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.settings.weightQuant).toBe('q8_0');
    const norms = 65 * 4096;
    const weights = document.settings.policies[0].memory.weights;
    expect(weights).toBe(((8_030_261_248 - norms) * 34) / 32 + 4 * norms + 4 * 64);
    expect(document.settings.policies[0].maxContext).toBeGreaterThan(plain.settings.policies[0].maxContext);
    const bad = await bench(['plan', '--shape', 'llama-3-8b', '--weight-quant', 'int3']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--weight-quant: expected one of none, int8, int4, q8_0, q4_k, q5_k, q6_k');
  });

  it("plan --page stops the context at the full regions' page boundaries, as the CUDA backend maps them", async () => {
    // An H100 80GB (85.02 GB as CUDA reports it) with Q8_0 weights, duo 50 % + int4 KV and 2.5 GB reserved held
    // 4 194 304 tokens (bench/results/2026-12-07-h100-blocks-persistent … -quantize-once): every plane's 2 MiB pages
    // full, the next token a page more in each. Counted in bytes, the planner would promise more.
    const args = [
      'plan',
      '--shape',
      'llama-3-8b-1048k',
      '--weight-quant',
      'q8_0',
      '--attention',
      'duo',
      '--sparsity',
      '0.5',
    ];
    const device = [...args, '--kv-quant', 'int4', '--gpu-memory', '85.0178', '--reserve', '2.5'];
    const file = join(out, 'plan-pages.json');
    const paged = await bench([...device, '--out', file]);
    expect(paged.code, paged.stderr).toBe(0);
    expect(paged.stdout).toContain('(2048 KiB pages)');
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.settings.pageBytes).toBe(2 << 20);
    expect(document.settings.policies[0].maxContext).toBe(4_194_304);
    const exact = await bench([...device, '--page', '0', '--out', file]);
    expect(exact.stdout).toContain('(exact bytes)');
    expect(JSON.parse(readFileSync(file, 'utf8')).settings.policies[0].maxContext).toBeGreaterThan(4_194_304);
    const bad = await bench([...args, '--page', '2 MiB']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--page: expected an integer in [0, 1048576] but received "2 MiB"');
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'efficiency measures full, duo and streaming on the demo model, with the planner exact, JSON and an SVG plot',
    async () => {
      const file = join(out, 'efficiency.json');
      const plot = join(out, 'efficiency.svg');
      const args = ['efficiency', '--device', 'cpu', '--contexts', '512,1024', '--prefill', '512', '--steps', '2'];
      const result = await bench([...args, '--warmup', '2', '--out', file, '--plot', plot]);
      expect(result.code).toBe(0);
      const document = JSON.parse(readFileSync(file, 'utf8'));
      expect(document.decode.map((row: { policy: string }) => row.policy)).toEqual([
        'full',
        'full',
        'duo',
        'duo',
        'streaming',
        'streaming',
      ]);
      for (const row of document.decode) {
        expect(row.msPerToken).toBeGreaterThan(0);
        expect(Math.abs(row.plannedToAllocated - 1)).toBeLessThan(0.01);
      }
      // Streaming memory does not depend on the context; full attention's grows.
      const peak = (policy: string) =>
        document.decode
          .filter((row: { policy: string }) => row.policy === policy)
          .map((row: { peakBytes: number }) => row.peakBytes);
      expect(new Set(peak('streaming')).size).toBe(1);
      expect(peak('full')[1]).toBeGreaterThan(peak('full')[0]);
      expect(document.prefill).toHaveLength(3);
      expect(readFileSync(plot, 'utf8')).toMatch(/^<svg[^>]*>[\s\S]*Decode latency[\s\S]*<\/svg>\n$/);
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'efficiency draws a prefill-only record (prefill time and peak memory, no empty decode panels)',
    async () => {
      const file = join(out, 'efficiency-prefill.json');
      const plot = join(out, 'efficiency-prefill.svg');
      const args = [
        'efficiency',
        '--device',
        'cpu',
        '--attention',
        'full,duo',
        '--contexts',
        'none',
        '--prefill',
        '256',
      ];
      const result = await bench([...args, '--out', file]);
      expect(result.code, result.stderr).toBe(0);
      const redraw = await bench(['efficiency', '--from', file, '--plot', plot]);
      expect(redraw.code, redraw.stderr).toBe(0);
      const figure = readFileSync(plot, 'utf8');
      expect(figure).toContain('Prefill time');
      expect(figure).toContain('Peak memory during prefill');
      expect(figure).not.toContain('Decode latency');
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'efficiency --kv-quant runs each policy per scheme: planner exact, a lower floor and a speed-up line per scheme',
    async () => {
      const file = join(out, 'efficiency-quant.json');
      const args = ['efficiency', '--device', 'cpu', '--contexts', '512', '--prefill', 'none', '--steps', '2'];
      const result = await bench([
        ...args,
        '--warmup',
        '2',
        '--attention',
        'duo',
        '--kv-quant',
        'none,int8,int4',
        '--bandwidth',
        '0.05',
        '--out',
        file,
      ]);
      expect(result.code).toBe(0);
      const document = JSON.parse(readFileSync(file, 'utf8'));
      const rows = document.decode as { kvQuant: string; floorMs: number; plannedToAllocated: number }[];
      expect(rows.map((row) => row.kvQuant)).toEqual(['none', 'int8', 'int4']);
      for (const row of rows) expect(Math.abs(row.plannedToAllocated - 1)).toBeLessThan(0.01);
      const [none, int8, int4] = rows.map((row) => row.floorMs) as [number, number, number];
      expect(int8).toBeLessThan(none);
      expect(int4).toBeLessThan(int8);
      expect(result.stdout).toContain('duo: int4/unquantized decode speed-up @512');
      expect(document.settings.kvQuant).toEqual(['none', 'int8', 'int4']);
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) &&
    existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'))
    ? it
    : it.skip)(
    '--weight-quant int8 / int4 keep the demo model within 0.5 % / 5 % of its perplexity on the held-out book (CPU)',
    async () => {
      const perplexity = async (quant: string) => {
        const file = join(out, `perplexity-weights-${quant}.json`);
        const args = ['perplexity', '--device', 'cpu', '--length', '2k', '--windows', '2', '--weight-quant', quant];
        const result = await bench([...args, '--out', file]);
        expect(result.code, result.stderr).toBe(0);
        return (JSON.parse(readFileSync(file, 'utf8')).perplexity as { perplexity: number }[])[0]?.perplexity as number;
      };
      const [plain, int8, int4] = [await perplexity('none'), await perplexity('int8'), await perplexity('int4')];
      expect(Math.abs(int8 / plain - 1)).toBeLessThan(0.005);
      expect(Math.abs(int4 / plain - 1)).toBeLessThan(0.05);
      expect(int4).not.toBe(int8); // the weights really are quantized, differently
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) &&
    existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'))
    ? it
    : it.skip)('perplexity compares KV schemes on a held-out book; passkey takes --kv-quant', async () => {
    const file = join(out, 'perplexity.json');
    const result = await bench([
      'perplexity',
      '--device',
      'cpu',
      '--length',
      '1k',
      '--windows',
      '1',
      '--kv-quant',
      'none,int8,int4',
      '--out',
      file,
    ]);
    expect(result.code).toBe(0);
    const rows = JSON.parse(readFileSync(file, 'utf8')).perplexity as {
      kvQuant: string;
      tokens: number;
      perplexity: number;
      changeVsUnquantized?: number;
    }[];
    expect(rows.map((row) => row.kvQuant)).toEqual(['none', 'int8', 'int4']);
    // A progress line per window, with an ETA, on stderr (a log: the first and the last here).
    expect(result.stderr).toMatch(/\[duo-bench\] perplexity \[#+-*\] run 1\/3 full, window 1\/1, .* tok\/s, ETA /);
    expect(result.stderr).toMatch(/run 3\/3 full \+ int4, window 1\/1, .* ETA 0s/);
    expect(rows[0]?.tokens).toBe(1023); // every token after the first of the 1024
    for (const row of rows) expect(row.perplexity).toBeGreaterThan(1);
    expect(rows[0]?.changeVsUnquantized).toBeUndefined();
    expect(Math.abs(rows[1]?.changeVsUnquantized ?? 1)).toBeLessThan(0.01);
    expect(Number.isFinite(rows[2]?.changeVsUnquantized)).toBe(true);
    expect(result.stdout).toMatch(
      /perplexity full \+ int4\s+\d+\.\d+ over \d+ tokens \([+-]\d+\.\d+ % vs unquantized\)/,
    );
    const passkey = join(out, 'passkey-int4.json');
    const quantized = await bench([
      'passkey',
      '--device',
      'cpu',
      '--lengths',
      '512',
      '--depths',
      '2',
      '--trials',
      '2',
      '--kv-quant',
      'int4',
      '--out',
      passkey,
    ]);
    expect(quantized.code).toBe(0);
    expect(JSON.parse(readFileSync(passkey, 'utf8')).settings.kvQuant).toBe('int4');
    expect(quantized.stdout).toContain('passkey @512 (full + int4)');
  });

  (existsSync(join(root, 'models/duo-demo/config.json')) &&
    existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'))
    ? it
    : it.skip)('accs reports ACCS per layer and distance for each policy: JSON, CSV and three figures', async () => {
    const prefix = join(out, 'accs');
    const common = [
      'accs',
      '--device',
      'cpu',
      '--prefix',
      '128',
      '--suffix',
      '32',
      '--samples',
      '3',
      '--resamples',
      '50',
    ];
    const result = await bench([
      ...common,
      '--attention',
      'full,duo,streaming',
      '--pattern',
      'models/duo-demo/pattern',
      '--sparsity',
      '0.5',
      '--sink',
      '4',
      '--recent',
      '16',
      '--out',
      `${prefix}.json`,
      '--csv',
      `${prefix}.csv`,
      '--plots',
      prefix,
    ]);
    expect(result.code).toBe(0);
    const document = JSON.parse(readFileSync(`${prefix}.json`, 'utf8'));
    expect(document.runs.map((run: { label: string }) => run.label)).toEqual(['full', 'duo 50 %', 'streaming']);
    for (const run of document.runs) {
      expect(run.analysis.layers).toHaveLength(7); // embeddings + 6 layers
      expect(run.analysis.layers[0].selfSimilarity.value).toBeCloseTo(1, 6);
      expect(run.analysis.perDocument).toHaveLength(3);
    }
    expect(document.settings).toMatchObject({ prefix: 128, suffix: 32, perturbation: 'shuffle', samples: 3 });
    const csv = readFileSync(`${prefix}.csv`, 'utf8').trim().split('\n');
    expect(csv[0]).toContain('run,kind,layer,from,to,pairs,selfSim');
    expect(csv.filter((line) => line.includes('",layer,'))).toHaveLength(3 * 7);
    for (const [figure, title] of [
      ['layers', 'Anisotropy'],
      ['distance', 'ACCS by distance from the prefix'],
      ['compressibility', 'KL to the unigram prior'],
    ]) {
      expect(readFileSync(`${prefix}-${figure}.svg`, 'utf8')).toContain(title);
    }
    // Synthetic data: one run per noise rate, and noise makes the prefixes less compressible.
    const synthetic = await bench([
      ...common,
      '--attention',
      'full',
      '--data',
      'synthetic',
      '--period',
      '16',
      '--noise',
      '0,1',
      '--out',
      `${prefix}-synthetic.json`,
    ]);
    expect(synthetic.code).toBe(0);
    const runs = JSON.parse(readFileSync(`${prefix}-synthetic.json`, 'utf8')).runs as {
      noise: number;
      analysis: { perDocument: { compressibility: { tokens: number } }[] };
    }[];
    expect(runs.map((run) => run.noise)).toEqual([0, 1]);
    const ratio = (run: (typeof runs)[number]) => run.analysis.perDocument[0]?.compressibility.tokens ?? 0;
    expect(ratio(runs[0] as never)).toBeLessThan(ratio(runs[1] as never));
    const bad = await bench([...common, '--perturb', 'reverse']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--perturb: expected one of shuffle, random, document, truncate');
    const long = await bench([...common, '--prefix', '20000']);
    expect(long.code).toBe(2);
    expect(long.stderr).toContain(
      "--prefix: 20000 + --gap 0 + --suffix 32 + BOS make 20033 tokens but the model's context holds 16384 tokens",
    );
  });

  it('chart draws two fields of a JSON list with titled axes, as SVG or PNG by the extension', async () => {
    const json = join(out, 'history.json');
    writeFileSync(json, JSON.stringify({ history: [1, 2, 3, 4].map((step) => ({ step, loss: 4 / step })) }));
    const fields = ['chart', '--json', json, '--list', 'history', '--x', 'step', '--y', 'loss'];
    const svg = await bench([...fields, '--out', join(out, 'loss.svg')]);
    expect(svg.code).toBe(0);
    expect(svg.stdout).toContain('4 points, loss from 4 to 1');
    const text = readFileSync(join(out, 'loss.svg'), 'utf8');
    for (const label of ['loss by step (history.json)', '>step<', '>loss<']) expect(text).toContain(label);
    const png = await bench([...fields, '--out', join(out, 'loss.png'), '--title', 'Loss']);
    expect(png.code).toBe(0);
    expect(readFileSync(join(out, 'loss.png')).subarray(1, 4).toString()).toBe('PNG');
    const gif = await bench([...fields, '--out', join(out, 'loss.gif')]);
    expect(gif.code).toBe(2);
    expect(gif.stderr).toContain('--out: expected a figure file ending in .svg or .png but received');
    // A benchmark's rows: one panel per shape, one line per variant, some rows left out.
    const rows = ['q/k/v', 'down'].flatMap((shape) =>
      ['skinny', 'cublas', 'gemv'].flatMap((variant) =>
        [1, 4, 16].map((n) => ({ shape, variant, rows: n, us: n + variant.length })),
      ),
    );
    writeFileSync(json, JSON.stringify({ rows }));
    const grouped = [
      ...['chart', '--json', json, '--list', 'rows', '--x', 'rows', '--y', 'us', '--series', 'variant'],
      ...['--panel', 'shape', '--log-x', '--out', join(out, 'rows.svg')],
    ];
    const panels = await bench(grouped);
    expect(panels.code, panels.stderr).toBe(0);
    expect(panels.stdout).toContain('18 points, us from 7 to 22 (the first line; 2 panel(s), 6 lines)');
    const figure = readFileSync(join(out, 'rows.svg'), 'utf8');
    for (const label of ['>q/k/v<', '>down<', '>skinny<', '>cublas<', '>variant<']) expect(figure).toContain(label);
    const some = await bench([
      ...grouped.slice(0, -2),
      '--where',
      'variant=cublas|gemv',
      '--out',
      join(out, 'some.svg'),
    ]);
    expect(some.code, some.stderr).toBe(0);
    expect(some.stdout).toContain('12 points, us from 7 to 22 (the first line; 2 panel(s), 4 lines)');
    const none = await bench([...grouped.slice(0, -2), '--where', 'variant=tpu', '--out', join(out, 'none.svg')]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('--where: no entry of "rows" matches variant=tpu');
    const malformed = await bench([...grouped.slice(0, -2), '--where', 'variant', '--out', join(out, 'none.svg')]);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toContain(
      '--where: expected FIELD=VALUE pairs separated by commas but received "variant"',
    );
  });

  it('batch on the demo model: step time and tokens/s per batch size, with and without running ahead', async () => {
    for (const runAhead of ['on', 'off']) {
      const file = join(out, `batch-${runAhead}.json`);
      const result = await bench([
        'batch',
        '--device',
        'cpu',
        '--attention',
        'duo',
        '--batch',
        '1,3',
        '--contexts',
        '64',
        '--steps',
        '3',
        '--warmup',
        '1',
        '--run-ahead',
        runAhead,
        '--out',
        file,
      ]);
      expect(result.code, result.stderr).toBe(0);
      const document = JSON.parse(readFileSync(file, 'utf8'));
      expect(document.settings.runAhead).toBe(runAhead === 'on');
      const rows = document.decode as { batch: number; stepMs: number; tokensPerSecond: number }[];
      expect(rows.map((row) => row.batch)).toEqual([1, 3]);
      for (const row of rows) {
        expect(row.stepMs).toBeGreaterThan(0);
        expect(row.tokensPerSecond).toBeCloseTo((row.batch * 1000) / row.stepMs, 6);
      }
    }
    const bad = await bench(['batch', '--device', 'cpu', '--run-ahead', 'maybe']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--run-ahead: expected one of on, off but received "maybe"');
    // A pool too small for the batch: the row says so instead of running.
    const small = join(out, 'batch-small.json');
    const tight = await bench([
      ...['batch', '--device', 'cpu', '--attention', 'duo', '--batch', '1,3', '--contexts', '64'],
      ...['--steps', '2', '--warmup', '1', '--kv-budget', '0.004', '--out', small],
    ]);
    expect(tight.code, tight.stderr).toBe(0);
    const tightRows = JSON.parse(readFileSync(small, 'utf8')).decode as {
      batch: number;
      stepMs?: number;
      error?: string;
    }[];
    expect(tightRows[0]?.stepMs).toBeGreaterThan(0);
    expect(tightRows[1]?.error).toMatch(
      /^does not fit: 3 sequences need [\d.]+ GB of KV, the pool holds 0\.00[1-9]\d* GB$/,
    );
    const budget = await bench(['batch', '--device', 'cpu', '--kv-budget', 'lots']);
    expect(budget.code).toBe(2);
    expect(budget.stderr).toContain('--kv-budget');
  });

  it('attention times causal prefill attention, full and with streaming heads, and checks its options', async () => {
    const file = join(out, 'attention.json');
    const figure = join(out, 'attention.svg');
    const shape = ['--heads', '4', '--kv-heads', '2', '--head-dim', '64', '--sink', '16', '--recent', '32'];
    const result = await bench([
      ...['attention', '--device', 'cpu', '--lengths', '128,512', '--streaming', '0,0.5', '--repeats', '2'],
      ...[...shape, '--peer', 'none', '--out', file, '--plot', figure],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    const rows = document.attention as {
      length: number;
      streaming: number;
      ms: number;
      visibleShare: number;
      tileShare: number;
    }[];
    expect(rows.map((row) => [row.length, row.streaming])).toEqual([
      [128, 0],
      [128, 0.5],
      [512, 0],
      [512, 0.5],
    ]);
    for (const row of rows) expect(row.ms).toBeGreaterThan(0);
    // Half the heads stream over 16 sinks + 32 recent keys: their share of the causal pairs shrinks with the length.
    expect(rows[0]?.visibleShare).toBe(1);
    expect(rows[1]?.visibleShare).toBeLessThan(1);
    expect(rows[3]?.visibleShare).toBeLessThan(rows[1]?.visibleShare as number);
    // Streaming rows: the tiles the heads skip against full attention, and the time they save.
    expect(rows[0]?.tileShare).toBe(1);
    expect(rows[3]?.tileShare).toBeLessThan(1);
    expect(rows[0]).not.toHaveProperty('saving');
    expect(typeof (rows[3] as { saving?: number }).saving).toBe('number');
    expect(document.settings.peer).toBe('none');
    expect(readFileSync(figure, 'utf8')).toContain('Prefill attention, one call');
    // --from redraws the record (a GPU run writes JSON; the figure is drawn where the fonts are).
    const redrawn = join(out, 'attention-again.svg');
    const again = await bench(['attention', '--from', file, '--plot', redrawn]);
    expect(again.code, again.stderr).toBe(0);
    expect(readFileSync(redrawn, 'utf8')).toContain('Prefill attention, one call');
    const missing = await bench(['attention', '--from', join(out, 'nothing.json'), '--plot', redrawn]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--from: cannot read');
    const uneven = await bench(['attention', '--device', 'cpu', '--heads', '6', '--kv-heads', '4']);
    expect(uneven.code).toBe(2);
    expect(uneven.stderr).toContain('--heads: expected a multiple of --kv-heads (4) but received 6');
    const share = await bench(['attention', '--device', 'cpu', '--streaming', '0,2']);
    expect(share.code).toBe(2);
    expect(share.stderr).toContain('--streaming');
  });

  it('attention runs over quantized caches with --kv-quant, each scheme saving against its own full row', async () => {
    const file = join(out, 'attention-quant.json');
    const shape = ['--heads', '4', '--kv-heads', '2', '--head-dim', '64', '--sink', '16', '--recent', '32'];
    const result = await bench([
      ...['attention', '--device', 'cpu', '--lengths', '256', '--streaming', '0,0.5', '--repeats', '1'],
      ...[...shape, '--kv-quant', 'none,int4', '--peer', 'none', '--out', file],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    const rows = document.attention as { kvQuant: string; streaming: number; ms: number; saving?: number }[];
    expect(rows.map((row) => [row.kvQuant, row.streaming])).toEqual([
      ['none', 0],
      ['none', 0.5],
      ['int4', 0],
      ['int4', 0.5],
    ]);
    const [bf16Full, , int4Full, int4Streaming] = rows;
    expect(int4Streaming?.saving).toBeCloseTo(1 - (int4Streaming?.ms as number) / (int4Full?.ms as number), 10);
    expect(int4Full?.ms).not.toBe(bf16Full?.ms);
    expect(document.settings.kvQuant).toEqual(['none', 'int4']);
    expect(result.stdout + result.stderr).toContain('50 % streaming, int4 KV');
    const unknown = await bench(['attention', '--device', 'cpu', '--kv-quant', 'int3']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--kv-quant');
  });

  it('rejects bad input with a message naming the option and exits 2', async () => {
    const unknown = await bench(['speed', '--shape', 'llama-9', '--device', 'cpu']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--shape: expected one of llama-3-8b');
    const attention = await bench(['generate', '--attention', 'foo']);
    expect(attention.code).toBe(2);
    expect(attention.stderr).toContain('--attention: expected one of full, streaming, duo but received "foo"');
    const unread = await bench(['generate', '--pattern', 'models/duo-demo/pattern']);
    expect(unread.code).toBe(2);
    expect(unread.stderr).toContain('--pattern: applies to --attention duo but this run uses full');
    const badNumber = await bench(['generate', '--max-tokens', 'many']);
    expect(badNumber.code).toBe(2);
    expect(badNumber.stderr).toContain('--max-tokens: expected an integer in [1,');
    const sparsity = await bench(['plan', '--shape', 'llama-3-8b', '--sparsity', '2']);
    expect(sparsity.code).toBe(2);
    expect(sparsity.stderr).toContain('--sparsity: expected a number in [0, 1] but received "2"');
    const pattern = await bench(['plan', '--shape', 'llama-3-8b', '--attention', 'duo', '--pattern', '/nowhere']);
    expect(pattern.code).toBe(2);
    expect(pattern.stderr).toContain(
      '--pattern: Expected a pattern directory or JSON file but /nowhere does not exist',
    );
    const command = await bench(['fly']);
    expect(command.code).toBe(2);
    expect(command.stderr).toContain('unknown command "fly"');
  });

  (existsSync(stories) ? it : it.skip)(
    'speed on a real model writes JSON with the floor of each decode figure',
    async () => {
      const file = join(out, 'stories.json');
      const result = await bench([
        'speed',
        '--model',
        stories,
        '--device',
        'cpu',
        '--prefill',
        '64',
        '--contexts',
        '128',
        '--steps',
        '4',
        '--warmup',
        '2',
        '--out',
        file,
      ]);
      expect(result.code).toBe(0);
      const document = JSON.parse(readFileSync(file, 'utf8'));
      expect(document.card).toContain('threads');
      expect(typeof document.commit).toBe('string');
      expect(document.prefill.tokens).toBe(64);
      expect(document.decode[0].context).toBe(128);
      expect(document.decode[0].msPerToken).toBeGreaterThan(0);
      expect(document.decode[0].floorMs).toBeGreaterThan(0);
    },
  );

  (existsSync(join(root, 'models/duo-demo/config.json')) ? it : it.skip)(
    'train-gates writes a loadable pattern in both formats, plots and a checkpoint, and resumes to the same gates',
    async () => {
      const data = SMALL_TRAINING;
      const whole = join(out, 'gates-whole');
      const first = await bench([...data, '--steps', '3', '--out', whole]);
      expect(first.code).toBe(0);
      expect(first.stdout).toMatch(/3 magic-number passkeys of 4 digits per sample/);
      expect(first.stderr).toMatch(/step 3\/3 .* loss [\d.e+-]+ distill [\d.e+-]+ gate [\d.]+ \d+ tok\/s ETA 0s/);
      for (const file of [
        'full_attention_heads.tsv',
        'config.json',
        'pattern.json',
        'checkpoint.json',
        'history.json',
        'training.svg',
        'gates.png',
      ]) {
        expect(existsSync(join(whole, file))).toBe(true);
      }
      const pattern = loadPattern(whole);
      expect(pattern.gates.length).toBe(6);
      expect(pattern.gates.every((row) => row.length === 2)).toBe(true);
      expect(pattern.sink).toBe(16);
      const provenance = JSON.parse(readFileSync(join(whole, 'pattern.json'), 'utf8')).provenance;
      expect(provenance.modelHash).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(provenance.steps).toBe(3);
      // Two steps, then --resume to three: the same gates as the uninterrupted run.
      const split = join(out, 'gates-split');
      const stopped = await bench([...data, '--steps', '3', '--out', split, '--stop-after', '2']);
      expect(stopped.code).toBe(0);
      expect(stopped.stdout).toMatch(/stopped after 2\/3 steps/);
      const resumed = await bench([...data, '--steps', '3', '--out', split, '--resume']);
      expect(resumed.code).toBe(0);
      expect(resumed.stderr).not.toMatch(/step [12]\/3/); // only the third step ran
      expect(resumed.stderr).toMatch(/step 3\/3/);
      expect(readFileSync(join(split, 'full_attention_heads.tsv'), 'utf8')).toBe(
        readFileSync(join(whole, 'full_attention_heads.tsv'), 'utf8'),
      );
      const usage = await bench(['train-gates', '--format', 'nato']);
      expect(usage.code).toBe(2);
      expect(usage.stderr).toMatch(/--format: expected one of reference, magic-number but received "nato"/);
    },
  );
});

const demo = existsSync(join(root, 'models/duo-demo/config.json'));
const book = existsSync(resolve(root, '..', 'shared', 'data', 'gutenberg', '1342.txt'));
/** A run refused up front would end in seconds; one that got past its checks runs for minutes and is killed. */
const REFUSED_WITHIN = 60_000;

/** Exit status 2, a message naming the problem, and no stack trace. */
function expectRefused(result: { code: number; stderr: string }, ...parts: string[]): void {
  expect(result.stderr).not.toMatch(/^ {4}at /m);
  expect(result.code).toBe(2);
  for (const part of parts) expect(result.stderr).toContain(part);
}

/** Starts the CLI; `waitFor` resolves once stderr matches; `exit` resolves with the status and the output. */
function startBench(args: string[]) {
  const child = spawn(process.execPath, [cli, ...args], { cwd: root });
  let stdout = '';
  let stderr = '';
  const watchers: { pattern: RegExp; resolve: () => void }[] = [];
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
  });
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    for (const watcher of watchers.filter((w) => w.pattern.test(stderr))) {
      watchers.splice(watchers.indexOf(watcher), 1);
      watcher.resolve();
    }
  });
  const exit = new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  const waitFor = (pattern: RegExp) =>
    new Promise<void>((resolve) => {
      if (pattern.test(stderr)) resolve();
      else watchers.push({ pattern, resolve });
    });
  return { child, exit, waitFor };
}

describe('duo-bench refuses bad input with exit status 2 and a message, never a stack trace', () => {
  it('plan --attention foo', async () => {
    expectRefused(
      await bench(['plan', '--attention', 'foo']),
      '--attention: expected one of full, streaming, duo but received "foo"',
    );
  });

  it('--haystack or --text: a directory without text files, an empty directory, an empty file', async () => {
    const empty = join(out, 'empty-directory');
    const noText = join(out, 'no-text');
    mkdirSync(empty, { recursive: true });
    mkdirSync(noText, { recursive: true });
    writeFileSync(join(noText, 'notes.md'), 'not a .txt file');
    writeFileSync(join(out, 'empty.txt'), '');
    const retrieval = ['--device', 'cpu', '--lengths', '512', '--trials', '1', '--depths', '1'];
    expectRefused(await bench(['passkey', ...retrieval, '--haystack', empty]), `--haystack: "${empty}" holds no .txt`);
    expectRefused(await bench(['niah', ...retrieval, '--haystack', noText]), `--haystack: "${noText}" holds no .txt`);
    expectRefused(
      await bench(['perplexity', '--device', 'cpu', '--length', '512', '--text', join(out, 'empty.txt')]),
      `--text: "${join(out, 'empty.txt')}" is empty`,
    );
    expectRefused(
      await bench([
        'train-gates',
        '--device',
        'cpu',
        '--steps',
        '1',
        '--ctx-min',
        '500',
        '--ctx-max',
        '600',
        '--haystack',
        empty,
      ]),
      `--haystack: "${empty}" holds no .txt`,
    );
  });

  it('--out into a path that cannot be created, before any work', async () => {
    const file = join(out, 'a-file');
    writeFileSync(file, 'a regular file');
    expectRefused(
      await bench(['plan', '--shape', 'llama-3-8b', '--out', join(file, 'sub', 'plan.json')]),
      `--out: cannot write "${join(file, 'sub', 'plan.json')}"`,
      'not a directory',
    );
    // Refused before the model loads and the run starts.
    expectRefused(
      await bench(
        ['passkey', '--device', 'cpu', '--lengths', '512', '--out', join(file, 'passkey.json')],
        REFUSED_WITHIN,
      ),
      `--out: cannot write "${join(file, 'passkey.json')}"`,
    );
    expectRefused(
      await bench(['train-gates', '--device', 'cpu', '--haystack', demoHaystack, '--out', join(file, 'gates')]),
      `--out: cannot write "${join(file, 'gates')}"`,
    );
  });

  (demo ? it : it.skip)('generate: --max-tokens 99999999999, and a prompt longer than the context', async () => {
    const huge = await bench(['generate', '--device', 'cpu', '--max-tokens', '99999999999']);
    expectRefused(huge, '--max-tokens: the prompt', '99999999999', 'context holds 16384 tokens');
    expect(huge.stdout).toBe(''); // no output before the refusal
    const long = await bench([
      'generate',
      '--device',
      'cpu',
      '--model',
      'models/duo-demo',
      '--prompt',
      'a'.repeat(20_000),
    ]);
    expectRefused(long, '--prompt: the prompt is 20001 tokens', 'context holds 16384 tokens');
    expect(long.stdout).toBe('');
  });

  (demo && book ? it : it.skip)('perplexity --length 20k, passkey --lengths 32k, niah --lengths 2k,20k', async () => {
    const perplexity = await bench(
      ['perplexity', '--device', 'cpu', '--length', '20k', '--windows', '1'],
      REFUSED_WITHIN,
    );
    expectRefused(perplexity, '--length: 20480', 'context holds 16384 tokens');
    const passkey = await bench(['passkey', '--device', 'cpu', '--lengths', '32k', '--trials', '1'], REFUSED_WITHIN);
    expectRefused(passkey, '--lengths: 32768', 'context holds 16384 tokens');
    const niah = await bench(['niah', '--device', 'cpu', '--lengths', '2k,20k', '--trials', '1'], REFUSED_WITHIN);
    expectRefused(niah, '--lengths: 20480', 'context holds 16384 tokens');
    expect(niah.stdout).toBe(''); // not even the 2k row ran
  });

  (demo ? it : it.skip)('train-gates --ctx-max beyond the context', async () => {
    const args = ['train-gates', '--device', 'cpu', '--haystack', demoHaystack, '--steps', '1'];
    const result = await bench(
      [...args, '--ctx-min', '500', '--ctx-max', '20000', '--out', join(out, 'too-long')],
      REFUSED_WITHIN,
    );
    expectRefused(result, '--ctx-max: 20000', 'context holds 16384 tokens');
  });
});

describe('duo-bench on Ctrl-C (SIGINT)', () => {
  const data = [...SMALL_TRAINING, '--steps', '6'];

  (demo ? it : it.skip)(
    'train-gates saves its checkpoint and exits 130; --resume ends with the gates of an uninterrupted run',
    async () => {
      const whole = join(out, 'sigint-whole');
      expect((await bench([...data, '--out', whole])).code).toBe(0);
      const split = join(out, 'sigint-split');
      const run = startBench([...data, '--out', split]);
      await run.waitFor(/step 1\/6/);
      run.child.kill('SIGINT');
      const stopped = await run.exit;
      expect(stopped.stderr).not.toMatch(/^ {4}at /m);
      expect(stopped.code).toBe(130);
      expect(stopped.stdout).toMatch(/stopped after [1-5]\/6 steps/);
      expect(existsSync(join(split, 'checkpoint.json'))).toBe(true);
      const resumed = await bench([...data, '--out', split, '--resume']);
      expect(resumed.code).toBe(0);
      expect(resumed.stderr).not.toMatch(/step 1\/6/); // the steps before the interruption did not run again
      expect(resumed.stderr).toMatch(/step 6\/6/);
      expect(readFileSync(join(split, 'full_attention_heads.tsv'), 'utf8')).toBe(
        readFileSync(join(whole, 'full_attention_heads.tsv'), 'utf8'),
      );
      // A corrupt checkpoint, or one made with other settings, is bad input: exit 2.
      expectRefused(await bench([...data, '--out', split, '--resume', '--lr', '0.01']), 'was made with other settings');
      writeFileSync(join(split, 'checkpoint.json'), '{"format": "duoattn-gate-checkpoint", "vers');
      expectRefused(await bench([...data, '--out', split, '--resume']), 'Could not read the checkpoint');
      writeFileSync(join(split, 'checkpoint.json'), 'null');
      expectRefused(await bench([...data, '--out', split, '--resume']), 'Expected a duoattn gate checkpoint');
    },
  );

  (demo && book ? it : it.skip)(
    'passkey shows a progress line per trial with an ETA, stops at the next trial and exits 130',
    async () => {
      const file = join(out, 'interrupted.json');
      const run = startBench(['passkey', '--device', 'cpu', '--lengths', '1k', '--trials', '50', '--out', file]);
      await run.waitFor(/passkey .*trial 1\/50.*ETA/);
      run.child.kill('SIGINT');
      const stopped = await run.exit;
      expect(stopped.stderr).not.toMatch(/^ {4}at /m);
      expect(stopped.code).toBe(130);
      expect(stopped.stderr).toMatch(/duo-bench passkey: interrupted .*trial \d+\/50/);
      expect(stopped.stderr).not.toMatch(/trial 50\/50/);
      expect(existsSync(file)).toBe(false);
    },
  );
});
