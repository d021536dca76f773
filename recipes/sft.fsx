// SFT baseline (Diffusion-DPO --sft): plain denoising loss on the preferred images; the paper uses lr 1e-9.
// Paper defaults (SD1.5): β 5000 (−½β inside the sigmoid), lr 1e-8 × 128 accumulation (--scale_lr),
// constant_with_warmup, 500 warmup, 2000 steps. SDXL: add --sdxl true (Adafactor, grad checkpointing).
// dotnet fsi recipes/sft.fsx -- --model <pipeline> --data <pair folder> [--name value ...]
#load "../scripts/_load.fsx"
open _load
open Sudo.Training

let trainer = new Trainer(offlineConfig "sft" "runs/sft")
trainer.Train()
