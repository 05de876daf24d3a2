// A rank process for rank-launch.test.ts: reports its GPU environment; rank 0 sends an NCCL id up, the others report
// the id the launcher handed them.
const rank = Number(process.argv[2]);
process.send({ type: 'env', rank, gpu: process.env.CUDA_VISIBLE_DEVICES ?? null, nvls: process.env.NCCL_NVLS_ENABLE });
if (rank === 0) process.send({ type: 'nccl-id', uniqueId: 'ab'.repeat(128) });
else {
  process.on('message', (message) => {
    if (message.type === 'nccl-id') {
      process.send({ type: 'got', rank, uniqueId: message.uniqueId });
      process.disconnect();
    }
  });
}
if (rank === 0) setTimeout(() => process.disconnect(), 50);
