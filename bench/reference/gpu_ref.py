"""PyTorch + diffusers versions of the full-size steps of `sudoml selftest` (tools/Sudo.Bench/SelfTest.cs, FullSize):
same configs, shapes, precisions and optimizers, random weights; prints and writes one JSON row per step with
seconds per step and peak CUDA memory (max allocated / max reserved, MB)."""
import argparse, copy, json, os, sys, time, types

# diffusers checks `requests` at import and imports it in utils; the GPU machine may lack it (huggingface_hub 1.x
# uses httpx). Nothing here downloads, so a stub is enough.
try:
    import requests  # noqa: F401
except ImportError:
    sys.modules["requests"] = types.ModuleType("requests")
    stub = types.ModuleType("diffusers.dependency_versions_check")
    stub.dep_version_check = lambda *a, **k: None
    sys.modules["diffusers.dependency_versions_check"] = stub

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def load_config(path):
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def per_sample_mse(pred, target):
    return (pred.float() - target.float()).pow(2).mean(dim=list(range(1, pred.dim())))


def dpo_loss(model_mse, ref_mse, beta=5000.0):
    # Diffusion-DPO train.py: model_losses_w - model_losses_l vs the reference, -logsigmoid(-beta/2 * ...).
    mw, ml = model_mse.chunk(2)
    rw, rl = ref_mse.chunk(2)
    inside = -0.5 * beta * ((mw - ml) - (rw - rl))
    return -F.logsigmoid(inside).mean()


def timed(device, warmup, step, reps):
    warmup()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(reps):
        loss = step()
    torch.cuda.synchronize(device)
    secs = (time.perf_counter() - t) / reps
    return loss, secs, torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20


class LoRALinear(torch.nn.Module):
    """peft's LoRA on a Linear (init_lora_weights='gaussian': A ~ N(0, 1/r), B = 0), with an off switch."""

    def __init__(self, base, r=4, alpha=4):
        super().__init__()
        self.base, self.scale, self.enabled = base, alpha / r, True
        self.lora_A = torch.nn.Parameter(torch.randn(r, base.in_features, device=base.weight.device) / r)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))

    def forward(self, x):
        y = self.base(x)
        return y + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale if self.enabled else y


def attach_lora(unet, targets=("to_q", "to_k", "to_v", "to_out.0")):
    adapters = []
    for name, module in list(unet.named_modules()):
        for t in targets:
            parent_name, _, leaf = (name + "." + t).rpartition(".")
            try:
                parent = unet.get_submodule(parent_name)
                child = parent.get_submodule(leaf)
            except AttributeError:
                continue
            if isinstance(child, torch.nn.Linear):
                a = LoRALinear(child)
                setattr(parent, leaf, a)
                adapters.append(a)
    return adapters


def sd15(keys, device, batch, ckpt, rows):
    name = f"sd15 unet 512px dpo bf16 pairs={batch} {'ckpt' if ckpt else 'no-ckpt'}"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**load_config(os.path.join(keys, "sd15_unet_config.json")))
    unet.train()
    if ckpt:
        unet.enable_gradient_checkpointing()
    reference = copy.deepcopy(unet).to(torch.bfloat16).requires_grad_(False).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-8)
    latents = torch.randn(2 * batch, 4, 64, 64, device=device)
    noise = torch.randn_like(latents)
    ehs = torch.randn(2 * batch, 77, 768, device=device)
    t = torch.randint(0, 1000, (2 * batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m = per_sample_mse(unet(latents, t, ehs).sample, noise)
            with torch.no_grad():
                r = per_sample_mse(reference(latents.bfloat16(), t, ehs.bfloat16()).sample, noise)
        loss = dpo_loss(m, r)
        loss.backward()
        opt.step()
        return loss.item()

    loss, secs, alloc, reserved = timed(device, step, step, 3)
    rows.append(dict(name=name, loss=loss, seconds_per_step=secs, peak_allocated_mb=alloc, peak_reserved_mb=reserved))
    print(json.dumps(rows[-1]), flush=True)
    del unet, reference, opt
    torch.cuda.empty_cache()


def sdxl(keys, device, rows):
    name = "sdxl unet 1024px lora dpo bf16 ckpt offload"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**load_config(os.path.join(keys, "sdxl_unet_config.json")))
    unet.requires_grad_(False)
    unet.enable_gradient_checkpointing()
    adapters = attach_lora(unet)
    unet.train()
    vae = AutoencoderKL(**load_config(os.path.join(keys, "sd15_vae_config.json"))).to(torch.bfloat16).requires_grad_(False)
    te1 = CLIPTextModel(CLIPTextConfig(**load_config(os.path.join(keys, "sd15_text_encoder_config.json")))).to(torch.bfloat16).requires_grad_(False)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**load_config(os.path.join(keys, "sdxl_text_encoder_2_config.json")))).to(torch.bfloat16).requires_grad_(False)
    params = [p for a in adapters for p in (a.lora_A, a.lora_B)]
    opt = torch.optim.AdamW(params, lr=1e-8)
    pixels = (torch.rand(2, 3, 1024, 1024) * 2 - 1).to(device, torch.bfloat16)
    ids = torch.randint(0, 49408, (1, 77), device=device)
    noise = torch.randn(2, 4, 128, 128, device=device)
    t = torch.randint(0, 1000, (2,), device=device)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=device).repeat(2, 1)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            vae.to(device)   # model-level CPU offload: on the GPU for its use, back after (as Sudo's CpuOffload)
            latents = vae.encode(pixels).latent_dist.mean.float() * 0.13025
            vae.to("cpu")
            te1.to(device), te2.to(device)
            h1 = te1(ids, output_hidden_states=True).hidden_states[-2]
            o2 = te2(ids, output_hidden_states=True)
            te1.to("cpu"), te2.to("cpu")
            ehs = torch.cat([h1, o2.hidden_states[-2]], -1).float().repeat(2, 1, 1)
            pooled = o2.text_embeds.float().repeat(2, 1)
        cond = {"text_embeds": pooled, "time_ids": time_ids}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m = per_sample_mse(unet(latents, t, ehs, added_cond_kwargs=cond).sample, noise)
            with torch.no_grad():
                for a in adapters:
                    a.enabled = False
                r = per_sample_mse(unet(latents, t, ehs, added_cond_kwargs=cond).sample, noise)
                for a in adapters:
                    a.enabled = True
        loss = dpo_loss(m, r)
        loss.backward()
        opt.step()
        return loss.item()

    loss, secs, alloc, reserved = timed(device, step, step, 2)
    rows.append(dict(name=name, loss=loss, seconds_per_step=secs, peak_allocated_mb=alloc, peak_reserved_mb=reserved))
    print(json.dumps(rows[-1]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import diffusers, transformers, huggingface_hub
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"huggingface_hub {huggingface_hub.__version__}, {torch.cuda.get_device_name(a.device)}", flush=True)
    device = torch.device(a.device)
    rows = []
    for batch in (1, 4):
        for ckpt in (False, True):
            try:
                sd15(a.keys, device, batch, ckpt, rows)
            except Exception as e:  # one failed configuration should not hide the others
                rows.append(dict(name=f"sd15 pairs={batch} ckpt={ckpt}", error=f"{type(e).__name__}: {e}"))
                print(json.dumps(rows[-1]), flush=True)
    try:
        sdxl(a.keys, device, rows)
    except Exception as e:
        rows.append(dict(name="sdxl", error=f"{type(e).__name__}: {e}"))
        print(json.dumps(rows[-1]), flush=True)
    meta = dict(torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers.__version__,
                transformers=transformers.__version__, gpu=torch.cuda.get_device_name(device))
    with open(a.out + ".tmp", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
