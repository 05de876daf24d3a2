# duoattn native addon.
# Toggles (override any of them with an environment variable or a node-gyp -D flag):
#   duo_cuda    1 compiles the CUDA backend (native/cuda/*.cu beside this file) with nvcc, 0 builds CPU-only.
#               Default: the answer of detect-cuda.mjs, which honours env DUO_CUDA=0|1 and
#               otherwise looks for nvcc and cuda_runtime.h under CUDA_PATH, /usr/local/cuda or PATH.
#               Force with `DUO_CUDA=0 pnpm build` or `node-gyp rebuild -Dduo_cuda=0`.
#   cuda_path   the CUDA toolkit root (env CUDA_PATH, else /usr/local/cuda).
#   cuda_archs  nvcc -gencode list; default sm_90a + sm_80 machine code and compute_90 PTX
#               (env DUO_CUDA_ARCHS="90a" narrows it for faster development builds).
# cudart is linked statically so the addon loads where no driver is installed; cuBLAS is opened at
# run time with dlopen (cuda/cublas-loader.cc), so no cuBLAS headers or libraries are needed here.
{
  'variables': {
    'duo_cuda%': '<!(node detect-cuda.mjs enabled)',
    'cuda_path%': '<!(node detect-cuda.mjs path)',
    'cuda_gencode%': '<!(node detect-cuda.mjs gencode)',
  },
  'targets': [
    {
      'target_name': 'duoattn',
      'sources': [
        'addon.cc',
        'napi/state.cc',
        'napi/attributes.cc',
        'napi/memory-ops.cc',
        'napi/forward-ops.cc',
        'napi/backward-ops.cc',
        'napi/batch-ops.cc',
        'napi/collective-ops.cc',
        'cpu/thread-pool.cc',
        'cpu/cpu-device.cc',
        'cpu/elementwise.cc',
        'cpu/quantize.cc',
        'cpu/gemm.cc',
        'cpu/attention.cc',
        'cpu/backward.cc',
      ],
      'include_dirs': ["<!(node -p \"require('node-addon-api').include_dir\")"],
      'defines': ['NAPI_CPP_EXCEPTIONS', 'NAPI_VERSION=8'],
      'cflags!': ['-fno-exceptions'],
      'cflags_cc!': ['-fno-exceptions', '-fno-rtti'],
      'cflags_cc': ['-std=c++17', '-O3', '-fexceptions', '-Wno-psabi', '-ffp-contract=fast'],
      'conditions': [
        ['duo_cuda==1', {
          'sources': [
            'cuda/cuda-device.cu',
            'cuda/paged-memory.cu',
            'cuda/elementwise.cu',
            'cuda/quantize.cu',
            'cuda/sample.cu',
            'cuda/gemv.cu',
            'cuda/gemv-blocks.cu',
            'cuda/gemm-skinny.cu',
            'cuda/attention-decode.cu',
            'cuda/attention-prefill.cu',
            'cuda/attention-prefill-wgmma.cu',
            'cuda/backward.cu',
            'cuda/cublas-loader.cc',
            'cuda/nccl-loader.cc',
          ],
          'include_dirs': ['<(cuda_path)/include'],
          'defines': ['DUO_WITH_CUDA=1'],
          'libraries': ['-L<(cuda_path)/lib64', '-l:libcudart_static.a', '-ldl', '-lrt', '-lpthread'],
          'rules': [{
            'rule_name': 'nvcc',
            'extension': 'cu',
            # Every header too: a changed declaration rebuilds each .cu (a stale object would disagree with the others).
            'inputs': ['<(RULE_INPUT_PATH)', 'common.h', 'cuda/attention-common.cuh', 'cuda/attention-decode-codes.cuh', 'cuda/cublas-loader.h', 'cuda/cuda-common.cuh', 'cuda/cuda-device.h', 'cuda/mma.cuh', 'cuda/nccl-loader.h', 'cuda/op-profiler.cuh', 'cuda/paged-memory.cuh', 'cuda/pinned-pool.cuh', 'cuda/quant-rows.cuh', 'cuda/rope-write.cuh', 'cuda/shared-library.h', 'cuda/wgmma.cuh', 'elementwise.h', 'quant.h', 'weight-blocks.h'],
            'outputs': ['<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o'],
            'process_outputs_as_sources': 1,
            'message': 'nvcc <(RULE_INPUT_PATH)',
            'action': [
              '<(cuda_path)/bin/nvcc', '-c', '-O3', '-std=c++17', '-Xcompiler', '-fPIC',
              '--expt-relaxed-constexpr', '-lineinfo', '<@(cuda_gencode)',
              '-o', '<@(_outputs)', '<(RULE_INPUT_PATH)',
            ],
          }],
        }, {
          'sources': ['cuda/cuda-stub.cc'],
        }],
      ],
    },
  ],
}
