"""Gate and up projections of the grouped SwiGLU as two grouped GEMMs (what GroupedExperts does) against one
of width 2F over [w1 | w3], forward + backward in bf16 on the CPU, with torch._grouped_mm as moetrain calls
it. Prints ms per iteration, alternating the two three times. docs/benchmarks.md has the result.

  python tools/bench_gate_up_fusion.py   (the venv's python; 4096 tokens, d_model 256, 8 experts, top-2, hidden 512)
"""
import time

import torch

torch.set_num_threads(2)
T, D, E, K, F = 4096, 256, 8, 2, 512
N, dt = T * K, torch.bfloat16
offs = torch.full((E,), N // E).cumsum(0).to(torch.int32)
x = torch.randn(N, D, dtype=dt, requires_grad=True)
w1, w3 = (torch.randn(E, D, F, dtype=dt, requires_grad=True) for _ in range(2))
w2 = torch.randn(E, F, D, dtype=dt, requires_grad=True)
w13 = torch.cat([w1, w3], -1).detach().requires_grad_(True)
g = torch.randn(N, D, dtype=dt)


def separate():
    h = torch.nn.functional.silu(torch._grouped_mm(x, w1, offs)) * torch._grouped_mm(x, w3, offs)
    torch._grouped_mm(h, w2, offs).backward(g)


def fused():
    gate, up = torch._grouped_mm(x, w13, offs).chunk(2, -1)
    torch._grouped_mm(torch.nn.functional.silu(gate) * up, w2, offs).backward(g)


def ms(f, n=15):
    for _ in range(2):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


for name, f in [("separate", separate), ("fused", fused)] * 3:
    print(f"{name}: {ms(f):.1f} ms")
