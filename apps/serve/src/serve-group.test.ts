// duo-serve over a parallel group (--ranks: the group's ranks in the engine worker, on the CPU, as --gpus runs them one
// process per GPU): completions equal duo-bench generate at temperature 0 for both splits and any policy, requests
// queue behind each other, /v1/stats names the group; and the flags that do not go with a group are refused.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { benchGenerate, post, SERVE_CLI, type ServeProcess, startServe } from './__fixtures__/serve-process.js';

type Completion = { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };

describe.each(['keys', 'weights'] as const)('duo-serve --ranks 2 --split %s', (split) => {
  let serve: ServeProcess;
  beforeAll(async () => {
    serve = await startServe(['--ranks', '2', '--split', split, '--log-level', 'warn']);
  }, 90_000);
  afterAll(async () => {
    await serve?.stop();
  });

  it('says so when ready and in /v1/stats', async () => {
    expect(serve.output()).toMatch(/\(2 ranks, (keys|weights) split\)/);
    const stats = (await (await fetch(`${serve.url}/v1/stats`)).json()) as { settings: { group?: string } };
    expect(stats.settings.group).toBe(`2 in-process ranks, ${split} split`);
  });

  it('completions equal duo-bench generate at temperature 0, queued requests included', async () => {
    const prompts = ['The little dragon found a key', 'Once upon a time, a cat'];
    const policies: [string[], Record<string, unknown>][] = [
      [[], {}],
      [
        ['--attention', 'duo', '--pattern', 'models/duo-demo/pattern', '--sparsity', '0.5', '--kv-quant', 'int8'],
        { attention: 'duo', sparsity: 0.5, kv_quant: 'int8' },
      ],
    ];
    for (const [flags, extra] of policies) {
      const answers = await Promise.all(
        prompts.map((prompt) =>
          post(`${serve.url}/v1/completions`, { model: 'duo-demo', prompt, max_tokens: 16, temperature: 0, ...extra }),
        ),
      );
      for (const [index, prompt] of prompts.entries()) {
        const answer = answers[index] as { status: number; json: unknown };
        expect(answer.status).toBe(200);
        const completion = answer.json as Completion;
        expect(prompt + completion.choices[0]?.text).toBe(benchGenerate(prompt, 16, flags));
        expect(completion.usage.completion_tokens).toBeGreaterThan(0);
      }
    }
  }, 120_000);
});

describe('duo-serve group flags', () => {
  const refuse = (args: string[]) =>
    spawnSync(process.execPath, [SERVE_CLI, '--device', 'cpu', '--port', '0', ...args], { encoding: 'utf8' });

  it.each([
    [['--gpus', '2'], /--gpus: runs one process per GPU over NCCL: it needs CUDA/],
    [['--ranks', '2', '--max-sequences', '4'], /--max-sequences: applies to the batch engine/],
    [['--ranks', '2', '--gpus', '2'], /give one/],
    [['--split', 'weights'], /--split: applies to a parallel group/],
    [['--ranks', '2', '--split', 'heads'], /--split/],
  ])('refuses %j with status 2, naming the option', (args, message) => {
    const run = refuse(args);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stderr).not.toMatch(/\n\s+at /);
  });
});
