// Diffusion-DPO (Wallace et al.): DPO on human-labelled pairs with a frozen reference UNet.
// Paper defaults (SD1.5, launchers/sd15.sh): β 5000 (−½β inside the sigmoid), lr 1e-8 × 128 accumulation
// (--scale_lr), constant_with_warmup, 500 warmup, 2000 steps. SDXL: add --sdxl (Adafactor, grad checkpointing).
// dotnet fsi recipes/diffusion_dpo.fsx -- --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [train.py flags]
#load "../scripts/_load.fsx"
open _load
open Sudo.Preference
open Sudo.Training

let config, _ = trainConfig []
let trainer = new Trainer(config, Methods.dpo config.beta_dpo)
trainer.Train()
