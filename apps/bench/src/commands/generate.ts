// duo-bench generate: streams a continuation and ends with prefill and decode tokens per second.
import type { GenerationStats } from '@duoattn/model';
import { integerOption, numberOption, parseOptions } from '../args.js';
import { loadModel, MODEL_OPTIONS, modelChoices } from '../model-options.js';

export const generateHelp = `duo-bench generate [--model PATH] [--prompt TEXT] [--max-tokens N] [--device auto|cpu|cuda]
                   [--temperature T] [--top-k K] [--top-p P] [--seed S] [--weight-dtype auto|f32|f16|bf16]
  Streams text as it is produced, then prints prefill and decode tokens per second.
  --model         HF directory, .gguf or llama2.c .bin (default: the embedded demo model)
  --prompt        default "Once upon a time"
  --max-tokens    default 128
  --temperature   0 (default) is greedy`;

export async function generateCommand(argv: string[], write: (text: string) => void): Promise<void> {
  const options = parseOptions(argv, {
    ...MODEL_OPTIONS,
    prompt: { type: 'string' },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
  });
  modelChoices(options);
  const maxTokens = integerOption('max-tokens', options['max-tokens'], 128, 1);
  const sampling = {
    temperature: numberOption('temperature', options.temperature, 0, 0),
    topK: integerOption('top-k', options['top-k'], 0, 0),
    topP: numberOption('top-p', options['top-p'], 1, Number.MIN_VALUE, 1),
    seed: integerOption('seed', options.seed, 0),
  };
  const prompt = (options.prompt as string | undefined) ?? 'Once upon a time';
  const { model, path } = await loadModel(options);
  try {
    process.stderr.write(`[duo-bench] ${path} on ${model.backend.device} (${model.backend.deviceName})\n`);
    write(prompt);
    let stats: GenerationStats | undefined;
    const generation = model.generate(prompt, { maxTokens, sampling });
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
