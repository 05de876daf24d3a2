# PyTorch peer for `duo-bench speed`: HF transformers LlamaForCausalLM built from the Llama-3-8B config with random
# bf16 weights on the GPU, sdpa attention. Prefill time at N tokens; decode ms/token at each context after a real
# prefill of that context (HF's DynamicCache). Timing: host wall clock per greedy step including .item(), median.
import argparse, json, time, statistics, subprocess
import torch
from transformers import LlamaConfig, LlamaForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument('--prefill', type=int, default=4096)
parser.add_argument('--contexts', default='4096,32768')
parser.add_argument('--steps', type=int, default=64)
parser.add_argument('--warmup', type=int, default=8)
parser.add_argument('--out', required=True)
args = parser.parse_args()

torch.manual_seed(0)
config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                     max_position_embeddings=131072, tie_word_embeddings=False, attn_implementation='sdpa')
with torch.device('cuda'):
    model = LlamaForCausalLM._from_config(config, torch_dtype=torch.bfloat16)
model.eval()
vocab = config.vocab_size

def sync():
    torch.cuda.synchronize()

@torch.inference_mode()
def prefill(tokens):
    return model(tokens, use_cache=True, logits_to_keep=1)

result = {'card': torch.cuda.get_device_name(), 'torch': torch.__version__, 'settings': vars(args) | {
    'model': 'LlamaForCausalLM (Llama-3-8B config), random init, bf16, sdpa, DynamicCache',
    'timing': 'host wall clock per greedy step including .item(), median'}}
ids = torch.arange(args.prefill, device='cuda').mul(7919).add(13).remainder(vocab).unsqueeze(0)
times = []
for run in range(3):
    sync(); start = time.perf_counter(); out = prefill(ids); out.logits.argmax(-1).item(); times.append(time.perf_counter() - start)
    del out
seconds = statistics.median(times[1:])
result['prefill'] = {'tokens': args.prefill, 'seconds': seconds, 'tokensPerSecond': args.prefill / seconds, 'runs': times}
print(f"torch prefill {args.prefill}: {seconds:.3f} s, {args.prefill / seconds:.0f} tok/s", flush=True)

decode = []
for context in [int(c) for c in args.contexts.split(',')]:
    ids = torch.arange(context, device='cuda').mul(7919).add(13).remainder(vocab).unsqueeze(0)
    with torch.inference_mode():
        out = prefill(ids)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        del out
        step_times = []
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            token.item()
            if step >= args.warmup:
                step_times.append((time.perf_counter() - start) * 1000)
            cache = out.past_key_values
            del out
    ms = statistics.median(step_times)
    decode.append({'context': context, 'msPerToken': ms, 'p10': sorted(step_times)[len(step_times) // 10],
                   'p90': sorted(step_times)[len(step_times) * 9 // 10]})
    print(f"torch decode @{context}: {ms:.3f} ms/token", flush=True)
    del cache
    torch.cuda.empty_cache()
result['decode'] = decode
result['peakMemoryBytes'] = torch.cuda.max_memory_allocated()
json.dump(result, open(args.out, 'w'), indent=1)
