// The worker thread's side of `startEngineWorker`: loads the model, runs a batch engine over it and answers the
// caller's messages (engine-worker.ts has the protocol).
import { parentPort } from 'node:worker_threads';
import { createInProcessGroup } from '@duoattn/kernels';
import { type BatchEngine, type BatchEngineOptions, type BatchStream, defaultKvBudget } from '../batch/batch-engine.js';
import { GroupEngine, inProcessGroup } from '../group/group-engine.js';
import type { LlamaModel } from '../llama-model.js';
import { type FromWorker, type ToWorker, toWire, type WorkerGroup, type WorkerModel } from './engine-worker.js';
import { loadWorkerModel, workerBackend } from './worker-model.js';

const port = parentPort;
if (!port) throw new Error('engine-worker-main runs in a worker thread (startEngineWorker starts it)');

// The models (one, or a tensor-parallel group's slices) and the engine over them.
let models: LlamaModel[] = [];
let engine: BatchEngine | GroupEngine | undefined;
const streams = new Map<number, BatchStream>();

function post(message: FromWorker): void {
  port?.postMessage(message);
}

/** Loads the model and starts the engine: a batch engine, or a group engine over ranks in this thread. */
async function start(spec: WorkerModel, options: BatchEngineOptions, group: WorkerGroup | undefined) {
  const backend = workerBackend(spec);
  if (!group) {
    const model = await loadWorkerModel(spec, backend);
    models = [model];
    return { model, engine: model.createBatchEngine(options) };
  }
  const communicators = createInProcessGroup(Array.from({ length: group.ranks }, () => backend));
  if (group.split === 'weights') {
    for (const communicator of communicators) models.push(await loadWorkerModel(spec, backend, { communicator }));
  } else models = [await loadWorkerModel(spec, backend)];
  const model = models[0] as LlamaModel;
  const kvBudgetBytes = options.kvBudgetBytes ?? defaultKvBudget(model.backend);
  const ranks = inProcessGroup(models, communicators, {
    split: group.split,
    kvBudgetBytes,
    allowBeyondContext: options.allowBeyondContext ?? false,
  });
  const config = model.tensorParallel?.modelConfig ?? model.config;
  const engine = new GroupEngine(ranks, { config, tokenizer: model.tokenizer }, options);
  return { model, engine };
}

async function relay(id: number, stream: BatchStream): Promise<void> {
  try {
    for await (const token of stream) post({ type: 'token', id, token });
    post({ type: 'done', id, result: await stream.result });
  } catch (error) {
    post({ type: 'failed', id, error: toWire(error) });
  } finally {
    streams.delete(id);
  }
}

port.on('message', async (message: ToWorker) => {
  switch (message.type) {
    case 'start':
      try {
        const started = await start(message.model, message.engine, message.group);
        const { model } = started;
        engine = started.engine;
        post({
          type: 'ready',
          info: {
            config: model.tensorParallel?.modelConfig ?? model.config,
            device: model.backend.device,
            deviceName: model.backend.deviceName,
            source: model.source,
            hasTokenizer: model.tokenizer !== undefined,
            chatTemplate: model.chatTemplate,
          },
        });
      } catch (error) {
        post({ type: 'fatal', error: toWire(error) });
      }
      break;
    case 'submit': {
      try {
        if (!engine) throw new Error('the engine worker has no model loaded');
        const stream = engine.submit(message.request);
        streams.set(message.id, stream);
        void relay(message.id, stream);
      } catch (error) {
        post({ type: 'failed', id: message.id, error: toWire(error) });
      }
      break;
    }
    case 'cancel':
      streams.get(message.id)?.cancel();
      break;
    case 'clearPrefixCache':
      engine?.clearPrefixCache();
      break;
    case 'stats':
      if (engine) post({ type: 'stats', id: message.id, stats: engine.stats() });
      break;
    case 'close':
      await engine?.close();
      for (const model of models) model.dispose();
      post({ type: 'closed' });
      port.close();
      break;
    default:
      break;
  }
});
