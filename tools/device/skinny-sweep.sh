# Runs on the device: the skinny bench for build-time variants of gemm-skinny.cu (name:flags), one JSON each.
N=packages/kernels/native; F="-O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I$N -I$N/cuda"
mkdir -p $OUT /tmp/o
for f in gemv elementwise; do nvcc -c $F $N/cuda/$f.cu -o /tmp/o/$f.o & done
nvcc -c $F tools/device/skinny-bench.cu -o /tmp/o/bench.o &
g++ -c -O2 -std=c++17 -I$N -I$N/cuda -I/usr/local/cuda/include $N/cuda/cublas-loader.cc -o /tmp/o/loader.o
for v in $VARIANTS; do name=${v%%:*}; flags=${v#*:}; nvcc -c $F ${flags//,/ } $N/cuda/gemm-skinny.cu -o /tmp/o/skinny-$name.o & done
wait
for v in $VARIANTS; do name=${v%%:*}
  nvcc -o /tmp/bench-$name /tmp/o/bench.o /tmp/o/gemv.o /tmp/o/elementwise.o /tmp/o/loader.o /tmp/o/skinny-$name.o -ldl -lcudart &&
  /tmp/bench-$name "$COMMIT $name" > $OUT/skinny-$name.json 2> $OUT/skinny-$name.log || echo "$name failed"
done
python3 - <<'PY'
import json, os, glob
out = os.environ['OUT']
best = {}
for f in sorted(glob.glob(out + '/skinny-*.json')):
    name = f.split('skinny-')[1][:-5]
    d = json.load(open(f))
    for r in d['rows']:
        if r.get('error'): print(name, r['shape'], r['rows'], r['variant'], 'ERROR', r['error']); continue
        if r['variant'] == 'skinny-invariant' and r.get('rowZeroAlone') != 'same bits': print(name, r['shape'], r['rows'], 'NOT INVARIANT')
        if r['maxError'] > 1e-3: print(name, r['shape'], r['rows'], r['variant'], 'ERROR', r['maxError'])
        key = (r['shape'], r['rows'])
        best.setdefault(key, {})
        v = r['variant'] + ('' if r['slices'] <= 0 else str(r['slices'])) + ('' if r.get('depth', 0) <= 0 else 'd' + str(r['depth']))
        best[key][name + ':' + v] = r['us']
for (shape, rows), d in best.items():
    if rows not in (1, 4, 8, 16, 32, 64): continue
    line = ' '.join(f'{k}={v:.1f}' for k, v in d.items() if k.split(':')[1] in ('skinny', 'warp', 'cublas', 'gemv'))
    bests = {}
    for k, v in d.items():
        n, var = k.split(':')
        if (var.startswith('skinny') or var.startswith('warp') or var.startswith('wide')) and var != 'skinny-invariant': bests[n] = min(bests.get(n, 1e9), v)
    print(f'{shape[:8]:8s} {rows:2d} | {line} | best ' + ' '.join(f'{n}={v:.1f}' for n, v in bests.items()))
PY
