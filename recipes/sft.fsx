// SFT baseline (Diffusion-DPO --sft): plain denoising loss on the preferred images; the paper uses lr 1e-9.
// Defaults are train.py's (lr 1e-8, constant_with_warmup, 500 warmup, 2000 steps); SDXL: add --sdxl.
// dotnet fsi recipes/sft.fsx -- --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [train.py flags]
#load "../scripts/_load.fsx"
open _load
open Sudo.Preference
open Sudo.Training

let config, _ = trainConfig []
let trainer = new Trainer(config, Methods.sft ())
trainer.Train()
