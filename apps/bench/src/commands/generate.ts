// duo-bench generate: streams a continuation under any attention policy and ends with prefill and decode tokens per
// second.
import {
  attentionPolicies,
  buildPolicy,
  checkContext,
  describePolicy,
  integerOption,
  numberOption,
  POLICY_HELP,
  POLICY_OPTIONS,
  parseOptions,
  policySettings,
} from '@duoattn/app-kit';
import { DEFAULT_MAX_NEW_TOKENS } from '@duoattn/core';
import type { GenerationStats } from '@duoattn/model';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';

export const generateHelp = `duo-bench generate [--model PATH] [--prompt TEXT] [--max-tokens N] [--device auto|cpu|cuda]
                   [--temperature T] [--top-k K] [--top-p P] [--seed S] [--weight-dtype auto|f32|f16|bf16]
                   [--attention full|streaming|duo] [--pattern DIR|FILE] [--invert] [--sparsity S] [--sink N]
                   [--recent N] [--prefill-mask exact|chunked] [--prefill-chunk N] [--kv-quant none|int8|int4|fp8]
  Streams text as it is produced under one attention policy (default full; which one ran is printed on stderr), then
  prints prefill and decode tokens per second.
  --model         HF directory, .gguf or llama2.c .bin (default: the embedded demo model)
  --prompt        default "Once upon a time"
  --max-tokens    default ${DEFAULT_MAX_NEW_TOKENS}; the prompt and these must fit the model's context (checked first)
  --temperature   0 (default) is greedy
${POLICY_HELP}`;

export async function generateCommand(argv: string[], write: (text: string) => void): Promise<void> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    ...POLICY_OPTIONS,
    prompt: { type: 'string' },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
  });
  modelChoices(options);
  const [attention = 'full'] = attentionPolicies(options.attention, ['full']);
  const settings = policySettings(options, [attention]);
  const maxTokens = integerOption('max-tokens', options['max-tokens'], DEFAULT_MAX_NEW_TOKENS, 1);
  const sampling = {
    temperature: numberOption('temperature', options.temperature, 0, 0),
    topK: integerOption('top-k', options['top-k'], 0, 0),
    topP: numberOption('top-p', options['top-p'], 1, Number.MIN_VALUE, 1),
    seed: integerOption('seed', options.seed, 0),
  };
  const prompt = (options.prompt as string | undefined) ?? 'Once upon a time';
  const { model, path } = await loadModel(options);
  try {
    const ids = model.encode(prompt);
    const context = model.config.maxPositionEmbeddings;
    checkContext('prompt', `${prompt.length} characters`, ids.length, context, `the prompt is ${ids.length} tokens`);
    checkContext(
      'max-tokens',
      maxTokens,
      ids.length + maxTokens,
      context,
      `the prompt's ${ids.length} tokens + ${maxTokens} new ones make ${ids.length + maxTokens}`,
      `at most ${context - ids.length} new tokens fit after this prompt`,
    );
    const policy = buildPolicy(attention, settings, model.config);
    process.stderr.write(`[duo-bench] ${path} on ${model.backend.device} (${model.backend.deviceName})\n`);
    process.stderr.write(`[duo-bench] policy: ${describePolicy(policy, model.config, settings)}\n`);
    write(prompt);
    let stats: GenerationStats | undefined;
    const generation = model.generate(ids, { policy, maxTokens, sampling });
    for (;;) {
      const step = await generation.next();
      if (step.done) {
        stats = step.value;
        break;
      }
      write(step.value.text);
    }
    write('\n');
    if (stats) {
      process.stderr.write(
        `[duo-bench] prompt ${stats.promptTokens} tokens: prefill ${stats.prefillTokensPerSecond.toFixed(1)} tok/s; ` +
          `generated ${stats.generatedTokens} tokens: decode ${stats.decodeTokensPerSecond.toFixed(1)} tok/s (${stats.finishReason})\n`,
      );
    }
  } finally {
    model.dispose();
  }
}
