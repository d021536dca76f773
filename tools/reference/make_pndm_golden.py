"""Golden PNDM trajectories from diffusers' own PNDMScheduler, in the format of shared/golden/schedulers/.

Tooling, not shipped code: run it with the reference environment of ../shared/ref (diffusers 0.27.2, torch 1.13,
the safetensors stub in ../shared/ref/stubs), e.g.

    PYTHONPATH=/tmp/ref/diffusers/src:/tmp/ref/huggingface_hub/src:../shared/ref/stubs \
        python3 tools/reference/make_pndm_golden.py tests/golden/schedulers_pndm

It writes io.safetensors + params.json that `sudoml parity --schedulers <dir>/io.safetensors` (SchedulerParity) reads:
the DDIM/DDPM tables it always checks plus one trajectory per `<name>_config` (PNDM with and without PRK warm-up,
leading / trailing / linspace spacing, epsilon and v-prediction), driven by the same fake model string as the
shared goldens.
"""
import json
import os
import sys

import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(1503)
torch.set_num_threads(1)

sd15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            steps_offset=1, set_alpha_to_one=False, clip_sample=False, skip_prk_steps=True)
FAKE = "model_output = 0.1 * scale_model_input(x, t) + 0.05 * float(t) / 1000"
N_TRAJ = 10
steps = {"n1": 20, "n2": 50}

# from_config keeps the fields a class knows and ignores the rest (skip_prk_steps for DDIM/DDPM), as pipelines do.
ddim = DDIMScheduler.from_config(sd15)
ddpm = DDPMScheduler.from_config(sd15)
io = {
    "betas": ddim.betas.float(),
    "alphas_cumprod": ddim.alphas_cumprod.float(),
    "ddim_final_alpha_cumprod": torch.tensor(float(ddim.final_alpha_cumprod), dtype=torch.float32),
}
for tag, n in steps.items():
    ddim.set_timesteps(n)
    ddpm.set_timesteps(n)
    io[f"ddim_timesteps_{tag}"] = ddim.timesteps.clone()
    io[f"ddpm_timesteps_{tag}"] = ddpm.timesteps.clone()

traj = {
    "pndm_plms_leading": dict(sd15),
    "pndm_plms_trailing": dict(sd15, timestep_spacing="trailing"),
    "pndm_plms_linspace": dict(sd15, timestep_spacing="linspace"),
    "pndm_plms_v": dict(sd15, prediction_type="v_prediction"),
    "pndm_prk_leading": dict(sd15, skip_prk_steps=False),
}
x0 = torch.randn(2, 4, 8, 8)
io["traj_latent0"] = x0.clone()
params = {"fake_model": FAKE, "n_traj": N_TRAJ, "num_inference_steps": steps, "set": "pndm",
          "ddim_config": dict(ddim.config, _class_name="DDIMScheduler"), "ddpm_config": dict(ddpm.config, _class_name="DDPMScheduler"),
          "versions": {"diffusers": __import__("diffusers").__version__, "torch": torch.__version__}}
for name, cfg in traj.items():
    s = PNDMScheduler.from_config(cfg)
    s.set_timesteps(N_TRAJ)
    params[name + "_config"] = dict(s.config, _class_name=type(s).__name__)
    io[name + "_timesteps"] = s.timesteps.clone()
    io[name + "_init_noise_sigma"] = torch.tensor(float(s.init_noise_sigma), dtype=torch.float32)
    x = x0 * s.init_noise_sigma
    io[name + "_x_init"] = x.clone()
    ins, outs, samples = [], [], []
    for t in s.timesteps:
        xin = s.scale_model_input(x, t)
        mo = 0.1 * xin + 0.05 * float(t) / 1000
        x = s.step(mo, t, x).prev_sample
        ins.append(xin)
        outs.append(mo)
        samples.append(x)
    io[name + "_model_inputs"] = torch.stack(ins)
    io[name + "_model_outputs"] = torch.stack(outs)
    io[name + "_samples"] = torch.stack(samples)

for k, v in params.items():
    if k.endswith("_config"):
        params[k] = {kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in v.items()}
meta = {"format": "pt", "item": "schedulers_pndm", "set": "pndm", "params": json.dumps(params, default=str)}
save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"), metadata=meta)
with open(os.path.join(out, "params.json"), "w") as f:
    json.dump(params, f, indent=1, sort_keys=True, default=str)
print("wrote", out, len(io), "tensors")
