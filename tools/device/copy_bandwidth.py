# The card's copy bandwidth in TB/s (bytes read + written per second, a 2 GiB bf16 copy, median of 30 after warm-up,
# CUDA events): the figure decode floors divide by. Prints the number alone; with --json, the card's name beside it.
import json
import sys

import torch

a = torch.randn(1 << 30, dtype=torch.bfloat16, device="cuda")
b = torch.empty_like(a)
for _ in range(5):
    b.copy_(a)
times = []
for _ in range(30):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    b.copy_(a)
    end.record()
    end.synchronize()
    times.append(start.elapsed_time(end))
times.sort()
tbps = 2 * a.numel() * a.element_size() / (times[len(times) // 2] * 1e-3) / 1e12
if "--json" in sys.argv:
    print(json.dumps({"card": torch.cuda.get_device_name(), "copyTBps": round(tbps, 4)}))
else:
    print(f"{tbps:.3f}")
