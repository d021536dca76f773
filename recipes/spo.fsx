// SPO (step-aware preference optimization): online pairs from a step-wise resampler scored by a step-aware
// preference model; per-step DPO on DDIM transition log-probs (ratio clamp [0.9, 1.1], β = 10), LoRA.
// Paper defaults (SD-1.5): 20 DDIM steps, η = 1, CFG 5, κ = 750 (divert_start_step 4), k = 4, threshold 0.3,
// LoRA rank 4, lr 6e-5. SDXL (SpoConfig.SDXL) uses k = 2, threshold 0.4 and 3 MSPO inner steps (inner_steps=3).
// dotnet fsi recipes/spo.fsx -- --model <pipeline> --scorer <CLIPModel or step-aware folder> --prompts <file> [--rounds 10]
// Without --scorer a tiny random CLIP scorer is used (exercises the code path; its preferences are noise).
// --scorer world-judge scores x̂₀ with the shapes world's judge (the oracle a learned scorer approaches).
#load "../scripts/_load.fsx"
open _load
open Sudo.Torch
open Sudo.Models
open Sudo.Preference
open Sudo.Diffusion
open Sudo.Training
open Sudo.Worlds.Shapes

let model = arg "model" "../shared/golden/pipe_sd15"
let rounds = int (arg "rounds" "5")
let out = arg "output_dir" "runs/spo"
let checkpointRounds = int (arg "checkpointing_rounds" "0")
let promptsFile = arg "prompts" ""
let prompts =
    if promptsFile = "" then [| "a red fox in the snow"; "a lighthouse at dusk"; "a bowl of ramen"; "an astronaut riding a horse" |]
    else (Sampling.ReadPrompts promptsFile).ToArray()
torch.manual_seed (int64 (arg "seed" "0"))
let pipe = StableDiffusionPipeline.from_pretrained(model, "ddim")
let scorer = arg "scorer" ""
let spm () =
    match scorer with
    | "" ->
        new StepAwarePreferenceModel(
            new CLIPModel(CLIPConfig(text_config = CLIPTextConfig(vocab_size = 49408, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, hidden_act = "gelu", eos_token_id = 2),
                                     vision_config = CLIPVisionConfig(hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2, image_size = 16, patch_size = 8, hidden_act = "gelu"),
                                     projection_dim = 8)))
    | folder -> StepAwarePreferenceModel.from_pretrained folder   // a step-aware folder, or a CLIPModel (PickScore) wrapped fresh
let config =
    SpoConfig(num_inference_steps = int (arg "steps" "20"), divert_start_step = int (arg "divert_start_step" "4"),
              num_sample_each_step = int (arg "k" "4"), threshold = float (arg "threshold" "0.3"),
              guidance_scale = float (arg "guidance_scale" "5.0"),
              num_inner_step = int (arg "inner_steps" "0"), resolution = int (arg "resolution" "32"))
let rank, lr, seed = int (arg "lora_rank" "4"), float (arg "learning_rate" "6e-5"), int64 (arg "seed" "0")
let trainer =
    if scorer = "world-judge" then new SpoTrainer(pipe, WorldScorer.JudgeReward(), config, lora_rank = rank, learning_rate = lr, seed = seed)
    else new SpoTrainer(pipe, spm (), pipe.components.tokenizer, config, lora_rank = rank, learning_rate = lr, seed = seed)
let clock = System.Diagnostics.Stopwatch.StartNew()
for r in 1 .. rounds do
    let batch = prompts |> Array.permute (fun i -> (i + r) % prompts.Length) |> Array.truncate (int (arg "prompts_per_round" "2"))
    let m = trainer.Round(batch, int (arg "train_batch_size" "2"))
    if m.Count > 0 then
        let mean k = m |> Seq.averageBy (fun d -> d.[k])
        printfn "round %d: %d pairs, %d steps, loss %.4f, ratio_w %.4f, ratio_l %.4f, acc %.2f" r (int m.[0].["pairs_in_round"]) m.Count (mean "loss") (mean "ratio_w") (mean "ratio_l") (mean "implicit_acc")
    else printfn "round %d: no pair passed the threshold" r
    if checkpointRounds > 0 && r % checkpointRounds = 0 && r < rounds then
        trainer.SaveMergedUnet(System.IO.Path.Combine(out, sprintf "checkpoint-%d" trainer.global_step, "unet"))
trainer.lora.save(System.IO.Path.Combine(out, "lora"))
trainer.SaveMergedUnet(System.IO.Path.Combine(out, "unet"))
Trainer.WriteSummary(out, "spo", trainer.global_step, clock.Elapsed.TotalSeconds)
printfn "LoRA saved to %s/lora (diffusers/PEFT keys + adapter_config.json), merged UNet to %s/unet" out out
