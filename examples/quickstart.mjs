// Load a model and continue a prompt greedily on the CPU: `node quickstart.mjs [model directory or file]`.
import { LlamaModel } from '@duoattn/model';

const model = await LlamaModel.load(process.argv[2] ?? 'models/duo-demo', { device: 'cpu' });
let text = '';
for await (const token of model.generate('Once upon a time', { maxTokens: 16 })) text += token.text;
console.log(text);
model.dispose();
