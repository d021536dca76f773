#!/usr/bin/env python3
"""Per-op profile of the PyTorch side (diffusers 0.27.2 UNet2DConditionModel on the same libtorch), written in the
format `sudoml bench profile` writes for Sudo: one TSV per pass (name, calls, total_us, self_us), from the same
libtorch instrumentation (torch.autograd.profiler with use_kineto=False, i.e. the RecordFunction-based legacy profiler).

usage: . /tmp/ref/env.sh && $PY bench/reference/profile_ref.py OUT_DIR [--config-json unet_config.json] [--size S]
       [--batch 8] [--threads 2] [--reps 3]
Without --config-json it profiles the "small" UNet of ../shared/ref/bench_ref.py. Writes OUT_DIR/torch_fwd.tsv,
OUT_DIR/torch_fwd_bwd.tsv and prints the passes' median wall times as JSON. Tooling, not product.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.environ.get("SUDO_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared")), "ref"))
import bench_ref  # noqa: E402  (the reference's configurations and its torch 1.13 baddbmm fix)


def write_table(prof, path):
    with open(path + ".tmp", "w") as f:
        f.write("name\tcalls\ttotal_us\tself_us\n")
        for e in prof.key_averages():
            f.write(f"{e.key}\t{e.count}\t{e.cpu_time_total}\t{e.self_cpu_time_total}\n")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--config-json")
    ap.add_argument("--size", type=int)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--grad-ckpt", action="store_true")
    args = ap.parse_args()
    bench_ref.ARGS = args
    bench_ref.quiet()
    bench_ref.check_versions()
    torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel

    cfg, text_dim = bench_ref.unet_config("json" if args.config_json else "small")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg)
    if args.grad_ckpt:
        unet.enable_gradient_checkpointing()
    S, D, B = cfg["sample_size"], cfg["cross_attention_dim"], args.batch
    x = torch.randn(B, 4, S, S)
    ctx = torch.randn(B, 77, D)
    t = torch.randint(0, 1000, (B,))
    kw = bench_ref.cond_kwargs(B, text_dim)

    def fwd():
        with torch.no_grad():
            unet(x, t, ctx, **kw)

    def fwd_bwd():
        unet.zero_grad(set_to_none=True)
        unet(x, t, ctx, **kw).sample.square().mean().backward()

    os.makedirs(args.out, exist_ok=True)
    times = {}
    for name, fn, mode in (("fwd", fwd, unet.eval), ("fwd_bwd", fwd_bwd, unet.train)):
        mode()
        fn()
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        times[name + "_s"] = round(statistics.median(ts), 4)
        with torch.autograd.profiler.profile(use_kineto=False) as prof:
            fn()
        write_table(prof, os.path.join(args.out, f"torch_{name}.tsv"))
    print(json.dumps({"threads": torch.get_num_threads(), "batch": B, "size": S, **times}))


if __name__ == "__main__":
    main()
