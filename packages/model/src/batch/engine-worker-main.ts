// The worker thread's side of `startEngineWorker`: loads the model, runs a batch engine over it and answers the
// caller's messages (engine-worker.ts has the protocol).
import { parentPort } from 'node:worker_threads';
import { resolveBackend } from '@duoattn/kernels';
import { LlamaModel } from '../llama-model.js';
import type { BatchEngine, BatchStream } from './batch-engine.js';
import { type FromWorker, type ToWorker, toWire, type WorkerModel } from './engine-worker.js';

const port = parentPort;
if (!port) throw new Error('engine-worker-main runs in a worker thread (startEngineWorker starts it)');

let model: LlamaModel | undefined;
let engine: BatchEngine | undefined;
const streams = new Map<number, BatchStream>();

function post(message: FromWorker): void {
  port?.postMessage(message);
}

async function load(spec: WorkerModel): Promise<LlamaModel> {
  if ('path' in spec) {
    return LlamaModel.load(spec.path, {
      device: backendFor(spec),
      weightDtype: spec.weightDtype,
      tokenizerPath: spec.tokenizerPath,
    });
  }
  return LlamaModel.random(spec.random, { device: backendFor(spec), dtype: spec.dtype, seed: spec.seed });
}

/** The device as asked, tuned when the spec says how. */
function backendFor(spec: WorkerModel) {
  const device = spec.device ?? 'auto';
  return spec.tuning ? resolveBackend(device, { tuning: spec.tuning }) : device;
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
        model = await load(message.model);
        engine = model.createBatchEngine(message.engine);
        post({
          type: 'ready',
          info: {
            config: model.config,
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
      model?.dispose();
      post({ type: 'closed' });
      port.close();
      break;
    default:
      break;
  }
});
