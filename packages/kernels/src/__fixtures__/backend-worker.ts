// A worker thread's entry (worker-threads.test.ts bundles it): runs environmentWork on its seed and posts the result.
import { parentPort, workerData } from 'node:worker_threads';
import { environmentWork } from './environment-work.js';

const { seed } = workerData as { seed: number };
parentPort?.postMessage(await environmentWork(seed));
