// duo-bench plan: memory of a model under full, duo and streaming attention, and the longest context that fits.
import {
  attentionPolicies,
  buildPolicy,
  choiceOption,
  duoPlanFor,
  integerOption,
  namedShape,
  numberOption,
  outputOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
  UsageError,
  writeResult,
} from '@duoattn/app-kit';
import { type DType, WEIGHT_QUANT_CHOICES, weightQuantFormat } from '@duoattn/core';
import { maxContext, planMemory, policyPlan } from '@duoattn/dual-cache';
import { openCheckpoint } from '@duoattn/model';
import { defaultModelPath } from '../default-model.js';
import { SHAPES } from '../shapes.js';

export const planHelp = `duo-bench plan [--shape NAME | --model PATH] [--kv-dtype bf16|f16|f32] [--kv-quant none|int8|int4|fp8]
               [--weight-dtype bf16|f16|f32] [--weight-quant none|int8|int4|q8_0|q4_k|q5_k|q6_k] [--gpu-memory GB]
               [--reserve GB] [--page KiB] [--tokens N] [--pattern DIR|FILE]
               [--sparsity S] [--attention full,duo,streaming] [--out FILE]
  Exact bytes of weights, full and streaming cache regions and scratch for each policy (default all three), the
  bytes each token adds, and the longest context that fits --gpu-memory (default 80 GB, less --reserve, default 1.5 GB,
  for the backend's scratch). --page: the full regions map whole pages of this many KiB, each plane its own (default
  2048, the CUDA backend's on Hopper; 0 counts bytes exactly), so the context stops at the pages' boundaries as on the
  device. --kv-quant stores the cache as codes with fp16 scales (int8, fp8: head dim + 2 bytes per
  token and head; int4: head dim / 2 + 4 per group of 128 channels). --weight-quant counts every matrix in a GGUF
  block format, as a model kept quantized takes it (int8 = Q8_0, 34 bytes per 32 values; int4 = Q4_K, 144 per 256;
  Q5_K 176, Q6_K 210; rows a format cannot split fall back to Q8_0, else f16; --weight-dtype then only names the
  activations' source; docs/decisions/0010-weight-quantization.md). Shapes: ${Object.keys(SHAPES).join(', ')}; default --model is the demo model.
${POLICY_HELP}`;

const GB = 1e9;

export async function planCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    ...POLICY_OPTIONS,
    shape: { type: 'string' },
    model: { type: 'string' },
    'kv-dtype': { type: 'string' },
    'weight-dtype': { type: 'string' },
    'weight-quant': { type: 'string' },
    'gpu-memory': { type: 'string' },
    reserve: { type: 'string' },
    page: { type: 'string' },
    tokens: { type: 'string' },
    out: { type: 'string' },
  });
  outputOption('out', options.out);
  const dtypes = ['bf16', 'f16', 'f32'] as const;
  const kvDtype: DType = choiceOption('kv-dtype', options['kv-dtype'], dtypes, 'bf16');
  const weightDtype: DType = choiceOption('weight-dtype', options['weight-dtype'], dtypes, 'bf16');
  const weightChoice = choiceOption('weight-quant', options['weight-quant'], WEIGHT_QUANT_CHOICES, 'none');
  const weightQuant = weightQuantFormat(weightChoice);
  const budget = numberOption('gpu-memory', options['gpu-memory'], 80, 0.001) * GB;
  const pageBytes = Math.max(1, integerOption('page', options.page, 2048, 0, 1 << 20) * 1024);
  const reserve = numberOption('reserve', options.reserve, 1.5, 0) * GB;
  const policies = attentionPolicies(options.attention, ['full', 'duo', 'streaming'], true);
  const settings = policySettings(options, policies);
  const { kvQuant } = settings;
  let config: ReturnType<typeof namedShape>;
  let label: string;
  if (options.shape !== undefined) {
    config = namedShape(String(options.shape));
    label = String(options.shape);
  } else {
    label = (options.model as string | undefined) ?? defaultModelPath();
    try {
      config = (await openCheckpoint(label)).config;
    } catch (error) {
      throw new UsageError(
        `--model: ${(error as Error).message}`,
        { option: 'model', received: label },
        { cause: error },
      );
    }
  }
  const tokens = integerOption('tokens', options.tokens, Math.min(config.maxPositionEmbeddings, 131072), 1);
  const duo = duoPlanFor(policies, settings, config);
  const plans = Object.fromEntries(
    policies.map((policy) => [policy, policyPlan(config, buildPolicy(policy, settings, config, duo))]),
  );
  const rows = Object.entries(plans).map(([policy, plan]) => {
    const input = {
      config,
      plan,
      weightDtype,
      ...(weightQuant ? { weightQuant } : {}),
      kvDtype,
      kvQuant,
      prefillChunk: settings.prefillChunk,
      pageBytes,
    };
    const memory = planMemory({ ...input, tokens });
    const longest = maxContext(input, budget, reserve);
    return { policy, sparsity: plan.sparsity, sink: plan.sink, recent: plan.recent, memory, maxContext: longest };
  });
  const cacheLabel = kvQuant === 'none' ? kvDtype : `${kvQuant} codes with fp16 scales`;
  const weightLabel = weightQuant
    ? `${weightQuant}${weightChoice === weightQuant ? '' : ` for ${weightChoice}`}`
    : weightDtype;
  log(`${label}: weights ${(rows[0]?.memory.weights ?? 0) / GB} GB (${weightLabel}), KV cache ${cacheLabel}`);
  log(
    'policy     sparsity  KiB/token  streaming GB  total @%s GB  max context in %s GB (%s)'
      .replace('%s', String(tokens))
      .replace('%s', String(budget / GB))
      .replace('%s', pageBytes > 1 ? `${pageBytes / 1024} KiB pages` : 'exact bytes'),
  );
  for (const row of rows) {
    const max = Number.isFinite(row.maxContext) ? String(row.maxContext) : 'unbounded';
    log(
      `${row.policy.padEnd(10)} ${row.sparsity.toFixed(3).padStart(8)}  ${(row.memory.bytesPerToken / 1024).toFixed(1).padStart(9)}  ${(row.memory.streamingRegion / GB).toFixed(3).padStart(12)}  ${(row.memory.total / GB).toFixed(2).padStart(14)}  ${max.padStart(20)}`,
    );
  }
  const document = {
    model: label,
    weightDtype,
    weightQuant: weightQuant ?? 'none',
    kvDtype,
    kvQuant,
    tokens,
    budgetBytes: budget,
    reserveBytes: reserve,
    pageBytes,
    policies: rows,
  };
  return options.out
    ? writeResult(String(options.out), 'planner (no device)', { ...settings, ...document }, {})
    : document;
}
