"""PyTorch side of bench/attention.fsx: SD1.5's 4096-token self-attention (8 heads, d = 40, B images) as diffusers
0.27.2's AttnProcessor computes it on torch 1.13 (Attention.get_attention_scores: baddbmm with beta 0, softmax; then
bmm). Best of ROUNDS (3) runs after a warm-up. Usage: B=1 THREADS=1 OPENBLAS_NUM_THREADS=1 $PY attention_ref.py"""
import os
import time

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
B = int(os.environ.get("B", "2"))
g = torch.Generator().manual_seed(0)
q0, k0, v0 = (torch.randn(B * 8, 4096, 40, generator=g) for _ in range(3))
scale = 40 ** -0.5


def attn(q, k, v):
    s = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(-1, -2), beta=0, alpha=scale)
    return torch.bmm(s.softmax(dim=-1), v)


def best_time(n, f):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def fwd():
    with torch.no_grad():
        attn(q0, k0, v0)


def fwd_bwd():
    q, k, v = (x.detach().requires_grad_() for x in (q0, k0, v0))
    attn(q, k, v).sum().backward()


rounds = int(os.environ.get("ROUNDS", "3"))
print("pytorch composed B=%d: forward %.3f s, forward+backward %.3f s (best of %d)" % (B, best_time(rounds, fwd), best_time(rounds, fwd_bwd), rounds))
