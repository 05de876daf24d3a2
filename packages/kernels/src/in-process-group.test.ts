// The in-process communicator: collectives across 2, 3 and 4 ranks give every rank the same, rank-ordered result, and
// a rank whose call does not match the others' fails every rank's call instead of leaving them waiting.
import { DuoArgumentError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { createInProcessGroup } from './in-process-group.js';
import { resolveBackend } from './resolve-backend.js';

const backend = resolveBackend('cpu');
const rowsOf = (rank: number, rows: number, width: number) =>
  Float32Array.from({ length: rows * width }, (_, i) => rank * 1000 + i + 0.25);

describe('in-process communicator', () => {
  it.each([2, 3, 4])('allGather across %i ranks concatenates the inputs in rank order on every rank', async (size) => {
    const group = createInProcessGroup(Array.from({ length: size }, () => backend));
    const inputs = group.map((rank) => backend.upload('f32', [2, 3], rowsOf(rank.rank, 2, 3)));
    const outputs = group.map(() => backend.alloc('f32', [2 * size, 3]));
    // Ranks arrive in reverse order: the result must not depend on it.
    await Promise.all([...group].reverse().map((rank) => rank.allGather(inputs[rank.rank]!, outputs[rank.rank]!)));
    const expected = Array.from({ length: size }, (_, r) => [...rowsOf(r, 2, 3)]).flat();
    for (const output of outputs) expect([...((await backend.read(output)) as Float32Array)]).toEqual(expected);
    for (const tensor of [...inputs, ...outputs]) tensor.dispose();
  });

  it('gathers 16-bit tensors and successive collectives in call order', async () => {
    const group = createInProcessGroup([backend, backend, backend]);
    const halves = group.map((rank) =>
      backend.upload(
        'f16',
        [1, 4],
        Uint16Array.from([1, 2, 3, 4], (v) => v + 10 * rank.rank),
      ),
    );
    const firstOut = group.map(() => backend.alloc('f16', [3, 4]));
    const singles = group.map((rank) => backend.upload('f32', [1], Float32Array.of(rank.rank)));
    const secondOut = group.map(() => backend.alloc('f32', [3]));
    await Promise.all(
      group.map(async (rank) => {
        await rank.allGather(halves[rank.rank]!, firstOut[rank.rank]!);
        await rank.allGather(singles[rank.rank]!, secondOut[rank.rank]!);
      }),
    );
    expect([...((await backend.read(firstOut[2]!)) as Uint16Array)]).toEqual([
      1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24,
    ]);
    expect([...((await backend.read(secondOut[0]!)) as Float32Array)]).toEqual([0, 1, 2]);
    for (const tensor of [...halves, ...firstOut, ...singles, ...secondOut]) tensor.dispose();
  });

  it('broadcast copies the root rank’s tensor to every rank', async () => {
    const group = createInProcessGroup([backend, backend, backend]);
    const tensors = group.map((rank) => backend.upload('f32', [2, 2], rowsOf(rank.rank, 2, 2)));
    await Promise.all(group.map((rank) => rank.broadcast(tensors[rank.rank]!, 1)));
    for (const tensor of tensors)
      expect([...((await backend.read(tensor)) as Float32Array)]).toEqual([...rowsOf(1, 2, 2)]);
    for (const tensor of tensors) tensor.dispose();
  });

  it.each([2, 3, 4])(
    'allReduceSum across %i ranks leaves the same f32 sums, in rank order, on every rank',
    async (size) => {
      const group = createInProcessGroup(Array.from({ length: size }, () => backend));
      // Values whose sum depends on the order: rank r adds 1e8 · (−1)^r and a small part, so only rank order is exact.
      const values = (rank: number) =>
        Float32Array.from({ length: 6 }, (_, i) => (rank % 2 ? -1e8 : 1e8) + rank + i / 8);
      const tensors = group.map((rank) => backend.upload('f32', [2, 3], values(rank.rank)));
      await Promise.all([...group].reverse().map((rank) => rank.allReduceSum(tensors[rank.rank]!)));
      const expected = values(0).map((_, i) => {
        let sum = values(0)[i] as number;
        for (let r = 1; r < size; r++) sum = Math.fround(sum + (values(r)[i] as number));
        return sum;
      });
      for (const tensor of tensors) expect([...((await backend.read(tensor)) as Float32Array)]).toEqual([...expected]);
      const half = backend.alloc('f16', [2]);
      const other = backend.alloc('f32', [2]);
      const [first, second] = createInProcessGroup([backend, backend]);
      const calls = [first!.allReduceSum(half), second!.allReduceSum(other)];
      await expect(calls[0]).rejects.toThrow('rank 0: allReduceSum');
      await expect(calls[1]).rejects.toThrow(DuoArgumentError);
      for (const tensor of [...tensors, half, other]) tensor.dispose();
    },
  );

  it('fails every rank’s call, naming each rank’s part, when the ranks call different collectives', async () => {
    const group = createInProcessGroup([backend, backend]);
    const input = group.map(() => backend.upload('f32', [1, 2], Float32Array.of(1, 2)));
    const output = backend.alloc('f32', [2, 2]);
    const calls = [group[0]!.allGather(input[0]!, output), group[1]!.broadcast(input[1]!, 0)];
    const results = await Promise.allSettled(calls);
    for (const result of results) {
      expect(result.status).toBe('rejected');
      const error = (result as PromiseRejectedResult).reason;
      expect(DuoArgumentError.isInstance(error)).toBe(true);
      expect(error.message).toContain('rank 0: allGather f32 [1, 2] → f32 [2, 2]');
      expect(error.message).toContain('rank 1: broadcast f32 [1, 2] from rank 0');
    }
    for (const tensor of [...input, output]) tensor.dispose();
  });

  it('fails every rank’s call when one rank’s output has the wrong shape, saying what it must be', async () => {
    const group = createInProcessGroup([backend, backend, backend]);
    const inputs = group.map(() => backend.upload('f32', [2, 4], new Float32Array(8)));
    const outputs = [backend.alloc('f32', [6, 4]), backend.alloc('f32', [4, 4]), backend.alloc('f32', [6, 4])];
    const results = await Promise.allSettled(
      group.map((rank) => rank.allGather(inputs[rank.rank]!, outputs[rank.rank]!)),
    );
    for (const result of results) {
      expect(result.status).toBe('rejected');
      expect((result as PromiseRejectedResult).reason.message).toContain(
        'rank 1: allGather f32 [2, 4] → f32 [4, 4] (`output` must be f32 [6, 4] (3 ranks × [2, 4]) but is f32 [4, 4])',
      );
    }
    // The group is still usable: the failed collective was settled for every rank.
    const fixed = backend.alloc('f32', [6, 4]);
    await Promise.all(
      group.map((rank) => rank.allGather(inputs[rank.rank]!, rank.rank === 1 ? fixed : outputs[rank.rank]!)),
    );
    for (const tensor of [...inputs, ...outputs, fixed]) tensor.dispose();
  });

  it('refuses a root outside the group and an empty group', async () => {
    const group = createInProcessGroup([backend, backend]);
    const tensors = group.map(() => backend.upload('f32', [1], Float32Array.of(0)));
    const results = await Promise.allSettled(group.map((rank) => rank.broadcast(tensors[rank.rank]!, 2)));
    for (const result of results) {
      expect((result as PromiseRejectedResult).reason.message).toContain(
        '`root` must be an integer in [0, 1] but is 2',
      );
    }
    expect(() => createInProcessGroup([])).toThrow(/Expected one backend per rank/);
    for (const tensor of tensors) tensor.dispose();
  });
});
