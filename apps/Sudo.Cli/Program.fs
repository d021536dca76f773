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
    | [<MainCommand; ExactlyOnce>] Target of target: string list
    | [<CustomCommandLine("--config-json")>] B_Config_Json of string
    | [<CustomCommandLine("--size")>] B_Size of int
    | [<CustomCommandLine("--batch")>] B_Batch of int
    | [<CustomCommandLine("--sample-batch")>] B_Sample_Batch of int
    | [<CustomCommandLine("--grad-ckpt")>] B_Grad_Ckpt
    | [<CustomCommandLine("--train-runs")>] B_Train_Runs of int
    | [<CustomCommandLine("--sample-runs")>] B_Sample_Runs of int
    | [<CustomCommandLine("--full")>] B_Full
    | [<CustomCommandLine("--full-runs")>] B_Full_Runs of int
    | [<CustomCommandLine("--ref-env")>] B_Ref_Env of string
    | [<CustomCommandLine("--out")>] B_Out of string
    | [<CustomCommandLine("--top")>] B_Top of int
    | [<CustomCommandLine("--emulate-avx2")>] B_Emulate_Avx2
    | [<CustomCommandLine("--ref-malloc")>] B_Ref_Malloc of string
    | [<CustomCommandLine("--steps")>] B_Steps of int
    | [<CustomCommandLine("--every")>] B_Every of int
    | [<CustomCommandLine("--model")>] B_Model of string
    | [<CustomCommandLine("--dataset")>] B_Dataset of string
    | [<CustomCommandLine("--method")>] B_Method of string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Target _ ->
                "what to measure: engine, unet, sample, train, data, ddp; soak (RSS and live tensors over a long run); compare [WORKLOAD...] (Sudo vs PyTorch table; "
                + "workloads small, sd15-512, sd15-512-ckpt: all of them by default, the last two with --full); "
                + "profile [small|json] (per-op tables); side [small|json] (one side of compare, JSON)."
            | B_Config_Json _ -> "side/profile json: the UNet config file (e.g. SUDO_SHARED/golden/keys/sd15_unet_config.json)."
            | B_Size _ -> "side/profile: latent size (64 = 512 px)."
            | B_Batch _ -> "side/profile: batch of the forward/backward passes (default 8)."
            | B_Sample_Batch _ -> "side: images per sampling batch (default 4)."
            | B_Grad_Ckpt -> "side/profile: gradient checkpointing in the training passes."
            | B_Train_Runs _ -> "side/compare: timed runs of each training pass (median; compare default 7)."
            | B_Sample_Runs _ -> "side/compare: timed sampling runs (median; compare default 3)."
            | B_Full -> "compare: add the full-size SD1.5 UNet at 512 px (batch 1, one DPO pair, sample batch 1), without and with checkpointing."
            | B_Full_Runs _ -> "compare --full: timed runs of each full-size pass (default 1)."
            | B_Ref_Env _ -> "compare/profile: env.sh of the PyTorch reference (default SUDO_REF_ENV or /tmp/ref/env.sh)."
            | B_Out _ -> "compare: write the rows as JSON here; profile: folder of the tables (default runs/profile)."
            | B_Top _ -> "profile: ops per table (default 30)."
            | B_Emulate_Avx2 -> "compare: both sides use the kernels of an AVX2-only CPU (ATen, OpenBLAS, oneDNN) on a newer CPU."
            | B_Ref_Malloc _ -> "compare/profile: the PyTorch side's allocator: glibc (default, a plain python), tcmalloc or jemalloc (preloaded as PyTorch's torch.backends.xeon.run_cpu launcher does)."
            | B_Steps _ -> "soak: training steps (default 10000)."
            | B_Every _ -> "soak: steps between samples of RSS and live tensors (default 100)."
            | B_Model _ -> "soak: the pipeline folder (default assets/world/base, the shipped shapes-world base)."
            | B_Dataset _ -> "soak: the pair folder (default assets/world/pairs)."
            | B_Method _ -> "soak: dpo (default), sft or sudo."

type DataArgs =
    | [<MainCommand; ExactlyOnce>] Args of action_and_dataset: string list
    | [<CustomCommandLine("--split")>] Split of string
    | [<CustomCommandLine("--cache_dir")>] Cache_Dir of string
    | [<CustomCommandLine("--hub_cache_dir")>] Hub_Cache_Dir of string
    | [<CustomCommandLine("--dataset_config_name")>] Dataset_Config_Name of string
    | [<CustomCommandLine("--dreamlike_pairs_only")>] Dreamlike_Pairs_Only
    | [<CustomCommandLine("--max_train_samples")>] Max_Train_Samples of int
    | [<CustomCommandLine("--seed")>] Data_Seed of int64
    | [<CustomCommandLine("--caption_column")>] Caption_Column of string
    | [<CustomCommandLine("--grid")>] Grid of string
    | [<CustomCommandLine("--sample")>] Sample_Pairs of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Args _ -> "inspect <dataset>: a hub id (with --cache_dir / --hub_cache_dir), a save_to_disk, parquet or pair folder."
            | Split _ -> "split (default train)."
            | Cache_Dir _ -> "the datasets cache (load_dataset's cache_dir)."
            | Hub_Cache_Dir _ -> "the Hub cache root (default HF_HUB_CACHE / HF_HOME/hub)."
            | Dataset_Config_Name _ -> "datasets config (default: default)."
            | Dreamlike_Pairs_Only -> "keep pairs whose two models contain 'dream'."
            | Max_Train_Samples _ -> "keep N pairs as train.py's shuffle(seed).select(range(N))."
            | Data_Seed _ -> "seed for --max_train_samples (default 0)."
            | Caption_Column _ -> "caption column (default caption)."
            | Grid _ -> "PNG of a few winner | loser pairs (default: data_grid.png)."
            | Sample_Pairs _ -> "pairs whose images are decoded for sizes and errors (default 64)."

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

type ConvertArgs =
    | [<Mandatory>] To of format: string
    | [<Mandatory>] Model of path: string
    | Config of folder: string
    | [<Mandatory>] Out of path: string
    | Dtype of dtype: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | To _ -> "single-file (a diffusers pipeline folder → one original-layout .safetensors, as webui and ComfyUI read), diffusers (a single-file .safetensors/.ckpt → a pipeline folder), kohya (a diffusers/PEFT LoRA → kohya/webui names) or peft (a kohya/webui LoRA → a diffusers/PEFT LoRA folder)."
            | Model _ -> "the source: a diffusers pipeline folder (--to single-file), a single-file checkpoint (--to diffusers) or a LoRA file / training output (--to kohya, --to peft)."
            | Config _ -> "--to diffusers: a diffusers pipeline folder of the same family (SD1.x, SD2.x, SDXL) whose configs, tokenizers and scheduler the output takes; --to kohya / --to peft: the pipeline the LoRA is for."
            | Out _ -> "the file (--to single-file, --to kohya) or folder (--to diffusers, --to peft) to write; written atomically."
            | Dtype _ -> "fp16, bf16 or fp32 for the written floating tensors (default: as stored; --to diffusers: the file's own)."

type SampleArgs =
    | [<Mandatory>] Model of folder: string
    | Unet of folder: string
    | Lora of folder: string
    | Lora_Scale of float
    | Vae of folder: string
    | Prompt of text: string
    | Prompts of file: string
    | Negative_Prompt of text: string
    | Steps of int
    | Guidance of float
    | Scheduler of name: string
    | Prediction_Type of kind: string
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
            | Unet _ -> "a UNet replacing the pipeline's: a UNet folder, a UNet-only repository, or a training output / checkpoint-N folder holding unet/."
            | Lora _ -> "a LoRA merged into the UNet: pytorch_lora_weights.safetensors, or a folder holding it or lora/ (training output, checkpoint-N)."
            | Lora_Scale _ -> "LoRA scale (default 1)."
            | Vae _ -> "another VAE folder or repo (e.g. the SDXL fp16-fix VAE)."
            | Prompt _ -> "the prompt."
            | Prompts _ -> "a text file with one prompt per line."
            | Negative_Prompt _ -> "negative prompt for every image."
            | Steps _ -> "denoising steps (default 30)."
            | Guidance _ -> "classifier-free guidance scale (default 7.5)."
            | Scheduler _ -> "ddim, ddpm, euler, dpmpp2m or pndm (default: the pipeline's)."
            | Prediction_Type _ -> "epsilon or v_prediction: overrides the scheduler's (an SD2-base single file read with SD2.1's 768-v configs needs epsilon; default: the pipeline's)."
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
    | [<MainCommand>] Flags of flags: string list
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Flags _ -> "training flags (never reached: `sudoml train` is read by Sudo.Training.Flags; see docs/flags.md)."

type FlagsArgs =
    | Markdown
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Markdown -> "print docs/flags.md: every flag of Diffusion-DPO's train.py and diffusers' train_diffusion_dpo.py, and Sudo's own."

type QuickstartArgs =
    | Out of path: string
    | Methods of names: string
    | Steps of int
    | Pairs of int
    | Eval_Prompts of int
    | Precision of mode: string
    | Pair_Source of string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Precision _ -> "training precision: auto (default: bf16 autocast where the CPU has native, faster bf16; fp32 elsewhere), fp32 or bf16."
            | Pair_Source _ -> "population (default: the shipped assets/world/pairs) or base (two base samples per prompt, made in the run)."
            | Out _ -> "report folder (default runs/quickstart)."
            | Methods _ -> "comma-separated methods (default sft_truth,dpo_shuffled,sft,dpo,sudo: the two controls and the three methods; also dpo_snr, spo)."
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
    | Release_Step of int
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
    | Population
    | Pair_Source of string
    | Precision of mode: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Precision _ -> "study: training precision auto (default), fp32 or bf16."
            | Population -> "pairs: two generators of varied quality per prompt (base at CFG 1/3/7.5 and 6 steps, a pre-training checkpoint, renders, corrupted renders) instead of two base samples."
            | Pair_Source _ -> "study: population (default: the shipped assets/world/pairs when its settings match, else made) or base (two base samples per prompt)."
            | Action _ -> "judge (measure the judge), prompts (--split --n), render (--prompt --out), score (--image --prompt), base (--out: pre-train the tiny base pipeline), eval (--model --split --n), pairs (--model --out --n: judge-labelled pairs), study (--methods --seeds --out: fine-tune each method through its recipe, judge, write report.md + grid.png + curve.png)."
            | Base _ -> "study: the base pipeline folder (default assets/world/base, the shipped base; built when missing)."
            | Methods _ -> "study: comma-separated methods: sft, dpo, sudo, dpo_shuffled, dpo_snr (default dpo,sudo)."
            | Seeds _ -> "study: comma-separated training seeds (default 0; ≥ 3 for intervals over seeds)."
            | Steps _ -> "study: training steps per method (default 300)."
            | Pairs _ -> "study: train prompts turned into judge-labelled pairs (default 300: the shipped population)."
            | Eval_Prompts _ -> "study: held-out prompts per split (default 48), each sampled with 2 seeds."
            | Learning_Rate _ -> "study: learning rate of every method (default 2e-5)."
            | Beta _ -> "study: DPO β (default 5000, −½β inside the sigmoid as Diffusion-DPO)."
            | Batch _ -> "study: pairs per step (default 8)."
            | Label_Noise _ -> "pairs: probability of flipping a label (default 0.1)."
            | Tie_Margin _ -> "pairs: judge gaps below this are ties, dropped in training (default 0.02)."
            | Model _ -> "eval: a pipeline folder to sample and judge."
            | Vae_Steps _ -> "base: VAE training steps (default 1500)."
            | Unet_Steps _ -> "base: length of the UNet + text encoder pre-training schedule (default 1500)."
            | Release_Step _ -> "base: the base is the checkpoint at this step of that schedule (default 600; 0: its end); later steps are the pair population's stronger checkpoint."
            | Split _ -> "prompts: train, validation or test (test holds unseen colour-shape combinations)."
            | N _ -> "prompts: how many (default 100); judge: images (default 300)."
            | Prompt _ -> "a shapes-world prompt, e.g. \"a small red circle left of a large blue square on a white background\"."
            | Image _ -> "score: the PNG/JPEG to judge."
            | Out _ -> "render: the PNG to write."
            | Size _ -> "image side in pixels (default 64)."
            | Seed _ -> "layout / prompt seed (default 0)."

type EvalArgs =
    | [<Mandatory; CustomCommandLine("--model")>] E_Model of spec: string
    | [<Mandatory; CustomCommandLine("--prompts")>] E_Prompts of file: string
    | [<CustomCommandLine("--max_prompts"); AltCommandLine("--max-prompts")>] E_Max_Prompts of int
    | [<CustomCommandLine("--seeds")>] E_Seeds of list: string
    | [<Mandatory; CustomCommandLine("--scorer")>] E_Scorer of spec: string
    | [<CustomCommandLine("--steps")>] E_Steps of int
    | [<CustomCommandLine("--guidance")>] E_Guidance of float
    | [<CustomCommandLine("--negative_prompt"); AltCommandLine("--negative-prompt")>] E_Negative_Prompt of text: string
    | [<CustomCommandLine("--height")>] E_Height of int
    | [<CustomCommandLine("--width")>] E_Width of int
    | [<CustomCommandLine("--dtype")>] E_Dtype of name: string
    | [<CustomCommandLine("--device")>] E_Device of name: string
    | [<CustomCommandLine("--batch_size"); AltCommandLine("--batch-size")>] E_Batch_Size of int
    | [<CustomCommandLine("--grid_prompts"); AltCommandLine("--grid-prompts")>] E_Grid_Prompts of int
    | [<CustomCommandLine("--clip_tokenizer"); AltCommandLine("--clip-tokenizer")>] E_Pickscore_Tokenizer of folder: string
    | [<Mandatory; CustomCommandLine("--out")>] E_Out of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | E_Model _ -> "repeatable; the first is the base: name=PIPELINE[,unet=PATH][,lora=PATH][,lora_scale=S][,vae=PATH][,scheduler=NAME][,prediction_type=P] (an empty PIPELINE reuses the base's)."
            | E_Prompts _ -> "a prompt set: text file, PartiPrompts TSV, HPDv2 JSON, SPO JSON, parquet (../shared/prompts has the papers' sets)."
            | E_Max_Prompts _ -> "use the first N prompts."
            | E_Seeds _ -> "comma-separated sampling seeds, the same for every model (default 0)."
            | E_Scorer _ -> "repeatable: pickscore=PATH, hps=PATH, aes=PATH, clip=PATH, imagereward=PATH."
            | E_Steps _ -> "denoising steps (default 50)."
            | E_Guidance _ -> "classifier-free guidance scale (default 7.5)."
            | E_Negative_Prompt _ -> "negative prompt for every image."
            | E_Height _ -> "image height."
            | E_Width _ -> "image width."
            | E_Dtype _ -> "float32 (default), bfloat16, float16 on CUDA."
            | E_Device _ -> "cpu (default) or cuda[:i]."
            | E_Batch_Size _ -> "images denoised together (default 4)."
            | E_Grid_Prompts _ -> "prompts shown in report.html's grid (default 12)."
            | E_Pickscore_Tokenizer _ -> "CLIP BPE tokenizer folder for PickScore / HPS / CLIP-score models that ship none (default: the base pipeline's tokenizer/)."
            | E_Out _ -> "output folder (images and scores are cached there; rerun to resume or to add scorers)."

type SelftestArgs =
    | [<CustomCommandLine("--device")>] St_Device of device: string
    | [<CustomCommandLine("--quick")>] St_Quick
    | [<CustomCommandLine("--golden")>] St_Golden of folder: string
    | [<CustomCommandLine("--work")>] St_Work of folder: string
    | [<CustomCommandLine("--out")>] St_Out of file: string
    | [<CustomCommandLine("--sections")>] St_Sections of names: string
    | [<CustomCommandLine("--smoke")>] St_Smoke
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | St_Device _ -> "where to run: cpu (default), cuda, cuda:N."
            | St_Quick -> "tiny pipelines only, fp32 only, no full-size steps (the CPU dry run of scripts/gpu-check.sh)."
            | St_Golden _ -> "the golden folder (default $SUDO_SHARED/golden, else ../shared/golden)."
            | St_Work _ -> "scratch folder (default: a new temporary folder, deleted afterwards)."
            | St_Out _ -> "also write every row as JSON to this file (atomically)."
            | St_Sections _ -> "comma-separated subset of engine,parity,train,fullsize (default: all)."
            | St_Smoke -> "run the full-size section on any device at 1/8 resolution (checks the code paths; ~16 GB on a CPU)."

[<RequireSubcommand>]
type CliArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Quickstart of ParseResults<QuickstartArgs>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoArgs>
    | [<CliPrefix(CliPrefix.None)>] Parity of ParseResults<ParityArgs>
    | [<CliPrefix(CliPrefix.None)>] Convert of ParseResults<ConvertArgs>
    | [<CliPrefix(CliPrefix.None)>] Sample of ParseResults<SampleArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Flags of ParseResults<FlagsArgs>
    | [<CliPrefix(CliPrefix.None)>] World of ParseResults<WorldArgs>
    | [<CliPrefix(CliPrefix.None)>] Data of ParseResults<DataArgs>
    | [<CliPrefix(CliPrefix.None)>] Selftest of ParseResults<SelftestArgs>
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
            | Convert _ -> "checkpoint formats: sudoml convert --to single-file|diffusers|kohya|peft --model <source> --out <target> [--config <diffusers folder>] [--dtype fp16]."
            | Sample _ -> "text-to-image: PNGs, grid.png and images.jsonl."
            | Eval _ -> "models × prompts × seeds × reward models: means with intervals, paired win rates, report.md / report.html, per_prompt.jsonl."
            | Train _ -> "fine-tune: --method dpo (default), sft, sudo or spo, with Diffusion-DPO train.py's flags (docs/flags.md)."
            | Flags _ -> "the training flags: upstream meaning, default and what Sudo does with each."
            | World _ -> "the synthetic shapes world: prompts, ground-truth renders and the judge."
            | Data _ -> "inspect a preference dataset before training: sudoml data inspect <dataset> [--split S] [--dreamlike_pairs_only] [--max_train_samples N]."
            | Selftest _ -> "acceptance checks of a device (engine contracts, golden parity fp32/bf16, DPO/SUDO/SPO steps, full-size SD1.5/SDXL steps on CUDA): sudoml selftest --device cuda:0."
            | Torch_Threads _ -> "libtorch intra-op threads (default: all cores)."
            | Blas_Threads _ -> "OpenBLAS threads (default: all cores)."

[<EntryPoint>]
let main argv =
    if Sudo.Bench.DataBench.RunChildIfAsked() then exit 0
    if Sudo.Bench.DdpBench.RunChildIfAsked() then exit 0
    // `sudoml launch [--nproc_per_node N] [--nnodes M --node_rank R --master_addr A --master_port P] [--] <command ...>`:
    // its own small parser, because everything after its flags is the launched command.
    if argv.Length > 0 && argv.[0] = "launch" then exit (Commands.launch (Array.skip 1 argv))
    let parser = ArgumentParser.Create<CliArgs>(programName = "sudoml")
    try
        // `sudoml [--torch-threads N] [--blas-threads N] train <flags>`: the training flags are bound by
        // Sudo.Training.Flags (the vocabulary recipes and the study use), not by Argu.
        let trainAt = argv |> Array.tryFindIndex (fun a -> a = "train")
        let argv, trainArgv =
            match trainAt with
            | Some i when i % 2 = 0 && Array.take i argv |> Array.chunkBySize 2 |> Array.forall (fun p -> p.[0].StartsWith "--") ->
                Array.take (i + 1) argv, Array.skip (i + 1) argv
            | _ -> argv, [||]
        let args = parser.ParseCommandLine(argv)
        args.TryGetResult Torch_Threads |> Option.iter Sudo.Torch.torch.set_num_threads
        args.TryGetResult Blas_Threads |> Option.iter Sudo.Torch.torch.set_blas_threads
        match args.GetSubCommand() with
        | Info a -> Commands.info (a.Contains Json)
        | Selftest a ->
            let golden =
                match a.TryGetResult St_Golden with
                | Some g -> g
                | None ->
                    let shared = Environment.GetEnvironmentVariable "SUDO_SHARED" |> Option.ofObj |> Option.defaultValue "../shared"
                    IO.Path.Combine(shared, "golden")
            Commands.selftest (a.GetResult(St_Device, defaultValue = "cpu")) (a.Contains St_Quick) golden
                (a.TryGetResult St_Work) (a.TryGetResult St_Out) (a.TryGetResult St_Sections) (a.Contains St_Smoke)
        | Bench a ->
            let side (config: string) (defaultBatch: int) =
                Sudo.Bench.SideOptions(
                    config = config, config_json = a.GetResult(B_Config_Json, defaultValue = null),
                    size = (match a.TryGetResult B_Size with Some s -> Nullable s | None -> Nullable()),
                    batch = a.GetResult(B_Batch, defaultValue = defaultBatch), sample_batch = a.GetResult(B_Sample_Batch, defaultValue = 4),
                    grad_ckpt = a.Contains B_Grad_Ckpt, train_runs = a.GetResult(B_Train_Runs, defaultValue = 15),
                    sample_runs = a.GetResult(B_Sample_Runs, defaultValue = 5))
            match a.GetResult Target with
            | [ "engine" ] -> Commands.benchEngine ()
            | [ "unet" ] -> Commands.benchUnet ()
            | [ "sample" ] -> Commands.benchSample ()
            | [ "train" ] -> Commands.benchTrain ()
            | [ "data" ] -> Commands.benchData ()
            | [ "ddp" ] -> Commands.benchDdp ()
            | [ "soak" ] ->
                Commands.benchSoak (a.GetResult(B_Model, defaultValue = "assets/world/base")) (a.GetResult(B_Dataset, defaultValue = "assets/world/pairs"))
                    (a.GetResult(B_Steps, defaultValue = 10000)) (a.GetResult(B_Every, defaultValue = 100)) (a.GetResult(B_Method, defaultValue = "dpo"))
            | [ "side" ] -> Commands.benchSide (side "small" 8)
            | [ "side"; config ] -> Commands.benchSide (side config 8)
            | "compare" :: only ->
                Commands.benchCompare (a.Contains B_Full) only (a.GetResult(B_Config_Json, defaultValue = null))
                    (a.GetResult(B_Train_Runs, defaultValue = 7)) (a.GetResult(B_Sample_Runs, defaultValue = 3))
                    (a.GetResult(B_Full_Runs, defaultValue = 1)) (a.TryGetResult B_Ref_Env) (a.TryGetResult B_Out) (a.Contains B_Emulate_Avx2)
                    (a.GetResult(B_Ref_Malloc, defaultValue = "glibc"))
            | [ "profile" ] | [ "profile"; _ ] as t ->
                let config = match t with [ _; c ] -> c | _ -> "small"
                Commands.benchProfile (side config (if config = "small" then 8 else 2)) (a.GetResult(B_Out, defaultValue = "runs/profile"))
                    (a.TryGetResult B_Ref_Env) (a.GetResult(B_Top, defaultValue = 30)) (a.GetResult(B_Ref_Malloc, defaultValue = "glibc"))
            | other ->
                eprintfn "sudoml bench: unknown target '%s' (expected: engine, unet, sample, train, data, ddp, soak, compare, profile, side)" (String.Join(" ", other))
                2
        | Data a ->
            match a.GetResult DataArgs.Args with
            | [ "inspect"; dataset ] ->
                let options =
                    Sudo.Data.TableOptions(
                        split = a.GetResult(DataArgs.Split, defaultValue = "train"),
                        caption_column = a.GetResult(DataArgs.Caption_Column, defaultValue = "caption"),
                        dreamlike_pairs_only = a.Contains DataArgs.Dreamlike_Pairs_Only,
                        max_train_samples = (a.TryGetResult DataArgs.Max_Train_Samples |> Option.toNullable),
                        seed = a.GetResult(DataArgs.Data_Seed, defaultValue = 0L))
                use data =
                    Sudo.Data.PreferenceData.Open(dataset, options, a.TryGetResult DataArgs.Cache_Dir |> Option.toObj,
                                                  a.TryGetResult DataArgs.Dataset_Config_Name |> Option.toObj, a.TryGetResult DataArgs.Hub_Cache_Dir |> Option.toObj)
                let report = Sudo.Data.DataInspection.Run(data, a.GetResult(DataArgs.Sample_Pairs, defaultValue = 64), 4, a.GetResult(DataArgs.Grid, defaultValue = "data_grid.png"))
                printf "%s" (report.Format())
                0
            | other ->
                eprintfn "sudoml data: expected `inspect <dataset>`, got %s" (String.Join(" ", other))
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
                let cfg = Sudo.Worlds.Shapes.WorldBaseConfig(vae_steps = a.GetResult(Vae_Steps, defaultValue = d.vae_steps), unet_steps = a.GetResult(Unet_Steps, defaultValue = d.unet_steps),
                                                               release_step = a.GetResult(Release_Step, defaultValue = d.release_step), seed = int64 seed)
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
            | "pairs" when a.Contains Population ->
                let model = need "--model <pipeline folder>" (a.TryGetResult WorldArgs.Model)
                use pipe = Sudo.Diffusion.StableDiffusionPipeline.from_pretrained(model, "ddim")
                let d = Sudo.Worlds.Shapes.PopulationConfig()
                let cfg =
                    Sudo.Worlds.Shapes.PopulationConfig(
                        pairs = a.GetResult(N, defaultValue = d.pairs), seed = seed,
                        label_noise = a.GetResult(Label_Noise, defaultValue = d.label_noise), tie_margin = a.GetResult(Tie_Margin, defaultValue = d.tie_margin))
                let out = a.GetResult(Out, defaultValue = "runs/world/pairs")
                let cmd =
                    String.Join(" ", [| "sudoml"; "world"; "pairs"; "--population"; "--model"; model; "--n"; string cfg.pairs; "--seed"; string seed
                                        "--label-noise"; cfg.label_noise.ToString(Globalization.CultureInfo.InvariantCulture)
                                        "--tie-margin"; cfg.tie_margin.ToString(Globalization.CultureInfo.InvariantCulture); "--out"; out |])
                let s = Sudo.Worlds.Shapes.WorldPopulation.Make(pipe, model, out, cfg, cmd)
                printfn "%d pairs in %s: %d ties (dropped in training), %d flipped labels" s.pairs s.folder s.ties s.flipped
                for KeyValue(name, struct (n, mean)) in s.by_generator do printfn "  %-18s %4d images, mean judge %.3f" name n mean
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
                        tie_margin = a.GetResult(Tie_Margin, defaultValue = d.tie_margin),
                        pair_source = a.GetResult(Pair_Source, defaultValue = d.pair_source),
                        precision = a.GetResult(WorldArgs.Precision, defaultValue = d.precision))
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
                    methods = a.GetResult(QuickstartArgs.Methods, defaultValue = "sft_truth,dpo_shuffled,sft,dpo,sudo").Split(',', System.StringSplitOptions.RemoveEmptyEntries),
                    max_train_steps = a.GetResult(QuickstartArgs.Steps, defaultValue = d.max_train_steps),
                    pair_prompts = a.GetResult(QuickstartArgs.Pairs, defaultValue = 300),
                    eval_prompts = a.GetResult(QuickstartArgs.Eval_Prompts, defaultValue = 40),
                    precision = a.GetResult(QuickstartArgs.Precision, defaultValue = d.precision),
                    pair_source = a.GetResult(QuickstartArgs.Pair_Source, defaultValue = d.pair_source),
                    setup_seconds = envSeconds "SUDO_SETUP_SECONDS", build_seconds = envSeconds "SUDO_BUILD_SECONDS")
            let r = Sudo.Worlds.Shapes.WorldStudy.Run(cfg)
            printfn "\n%s" r.markdown
            0
        | Demo a -> Commands.demo (a.GetResult(DemoArgs.Steps, defaultValue = 300)) (a.GetResult(DemoArgs.Seed, defaultValue = 0L))
        | Convert a -> Commands.convert (a.GetResult ConvertArgs.To) (a.GetResult ConvertArgs.Model) (a.TryGetResult ConvertArgs.Config) (a.GetResult ConvertArgs.Out) (a.TryGetResult ConvertArgs.Dtype)
        | Parity a ->
            match a.TryGetResult ParityArgs.Model, a.TryGetResult ParityArgs.Io, a.TryGetResult ParityArgs.Tokenizer, a.TryGetResult ParityArgs.Cases with
            | _ when a.Contains ParityArgs.Schedulers -> Commands.paritySchedulers (a.GetResult ParityArgs.Schedulers) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Losses -> Commands.parityLosses (a.GetResult ParityArgs.Losses) (a.TryGetResult ParityArgs.Tolerance)
            | _ when a.Contains ParityArgs.Pipeline ->
                let folder = a.GetResult ParityArgs.Pipeline
                Commands.parityPipeline folder (a.GetResult(ParityArgs.Io, defaultValue = System.IO.Path.Combine(folder, "io.safetensors")))
            | Some m, io, None, None ->
                let io = defaultArg io (System.IO.Path.Combine(m, "io.safetensors"))
                Commands.parityModel m io (a.TryGetResult ParityArgs.Component) (a.TryGetResult ParityArgs.Tolerance)
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
                    unet = (a.TryGetResult SampleArgs.Unet |> Option.toObj),
                    lora = (a.TryGetResult SampleArgs.Lora |> Option.toObj),
                    lora_scale = a.GetResult(SampleArgs.Lora_Scale, defaultValue = 1.0),
                    vae = (a.TryGetResult SampleArgs.Vae |> Option.toObj),
                    prompts = prompts,
                    out_dir = a.GetResult SampleArgs.Out,
                    negative_prompt = (a.TryGetResult Negative_Prompt |> Option.toObj),
                    steps = a.GetResult(SampleArgs.Steps, defaultValue = 30),
                    guidance = a.GetResult(Guidance, defaultValue = 7.5),
                    scheduler = (a.TryGetResult Scheduler |> Option.toObj),
                    prediction_type = (a.TryGetResult Prediction_Type |> Option.toObj),
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
        | Eval a ->
            let models = a.GetResults E_Model
            let basePipeline = models |> List.tryHead |> Option.map (fun m -> (Sudo.Preference.EvalModel.Parse m).spec.model) |> Option.toObj
            let prompts = Sudo.Diffusion.Sampling.ReadPrompts(a.GetResult E_Prompts)
            let prompts =
                match a.TryGetResult E_Max_Prompts with
                | Some n -> prompts |> Seq.truncate n |> ResizeArray
                | None -> prompts
            let seeds =
                match a.TryGetResult E_Seeds with
                | Some s -> s.Split(',') |> Array.map (fun x -> int64 (x.Trim())) |> ResizeArray
                | None -> ResizeArray [ 0L ]
            let settings =
                Sudo.Preference.EvalSettings(
                    models = (models |> List.map (fun m -> Sudo.Preference.EvalModel.Parse(m, basePipeline)) |> ResizeArray),
                    prompts = prompts,
                    scorers = (a.GetResults E_Scorer |> List.map Sudo.Preference.EvalScorer.Parse |> ResizeArray),
                    out_dir = a.GetResult E_Out,
                    seeds = seeds,
                    steps = a.GetResult(E_Steps, defaultValue = 50),
                    guidance = a.GetResult(E_Guidance, defaultValue = 7.5),
                    negative_prompt = (a.TryGetResult E_Negative_Prompt |> Option.toObj),
                    height = (a.TryGetResult E_Height |> Option.toNullable),
                    width = (a.TryGetResult E_Width |> Option.toNullable),
                    dtype = a.GetResult(E_Dtype, defaultValue = "float32"),
                    device = a.GetResult(E_Device, defaultValue = "cpu"),
                    batch_size = a.GetResult(E_Batch_Size, defaultValue = 4),
                    grid_prompts = a.GetResult(E_Grid_Prompts, defaultValue = 12),
                    clip_tokenizer = (a.TryGetResult E_Pickscore_Tokenizer |> Option.toObj),
                    command = "sudoml " + String.Join(" ", argv |> Array.map (fun x -> if x.Contains " " || x.Contains "\"" then "'" + x.Replace("'", "'\\''") + "'" else x)))
            let report = Sudo.Preference.Evaluation.Run(settings)
            printfn "%s" (System.IO.File.ReadAllText report.report_md)
            0
        | Train _ -> Commands.train trainArgv
        | Flags a ->
            if a.Contains Markdown then printf "%s" (Sudo.Training.UpstreamFlags.Markdown())
            else for f in Sudo.Training.UpstreamFlags.All do printfn "--%-42s %-9s %s" f.name (string f.status) f.note
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
    | :? System.Text.Json.JsonException as e ->
        // A JSON file read without a reader of its own that names it: still a message, not a stack trace.
        eprintfn "sudoml: a JSON file is not valid: %s" e.Message
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
