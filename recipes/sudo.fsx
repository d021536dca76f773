// SUDO / Self-DPO (Peng et al.): the loser of each pair is another winner of the micro-batch; 0.5·DPO + 0.5·MSE.
// Paper defaults (SD1.5): β 5000 (−½β inside the sigmoid), lr 1e-8 × 128 accumulation (--scale_lr),
// constant_with_warmup, 500 warmup, 2000 steps. SDXL: add --sdxl true (Adafactor, grad checkpointing).
// dotnet fsi recipes/sudo.fsx -- --model <pipeline> --data <pair folder> [--name value ...]
#load "../scripts/_load.fsx"
open _load
open Sudo.Training

let trainer = new Trainer(offlineConfig "sudo" "runs/sudo")
trainer.Train()
