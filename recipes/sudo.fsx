// SUDO / Self-DPO (Peng et al.): the loser of each pair is another winner of the micro-batch; 0.5·DPO + 0.5·MSE.
// Defaults are train.py's (SUDO forks it): β 5000, lr 1e-8, constant_with_warmup, 500 warmup, 2000 steps.
// --sudo_derangement forbids self-pairs (upstream's randperm allows them); SDXL: add --sdxl.
// dotnet fsi recipes/sudo.fsx -- --pretrained_model_name_or_path <pipeline> --dataset_name <pair folder> [train.py flags]
#load "../scripts/_load.fsx"
open _load
open Sudo.Preference
open Sudo.Training

let config, _ = trainConfig []
let trainer = new Trainer(config, Methods.Preset("sudo", config.MethodSettings))
trainer.Train()
