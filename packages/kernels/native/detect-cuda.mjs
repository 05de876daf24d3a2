// Answers binding.gyp's questions about CUDA: `enabled` (1|0), `path` (toolkit root), `gencode` (nvcc flags).
// env DUO_CUDA=0|1 wins; otherwise CUDA is enabled when nvcc and cuda_runtime.h are both found.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

function toolkitRoot() {
  const candidates = [process.env.CUDA_PATH, process.env.CUDA_HOME, '/usr/local/cuda'];
  try {
    const nvcc = execFileSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).trim();
    if (nvcc) candidates.push(dirname(dirname(nvcc)));
  } catch {
    // nvcc is not on PATH; the fixed candidates may still have it.
  }
  return candidates.find((root) => root && existsSync(join(root, 'bin', 'nvcc'))) ?? '';
}

function enabled(root) {
  const forced = process.env.DUO_CUDA;
  if (forced === '0' || forced === '1') return forced;
  return root && existsSync(join(root, 'include', 'cuda_runtime.h')) ? '1' : '0';
}

function gencode() {
  const archs = (process.env.DUO_CUDA_ARCHS ?? '90a,80,ptx90').split(',').map((a) => a.trim());
  // DUO_NVCC_FLAGS adds flags (e.g. -DDUO_GEMV_UNROLL=8) for tuning builds.
  const extra = (process.env.DUO_NVCC_FLAGS ?? '').split(/\s+/).filter(Boolean);
  return archs
    .map((arch) =>
      arch.startsWith('ptx')
        ? `-gencode=arch=compute_${arch.slice(3)},code=compute_${arch.slice(3)}`
        : `-gencode=arch=compute_${arch},code=sm_${arch}`,
    )
    .concat(extra)
    .join(' ');
}

const root = toolkitRoot();
const question = process.argv[2];
if (question === 'enabled') console.log(enabled(root));
else if (question === 'path') console.log(root || '/usr/local/cuda');
else if (question === 'gencode') console.log(gencode());
else {
  console.error('usage: detect-cuda.mjs enabled|path|gencode');
  process.exit(2);
}
