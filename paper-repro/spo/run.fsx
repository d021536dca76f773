// SPO (Liang et al., arXiv 2406.04314; CVPR 2025), toy analogue of Table 2 (SD-1.5: SPO vs Diffusion-DPO vs base) and of the
// training-cost comparison (§5.4), with the learned step-aware scorer's agreement. dotnet fsi paper-repro/spo/run.fsx
#load "../_study.fsx"
open System.IO
open _study
open Sudo.Training

let agreement = File.ReadAllText(Path.Combine(config.output_dir, "scorer", "agreement.json"))
let rows =
    [ for m in [ "base"; "dpo"; "spo" ] ->
        let cells = [ for split, _ in splits -> num (WorldStudy.MeanScore(report, m, split)) ]
        let wins = [ for split, _ in splits -> if m = "base" then "—" else pct (WorldStudy.WinVsBase(report, m, split)) ]
        sprintf "| %s | %s | %s | %s |" (label m) (String.concat " | " cells) (String.concat " | " wins)
            (String.concat " / " [ for a in [ "color"; "shape"; "count"; "relation" ] -> num (WorldStudy.MeanAttribute(report, m, a)) ]) ]
let cost =
    [ for m in [ "dpo"; "spo" ] ->
        let struct (s, mb) = WorldStudy.Cost(report, m)
        sprintf "| %s | %.0f s | %.0f MB |" (label m) s mb ]
// SPO trains the stochastic DDIM η = 1 sampler of its chains; the table above (like the paper) samples with η = 0. The
// micro runs (tests/Sudo.Training.Tests/WorldMethodTests.cs) found SPO's gain stays in the η = 1 sampler, so the base and
// the SPO runs are judged here once more with η = 1 on the same held-out prompts and seeds (cached in spo_eta1.json).
let eta1 =
    let runs = report.runs |> Seq.filter (fun r -> r.method = "spo") |> Seq.sortBy (fun r -> r.seed) |> Seq.toList
    let key = String.concat "\n" [ for r in runs -> r.command ] + sprintf "|%d|%d|%d|%g" config.eval_prompts config.eval_seeds config.sample_steps config.guidance_scale
    let cache = Path.Combine(config.output_dir, "spo_eta1.json")
    let parse (a: System.Text.Json.Nodes.JsonNode) = [ for x in a.AsArray() -> x.GetValue<float>() ]
    match (if File.Exists cache then Some(System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText cache)) else None) with
    | Some c when string c.["key"] = key -> parse c.["base"], [ for r in c.["runs"].AsArray() -> parse r ]
    | _ ->
        use pipe = Sudo.Diffusion.StableDiffusionPipeline.from_pretrained(Path.GetFullPath config.base_model, "ddim")
        let prompts = [ yield! Sudo.Data.World.Prompts("validation", config.eval_prompts, 0); yield! Sudo.Data.World.Prompts("test", config.eval_prompts, 0) ]
        let judge () =
            [ for s in 0 .. config.eval_seeds - 1 do
                for r in WorldBase.Evaluate(pipe, prompts, s, config.sample_steps, config.guidance_scale, eta = 1.0) -> r.score ]
        let baseScores = judge ()
        let runScores = [ for r in runs -> WorldStudy.LoadUnet(pipe, Path.Combine(r.folder, "unet")); judge () ]
        let arr (v: float list) = System.Text.Json.Nodes.JsonArray([| for x in v -> System.Text.Json.Nodes.JsonValue.Create x :> System.Text.Json.Nodes.JsonNode |])
        let o = System.Text.Json.Nodes.JsonObject()
        o.["key"] <- System.Text.Json.Nodes.JsonValue.Create key
        o.["base"] <- arr baseScores
        o.["runs"] <- System.Text.Json.Nodes.JsonArray([| for v in runScores -> arr v :> System.Text.Json.Nodes.JsonNode |])
        Sudo.Torch.AtomicFile.WriteAllText(cache, o.ToJsonString())
        baseScores, runScores
let eta1Wins =
    let baseScores, runScores = eta1
    [ for v in runScores -> List.map2 (fun a b -> if abs (a - b) < 1e-9 then 0.5 elif a > b then 1.0 else 0.0) v baseScores |> List.average ]
let eta1Verdict = verdict (WorldStudy.MeanCi(ResizeArray eta1Wins))
let eta1Row =
    let baseScores, runScores = eta1
    let ci (v: float list) = WorldStudy.MeanCi(ResizeArray v)
    sprintf "| %.3f | %s | %s |" (List.average baseScores) (num (ci [ for v in runScores -> List.average v ])) (pct (ci eta1Wins))
let scorerSeconds = System.Text.Json.Nodes.JsonNode.Parse(agreement).["seconds"].GetValue<float>()

write "paper-repro/spo/RESULTS.md" (
    "# SPO — toy reproduction\n\n" + preamble "paper-repro/spo/run.fsx" + """
## Toy Table 2 (measured)

| method | judge (validation) | judge (test, unseen) | win vs base (validation) | win vs base (test) | colour / shape / count / relation |
|---|---|---|---|---|---|
""" + String.concat "\n" rows + """

SPO vs Diffusion-DPO head-to-head: validation """ + pct (WorldStudy.HeadToHead(report, "spo", "dpo", "validation")) + ", test " + pct (WorldStudy.HeadToHead(report, "spo", "dpo", "test")) + """
(""" + verdict (WorldStudy.HeadToHead(report, "spo", "dpo", "test")) + """); SPO vs base on test: """ + verdict (WorldStudy.WinVsBase(report, "spo", "test")) + """.

Judged with SPO's own sampler (DDIM **η = 1**, as in its training chains; same prompts, seeds and CFG, both splits
together): the micro runs found SPO's gain there and not at η = 0 (`paper-repro/README.md`).

| base (η = 1) | SPO (η = 1) | SPO win vs base (η = 1) |
|---|---|---|
""" + eta1Row + """

With the learned step-aware scorer (its agreement with the judge on x̂₀ at t is in the JSON below) SPO's win rate at
η = 1 is """ + eta1Verdict + """. In the micro runs, the oracle scorer (the judge itself on x̂₀) did raise the η = 1
score on the training prompts (+0.014…+0.019 per 20-round run). The study's SPO differs from those runs in the scorer
(learned, near chance on x̂₀ at t > 0), its settings (SPO's lr 6e-5, k 4, branching at step 4) and the prompts it is
judged on (held out here); the scorer's near-chance agreement is the likeliest reason it does not move.

## Training cost (measured, 2 CPU cores, per run)

| method | fine-tuning wall time | peak memory |
|---|---|---|
""" + String.concat "\n" cost + sprintf "\n| SPO's step-aware scorer (once, shared by seeds) | %.0f s | — |\n" scorerSeconds + """
Diffusion-DPO needs a labelled pair set (here: base samples judged offline, whose sampling time is not counted above);
SPO needs a step-aware preference model (counted in the last row) and samples online.

The learned scorer (tiny CLIPModel, world vocabulary, PickScore loss, then step-aware on x̂₀ at random t) and its agreement with
the judge on held-out pairs with noiseless labels:

```json
""" + agreement + """
```

## Paper (`../shared/docs/reference/spo_spec.md` §5.3–5.4)

Table 2, SD-1.5: PickScore / HPSv2 / ImageReward / Aesthetic — SD-1.5 20.53 / 23.79 / −0.1628 / 5.365; Diffusion-DPO
20.98 / 25.05 / 0.1115 / 5.505; **SPO 21.43 / 26.45 / 0.1712 / 5.887**. Table 1, SDXL: SDXL 21.95 / 26.95 / 0.5380 / 5.950;
Diffusion-DPO 22.64 / 29.31 / 0.9436 / 6.015; **SPO 23.06 / 31.80 / 1.0803 / 6.364**.

Training cost (4× A100): SPO total 80 GPU-h (SD-1.5: 48 fine-tuning + 32 SPM) vs Diffusion-DPO 384 GPU-h (4.8×); SDXL 234 vs
4,800 GPU-h (20.5×, the "more than 20× faster" claim, counting SPM training).

## Real-scale commands (GPU; not run here)

```bash
# SD-1.5: 4k prompts, 10 epochs in the paper; SPM = the released step-aware model (or one trained with SpmTraining).
./sudoml train --method spo --pretrained_model_name_or_path runwayml/stable-diffusion-v1-5 \
    --prompts_file /data/spo_4k_prompts.txt --scorer /models/sd-v1-5_step-aware_preference_model --resolution 512
# From F#: dotnet fsi recipes/spo.fsx -- --model runwayml/stable-diffusion-v1-5 --scorer /models/spm \
#     --prompts /data/spo_4k_prompts.txt --rounds 2000 --prompts_per_round 10 --resolution 512
# SDXL (MSPO, k = 2, threshold 0.4, 3 inner steps): --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0
```
""")
