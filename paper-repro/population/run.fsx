// The quickstart's study with 3 training seeds: the shipped base fine-tuned on the shipped pair population
// (assets/world/pairs: a population of generators, the Pick-a-Pic regime) by the two controls and the three
// methods, each judged against the base on the same held-out prompts and seeds. dotnet fsi paper-repro/population/run.fsx
#load "../../scripts/_load.fsx"
open System
open Sudo.Worlds.Shapes

let config =
    WorldStudyConfig(
        output_dir = "runs/paper-repro-population",
        methods = [| "sft_truth"; "dpo_shuffled"; "sft"; "dpo"; "sudo" |],
        seeds = [| 0; 1; 2 |],
        pair_source = "population",
        // fp32 on every machine, so the recorded table does not depend on the CPU's bf16 support.
        precision = "fp32",
        max_train_steps = 300,
        eval_prompts = 48,
        eval_seeds = 2,
        extra_samplers = [| StudySampler("cfg1", 1.0) |])

let clock = Diagnostics.Stopwatch.StartNew()
let report = WorldStudy.Run(config)
let minutes = clock.Elapsed.TotalMinutes
let trainMinutes = report.runs |> Seq.sumBy (fun r -> r.train_seconds) |> fun s -> s / 60.0

let label m = if m = "base" then "base" else WorldStudy.Methods.[m].label
let num (x: struct (float * float)) = WorldStudy.Cell(x)
let pct (x: struct (float * float)) = WorldStudy.Cell(x, true)
let methods = List.ofArray config.methods

let gains =
    [ for m in methods ->
        let g s = WorldStudy.GainVsBase(report, m, s)
        sprintf "| %s | %s | %s | %s | %s | %s | %s |" (label m) (num (g "validation")) (num (g "test")) (num (g "all"))
            (WorldStudy.Significance(g "all")) (pct (WorldStudy.WinVsBase(report, m, "test"))) (num (WorldStudy.GainVsBase(report, m, "test@cfg1"))) ]
let scores =
    [ for m in "base" :: methods ->
        sprintf "| %s | %s | %s | %s |" (label m) (num (WorldStudy.MeanScore(report, m, "validation"))) (num (WorldStudy.MeanScore(report, m, "test")))
            (num (WorldStudy.MeanScore(report, m, "test@cfg1"))) ]
let sig' m = WorldStudy.Significance(WorldStudy.GainVsBase(report, m, "all"))
let gainOf m = let struct (g, _) = WorldStudy.GainVsBase(report, m, "all") in g
// Our ordering of the three methods by mean gain over the base (both splits), for the comparison with the papers'.
let ordering =
    [ "sft"; "dpo"; "sudo" ] |> List.sortByDescending gainOf |> List.map (fun m -> sprintf "%s (%+.3f)" (label m) (gainOf m)) |> String.concat " > "
let agreeDpo = gainOf "dpo" > gainOf "sft"
let agreeSudo = gainOf "sudo" > gainOf "sft" && gainOf "sft" > gainOf "dpo"
let pdata = System.Text.Json.Nodes.JsonNode.Parse(IO.File.ReadAllText(IO.Path.Combine(config.shipped_pairs, "population.json")))
// Who the winners are: the generator of each labelled pair's preferred image (ties excluded), by kind.
let kindOf =
    pdata.["config"].["generators"].AsArray()
    |> Seq.map (fun g -> string g.["name"], string g.["kind"]) |> dict
let winnerKinds =
    [ for l in IO.File.ReadLines(IO.Path.Combine(config.shipped_pairs, "pairs.jsonl")) do
        let o = System.Text.Json.Nodes.JsonNode.Parse(l)
        let label = o.["label_0"].GetValue<float>()
        if label <> 0.5 then
            let g = string (if label = 1.0 then o.["generator_0"] else o.["generator_1"])
            yield g, kindOf.[g] ]
let winners = winnerKinds.Length
let renders = winnerKinds |> List.filter (fun (_, k) -> k = "render") |> List.length
let corrupted = winnerKinds |> List.filter (fun (_, k) -> k = "corrupted") |> List.length
// Checkpoints before the base's release step are weaker than the base.
let release = WorldPopulation.BaseConfig(config.base_model).ReleaseStep
let stepsOf =
    pdata.["config"].["generators"].AsArray() |> Seq.map (fun g -> string g.["name"], g.["pretrain_steps"].GetValue<int>()) |> dict
let baseLike =
    winnerKinds |> List.filter (fun (g, k) -> k = "base" || (k = "checkpoint" && stepsOf.[g] < release)) |> List.length

let pc = "%"
Sudo.Torch.AtomicFile.WriteAllText("paper-repro/population/RESULTS.md", $"""# The quickstart's study with three training seeds — population pairs and controls

Regenerate: `dotnet fsi paper-repro/population/run.fsx` from the repository root (runs are cached in
`runs/paper-repro-population`, a rerun reuses them; the {report.runs.Count} trainings took {trainMinutes:F0} min together on 2 cores,
fp32 on every machine; this regeneration {minutes:F0} min of wall time).

The regime of the papers' data: the shipped base (`assets/world/base`, an early checkpoint — step
{WorldPopulation.BaseConfig(config.base_model).ReleaseStep} of its {WorldPopulation.BaseConfig(config.base_model).unet_steps}-step
pre-training schedule) fine-tuned on the shipped pair population (`assets/world/pairs`: {config.pair_prompts} prompts, two of
{pdata.["config"].["generators"].AsArray().Count} generators of varied quality per prompt — the base at several guidance scales and
step counts, weaker and stronger checkpoints of its own pre-training, ground-truth renders and corrupted renders —
labelled by the judge with noise {config.label_noise} and ties; its README says how it was made). Every method: {config.max_train_steps}
steps × {config.train_batch_size} pairs, lr {config.learning_rate}, β {config.beta_dpo}, through its recipe; **3 training seeds**
(0, 1, 2), each judged on {config.eval_prompts} held-out prompts per split × {config.eval_seeds} sampling seeds (the same for every model;
DDIM {config.sample_steps}, CFG {config.guidance_scale}). Δ = judge score minus the base's on the same prompt and seed, averaged per
training seed; cells are mean ± 95{pc} interval over the 3 seeds (Student t, 2 df).

## Controls

- Positive (SFT on the ground-truth renders of the pair prompts, an upper bound): Δ {num (WorldStudy.GainVsBase(report, "sft_truth", "all"))} — {sig' "sft_truth"}.
- Negative (Diffusion-DPO on shuffled labels: no preference signal): Δ {num (WorldStudy.GainVsBase(report, "dpo_shuffled", "all"))} — {sig' "dpo_shuffled"}.

## Gains over the base (measured)

| method | Δ validation | Δ test (unseen combinations) | Δ both | verdict | win vs base (test) | Δ test at CFG 1 |
|---|---|---|---|---|---|---|
{String.concat "\n" gains}

| model | judge (validation) | judge (test) | judge (test, CFG 1) |
|---|---|---|---|
{String.concat "\n" scores}

## Orderings: ours beside the papers'

| source | ordering of the methods' gains over the base |
|---|---|
| this table (toy, both splits) | {ordering} |
| Diffusion-DPO (SD1.5, human preference vs base) | DPO (59.8{pc} win) > SFT (55.5{pc}) > base |
| SUDO / Self-DPO, Table 2 (SD1.5, PickScore win rate vs base) | Self-DPO (78.6{pc}) > SFT (75.0{pc}) > DPO (73.8{pc}) > base |

Orderings are results, not targets. Ours {(if agreeDpo then "agrees" else "does not agree")} with Diffusion-DPO's (DPO above SFT) and
{(if agreeSudo then "agrees with" else "differs from")} SUDO's (Self-DPO above SFT above DPO); SFT on the winners: {sig' "sft"} here, while both
papers' SFT gains. What we can name: SFT imitates every winner, and of this population's {winners} winners
{100.0 * float baseLike / float winners:F0}{pc} are the base's own samples or a weaker checkpoint's and {100.0 * float corrupted / float winners:F0}{pc} are renders with one
attribute wrong (well formed, unfaithful), against {100.0 * float renders / float winners:F0}{pc} faithful renders; the positive control, which
imitates faithful renders only: {sig' "sft_truth"}. DPO and SUDO also see the loser, which is what separates a faithful
winner from an unfaithful one. At this budget — {config.max_train_steps} steps of {config.train_batch_size} pairs at β {config.beta_dpo}, far fewer
preference updates than the papers' (2000 steps × 2048 pairs for Diffusion-DPO) — their gains are small. The
real-scale tables (the recipes on Pick-a-Pic, the released checkpoints) are in the papers' folders.
""")
printfn "wrote paper-repro/population/RESULTS.md"
