// The NCCL communicator on one GPU: a group of one rank (NCCL refuses two ranks on one device, so groups of several run
// on kinds with several GPUs: tools/device/run.sh). Its gather and broadcast move every dtype's bytes on the rank's
// stream, its arguments are checked before NCCL, and a closed one refuses by name. Skips visibly without a usable GPU
// or without NCCL (the loader's message names every path it tried; the GPU machine's run sets DUO_NCCL_PATH).
import { DuoArgumentError, DuoDisposedError, DuoNcclError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { ncclUniqueId, openNcclCommunicator } from './nccl-communicator.js';
import { createBackend, cudaUnavailableReason } from './resolve-backend.js';
import type { Tensor } from './tensor.js';

function ncclUnavailableReason(): string | undefined {
  const reason = cudaUnavailableReason();
  if (reason !== undefined) return reason;
  try {
    ncclUniqueId(createBackend('cuda'));
    return undefined;
  } catch (error) {
    if (DuoNcclError.isInstance(error) && error.code === 'DUO_NCCL_UNAVAILABLE') return error.message;
    throw error;
  }
}

const reason = ncclUnavailableReason();
describe.skipIf(reason !== undefined)(`NCCL communicator, one rank${reason ? ` (skipped: ${reason})` : ''}`, () => {
  it('gathers and broadcasts f32, bf16 and u8 tensors, sums f32; checks shapes; refuses once closed', async () => {
    const cuda = createBackend('cuda');
    const uniqueId = ncclUniqueId(cuda);
    expect(uniqueId).toMatch(/^[0-9a-f]{256}$/);
    expect(ncclUniqueId(cuda)).not.toBe(uniqueId);
    const communicator = openNcclCommunicator(cuda, { uniqueId, rank: 0, size: 1 });
    const made: Tensor[] = [];
    try {
      expect([communicator.rank, communicator.size]).toEqual([0, 1]);
      const f32 = Float32Array.from({ length: 15 }, (_, i) => i * 0.25 - 1);
      const cases = [
        ['f32', f32],
        ['bf16', Uint16Array.from(new Uint32Array(f32.buffer), (bits) => bits >>> 16)],
        ['u8', Uint8Array.from({ length: 15 }, (_, i) => 3 * i + 1)],
      ] as const;
      for (const [dtype, values] of cases) {
        const input = cuda.upload(dtype, [3, 5], values);
        const output = cuda.alloc(dtype, [3, 5]);
        made.push(input, output);
        await communicator.allGather(input, output);
        expect(await cuda.read(output)).toEqual(await cuda.read(input));
        await communicator.broadcast(input, 0);
        expect(await cuda.read(input)).toEqual(await cuda.read(output));
      }
      // A group of one sums to itself; a 16-bit tensor is refused before NCCL.
      const summed = cuda.upload('f32', [3, 5], f32);
      made.push(summed);
      await communicator.allReduceSum(summed);
      expect(await cuda.read(summed)).toEqual(f32);
      expect(() => communicator.allReduceSum(made[2] as Tensor)).toThrow(DuoArgumentError);
      const wrong = cuda.alloc('f32', [4, 5]);
      made.push(wrong);
      expect(() => communicator.allGather(made[0] as Tensor, wrong)).toThrow(DuoArgumentError);
      expect(() => communicator.allGather(made[0] as Tensor, wrong)).toThrow('`output`');
      expect(() => communicator.broadcast(wrong, 1)).toThrow(
        'Expected `root` to be an integer in [0, 0] but received 1',
      );
    } finally {
      communicator.close();
    }
    expect(() => communicator.broadcast(made[0] as Tensor, 0)).toThrow(DuoDisposedError);
    expect(() => communicator.broadcast(made[0] as Tensor, 0)).toThrow('closed');
    for (const tensor of made) tensor.dispose();
  });
});
