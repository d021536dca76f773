// SPO (step-aware preference optimization): online pairs from a step-wise resampler scored by a step-aware
// preference model; per-step DPO on DDIM transition log-probs (ratio clamp [0.9, 1.1], β = 10), LoRA.
// Defaults are SPO's (LoRA rank 4, lr 6e-5); the sampling preset comes from the model (SD-1.5: 20 DDIM steps,
// η = 1, CFG 5, κ = 750, k = 4, threshold 0.3; SDXL: k = 2, threshold 0.4, 3 MSPO inner steps), each overridable.
// Resumable like every run (checkpoint-N/, refused when settings change).
// dotnet fsi recipes/spo.fsx -- --pretrained_model_name_or_path <pipeline> --scorer <SPO step-aware .bin or folder> --prompts_file <file> [flags]
// (a plain CLIPModel such as PickScore needs --scorer_plain_clip true: untrained time conditioning, SPO's weaker ablation)
// --scorer world-judge scores x̂₀ with the shapes world's judge (the oracle a learned scorer approaches).
#load "../scripts/_load.fsx"
open _load
open Sudo.Training

let config, _ = spoConfig []
let prompts =
    match config.prompts_file with
    | null -> failwith "--prompts_file <one prompt per line> is required (../shared/prompts has the papers' sets)"
    | f -> Sudo.Diffusion.Sampling.ReadPrompts f
let trainer = SpoTrainer.Open(config, Sudo.Worlds.Shapes.WorldScorer.Named config.scorer)
trainer.Train(prompts)
trainer.SaveMergedUnet(System.IO.Path.Combine(config.output_dir, "unet"))
printfn "LoRA in %s/lora (diffusers/PEFT keys + adapter_config.json), merged UNet in %s/unet" config.output_dir config.output_dir
