// Launching rank processes: each sees only its GPU with NVLink multicast off, and rank 0's NCCL id reaches every other
// rank through the launcher (the NCCL group itself needs GPUs; its CUDA tests join one).
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { forkRanks } from './rank-launch.js';

const SCRIPT = join(import.meta.dirname, '..', '__fixtures__', 'rank-echo.mjs');

type Report = { type: string; rank: number; gpu?: string | null; nvls?: string; uniqueId?: string };

async function launch(ranks: number, gpus: boolean): Promise<Report[]> {
  const children = forkRanks({ script: SCRIPT, args: (rank) => [String(rank)], ranks, gpus });
  const reports: Report[] = [];
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          child.on('message', (message: Report) => {
            if (message.type !== 'nccl-id') reports.push(message);
          });
          child.once('exit', () => resolve());
        }),
    ),
  );
  return reports;
}

describe('forkRanks', () => {
  it('gives each rank its GPU, NVLink multicast off, and hands rank 0’s NCCL id to the others', async () => {
    const reports = await launch(3, true);
    const environments = reports.filter((report) => report.type === 'env').sort((a, b) => a.rank - b.rank);
    expect(environments.map(({ gpu, nvls }) => [gpu, nvls])).toEqual([
      ['0', '0'],
      ['1', '0'],
      ['2', '0'],
    ]);
    const got = reports.filter((report) => report.type === 'got').sort((a, b) => a.rank - b.rank);
    expect(got.map(({ rank, uniqueId }) => [rank, uniqueId])).toEqual([
      [1, 'ab'.repeat(128)],
      [2, 'ab'.repeat(128)],
    ]);
  }, 30_000);

  it('leaves the devices alone without gpus', async () => {
    const reports = await launch(1, false);
    expect(reports).toEqual([{ type: 'env', rank: 0, gpu: process.env.CUDA_VISIBLE_DEVICES ?? null, nvls: '0' }]);
  }, 30_000);
});
