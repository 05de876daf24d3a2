// duo-bench generate: streams a continuation and ends with prefill and decode tokens per second.
import { type GenerationStats, LlamaModel } from '@duoattn/model';
import { choiceOption, integerOption, numberOption, parseOptions } from '../args.js';
import { defaultModelPath } from '../default-model.js';
import { loadingProgress } from '../progress.js';

export const generateHelp = `duo-bench generate [--model PATH] [--prompt TEXT] [--max-tokens N] [--device auto|cpu|cuda]
                   [--temperature T] [--top-k K] [--top-p P] [--seed S] [--weight-dtype auto|f32|f16|bf16]
  Streams text as it is produced, then prints prefill and decode tokens per second.
  --model         HF directory, .gguf or llama2.c .bin (default: the embedded demo model)
  --prompt        default "Once upon a time"
  --max-tokens    default 128
  --temperature   0 (default) is greedy`;

export async function generateCommand(argv: string[], write: (text: string) => void): Promise<void> {
  const options = parseOptions(argv, {
    model: { type: 'string' },
    prompt: { type: 'string' },
    'max-tokens': { type: 'string' },
    device: { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    'weight-dtype': { type: 'string' },
  });
  const device = choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'auto');
  const weightDtype = choiceOption(
    'weight-dtype',
    options['weight-dtype'],
    ['auto', 'f32', 'f16', 'bf16'] as const,
    'auto',
  );
  const maxTokens = integerOption('max-tokens', options['max-tokens'], 128, 1);
  const sampling = {
    temperature: numberOption('temperature', options.temperature, 0, 0),
    topK: integerOption('top-k', options['top-k'], 0, 0),
    topP: numberOption('top-p', options['top-p'], 1, Number.MIN_VALUE, 1),
    seed: integerOption('seed', options.seed, 0),
  };
  const prompt = (options.prompt as string | undefined) ?? 'Once upon a time';
  const path = (options.model as string | undefined) ?? defaultModelPath();
  const model = await LlamaModel.load(path, { device, weightDtype, onProgress: loadingProgress(path) });
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
