module Sudo.Cli.Program

open System
open Argu

type InfoArgs =
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Json -> "print the library info as one JSON object."

type BenchArgs =
    | [<MainCommand; ExactlyOnce>] Target of target: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Target _ -> "what to measure: engine, unet, sample, train."

type DemoArgs =
    | Steps of int
    | Seed of int64
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Steps _ -> "training steps (default 300)."
            | Seed _ -> "random seed (default 0)."

type ParityArgs =
    | Model of folder: string
    | Io of file: string
    | Component of name: string
    | Tolerance of factor: float
    | Tokenizer of folder: string
    | Cases of file: string
    | Schedulers of file: string
    | Pipeline of folder: string
    | Losses of file: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a diffusers/transformers component folder (config.json + weights)."
            | Io _ -> "the io.safetensors with in_* inputs and out_*/dbg_* reference outputs."
            | Component _ -> "unet, vae, clip_text, clip_text_proj or clip_full (default: from config.json)."
            | Tolerance _ -> "max |error| <= factor * max(1, max |reference|) (default 1e-4 for fp32 models)."
            | Tokenizer _ -> "a CLIP tokenizer folder (vocab.json, merges.txt, special_tokens_map.json)."
            | Cases _ -> "a golden tokenizer jsonl (prompt, ids, attention_mask, unpadded_ids, *_noftfy)."
            | Schedulers _ -> "a scheduler golden io.safetensors (params.json beside it)."
            | Pipeline _ -> "a golden pipeline folder (with params.json); give its io.safetensors with --io."
            | Losses _ -> "a losses golden io.safetensors (params.json and the UNets it names beside it)."

type SampleArgs =
    | [<Mandatory>] Model of folder: string
    | Prompt of text: string
    | Prompts of file: string
    | Negative_Prompt of text: string
    | Steps of int
    | Guidance of float
    | Scheduler of name: string
    | Seed of int64
    | Images_Per_Prompt of int
    | Height of int
    | Width of int
    | Eta of float
    | Dtype of name: string
    | Device of name: string
    | Batch_Size of int
    | [<CustomCommandLine("--allow_slow_bf16"); AltCommandLine("--allow-slow-bf16")>] Sample_Allow_Slow_Bf16
    | [<Mandatory>] Out of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a diffusers pipeline folder (or an org/name in the local Hugging Face cache)."
            | Prompt _ -> "the prompt."
            | Prompts _ -> "a text file with one prompt per line."
            | Negative_Prompt _ -> "negative prompt for every image."
            | Steps _ -> "denoising steps (default 30)."
            | Guidance _ -> "classifier-free guidance scale (default 7.5)."
            | Scheduler _ -> "ddim, ddpm, euler or dpmpp2m (default: the pipeline's)."
            | Seed _ -> "base seed; image i uses seed + i (default 0)."
            | Images_Per_Prompt _ -> "images per prompt (default 1)."
            | Height _ -> "image height (multiple of 8)."
            | Width _ -> "image width (multiple of 8)."
            | Eta _ -> "DDIM eta (default 0)."
            | Dtype _ -> "float32 or bfloat16 (fp16 only on CUDA)."
            | Device _ -> "cpu or cuda:N (default cpu)."
            | Batch_Size _ -> "images denoised together (default 4; never changes an image)."
            | Sample_Allow_Slow_Bf16 -> "run --dtype bf16 on a CPU even where a probe measures it slower than fp32 (refused otherwise)."
            | Out _ -> "output folder."

type TrainArgs =
    | [<CustomCommandLine("--method")>] Method of name: string
    | [<CustomCommandLine("--pretrained_model_name_or_path"); Mandatory>] Pretrained_Model of path: string
    | [<CustomCommandLine("--dataset_name")>] Dataset_Name of folder: string
    | [<CustomCommandLine("--cache_dir")>] Cache_Dir of dir: string
    | [<CustomCommandLine("--output_dir")>] Output_Dir of dir: string
    | [<CustomCommandLine("--train_batch_size")>] Train_Batch_Size of int
    | [<CustomCommandLine("--gradient_accumulation_steps")>] Gradient_Accumulation_Steps of int
    | [<CustomCommandLine("--max_train_steps")>] Max_Train_Steps of int
    | [<CustomCommandLine("--learning_rate")>] Learning_Rate of float
    | [<CustomCommandLine("--scale_lr")>] Scale_Lr
    | [<CustomCommandLine("--lr_scheduler")>] Lr_Scheduler of name: string
    | [<CustomCommandLine("--lr_warmup_steps")>] Lr_Warmup_Steps of int
    | [<CustomCommandLine("--checkpointing_steps")>] Checkpointing_Steps of int
    | [<CustomCommandLine("--resume_from_checkpoint")>] Resume_From_Checkpoint of string
    | [<CustomCommandLine("--beta_dpo")>] Beta_Dpo of float
    | [<CustomCommandLine("--seed")>] Train_Seed of int64
    | [<CustomCommandLine("--sdxl")>] Sdxl
    | [<CustomCommandLine("--sft")>] Sft
    | [<CustomCommandLine("--use_adafactor")>] Use_Adafactor
    | [<CustomCommandLine("--resolution")>] Resolution of int
    | [<CustomCommandLine("--random_crop")>] Random_Crop
    | [<CustomCommandLine("--no_hflip")>] No_Hflip
    | [<CustomCommandLine("--gradient_checkpointing")>] Gradient_Checkpointing
    | [<CustomCommandLine("--dataloader_num_workers")>] Dataloader_Num_Workers of int
    | [<CustomCommandLine("--mixed_precision")>] Mixed_Precision of string
    | [<CustomCommandLine("--allow_slow_bf16")>] Allow_Slow_Bf16
    | [<CustomCommandLine("--proportion_empty_prompts")>] Proportion_Empty_Prompts of float
    | [<CustomCommandLine("--lora_rank")>] Lora_Rank of int
    | [<CustomCommandLine("--sudo_derangement")>] Sudo_Derangement
    | [<CustomCommandLine("--device")>] Train_Device of string
    | [<CustomCommandLine("--cache_latents")>] Cache_Latents
    | [<CustomCommandLine("--ema_decay")>] Ema_Decay of float
    | [<CustomCommandLine("--choice_model")>] Choice_Model of folder: string
    | [<CustomCommandLine("--prompts_file")>] Prompts_File of file: string
    | [<CustomCommandLine("--scorer")>] Scorer of folder: string
    | [<CustomCommandLine("--spo_threshold")>] Spo_Threshold of float
    | [<CustomCommandLine("--validation_prompts_file")>] Validation_Prompts_File of file: string
    | [<CustomCommandLine("--validation_steps")>] Validation_Steps of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Method _ -> "dpo (default), sft, sudo or spo."
            | Pretrained_Model _ -> "base diffusers pipeline folder (or org/name in the local Hugging Face cache)."
            | Dataset_Name _ -> "a local folder with pairs.jsonl/pairs.csv and the images (no downloads)."
            | Cache_Dir _ -> "Hugging Face cache to resolve org/name model ids in."
            | Output_Dir _ -> "checkpoints, metrics and final weights (default sd-model-finetuned)."
            | Train_Batch_Size _ -> "pairs per micro-batch (default 1)."
            | Gradient_Accumulation_Steps _ -> "micro-batches per optimizer step (default 1)."
            | Max_Train_Steps _ -> "optimizer steps (default 2000)."
            | Learning_Rate _ -> "learning rate (default 1e-8, as upstream)."
            | Scale_Lr -> "multiply the learning rate by accumulation × batch size."
            | Lr_Scheduler _ -> "constant, constant_with_warmup (default), linear, cosine."
            | Lr_Warmup_Steps _ -> "warmup steps (default 500)."
            | Checkpointing_Steps _ -> "save a checkpoint every N steps (default 500)."
            | Resume_From_Checkpoint _ -> "latest (default), a checkpoint path, or none."
            | Beta_Dpo _ -> "DPO beta (default 5000; −½β inside the sigmoid)."
            | Train_Seed _ -> "seed (default 0)."
            | Sdxl -> "the model is SDXL (Adafactor and gradient checkpointing, as upstream)."
            | Sft -> "train SFT instead of DPO (same as --method sft)."
            | Use_Adafactor -> "Adafactor instead of AdamW (no explicit gradient clipping, as upstream)."
            | Resolution _ -> "training resolution (default: the model's sample size)."
            | Random_Crop -> "random instead of center crop."
            | No_Hflip -> "no random horizontal flip."
            | Gradient_Checkpointing -> "recompute UNet blocks in backward."
            | Dataloader_Num_Workers _ -> "accepted for compatibility; images are decoded in the training thread."
            | Mixed_Precision _ -> "no or bf16 (fp16 needs CUDA); bf16 on a CPU without bf16 kernels is refused unless --allow_slow_bf16."
            | Allow_Slow_Bf16 -> "run bf16 on a CPU even where a probe measures it slower than fp32 (a warning instead of an error)."
            | Proportion_Empty_Prompts _ -> "caption dropout probability (default 0.2)."
            | Lora_Rank _ -> "train LoRA adapters of this rank instead of the full UNet (reference = adapters off)."
            | Sudo_Derangement -> "SUDO: never pair a winner with itself (upstream allows it)."
            | Train_Device _ -> "cpu or cuda:N."
            | Cache_Latents -> "cache VAE posteriors and text embeddings (needs --no_hflip, no --random_crop)."
            | Ema_Decay _ -> "keep an EMA of the trained weights with this decay (saved as unet_ema/)."
            | Choice_Model _ -> "AI feedback: a CLIPModel folder (PickScore/HPS-like) whose preferences replace the labels."
            | Prompts_File _ -> "spo: a text file of prompts (one per line; ../shared/prompts has the papers' sets)."
            | Scorer _ -> "spo: the CLIPModel folder the step-aware preference model starts from (e.g. PickScore), or world-judge (the shapes world's judge on x̂₀)."
            | Spo_Threshold _ -> "spo: keep a pair when the softmax score gap exceeds this (default 0.3 SD-1.5, 0.4 SDXL)."
            | Validation_Prompts_File _ -> "prompts sampled into output_dir/samples/step-N.png (fixed seeds)."
            | Validation_Steps _ -> "sample the validation prompts every N steps."

type QuickstartArgs =
    | Out of path: string
    | Methods of names: string
    | Steps of int
    | Pairs of int
    | Eval_Prompts of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "report folder (default runs/quickstart)."
            | Methods _ -> "comma-separated methods (default sft,dpo,sudo; also dpo_shuffled, dpo_snr, spo)."
            | Steps _ -> "training steps per method (default 300)."
            | Pairs _ -> "train prompts turned into judge-labelled pairs (default 300)."
            | Eval_Prompts _ -> "held-out prompts per split (default 40), each with 2 sampling seeds."

type WorldArgs =
    | [<MainCommand; ExactlyOnce>] Action of action: string
    | Split of string
    | N of int
    | [<AltCommandLine("-p")>] Prompt of string
    | Image of path: string
    | Out of path: string
    | Size of int
    | Seed of int
    | Model of folder: string
    | Vae_Steps of int
    | Unet_Steps of int
    | Label_Noise of float
    | Tie_Margin of float
    | Base of folder: string
    | Methods of names: string
    | Seeds of list: string
    | Steps of int
    | Pairs of int
    | Eval_Prompts of int
    | Learning_Rate of float
    | Beta of float
    | Batch of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Action _ -> "judge (measure the judge), prompts (--split --n), render (--prompt --out), score (--image --prompt), base (--out: pre-train the tiny base pipeline), eval (--model --split --n), pairs (--model --out --n: judge-labelled pairs), study (--methods --seeds --out: fine-tune each method through its recipe, judge, write report.md + grid.png + curve.png)."
            | Base _ -> "study: the base pipeline folder (default assets/world/base, the shipped base; built when missing)."
            | Methods _ -> "study: comma-separated methods: sft, dpo, sudo, dpo_shuffled, dpo_snr (default dpo,sudo)."
            | Seeds _ -> "study: comma-separated training seeds (default 0; ≥ 3 for intervals over seeds)."
            | Steps _ -> "study: training steps per method (default 300)."
            | Pairs _ -> "study: train prompts turned into judge-labelled pairs (default 400)."
            | Eval_Prompts _ -> "study: held-out prompts per split (default 48), each sampled with 2 seeds."
            | Learning_Rate _ -> "study: learning rate of every method (default 2e-5)."
            | Beta _ -> "study: DPO β (default 5000, −½β inside the sigmoid as Diffusion-DPO)."
            | Batch _ -> "study: pairs per step (default 8)."
            | Label_Noise _ -> "pairs: probability of flipping a label (default 0.1)."
            | Tie_Margin _ -> "pairs: judge gaps below this are ties, dropped in training (default 0.02)."
            | Model _ -> "eval: a pipeline folder to sample and judge."
            | Vae_Steps _ -> "base: VAE training steps (default 1500)."
            | Unet_Steps _ -> "base: UNet + text encoder training steps (default 1500)."
            | Split _ -> "prompts: train, validation or test (test holds unseen colour-shape combinations)."
            | N _ -> "prompts: how many (default 100); judge: images (default 300)."
            | Prompt _ -> "a shapes-world prompt, e.g. \"a small red circle left of a large blue square on a white background\"."
            | Image _ -> "score: the PNG/JPEG to judge."
            | Out _ -> "render: the PNG to write."
            | Size _ -> "image side in pixels (default 64)."
            | Seed _ -> "layout / prompt seed (default 0)."

[<RequireSubcommand>]
type CliArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Quickstart of ParseResults<QuickstartArgs>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoArgs>
    | [<CliPrefix(CliPrefix.None)>] Parity of ParseResults<ParityArgs>
    | [<CliPrefix(CliPrefix.None)>] Sample of ParseResults<SampleArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] World of ParseResults<WorldArgs>
    | Torch_Threads of int
    | Blas_Threads of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Info _ -> "libtorch version, build flavour, devices, threads and BLAS."
            | Bench _ -> "print speed figures as JSON (sudoml bench engine)."
            | Quickstart _ -> "the main job: shapes-world base (shipped), judge-labelled pairs, SFT / Diffusion-DPO / SUDO through their recipes, evaluation; writes runs/quickstart/report.md, grid.png, curve.png."
            | Demo _ -> "a small real training run (conv net on a synthetic task)."
            | Parity _ -> "compare a component with golden outputs of the reference libraries."
            | Sample _ -> "text-to-image: PNGs, grid.png and images.jsonl."
            | Train _ -> "fine-tune with Diffusion-DPO, SFT or SUDO (upstream flag names)."
            | World _ -> "the synthetic shapes world: prompts, ground-truth renders and the judge."
            | Torch_Threads _ -> "libtorch intra-op threads (default: all cores)."
            | Blas_Threads _ -> "OpenBLAS threads (default: all cores)."

let trainSpo (a: ParseResults<TrainArgs>) =
    let prompts =
        match a.TryGetResult Prompts_File with
        | Some f -> Sudo.Diffusion.Sampling.ReadPrompts f
        | None -> raise (ArgumentException "--method spo needs --prompts_file (one prompt per line)")
    let scorerFolder =
        match a.TryGetResult Scorer with
        | Some s -> s
        | None -> raise (ArgumentException "--method spo needs --scorer <CLIPModel folder> (PickScore-like) for the step-aware preference model, or --scorer world-judge (the shapes world's oracle)")
    let out = a.GetResult(Output_Dir, defaultValue = "sd-model-finetuned")
    let steps = a.GetResult(Max_Train_Steps, defaultValue = 2000)
    let batch = a.GetResult(Train_Batch_Size, defaultValue = 2)
    let device = Sudo.Torch.Device.Parse(a.GetResult(Train_Device, defaultValue = "cpu"))
    use pipe = Sudo.Diffusion.StableDiffusionPipeline.from_pretrained(a.GetResult Pretrained_Model, "ddim", Sudo.Torch.ScalarType.Float32, device, cache_dir = (a.TryGetResult Cache_Dir |> Option.toObj))
    let res = a.GetResult(Resolution, defaultValue = pipe.unet.config.sample_size * pipe.vae_scale_factor)
    // SPO's per-model defaults (SDXL: k = 2, threshold 0.4, MSPO inner steps); flags override resolution and threshold.
    let preset = if pipe.IsSDXL then Sudo.Training.SpoConfig.SDXL else Sudo.Training.SpoConfig.SD15
    let cfg = Sudo.Training.SpoConfig(num_inference_steps = preset.num_inference_steps, divert_start_step = preset.divert_start_step,
                                      num_sample_each_step = preset.num_sample_each_step, num_inner_step = preset.num_inner_step,
                                      resolution = res, threshold = a.GetResult(Spo_Threshold, defaultValue = preset.threshold))
    let rank, lr, seed = a.GetResult(Lora_Rank, defaultValue = 4), a.GetResult(TrainArgs.Learning_Rate, defaultValue = 6e-5), a.GetResult(Train_Seed, defaultValue = 0L)
    use spm = if scorerFolder = "world-judge" then null else new Sudo.Preference.StepAwarePreferenceModel(Sudo.Models.CLIPModel.from_pretrained(scorerFolder))
    use trainer =
        if isNull spm then new Sudo.Training.SpoTrainer(pipe, Sudo.Worlds.Shapes.WorldScorer.JudgeReward(), cfg, lora_rank = rank, learning_rate = lr, seed = seed)
        else new Sudo.Training.SpoTrainer(pipe, spm, pipe.components.tokenizer, cfg, lora_rank = rank, learning_rate = lr, seed = seed)
    printfn "spo: %d prompts, DDIM %d steps eta %.1f CFG %.1f, k = %d, inner steps %d, threshold %.2f, LoRA rank %d; %d optimizer steps" prompts.Count cfg.num_inference_steps cfg.eta cfg.guidance_scale cfg.num_sample_each_step cfg.num_inner_step cfg.threshold (a.GetResult(Lora_Rank, defaultValue = 4)) steps
    let resume = a.GetResult(Resume_From_Checkpoint, defaultValue = "latest") <> "none"
    trainer.Train(prompts, steps, out, batch, checkpointing_steps = a.GetResult(Checkpointing_Steps, defaultValue = 500), resume = resume)
    trainer.lora.save(IO.Path.Combine(out, "lora"))
    printfn "LoRA saved to %s" (IO.Path.Combine(out, "lora"))
    0

[<EntryPoint>]
let main argv =
    let parser = ArgumentParser.Create<CliArgs>(programName = "sudoml")
    try
        let args = parser.ParseCommandLine(argv)
        args.TryGetResult Torch_Threads |> Option.iter Sudo.Torch.torch.set_num_threads
        args.TryGetResult Blas_Threads |> Option.iter Sudo.Torch.torch.set_blas_threads
        match args.GetSubCommand() with
        | Info a -> Commands.info (a.Contains Json)
        | Bench a ->
            match a.GetResult Target with
            | "engine" -> Commands.benchEngine ()
            | "unet" -> Commands.benchUnet ()
            | "sample" -> Commands.benchSample ()
            | "train" -> Commands.benchTrain ()
            | other ->
                eprintfn "sudoml bench: unknown target '%s' (expected: engine, unet, sample, train)" other
                2
        | World a ->
            let size = a.GetResult(WorldArgs.Size, defaultValue = 64)
            let seed = a.GetResult(WorldArgs.Seed, defaultValue = 0)
            let need (what: string) (v: 'T option) = v |> Option.defaultWith (fun () -> raise (ArgumentException(sprintf "sudoml world %s needs %s" (a.GetResult Action) what)))
            match a.GetResult Action with
            | "judge" ->
                let r = Sudo.Worlds.Shapes.JudgeEvaluation.Run(a.GetResult(N, defaultValue = 300), size, seed)
                printfn "%s" (Text.Json.JsonSerializer.Serialize(r, Text.Json.JsonSerializerOptions(WriteIndented = true)))
                0
            | "prompts" ->
                for p in Sudo.Worlds.Shapes.World.Prompts(a.GetResult(Split, defaultValue = "train"), a.GetResult(N, defaultValue = 100), seed) do printfn "%s" p
                0
            | "render" ->
                let out = need "--out <file.png>" (a.TryGetResult Out)
                Sudo.Data.ImageCodecs.Save(Sudo.Worlds.Shapes.World.Render(need "--prompt" (a.TryGetResult Prompt), size, seed), out)
                printfn "wrote %s" out
                0
            | "score" ->
                let r = Sudo.Worlds.Shapes.Judge.Score(Sudo.Data.ImageCodecs.Load(need "--image <file>" (a.TryGetResult Image)), need "--prompt" (a.TryGetResult Prompt))
                for kv in r.attributes do printfn "%-10s %.2f" kv.Key kv.Value
                printfn "quality    %.4f\nscore      %.4f" r.quality r.score
                0
            | "base" ->
                let d = Sudo.Worlds.Shapes.WorldBaseConfig()
                let cfg = Sudo.Worlds.Shapes.WorldBaseConfig(vae_steps = a.GetResult(Vae_Steps, defaultValue = d.vae_steps), unet_steps = a.GetResult(Unet_Steps, defaultValue = d.unet_steps), seed = int64 seed)
                Sudo.Worlds.Shapes.WorldBase.Build(a.GetResult(Out, defaultValue = "runs/world/base"), cfg) |> ignore
                0
            | "eval" ->
                use pipe = Sudo.Diffusion.StableDiffusionPipeline.from_pretrained(need "--model <pipeline folder>" (a.TryGetResult WorldArgs.Model), "ddim")
                let prompts = Sudo.Worlds.Shapes.World.Prompts(a.GetResult(Split, defaultValue = "validation"), a.GetResult(N, defaultValue = 32), 0)
                let rs = Sudo.Worlds.Shapes.WorldBase.Evaluate(pipe, prompts, seed)
                printfn "%d %s prompts, seed %d: mean judge score %.4f" prompts.Count (a.GetResult(Split, defaultValue = "validation")) seed (rs |> Seq.averageBy (fun r -> r.score))
                for k in [ "background"; "color"; "shape"; "size"; "count"; "relation"; "no_extra" ] do
                    let v = rs |> Seq.choose (fun r -> match r.attributes.TryGetValue k with | true, v -> Some v | _ -> None) |> Seq.toArray
                    if v.Length > 0 then printfn "  %-10s %.3f (n = %d)" k (Array.average v) v.Length
                0
            | "pairs" ->
                use pipe = Sudo.Diffusion.StableDiffusionPipeline.from_pretrained(need "--model <pipeline folder>" (a.TryGetResult WorldArgs.Model), "ddim")
                let prompts = Sudo.Worlds.Shapes.World.Prompts(a.GetResult(Split, defaultValue = "train"), a.GetResult(N, defaultValue = 200), seed)
                let d = Sudo.Worlds.Shapes.WorldPairsConfig()
                let cfg = Sudo.Worlds.Shapes.WorldPairsConfig(label_noise = a.GetResult(Label_Noise, defaultValue = d.label_noise), tie_margin = a.GetResult(Tie_Margin, defaultValue = d.tie_margin), seed = seed)
                let s = Sudo.Worlds.Shapes.WorldPairs.Make(pipe, prompts, a.GetResult(Out, defaultValue = "runs/world/pairs"), cfg)
                printfn "%d pairs in %s: %d ties (dropped in training), %d flipped labels, mean judge gap %.4f" s.pairs s.folder s.ties s.flipped s.mean_gap
                0
            | "study" ->
                let d = Sudo.Worlds.Shapes.WorldStudyConfig()
                let ints (x: string) = x.Split(',', System.StringSplitOptions.RemoveEmptyEntries) |> Array.map (fun v -> int (v.Trim()))
                let cfg =
                    Sudo.Worlds.Shapes.WorldStudyConfig(
                        output_dir = a.GetResult(Out, defaultValue = "runs/world/study"),
                        base_model = a.GetResult(Base, defaultValue = d.base_model),
                        methods = (a.GetResult(Methods, defaultValue = String.concat "," d.methods)).Split(',', System.StringSplitOptions.RemoveEmptyEntries),
                        seeds = (match a.TryGetResult Seeds with Some s -> ints s | None -> d.seeds),
                        max_train_steps = a.GetResult(Steps, defaultValue = d.max_train_steps),
                        pair_prompts = a.GetResult(Pairs, defaultValue = d.pair_prompts),
                        eval_prompts = a.GetResult(Eval_Prompts, defaultValue = d.eval_prompts),
                        learning_rate = a.GetResult(WorldArgs.Learning_Rate, defaultValue = d.learning_rate),
                        beta_dpo = a.GetResult(Beta, defaultValue = d.beta_dpo),
                        train_batch_size = a.GetResult(Batch, defaultValue = d.train_batch_size),
                        label_noise = a.GetResult(Label_Noise, defaultValue = d.label_noise),
                        tie_margin = a.GetResult(Tie_Margin, defaultValue = d.tie_margin))
                Sudo.Worlds.Shapes.WorldStudy.Run(cfg) |> ignore
                0
            | other ->
                eprintfn "sudoml world: unknown action '%s' (expected: judge, prompts, render, score, base, eval, pairs, study)" other
                2
        | Quickstart a ->
            let envSeconds name = match System.Environment.GetEnvironmentVariable name with | null | "" -> System.Nullable() | v -> System.Nullable(float v)
            let d = Sudo.Worlds.Shapes.WorldStudyConfig()
            let cfg =
                Sudo.Worlds.Shapes.WorldStudyConfig(
                    output_dir = a.GetResult(QuickstartArgs.Out, defaultValue = "runs/quickstart"),
                    methods = a.GetResult(QuickstartArgs.Methods, defaultValue = "sft,dpo,sudo").Split(',', System.StringSplitOptions.RemoveEmptyEntries),
                    max_train_steps = a.GetResult(QuickstartArgs.Steps, defaultValue = d.max_train_steps),
                    pair_prompts = a.GetResult(QuickstartArgs.Pairs, defaultValue = 300),
                    eval_prompts = a.GetResult(QuickstartArgs.Eval_Prompts, defaultValue = 40),
                    setup_seconds = envSeconds "SUDO_SETUP_SECONDS", build_seconds = envSeconds "SUDO_BUILD_SECONDS")
            let r = Sudo.Worlds.Shapes.WorldStudy.Run(cfg)
            printfn "\n%s" r.markdown
            0
        | Demo a -> Commands.demo (a.GetResult(DemoArgs.Steps, defaultValue = 300)) (a.GetResult(DemoArgs.Seed, defaultValue = 0L))
        | Parity a ->
            match a.TryGetResult ParityArgs.Model, a.TryGetResult ParityArgs.Io, a.TryGetResult ParityArgs.Tokenizer, a.TryGetResult ParityArgs.Cases with
            | _ when a.Contains ParityArgs.Schedulers -> Commands.paritySchedulers (a.GetResult ParityArgs.Schedulers) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Losses -> Commands.parityLosses (a.GetResult ParityArgs.Losses) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Pipeline ->
                let folder = a.GetResult ParityArgs.Pipeline
                Commands.parityPipeline folder (a.GetResult(ParityArgs.Io, defaultValue = System.IO.Path.Combine(folder, "io.safetensors")))
            | Some m, Some io, None, None -> Commands.parityModel m io (a.TryGetResult ParityArgs.Component) (a.TryGetResult ParityArgs.Tolerance)
            | None, None, Some t, Some c -> Commands.parityTokenizer t c
            | _ ->
                eprintfn "sudoml parity: give --model <folder> --io <io.safetensors>, --tokenizer <folder> --cases <file.jsonl>, or --schedulers <io.safetensors>"
                2
        | Sample a ->
            let prompts =
                match a.TryGetResult SampleArgs.Prompt, a.TryGetResult Prompts with
                | Some p, None -> ResizeArray [ p ]
                | None, Some f -> Sudo.Diffusion.Sampling.ReadPrompts f
                | _ -> raise (ArgumentException "give exactly one of --prompt and --prompts")
            let settings =
                Sudo.Diffusion.SampleSettings(
                    model = a.GetResult SampleArgs.Model,
                    prompts = prompts,
                    out_dir = a.GetResult SampleArgs.Out,
                    negative_prompt = (a.TryGetResult Negative_Prompt |> Option.toObj),
                    steps = a.GetResult(SampleArgs.Steps, defaultValue = 30),
                    guidance = a.GetResult(Guidance, defaultValue = 7.5),
                    scheduler = (a.TryGetResult Scheduler |> Option.toObj),
                    seed = a.GetResult(SampleArgs.Seed, defaultValue = 0L),
                    images_per_prompt = a.GetResult(Images_Per_Prompt, defaultValue = 1),
                    height = (a.TryGetResult Height |> Option.toNullable),
                    width = (a.TryGetResult Width |> Option.toNullable),
                    eta = a.GetResult(Eta, defaultValue = 0.0),
                    dtype = a.GetResult(Dtype, defaultValue = "float32"),
                    device = a.GetResult(Device, defaultValue = "cpu"),
                    batch_size = a.GetResult(Batch_Size, defaultValue = 4),
                    allow_slow_bf16 = a.Contains Sample_Allow_Slow_Bf16)
            Commands.sample settings
        | Train a ->
            let methodName =
                match a.TryGetResult Method, a.Contains Sft with
                | Some m, true when m <> "sft" -> raise (ArgumentException(sprintf "--sft contradicts --method %s" m))
                | _, true -> "sft"
                | Some m, false -> m
                | None, false -> "dpo"
            if methodName = "spo" then trainSpo a else
            let dataset =
                match a.TryGetResult Dataset_Name with
                | Some d -> d
                | None -> raise (ArgumentException "--dataset_name <local pair folder> is required for dpo, sft and sudo")
            if not (IO.Directory.Exists dataset) then
                raise (ArgumentException(sprintf "--dataset_name %s: not a local folder. Sudo never downloads datasets: put the pair images and a pairs.jsonl (caption, winner, loser — or image_0, image_1, label_0) in a folder and pass its path" dataset))
            if a.Contains Dataloader_Num_Workers then eprintfn "note: --dataloader_num_workers is accepted for compatibility; images are decoded in the training thread"
            let cfg =
                Sudo.Training.TrainConfig(
                    method = methodName,
                    pretrained_model_name_or_path = a.GetResult Pretrained_Model,
                    dataset_name = dataset,
                    cache_dir = (a.TryGetResult Cache_Dir |> Option.toObj),
                    output_dir = a.GetResult(Output_Dir, defaultValue = "sd-model-finetuned"),
                    train_batch_size = a.GetResult(Train_Batch_Size, defaultValue = 1),
                    gradient_accumulation_steps = a.GetResult(Gradient_Accumulation_Steps, defaultValue = 1),
                    max_train_steps = a.GetResult(Max_Train_Steps, defaultValue = 2000),
                    learning_rate = a.GetResult(TrainArgs.Learning_Rate, defaultValue = 1e-8),
                    scale_lr = a.Contains Scale_Lr,
                    lr_scheduler = a.GetResult(Lr_Scheduler, defaultValue = "constant_with_warmup"),
                    lr_warmup_steps = a.GetResult(Lr_Warmup_Steps, defaultValue = 500),
                    checkpointing_steps = a.GetResult(Checkpointing_Steps, defaultValue = 500),
                    resume_from_checkpoint = (match a.GetResult(Resume_From_Checkpoint, defaultValue = "latest") with "none" -> null | r -> r),
                    beta_dpo = a.GetResult(Beta_Dpo, defaultValue = 5000.0),
                    seed = a.GetResult(Train_Seed, defaultValue = 0L),
                    sdxl = a.Contains Sdxl,
                    use_adafactor = a.Contains Use_Adafactor,
                    resolution = (a.TryGetResult Resolution |> Option.toNullable),
                    random_crop = a.Contains Random_Crop,
                    no_hflip = a.Contains No_Hflip,
                    gradient_checkpointing = a.Contains Gradient_Checkpointing,
                    mixed_precision = a.GetResult(Mixed_Precision, defaultValue = "no"),
                    allow_slow_bf16 = a.Contains Allow_Slow_Bf16,
                    proportion_empty_prompts = a.GetResult(Proportion_Empty_Prompts, defaultValue = 0.2),
                    lora_rank = a.GetResult(Lora_Rank, defaultValue = 0),
                    sudo_derangement = a.Contains Sudo_Derangement,
                    device = a.GetResult(Train_Device, defaultValue = "cpu"),
                    cache_latents = a.Contains Cache_Latents,
                    ema_decay = a.GetResult(Ema_Decay, defaultValue = 0.0),
                    choice_model = (a.TryGetResult Choice_Model |> Option.toObj),
                    validation_prompts = (a.TryGetResult Validation_Prompts_File |> Option.map (fun f -> (Sudo.Diffusion.Sampling.ReadPrompts f).ToArray()) |> Option.toObj),
                    validation_steps = a.GetResult(Validation_Steps, defaultValue = 0))
            use trainer = new Sudo.Training.Trainer(cfg)
            trainer.Train()
            0
        | _ ->
            eprintfn "%s" (parser.PrintUsage())
            2
    with
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? Sudo.Torch.TorchException as e ->
        eprintfn "sudoml: libtorch error in %s: %s" e.Op e.NativeMessage
        1
    | :? ArgumentException as e ->
        eprintfn "sudoml: %s" e.Message
        2
    | :? System.IO.IOException as e ->
        eprintfn "sudoml: %s" e.Message
        1
    | :? System.IO.InvalidDataException as e ->
        eprintfn "sudoml: %s" e.Message
        1
    | :? NotSupportedException as e ->
        eprintfn "sudoml: %s" e.Message
        1
    | :? FormatException as e ->
        eprintfn "sudoml: %s" e.Message
        2
    | :? InvalidOperationException as e ->
        eprintfn "sudoml: %s" e.Message
        1
