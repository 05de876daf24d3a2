// Answers binding.gyp's questions about CUDA: `enabled` (1|0), `why` (one line: the reason for that answer), `path`
// (toolkit root), `gencode` (nvcc flags). env DUO_CUDA=0|1 wins; otherwise CUDA is enabled when nvcc, cuda_runtime.h
// and a CUDA driver are all found — a machine with the toolkit but no GPU builds the CPU backend in a minute instead
// of compiling kernels it cannot run for several (CI and the GPU bundle force DUO_CUDA=1).
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

/** A CUDA driver is present when the kernel module answers or libcuda is known to the dynamic loader. */
function cudaDriverFound() {
  if (existsSync('/proc/driver/nvidia/version') || existsSync('/usr/lib/wsl/lib/libcuda.so.1')) return true;
  try {
    return /\blibcuda\.so\.1\b/.test(execFileSync('ldconfig', ['-p'], { encoding: 'utf8', stdio: 'pipe' }));
  } catch {
    return false;
  }
}

/** Whether to compile the CUDA backend, and why. */
function decide(root) {
  const forced = process.env.DUO_CUDA;
  if (forced === '0' || forced === '1') return { enabled: forced, why: `DUO_CUDA=${forced}` };
  if (!root) return { enabled: '0', why: 'no nvcc found (set CUDA_PATH, or DUO_CUDA=1)' };
  if (!existsSync(join(root, 'include', 'cuda_runtime.h'))) {
    return { enabled: '0', why: `no cuda_runtime.h under ${root}/include` };
  }
  if (!cudaDriverFound())
    return { enabled: '0', why: 'nvcc found but no CUDA driver (DUO_CUDA=1 compiles CUDA anyway)' };
  return { enabled: '1', why: `nvcc, headers and a CUDA driver found (${root})` };
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
if (question === 'enabled') console.log(decide(root).enabled);
else if (question === 'why') console.log(decide(root).why);
else if (question === 'path') console.log(root || '/usr/local/cuda');
else if (question === 'gencode') console.log(gencode());
else {
  console.error('usage: detect-cuda.mjs enabled|why|path|gencode');
  process.exit(2);
}
