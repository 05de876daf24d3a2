# Trains the embedded demo model: a byte-level Llama (GQA, RoPE, SwiGLU) with a 16 384-byte context that retrieves
# facts from anywhere in its window. Runs on the GPU machine (PyTorch); CI never runs it. See README.md.
import argparse, json, math, os, random, struct, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument('--books', required=True, help='folder of public-domain .txt books (../shared/data/gutenberg)')
parser.add_argument('--heldout', default='1342.txt', help='book kept out of training for evaluation haystacks')
parser.add_argument('--out', required=True)
parser.add_argument('--minutes', type=float, default=9.0, help='training time budget')
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--tokens-per-step', type=int, default=65536)
parser.add_argument('--lr', type=float, default=1.5e-3)
args = parser.parse_args()

CONFIG = dict(vocab_size=259, hidden_size=512, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
              num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=16384)
BOS, EOS, PAD = 256, 257, 258
random.seed(args.seed)
torch.manual_seed(args.seed)
device = 'cuda'

# ---- data -----------------------------------------------------------------------------------------------------------
def read_books(folder, names):
    return b'\n\n'.join(open(os.path.join(folder, n), 'rb').read() for n in names)

names = sorted(n for n in os.listdir(args.books) if n.endswith('.txt'))
train_text = read_books(args.books, [n for n in names if n != args.heldout])
heldout_text = read_books(args.books, [args.heldout])
WORDS = [w for w in {w.strip(b'.,;:!?"\'()').lower() for w in train_text[:2_000_000].split()} if 3 <= len(w) <= 9 and w.isalpha()]
WORDS.sort()

def digits(n=5):
    return ''.join(random.choice('0123456789') for _ in range(n)).encode()

def fact_pair():
    """A statement and a later question whose answer repeats it; answers carry extra loss weight."""
    kind = random.random()
    if kind < 0.2:
        # NIAH-style needle sentence, asked about later.
        place = random.choice(WORDS).capitalize()
        activity = b' '.join(random.choice(WORDS) for _ in range(3))
        return (b' The best thing to do in ' + place + b' is to ' + activity + b'. ',
                b' What is the best thing to do in ' + place + b'? The best thing to do in ' + place + b' is to ',
                activity + b'.')
    if kind < 0.45:
        key = random.choice(WORDS)
        value = digits()
        return (b' The magic number of ' + key + b' is ' + value + b'. ',
                b' What is the magic number of ' + key + b'? The magic number of ' + key + b' is ', value + b'.')
    if kind < 0.7:
        a, b = random.choice(WORDS), random.choice(WORDS)
        return (b' Remember: ' + a + b' goes with ' + b + b'. ', b' What goes with ' + a + b'? ' + a + b' goes with ', b + b'.')
    value = digits()
    return (b' The passkey is ' + value + b'. Remember it. ', b' What is the passkey? The passkey is ', value + b'.')

def window(length, text):
    """`length` bytes of prose with one fact per ~512 bytes, each asked about later; returns bytes and loss weights."""
    start = random.randrange(0, len(text) - length)
    body = text[start:start + length]
    inserts = []  # (position, order, bytes, is_answer)
    for _ in range(max(1, length // 512)):
        statement, question, answer = fact_pair()
        at = random.randrange(0, length)
        ask = random.randrange(at, length + 1)
        inserts += [(at, 0, statement, False), (ask, 1, question, False), (ask, 2, answer, True)]
    inserts.sort(key=lambda item: (item[0], item[1]))
    pieces, answers, size, last = [], [], 0, 0
    for at, _, piece, is_answer in inserts:
        pieces.append(body[last:at])
        size += at - last
        if is_answer:
            answers.append((size, size + len(piece)))
        pieces.append(piece)
        size += len(piece)
        last = at
    pieces.append(body[last:])
    data = b''.join(pieces)[:length]
    weights = np.ones(length, dtype=np.float32)
    for begin, end in answers:
        weights[begin:min(end, length)] = 5.0
    return data, weights

def batch(length, count):
    tokens = np.empty((count, length + 1), dtype=np.int64)
    weights = np.zeros((count, length + 1), dtype=np.float32)
    for i in range(count):
        data, w = window(length, train_text)
        tokens[i, 0] = BOS
        tokens[i, 1:] = np.frombuffer(data, dtype=np.uint8)
        weights[i, 1:] = w
    return torch.from_numpy(tokens).to(device, non_blocking=True), torch.from_numpy(weights).to(device, non_blocking=True)

# ---- model ----------------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, hd, f = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads'], c['head_dim'], c['intermediate_size']
        self.h, self.kv, self.hd = h, kv, hd
        self.input_layernorm = nn.RMSNorm(d, eps=c['rms_norm_eps'])
        self.q_proj, self.k_proj = nn.Linear(d, h * hd, bias=False), nn.Linear(d, kv * hd, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, kv * hd, bias=False), nn.Linear(h * hd, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=c['rms_norm_eps'])
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, n, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(y).view(b, n, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(y).view(b, n, self.kv, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, n, -1))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))

def rotate(x, cos, sin):  # HF rotate_half convention
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c['vocab_size'], c['hidden_size'])
        self.layers = nn.ModuleList(Block(c) for _ in range(c['num_hidden_layers']))
        self.norm = nn.RMSNorm(c['hidden_size'], eps=c['rms_norm_eps'])
        self.lm_head = nn.Linear(c['hidden_size'], c['vocab_size'], bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def rope(self, n):
        hd = self.c['head_dim']
        inv = 1.0 / (self.c['rope_theta'] ** (torch.arange(0, hd, 2, device=device, dtype=torch.float64) / hd))
        angles = torch.arange(n, device=device, dtype=torch.float64)[:, None] * inv[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().float(), angles.sin().float()

    def forward(self, tokens):
        cos, sin = self.rope(tokens.shape[1])
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))

model = Model(CONFIG).to(device)
parameters = sum(p.numel() for p in model.parameters())
print(f'parameters: {parameters / 1e6:.2f} M', flush=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

# ---- evaluation (PyTorch side; the acceptance figures are measured again with our runtime) -------------------------
@torch.no_grad()
def passkey_accuracy(length, trials):
    model.eval()
    correct = 0
    for trial in range(trials):
        depth = (trial % 10 + 0.5) / 10
        value = digits()
        needle = b' The passkey is ' + value + b'. Remember it. '
        question = b' What is the passkey? The passkey is '
        room = length - len(needle) - len(question)
        start = random.randrange(0, len(heldout_text) - room)
        hay = heldout_text[start:start + room]
        at = int(depth * room)
        text = hay[:at] + needle + hay[at:] + question
        tokens = torch.tensor([[BOS] + list(text)], device=device)
        out = []
        for _ in range(5):
            with torch.autocast('cuda', dtype=torch.bfloat16):
                nxt = model(tokens)[0, -1].argmax().item()
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]], device=device)], dim=1)
        correct += bytes(out) == value
    model.train()
    return correct / trials

# ---- training -------------------------------------------------------------------------------------------------------
history, started, step = [], time.time(), 0
budget = args.minutes * 60
while time.time() - started < budget:
    progress = (time.time() - started) / budget
    length = random.choice([512, 1024, 2048]) if progress < 0.3 else random.choice([2048, 4096, 8192, 16384])
    count = max(1, args.tokens_per_step // length)
    warm = min(1.0, (step + 1) / 200)
    lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    for group in optimizer.param_groups:
        group['lr'] = lr
    tokens, weights = batch(length, count)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        logits = model(tokens[:, :-1])
    loss = (F.cross_entropy(logits.float().reshape(-1, CONFIG['vocab_size']), tokens[:, 1:].reshape(-1), reduction='none')
            * weights[:, 1:].reshape(-1)).sum() / weights[:, 1:].sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if step % 50 == 0:
        history.append({'step': step, 'seconds': round(time.time() - started, 1), 'length': length, 'loss': loss.item(), 'lr': lr})
        print(f'step {step} {time.time() - started:.0f}s len {length} loss {loss.item():.4f} lr {lr:.2e}', flush=True)
    step += 1
train_seconds = time.time() - started
evaluation = {str(n): passkey_accuracy(n, 20) for n in [2048, 4096, 8192, 16384]}
print('passkey accuracy (PyTorch, bf16 autocast):', evaluation, flush=True)

# ---- export: weights rounded to bf16 (the shipped file), golden logits computed in f32 from those weights ------------
os.makedirs(args.out, exist_ok=True)
state = {}
for name, tensor in model.state_dict().items():
    hf = name if name.startswith('lm_head') else 'model.' + name.replace('layers.', 'layers.', 1)
    hf = hf.replace('.q_proj', '.self_attn.q_proj').replace('.k_proj', '.self_attn.k_proj').replace('.v_proj', '.self_attn.v_proj')
    hf = hf.replace('.o_proj', '.self_attn.o_proj').replace('.gate_proj', '.mlp.gate_proj').replace('.up_proj', '.mlp.up_proj')
    hf = hf.replace('.down_proj', '.mlp.down_proj')
    state[hf] = tensor.detach().to(torch.bfloat16).contiguous().cpu()
from safetensors.torch import save_file
# Two shards of about 11 MB each (with an index): files stay small enough to move between machines.
names_in_order, total, shards = list(state), sum(t.numel() * 2 for t in state.values()), [[], []]
running = 0
for name in names_in_order:
    shards[0 if running < total / 2 else 1].append(name)
    running += state[name].numel() * 2
weight_map = {}
for index, shard in enumerate(shards):
    file = f'model-{index + 1:05d}-of-00002.safetensors'
    save_file({n: state[n] for n in shard}, os.path.join(args.out, file), metadata={'format': 'pt'})
    weight_map.update({n: file for n in shard})
json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map},
          open(os.path.join(args.out, 'model.safetensors.index.json'), 'w'), indent=1)
with torch.no_grad():
    for name, tensor in model.state_dict().items():
        tensor.copy_(tensor.to(torch.bfloat16).float())
hf_config = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', **CONFIG, 'hidden_act': 'silu',
             'attention_bias': False, 'tie_word_embeddings': False, 'bos_token_id': BOS, 'eos_token_id': EOS,
             'pad_token_id': PAD, 'torch_dtype': 'bfloat16'}
json.dump(hf_config, open(os.path.join(args.out, 'config.json'), 'w'), indent=2)
json.dump({'bos_token_id': BOS, 'eos_token_id': EOS, 'pad_token_id': PAD, 'do_sample': False, 'max_new_tokens': 64},
          open(os.path.join(args.out, 'generation_config.json'), 'w'), indent=2)

def bytes_to_unicode():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table

specials = ['<|bos|>', '<|eos|>', '<|pad|>']
tokenizer = {
    'version': '1.0', 'truncation': None, 'padding': None,
    'added_tokens': [{'id': 256 + i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
                      'normalized': False, 'special': True} for i, s in enumerate(specials)],
    'normalizer': None,
    'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': False},
    'post_processor': {'type': 'TemplateProcessing',
                       'single': [{'SpecialToken': {'id': '<|bos|>', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}],
                       'pair': [{'SpecialToken': {'id': '<|bos|>', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}},
                                {'Sequence': {'id': 'B', 'type_id': 1}}],
                       'special_tokens': {'<|bos|>': {'id': '<|bos|>', 'ids': [BOS], 'tokens': ['<|bos|>']}}},
    'decoder': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': False},
    'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
              'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
              'vocab': {c: b for b, c in bytes_to_unicode().items()}, 'merges': []},
}
json.dump(tokenizer, open(os.path.join(args.out, 'tokenizer.json'), 'w'))
json.dump({'bos_token': '<|bos|>', 'eos_token': '<|eos|>', 'pad_token': '<|pad|>', 'model_max_length': 16384,
           'tokenizer_class': 'PreTrainedTokenizerFast'}, open(os.path.join(args.out, 'tokenizer_config.json'), 'w'), indent=2)

# Golden logits: f32, for BOS + the first 2047 bytes of the held-out book.
golden_tokens = [BOS] + list(heldout_text[10000:10000 + 2047])
with torch.no_grad():
    logits = model(torch.tensor([golden_tokens], device=device))[0].float().cpu()
open(os.path.join(args.out, 'golden.logits.f32'), 'wb').write(logits.numpy().astype('<f4').tobytes())
json.dump({'tokens': golden_tokens, 'positions': len(golden_tokens), 'vocab_size': CONFIG['vocab_size'],
           'source': f'{args.heldout} bytes 10000..12047 after BOS', 'dtype': 'f32 compute over the bf16-stored weights'},
          open(os.path.join(args.out, 'golden.json'), 'w'))

# HF transformers must load the same files and agree.
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
hf = LlamaForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32).to(device).eval()
with torch.no_grad():
    hf_logits = hf(torch.tensor([golden_tokens], device=device)).logits[0].float().cpu()
hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.out, 'tokenizer.json'))
report = {'parameters': parameters, 'steps': step, 'train_seconds': train_seconds, 'seed': args.seed,
          'passkey_accuracy_pytorch': evaluation, 'history': history,
          'hf_max_abs_diff': (hf_logits - logits).abs().max().item(),
          'hf_tokenizer_roundtrip': hf_tokenizer.decode(hf_tokenizer.encode('Héllo 🍰'), skip_special_tokens=True) == 'Héllo 🍰',
          'card': torch.cuda.get_device_name(), 'torch': torch.__version__}
json.dump(report, open(os.path.join(args.out, 'training-report.json'), 'w'), indent=1)
print(json.dumps({k: v for k, v in report.items() if k != 'history'}), flush=True)
