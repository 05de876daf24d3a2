// Backend selection: 'auto' logs why CUDA was skipped; an explicit 'cuda' without a GPU throws a typed error.
import { DuoArgumentError, DuoBackendUnavailableError } from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { createBackend, cudaUnavailableReason, resolveBackend } from './resolve-backend.js';

describe('resolveBackend', () => {
  const reason = cudaUnavailableReason();

  it('auto picks CUDA when usable, else the CPU with a logged reason', () => {
    const lines: string[] = [];
    const backend = resolveBackend('auto', { log: (line) => lines.push(line) });
    if (reason === undefined) {
      expect(backend.device).toBe('cuda');
    } else {
      expect(backend.device).toBe('cpu');
      expect(lines[0]).toContain(`skipped cuda: ${reason}`);
      expect(lines[1]).toContain('backend: cpu');
    }
  });

  (reason === undefined ? it.skip : it)(
    'an explicit cuda request without a GPU throws DuoBackendUnavailableError',
    () => {
      expect(() => resolveBackend('cuda')).toThrow(DuoBackendUnavailableError);
      expect(() => resolveBackend('cuda')).toThrow('The cuda backend is unavailable');
    },
  );

  it('rejects unknown devices and returns one backend per device', () => {
    expect(() => createBackend('tpu' as 'cpu')).toThrow(DuoArgumentError);
    expect(createBackend('cpu')).toBe(createBackend('cpu'));
    expect(createBackend('cpu').deviceName.length).toBeGreaterThan(0);
  });

  it('tracks allocated and peak bytes', () => {
    const cpu = createBackend('cpu');
    const before = cpu.memory().allocatedBytes;
    const tensor = cpu.alloc('bf16', [1000, 10]);
    expect(cpu.memory().allocatedBytes - before).toBe(20000);
    expect(cpu.memory().peakBytes).toBeGreaterThan(before + 19999);
    tensor.dispose();
    expect(cpu.memory().allocatedBytes).toBe(before);
    cpu.resetPeakMemory();
    expect(cpu.memory().peakBytes).toBe(before);
    cpu.alloc('f32', [10]).dispose();
    expect(cpu.memory().peakBytes).toBe(before + 40);
  });

  it('takes tuning as options, checked by name before the addon sees it', () => {
    const cpu = resolveBackend('cpu', {
      tuning: { profile: false, chainLaunches: true, gemvPinnedSplits: '6144x4096:4' },
    });
    expect(cpu.device).toBe('cpu');
    expect(() => cpu.tune({ gemvPinnedSplits: '6144x4096' })).toThrow(DuoArgumentError);
    expect(() => cpu.tune({ gemvPinnedSplits: '6144x4096' })).toThrow('`tuning.gemvPinnedSplits` like "6144x4096:4');
    expect(() => cpu.tune({ gemvWaveRule: 3 })).toThrow('`tuning.gemvWaveRule`');
    expect(() => cpu.tune({ decodeMmaBlocks: 4 })).toThrow('`tuning.decodeMmaBlocks`');
    expect(() => cpu.tune({ decodeBatchMerge: 0 })).toThrow('`tuning.decodeBatchMerge`');
    cpu.tune({ decodeMmaBlocks: 2 });
  });
});
