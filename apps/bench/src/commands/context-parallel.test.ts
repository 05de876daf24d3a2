// duo-bench context-parallel on the CPU: ranks simulated in one process (--ranks) on the demo model, the JSON and the
// figure; and its usage errors (--gpus, which launches one process per GPU over NCCL, needs CUDA).
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const cli = join(root, 'apps/bench/dist/cli.js');
const out = mkdtempSync(join(tmpdir(), 'duo-bench-cp-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

async function bench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cli, ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('duo-bench context-parallel', () => {
  it('times decode and prefill over 1, 2 and 3 in-process ranks and writes the scaling', async () => {
    const file = join(out, 'cp.json');
    const plot = join(out, 'cp.svg');
    const result = await bench([
      ...['context-parallel', '--ranks', '1,2,3', '--device', 'cpu', '--attention', 'duo', '--sparsity', '0.5'],
      ...['--sink', '8', '--recent', '16', '--context', '200', '--steps', '3', '--warmup', '1', '--prefill', '96'],
      ...['--prefill-chunk', '32', '--chunk', '16', '--out', file, '--plot', plot],
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('context-parallel: 3 ranks');
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.settings.mode).toBe('ranks in one process (in-process group)');
    expect(document.rows.map((row: { ranks: number }) => row.ranks)).toEqual([1, 2, 3]);
    for (const row of document.rows) {
      expect(row.decode.context).toBe(200);
      expect(row.decode.msPerToken).toBeGreaterThan(0);
      expect(row.prefill).toMatchObject({ tokens: 96 });
      expect(row.prefill.seconds).toBeGreaterThan(0);
      expect(row.prefillEfficiency).toBeCloseTo(
        document.rows[0].prefill.seconds / (row.ranks * row.prefill.seconds),
        9,
      );
      expect(row.peakBytes).toBeGreaterThan(0);
    }
    expect(existsSync(plot)).toBe(true);
    const svg = readFileSync(plot, 'utf8');
    expect(svg).toContain('ms per token');
    expect(svg).toContain('T₁ / (R · T_R)');
  });

  it('splits the weights instead (tensor parallelism) over 1 and 2 ranks; refuses 3 for the 2 KV heads', async () => {
    const file = join(out, 'tp.json');
    const args = ['--device', 'cpu', '--attention', 'duo', '--sparsity', '0.5', '--sink', '8', '--recent', '16'];
    const result = await bench([
      ...['context-parallel', '--split', 'weights', '--ranks', '1,2', ...args, '--context', '120', '--steps', '3'],
      ...['--warmup', '1', '--prefill', '64', '--prefill-chunk', '32', '--out', file],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const document = JSON.parse(readFileSync(file, 'utf8'));
    expect(document.settings.split).toContain('tensor parallelism');
    expect(document.rows.map((row: { ranks: number }) => row.ranks)).toEqual([1, 2]);
    for (const row of document.rows) {
      expect(row.decode.msPerToken).toBeGreaterThan(0);
      expect(row.prefill.seconds).toBeGreaterThan(0);
    }
    const three = await bench(['context-parallel', '--split', 'weights', '--ranks', '3', ...args, '--context', '64']);
    expect(three.code).not.toBe(0);
    expect(three.stderr).toContain("the model's `numKvHeads` (2) to divide by the group's 3 ranks");
    const split = await bench(['context-parallel', '--split', 'heads', '--ranks', '2']);
    expect(split.code).toBe(2);
    expect(split.stderr).toContain('--split');
  });

  it('rejects bad input before any work, naming the option', async () => {
    const cpuGpus = await bench(['context-parallel', '--gpus', '2', '--device', 'cpu']);
    expect(cpuGpus.code).toBe(2);
    expect(cpuGpus.stderr).toContain('--gpus runs one process per GPU over NCCL: it needs --device cuda');
    const neither = await bench(['context-parallel', '--device', 'cpu']);
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('expected one of --gpus (processes over NCCL) and --ranks (in this process)');
    const both = await bench(['context-parallel', '--ranks', '2', '--context', '64', '--context-per-rank', '32']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('expected --context or --context-per-rank, not both');
    const zero = await bench(['context-parallel', '--ranks', '0']);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toContain('--ranks');
  });
});
