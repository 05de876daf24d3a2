// duo-bench gemm: f32 matmul GFLOP/s of a backend next to numpy (OpenBLAS) on the same machine, same shapes.
import { execFileSync } from 'node:child_process';
import {
  choiceOption,
  integerListOption,
  integerOption,
  median,
  outputOption,
  parseOptions,
  writeResult,
} from '@duoattn/app-kit';
import { benchBackend } from '../model-options.js';

export const gemmHelp = `duo-bench gemm [--device cpu|cuda] [--sizes 256,512,1024,2048] [--repeats N] [--out FILE]
  Square f32 x·Wᵀ GFLOP/s on the backend, and numpy's (python3 -c, same sizes) when numpy is installed.`;

const NUMPY = `
import json, sys, time
import numpy as np
sizes, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
out = {"numpy": np.__version__, "blas": None, "gflops": {}}
try:
    cfg = np.show_config(mode="dicts")
    out["blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name")
except Exception:
    pass
rng = np.random.default_rng(0)
for n in sizes:
    x = rng.standard_normal((n, n), dtype=np.float32); w = rng.standard_normal((n, n), dtype=np.float32)
    x @ w.T
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); x @ w.T; times.append(time.perf_counter() - t)
    times.sort()
    out["gflops"][str(n)] = 2 * n**3 / times[len(times) // 2] / 1e9
print(json.dumps(out))
`;

function numpyFigures(
  sizes: number[],
  repeats: number,
): { numpy?: string; blas?: string; gflops: Record<string, number> } | { error: string } {
  try {
    return JSON.parse(
      execFileSync('python3', ['-c', NUMPY, JSON.stringify(sizes), String(repeats)], { encoding: 'utf8' }),
    );
  } catch (error) {
    return { error: `numpy unavailable: ${(error as Error).message.split('\n')[0]}` };
  }
}

export async function gemmCommand(argv: string[], log: (line: string) => void): Promise<object> {
  const options = parseOptions(argv, {
    device: { type: 'string' },
    sizes: { type: 'string' },
    repeats: { type: 'string' },
    out: { type: 'string' },
  });
  outputOption('out', options.out);
  const backend = benchBackend(choiceOption('device', options.device, ['auto', 'cpu', 'cuda'] as const, 'cpu'));
  const sizes = integerListOption('sizes', options.sizes, [256, 512, 1024, 2048]);
  const repeats = integerOption('repeats', options.repeats, 7, 1);
  const ours: Record<string, number> = {};
  for (const n of sizes) {
    const x = backend.alloc('f32', [n, n]);
    const w = backend.alloc('f32', [n, n]);
    const out = backend.alloc('f32', [n, n]);
    backend.fillRandom(x, 1);
    backend.fillRandom(w, 2);
    backend.matmul(x, w, out);
    await backend.synchronize();
    const times: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const start = performance.now();
      backend.matmul(x, w, out);
      await backend.synchronize();
      times.push((performance.now() - start) / 1000);
    }
    ours[String(n)] = (2 * n ** 3) / median(times) / 1e9;
    for (const t of [x, w, out]) t.dispose();
  }
  const numpy = numpyFigures(sizes, repeats);
  const rows = sizes.map((n) => {
    const reference = 'gflops' in numpy ? numpy.gflops[String(n)] : undefined;
    const gflops = ours[String(n)] ?? 0;
    log(
      `f32 GEMM ${n}³: ${gflops.toFixed(1)} GFLOP/s` +
        (reference ? ` vs numpy ${reference.toFixed(1)} GFLOP/s (${((gflops / reference) * 100).toFixed(0)} %)` : ''),
    );
    return { n, gflops, numpyGflops: reference, ratio: reference ? gflops / reference : undefined };
  });
  const settings = {
    repeats,
    layout: 'out = x · Wᵀ, x and W f32 n×n, median',
    numpy: 'numpy' in numpy ? numpy : numpy,
  };
  const figures = { gemm: rows };
  return options.out ? writeResult(String(options.out), backend.deviceName, settings, figures) : figures;
}
