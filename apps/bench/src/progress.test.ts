// The loading progress line: drawn in place on a terminal, silent otherwise.
import { describe, expect, it } from 'vitest';
import { loadingProgress } from './progress.js';

describe('loadingProgress', () => {
  it('redraws one line on a terminal and ends it when done', () => {
    const written: string[] = [];
    const stream = { isTTY: true, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    const progress = loadingProgress('model', stream);
    progress(1, 4);
    progress(4, 4);
    expect(written[0]).toMatch(/^\r\[duo-bench\] loading model \[#{8}-{22}\] 1\/4 /);
    expect(written[1]).toMatch(/\[#{30}\] 4\/4 /);
    expect(written[2]).toBe('\n');
  });

  it('writes nothing when the stream is not a terminal', () => {
    const written: string[] = [];
    const stream = { isTTY: false, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream;
    loadingProgress('model', stream)(1, 1);
    expect(written).toEqual([]);
  });
});
