// The papers' evaluation tables from the public checkpoints: SD1.5 / SDXL bases, Diffusion-DPO's released UNets
// (mhdang/dpo-sd1.5-text2image-v1, mhdang/dpo-sdxl-text2image-v1), SPO's released pipelines and LoRAs
// (SPO-Diffusion-Models/*), each paper's prompt set and scorers, through Sudo.Preference.Evaluation (`sudoml eval`).
// Prints our numbers next to the papers' (../shared/docs/reference: spo_spec.md §5.3, sudo_dpo_spec.md §2.10 and §3.8),
// in each paper's display scale. SUDO's own SFT / Self-DPO checkpoints are not published: train them with
// recipes/sft.fsx and recipes/sudo.fsx and add them with --extra name=,unet=<output>.
//
// On a GPU with the Hugging Face cache holding the models (nothing is downloaded):
//   dotnet fsi paper-repro/released/tables.fsx -- --table spo-sd15 --device cuda --dtype float16 --aes_dir <folder with sac+logos+ava1-l14-linearMSE.pth>
// Tables: spo-sd15, spo-sdxl, sudo-sd15-pickapic, sudo-sd15-parti, sudo-sd15-hpdv2, dpo-sdxl-hpdv2, or all.
// --dry_run true runs every table end to end on the tiny golden pipelines and reward models of ../shared/golden
// (2 prompts, 2 steps) so that none of this can rot; CI runs it.
#load "../../scripts/_load.fsx"
open System
open System.IO
open _load
open Sudo.Diffusion
open Sudo.Preference

let opt =
    recipeOptions
        [ "table", "all"; "dry_run", "false"; "out", "runs/paper-repro/released"; "prompts_dir", ""; "device", "cuda"
          "dtype", "float16"; "max_prompts", "0"; "seeds", "0"; "aes_dir", ""; "batch_size", "8"; "extra", "" ]
let dry = opt "dry_run" = "true"
let shared = match Environment.GetEnvironmentVariable "SUDO_SHARED" with | null | "" -> Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, "..", "..", "..", "shared")) | s -> s
let promptsDir = match opt "prompts_dir" with | "" -> Path.Combine(shared, "prompts") | d -> d
let outRoot = Path.GetFullPath(if dry then Path.Combine(opt "out", "dry-run") else opt "out")

/// A row of a paper's table: our model spec (EvalModel.Parse syntax without the name) and the paper's numbers by metric.
type Row = { name: string; spec: string; paper: Map<string, float> }
/// metric label, scorer (RewardModels name), the factor from our scale to the paper's display scale, scorer variant.
type Metric = { label: string; scorer: string; factor: float; variant: string }
type Table =
    { id: string; title: string; source: string; prompts: string; steps: int; guidance: float; scheduler: string option
      metrics: Metric list; rows: Row list; paperWin: Map<string, Map<string, float>> }

let SD15 = "runwayml/stable-diffusion-v1-5"
let SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
let VAEFIX = "madebyollin/sdxl-vae-fp16-fix"
let m (xs: (string * float) list) = Map.ofList xs

// SPO Table 2 / Table 1 (spo_spec.md §5.3): PickScore = 100·cos (our scale), HPSv2 ×100 (version not stated: v2.1
// here, UNVERIFIED), ImageReward and aesthetic as computed; DDIM, 20 steps, CFG 5 on the 500 Pick-a-Pic v2
// validation_unique prompts (§5.2).
let spoMetrics =
    [ { label = "PickScore"; scorer = "pickscore"; factor = 1.0; variant = "" }
      { label = "HPSv2"; scorer = "hps"; factor = 100.0; variant = "v2.1" }
      { label = "ImageReward"; scorer = "imagereward"; factor = 1.0; variant = "" }
      { label = "Aesthetic"; scorer = "aes"; factor = 1.0; variant = "" } ]
let pm ps hps ir aes = m [ "PickScore", ps; "HPSv2", hps; "ImageReward", ir; "Aesthetic", aes ]

// SUDO Table 2 (sudo_dpo_spec.md §3.8): P.S. ×1 (100·cos), Aes ×10, CLIP ×100, HPS ×100, I.R. ×100; sampling not
// stated (diffusers defaults assumed: 50 steps, CFG 7.5, the pipeline's scheduler).
let sudoMetrics =
    [ { label = "P.S."; scorer = "pickscore"; factor = 1.0; variant = "" }
      { label = "Aes."; scorer = "aes"; factor = 10.0; variant = "" }
      { label = "CLIP"; scorer = "clip"; factor = 100.0; variant = "" }
      { label = "HPS"; scorer = "hps"; factor = 100.0; variant = "v2.0" }
      { label = "I.R."; scorer = "imagereward"; factor = 100.0; variant = "" } ]
let sm ps aes clip hps ir = m [ "P.S.", ps; "Aes.", aes; "CLIP", clip; "HPS", hps; "I.R.", ir ]

let tables =
    [ { id = "spo-sd15"; title = "SPO Table 2 (SD-1.5)"; source = "spo_spec.md §5.3"; prompts = "pickapic_v2_validation_unique"
        steps = 20; guidance = 5.0; scheduler = Some "ddim"; metrics = spoMetrics; paperWin = Map.empty
        rows =
          [ { name = "sd15"; spec = SD15; paper = pm 20.53 23.79 -0.1628 5.365 }
            { name = "dpo"; spec = ",unet=mhdang/dpo-sd1.5-text2image-v1"; paper = pm 20.98 25.05 0.1115 5.505 }
            { name = "spo"; spec = "SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep"; paper = pm 21.43 26.45 0.1712 5.887 }
            { name = "spo-lora"; spec = ",lora=SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep_LoRA"; paper = Map.empty } ] }
      { id = "spo-sdxl"; title = "SPO Table 1 (SDXL)"; source = "spo_spec.md §5.3"; prompts = "pickapic_v2_validation_unique"
        steps = 20; guidance = 5.0; scheduler = Some "ddim"; metrics = spoMetrics; paperWin = Map.empty
        rows =
          [ { name = "sdxl"; spec = SDXL + ",vae=" + VAEFIX; paper = pm 21.95 26.95 0.5380 5.950 }
            { name = "dpo"; spec = ",unet=mhdang/dpo-sdxl-text2image-v1,vae=" + VAEFIX; paper = pm 22.64 29.31 0.9436 6.015 }
            { name = "spo"; spec = "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep,vae=" + VAEFIX; paper = pm 23.06 31.80 1.0803 6.364 }
            { name = "spo-lora"; spec = ",lora=SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep_LoRA,vae=" + VAEFIX; paper = Map.empty } ] }
      for (id, set, b, d, wd) in
          [ "sudo-sd15-pickapic", "pickapic_v2_validation_unique", sm 20.57 53.15 32.58 26.17 -14.81, sm 20.91 54.07 33.19 26.46 4.13,
            sm 73.80 60.00 60.00 71.80 61.00
            "sudo-sd15-parti", "partiprompts", sm 21.39 53.13 33.21 26.79 1.48, sm 21.61 53.58 33.88 26.98 21.43,
            sm 67.10 57.17 56.74 61.83 63.05
            "sudo-sd15-hpdv2", "hpdv2_benchmark", sm 20.84 54.32 33.96 26.84 -11.79, sm 21.30 55.80 34.68 27.22 13.24,
            sm 75.72 66.28 57.56 72.43 64.69 ] do
        { id = id; title = $"SUDO Table 2 (SD1.5, {set})"; source = "sudo_dpo_spec.md §3.8"; prompts = set; steps = 50
          guidance = 7.5; scheduler = None; metrics = sudoMetrics; paperWin = Map.ofList [ "dpo", wd ]
          rows = [ { name = "sd15"; spec = SD15; paper = b }; { name = "dpo"; spec = ",unet=mhdang/dpo-sd1.5-text2image-v1"; paper = d } ] }
      { id = "dpo-sdxl-hpdv2"; title = "Diffusion-DPO: DPO-SDXL average HPSv2 on the HPSv2 prompts"; source = "sudo_dpo_spec.md §2.10"
        prompts = "hpdv2_benchmark"; steps = 50; guidance = 5.0; scheduler = None; paperWin = Map.empty
        metrics = [ { label = "HPSv2"; scorer = "hps"; factor = 100.0; variant = "v2.0" } ]
        rows =
          [ { name = "sdxl"; spec = SDXL + ",vae=" + VAEFIX; paper = Map.empty }
            { name = "dpo"; spec = ",unet=mhdang/dpo-sdxl-text2image-v1,vae=" + VAEFIX; paper = m [ "HPSv2", 28.16 ] } ] } ]

// ---- where things come from: the Hugging Face cache, or (dry run) the tiny golden items ----
let golden (p: string) = Path.Combine(shared, "golden", p)
let dryDir = Path.Combine(outRoot, "models")

/// Dry run: a tiny PickScore-like CLIPModel (CLIP vocabulary) from the golden step-aware model's towers, and a tiny LoRA
/// per base, made once through the public API.
let dryAssets () =
    let ps = Path.Combine(dryDir, "pickscore")
    if not (File.Exists(Path.Combine(ps, "config.json"))) then
        use spm = StepAwarePreferenceModel.from_pretrained(golden "spm")
        spm.clip.save_pretrained ps
    for b in [ "pipe_sd15"; "pipe_sdxl" ] do
        let dir = Path.Combine(dryDir, "lora_" + b)
        if not (File.Exists(Path.Combine(dir, "pytorch_lora_weights.safetensors"))) then
            use pipe = StableDiffusionPipeline.from_pretrained(golden b)
            use g = new Sudo.Torch.Generator(5L)
            use lora = Sudo.Models.Lora.Attach(pipe.unet, Sudo.Models.LoraConfig(2, 2.0), g)
            lora.save dir

let resolveModel (spec: string) =
    if not dry then spec
    else
        let sdxl = spec.Contains "xl" || spec.Contains "XL"
        let pipe = golden (if sdxl then "pipe_sdxl" else "pipe_sd15")
        spec.Split(',')
        |> Array.map (fun part ->
            match part.Split('=', 2) with
            | [| "unet"; _ |] -> "unet=" + pipe
            | [| "vae"; _ |] -> "vae=" + Path.Combine(pipe, "vae")
            | [| "lora"; _ |] -> "lora=" + Path.Combine(dryDir, "lora_" + (if sdxl then "pipe_sdxl" else "pipe_sd15"))
            | [| "" |] -> ""
            | _ -> pipe)
        |> String.concat ","

let hub (id: string) = Sudo.Models.Hub.Resolve id
let scorerPath (mt: Metric) =
    match dry, mt.scorer with
    | true, "pickscore" -> Path.Combine(dryDir, "pickscore")
    | true, "hps" -> golden (if mt.variant = "v2.1" then "hpsv2/HPS_v2.1_compressed.pt" else "hpsv2/HPS_v2_compressed.pt")
    | true, "clip" -> golden "hpsv2/HPS_v2_compressed.pt"
    | true, "aes" -> golden "aesthetic"
    | true, "imagereward" -> golden "imagereward"
    | false, "pickscore" -> hub "yuvalkirstain/PickScore_v1"
    | false, "hps" -> Path.Combine(hub "xswu/HPSv2", (if mt.variant = "v2.1" then "HPS_v2.1_compressed.pt" else "HPS_v2_compressed.pt"))
    | false, "clip" -> hub "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    | false, "aes" ->
        match opt "aes_dir" with
        | "" -> failwith "--aes_dir <folder holding sac+logos+ava1-l14-linearMSE.pth> is needed for the aesthetic score (CLIP ViT-L/14 comes from the cache)"
        | d -> d
    | false, "imagereward" -> hub "THUDM/ImageReward"
    | _, s -> failwith $"no scorer {s}"

let runTable (t: Table) =
    let prompts = Sampling.ReadPrompts(Path.Combine(promptsDir, t.prompts, "prompts.txt"))
    let n = if dry then 2 else (match int (opt "max_prompts") with 0 -> prompts.Count | k -> min k prompts.Count)
    let baseSpec = resolveModel t.rows.Head.spec
    let extras = (opt "extra").Split(';', StringSplitOptions.RemoveEmptyEntries) |> Array.toList
    let sched = match t.scheduler with Some s -> ",scheduler=" + s | None -> ""
    let models =
        [ for r in t.rows -> EvalModel.Parse(r.name + "=" + resolveModel r.spec + sched, baseSpec.Split(',').[0]) ]
        @ [ for e in extras -> EvalModel.Parse(e + sched, baseSpec.Split(',').[0]) ]
    // One scorer per name: a table never mixes two HPS versions.
    let scorers = t.metrics |> List.map (fun mt -> EvalScorer(mt.scorer, scorerPath mt))
    let settings =
        EvalSettings(
            models = ResizeArray models, prompts = ResizeArray(prompts |> Seq.truncate n), scorers = ResizeArray scorers,
            out_dir = Path.Combine(outRoot, t.id),
            seeds = ResizeArray((opt "seeds").Split(',') |> Array.map int64),
            steps = (if dry then 2 else t.steps), guidance = t.guidance,
            dtype = (if dry then "float32" else opt "dtype"), device = (if dry then "cpu" else opt "device"),
            batch_size = int (opt "batch_size"),
            command = "dotnet fsi paper-repro/released/tables.fsx -- " + String.Join(" ", recipeArgv))
    let r = Evaluation.Run(settings, (fun line -> eprintfn "  %s" line))
    // Ours next to the paper's, in the paper's scale.
    let sb = Text.StringBuilder()
    let add (s: string) = sb.AppendLine s |> ignore
    add $"## {t.title}"
    add ""
    let schedText = match t.scheduler with Some s -> ", " + s | None -> ""
    add $"{n} prompts of {t.prompts}, {settings.steps} steps, CFG {t.guidance}{schedText}; paper numbers from ../shared/docs/reference/{t.source}; ours in the paper's scale (95%% bootstrap intervals over prompts)."
    add ""
    add ("| model | " + String.Join(" | ", t.metrics |> List.map (fun mt -> mt.label + " (ours) | " + mt.label + " (paper)")) + " |")
    add ("|---|" + String.replicate (2 * t.metrics.Length) "---|")
    for em in models do
        let row = t.rows |> List.tryFind (fun r -> r.name = em.name)
        let cells =
            t.metrics
            |> List.map (fun mt ->
                let i = r.means.[em.name].[mt.scorer]
                let paper = row |> Option.bind (fun rw -> rw.paper |> Map.tryFind mt.label) |> Option.map (sprintf "%.4g") |> Option.defaultValue "–"
                sprintf "%.4g [%.4g, %.4g] | %s" (i.mean * mt.factor) (i.lo * mt.factor) (i.hi * mt.factor) paper)
        add ($"| {em.name} | " + String.Join(" | ", cells) + " |")
    if r.win_rates.Count > 0 then
        add ""
        add $"Win rate against {models.Head.name} (%%; same prompt and seed, ties ½):"
        add ""
        add ("| model | " + String.Join(" | ", t.metrics |> List.map (fun mt -> mt.label + " (ours) | " + mt.label + " (paper)")) + " |")
        add ("|---|" + String.replicate (2 * t.metrics.Length) "---|")
        for KeyValue(name, row) in r.win_rates do
            let cells =
                t.metrics
                |> List.map (fun mt ->
                    let i = row.[mt.scorer]
                    let paper = t.paperWin |> Map.tryFind name |> Option.bind (Map.tryFind mt.label) |> Option.map (sprintf "%.2f") |> Option.defaultValue "–"
                    sprintf "%.1f [%.1f, %.1f] | %s" (100.0 * i.mean) (100.0 * i.lo) (100.0 * i.hi) paper)
            add ($"| {name} | " + String.Join(" | ", cells) + " |")
    add ""
    add $"Full report: {r.report_md} (and report.html, per_prompt.jsonl)."
    if dry then add "DRY RUN on the tiny golden models: the numbers only show that the pipeline runs end to end."
    let text = sb.ToString()
    Sudo.Torch.AtomicFile.WriteAllText(Path.Combine(outRoot, t.id, "comparison.md"), text)
    printfn "%s" text

if dry then dryAssets ()
let chosen = match opt "table" with "all" -> tables | id -> tables |> List.filter (fun t -> t.id = id)
if chosen.IsEmpty then failwith $"""unknown --table {opt "table"} (all, {String.Join(", ", tables |> List.map (fun t -> t.id))})"""
for t in chosen do runTable t
