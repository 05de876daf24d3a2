// The NCCL communicator's arguments, checked before NCCL or a GPU is touched, and its refusal on the CPU backend (CPU
// ranks meet in the in-process group). nccl-communicator.cuda.test.ts runs a one-rank group on a GPU.
import { DuoArgumentError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { ncclUniqueId, openNcclCommunicator } from './nccl-communicator.js';
import { createBackend } from './resolve-backend.js';

describe('NCCL communicator (CPU build, arguments)', () => {
  const cpu = createBackend('cpu');
  const id = 'ab'.repeat(128);

  it('refuses the CPU backend by name, pointing at the in-process group', () => {
    expect(() => ncclUniqueId(cpu)).toThrow(DuoArgumentError);
    expect(() => ncclUniqueId(cpu)).toThrow('needs the CUDA backend but received the cpu backend');
    expect(() => openNcclCommunicator(cpu, { uniqueId: id, rank: 0, size: 1 })).toThrow('createInProcessGroup');
  });

  it('names the argument, the value and what was expected', () => {
    expect(() => openNcclCommunicator(cpu, { uniqueId: 'abc', rank: 0, size: 1 })).toThrow(
      'Expected `uniqueId` to be the 256 hex digits of ncclUniqueId but received 3 characters',
    );
    expect(() => openNcclCommunicator(cpu, { uniqueId: `${id.slice(0, 255)}g`, rank: 0, size: 1 })).toThrow(
      '`uniqueId`',
    );
    expect(() => openNcclCommunicator(cpu, { uniqueId: id, rank: 0, size: 0 })).toThrow(
      'Expected `size` to be a positive integer but received 0',
    );
    expect(() => openNcclCommunicator(cpu, { uniqueId: id, rank: 2, size: 2 })).toThrow(
      'Expected `rank` to be an integer in [0, 1] but received 2',
    );
  });

  it('the addon itself refuses communicators on the CPU device (DUO_ARG)', async () => {
    const { loadNative, mapNativeError } = await import('./index.js');
    let caught: unknown;
    try {
      loadNative().communicatorId('cpu', '');
    } catch (error) {
      caught = mapNativeError(error);
    }
    expect(caught).toBeInstanceOf(DuoArgumentError);
    expect((caught as Error).message).toContain('the cpu backend has no NCCL communicators');
  });
});
