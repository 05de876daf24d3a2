# PyTorch peer for `duo-bench efficiency`: the DuoAttention reference's method at Llama-3-8B shapes with random bf16
# weights made on the GPU. Like mit-han-lab/duo-attention (duo_attn/patch): eager PyTorch, static caches, per layer
# one SDPA call for full attention or two for DuoAttention (retrieval heads over their full cache, streaming heads
# over sinks + recent window); chunked prefill with the first chunk dense, later chunks causal over cache + chunk
# (bottom-right aligned), then the streaming cache pruned to sinks + the last `recent` keys. The first r KV heads of
# each layer are the retrieval heads (random weights: any choice is equivalent to the reference's reordering).
# Timing: CUDA events around each decode step / whole prefill after warm-up, median; memory: max_memory_allocated.
import argparse, json, statistics
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

parser = argparse.ArgumentParser()
parser.add_argument('--contexts', default='32768,131072,262144')
parser.add_argument('--max-context', default='', help='policy=tokens pairs, e.g. full=500000,duo=990000')
parser.add_argument('--prefill', type=int, default=131072)
parser.add_argument('--chunk', type=int, default=32768)
parser.add_argument('--policies', default='full,duo')
parser.add_argument('--retrieval', type=int, default=4, help='retrieval KV heads per layer for duo')
parser.add_argument('--sink', type=int, default=128)
parser.add_argument('--recent', type=int, default=256)
parser.add_argument('--steps', type=int, default=32)
parser.add_argument('--warmup', type=int, default=8)
parser.add_argument('--out', required=True)
args = parser.parse_args()

L, H, HKV, D, HID, FF, V = 32, 32, 8, 128, 4096, 14336, 128256
G = H // HKV
dev = 'cuda'
torch.manual_seed(0)


def rand(*shape):
    return (torch.randn(*shape, device=dev, dtype=torch.bfloat16) * 0.02)


W = [dict(q=rand(H * D, HID), k=rand(HKV * D, HID), v=rand(HKV * D, HID), o=rand(HID, H * D),
          g=rand(FF, HID), u=rand(FF, HID), d=rand(HID, FF), n1=torch.ones(HID, device=dev, dtype=torch.bfloat16),
          n2=torch.ones(HID, device=dev, dtype=torch.bfloat16)) for _ in range(L)]
embed = rand(V, HID)
head = rand(V, HID)
final_norm = torch.ones(HID, device=dev, dtype=torch.bfloat16)
inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
weight_bytes = torch.cuda.memory_allocated()


def rms(x, w):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


def rope(x, pos):  # x [1, heads, T, D]
    angles = pos.float()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Cache:
    """Static caches: full [1, r, T, D] per layer; streaming [1, HKV - r, sink + recent, D] kept pruned."""

    def __init__(self, r, capacity):
        self.r, self.s = r, HKV - r
        self.full = [(torch.empty(1, r, capacity, D, device=dev, dtype=torch.bfloat16),
                      torch.empty(1, r, capacity, D, device=dev, dtype=torch.bfloat16)) for _ in range(L)]
        window = args.sink + args.recent
        self.stream = [(torch.empty(1, self.s, window, D, device=dev, dtype=torch.bfloat16),
                        torch.empty(1, self.s, window, D, device=dev, dtype=torch.bfloat16)) for _ in range(L)]
        self.stream_len = 0

    def fill_random(self):
        for k, v in self.full + self.stream:
            k.normal_(); v.normal_()


def attend(q, k, v, causal):
    if q.shape[2] == 1 or not causal:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    # Chunks: flash-attention kernels with the query block aligned to the end of the keys (flash_attn's causal=True).
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    if q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


def layer(x, l, pos, start, cache, first_chunk):
    w = W[l]
    T = x.shape[1]
    h = rms(x, w['n1'])
    q = (h @ w['q'].T).view(1, T, H, D).transpose(1, 2)
    k = (h @ w['k'].T).view(1, T, HKV, D).transpose(1, 2)
    v = (h @ w['v'].T).view(1, T, HKV, D).transpose(1, 2)
    q, k = rope(q, pos), rope(k, pos)
    r = cache.r
    end = start + T
    fk, fv = cache.full[l]
    if r:
        fk[:, :, start:end] = k[:, :r]
        fv[:, :, start:end] = v[:, :r]
    outs = []
    if r:
        outs.append(attend(q[:, : r * G], fk[:, :, :end], fv[:, :, :end], True))
    if cache.s:
        sk, sv = cache.stream[l]
        ks, vs = k[:, r:], v[:, r:]
        if first_chunk:
            outs.append(attend(q[:, r * G:], ks, vs, True))
        else:
            n = cache.stream_len
            outs.append(attend(q[:, r * G:], torch.cat([sk[:, :, :n], ks], 2), torch.cat([sv[:, :, :n], vs], 2), True))
        # Prune to sinks + the last `recent` keys (what the reference keeps).
        allk = ks if first_chunk else torch.cat([sk[:, :, : cache.stream_len], ks], 2)
        allv = vs if first_chunk else torch.cat([sv[:, :, : cache.stream_len], vs], 2)
        if allk.shape[2] > args.sink + args.recent:
            allk = torch.cat([allk[:, :, : args.sink], allk[:, :, -args.recent:]], 2)
            allv = torch.cat([allv[:, :, : args.sink], allv[:, :, -args.recent:]], 2)
        sk[:, :, : allk.shape[2]] = allk
        sv[:, :, : allv.shape[2]] = allv
        if l == L - 1:
            cache.stream_len = allk.shape[2]
    o = torch.cat(outs, 1).transpose(1, 2).reshape(1, T, H * D)
    x = x + o @ w['o'].T
    h = rms(x, w['n2'])
    return x + (F.silu(h @ w['g'].T) * (h @ w['u'].T)) @ w['d'].T


@torch.inference_mode()
def forward(ids, start, cache, first_chunk):
    x = embed[ids][None]
    pos = torch.arange(start, start + ids.shape[0], device=dev)
    for l in range(L):
        x = layer(x, l, pos, start, cache, first_chunk)
    return (rms(x[:, -1], final_norm) @ head.T).argmax(-1)


def decode_ms(policy, context):
    r = HKV if policy == 'full' else args.retrieval
    torch.cuda.reset_peak_memory_stats()
    cache = Cache(r, context + args.warmup + args.steps + 1)
    cache.fill_random()
    cache.stream_len = min(context, args.sink + args.recent)
    token = torch.tensor([1], device=dev)
    times = []
    for step in range(args.warmup + args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        token = forward(token, context + step, cache, False)
        end.record()
        end.synchronize()
        if step >= args.warmup:
            times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated()
    del cache
    torch.cuda.empty_cache()
    return statistics.median(times), peak


def prefill_seconds(policy, tokens):
    r = HKV if policy == 'full' else args.retrieval
    cache = Cache(r, tokens)
    ids = torch.arange(tokens, device=dev).mul(7919).add(13).remainder(V)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for offset in range(0, tokens, args.chunk):
        forward(ids[offset: offset + args.chunk], offset, cache, offset == 0)
    end.record()
    end.synchronize()
    del cache
    torch.cuda.empty_cache()
    return start.elapsed_time(end) / 1000


result = {'card': torch.cuda.get_device_name(), 'torch': torch.__version__, 'weightBytes': weight_bytes,
          'settings': vars(args) | {'method': 'DuoAttention reference method: eager PyTorch, SDPA (one call per layer for '
                                              'full, two for duo), static caches, chunked prefill with a dense first chunk',
                                    'timing': 'CUDA events per decode step (median) and around the whole prefill'}}
policies = args.policies.split(',')
maxima = dict(pair.split('=') for pair in args.max_context.split(',') if pair)
decode = []
for policy in policies:
    contexts = [int(c) for c in args.contexts.split(',') if c] + ([int(maxima[policy])] if policy in maxima else [])
    for context in contexts:
        try:
            ms, peak = decode_ms(policy, context)
            decode.append({'policy': policy, 'context': context, 'msPerToken': ms, 'peakBytes': peak})
            print(f'torch {policy} decode @{context}: {ms:.3f} ms/token, peak {peak / 1e9:.1f} GB', flush=True)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            decode.append({'policy': policy, 'context': context, 'error': 'out of memory'})
            print(f'torch {policy} decode @{context}: out of memory', flush=True)
result['decode'] = decode
prefill = []
for policy in policies:
    if args.prefill <= 0:
        break
    prefill_seconds(policy, min(args.prefill, args.chunk))  # warm-up (kernels, allocator)
    seconds = prefill_seconds(policy, args.prefill)
    prefill.append({'policy': policy, 'tokens': args.prefill, 'chunk': args.chunk, 'seconds': seconds})
    print(f'torch {policy} prefill {args.prefill} in {args.chunk}-token chunks: {seconds:.2f} s', flush=True)
result['prefill'] = prefill
json.dump(result, open(args.out, 'w'), indent=1)
