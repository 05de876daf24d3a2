// A worker thread's entry (worker-threads.test.ts bundles it): runs environmentWork on its seed (and device) and posts
// the result.
import { parentPort, workerData } from 'node:worker_threads';
import { environmentWork } from './environment-work.js';

const { seed, device } = workerData as { seed: number; device?: 'cpu' | 'cuda' };
parentPort?.postMessage(await environmentWork(seed, 200, device));
