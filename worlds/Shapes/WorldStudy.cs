using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using Sudo.Training;
using static Sudo.Torch.torch;
namespace Sudo.Worlds.Shapes;

/// <summary>Settings of a shapes-world method comparison (the quickstart and the paper-repro tables).</summary>
public sealed record WorldStudyConfig
{
    public string output_dir { get; init; } = "runs/quickstart";
    /// <summary>The base pipeline; built with the default <see cref="WorldBaseConfig"/> when the folder is missing.</summary>
    public string base_model { get; init; } = "assets/world/base";
    /// <summary>Method names from <see cref="WorldStudy.Methods"/>, each run through its recipe.</summary>
    public string[] methods { get; init; } = ["dpo", "sudo"];
    /// <summary>Training seeds: every method runs once per seed; intervals over seeds need ≥ 2 (≥ 3 for the tables).</summary>
    public int[] seeds { get; init; } = [0];
    public int pair_prompts { get; init; } = 300;
    /// <summary>Where the pairs come from: "population" (<see cref="WorldPopulation"/>: two generators of varied quality
    /// per prompt, the regime of Pick-a-Pic) or "base" (two samples of the base per prompt, <see cref="WorldPairs"/>).</summary>
    public string pair_source { get; init; } = "population";
    /// <summary>A pair folder shipped with the repository (relative to it), used instead of generating when its
    /// population.json has this study's population settings and base; null to always generate.</summary>
    public string? shipped_pairs { get; init; } = "assets/world/pairs";
    /// <summary>The generators of a population (null: <see cref="PopulationConfig.DefaultGenerators"/>).</summary>
    public PairGenerator[]? population { get; init; }
    public double label_noise { get; init; } = 0.1;
    public double tie_margin { get; init; } = 0.02;
    public int max_train_steps { get; init; } = 300;
    public int train_batch_size { get; init; } = 8;
    public double learning_rate { get; init; } = 2e-5;
    public int lr_warmup_steps { get; init; } = 20;
    public double beta_dpo { get; init; } = 5000;
    public int checkpointing_steps { get; init; } = 100;
    /// <summary>Held-out prompts per split (validation: seen colour–shape pairs; test: unseen ones).</summary>
    public int eval_prompts { get; init; } = 48;
    /// <summary>Sampling seeds per held-out prompt (the same for every model, so win rates compare like with like).</summary>
    public int eval_seeds { get; init; } = 2;
    public int grid_prompts { get; init; } = 8;
    /// <summary>Validation prompts (one seed) judged at every checkpoint for the score-vs-step plot.</summary>
    public int curve_prompts { get; init; } = 32;
    public int sample_steps { get; init; } = 20;
    public double guidance_scale { get; init; } = 3.0;
    /// <summary>Samplers every model is judged with again, on the same held-out prompts and seeds; each adds the splits
    /// "validation@name" and "test@name" to the table helpers. Default: CFG 1 ("cfg1": no classifier-free guidance,
    /// where SUDO's learned guidance shows). Empty for none.</summary>
    public StudySampler[] extra_samplers { get; init; } = [new("cfg1", 1.0)];
    /// <summary>SPO: rounds of (prompts_per_round prompts sampled with a pool of k per step, then training on the kept pairs);
    /// LoRA rank 4 and lr 6e-5 as SPO's SD-1.5 config (r 8 at 3e-4 collapsed the world base with its 0.60-agreement scorer);
    /// threshold below SPO's 0.3 because the world's scorer separates candidates less sharply than PickScore.</summary>
    /// <summary>SPO optimizer steps (batches of 4 step pairs; a round of 4 prompts gives up to 4 × 16 pairs, so 640 steps ≈ 40 rounds).</summary>
    public int spo_max_train_steps { get; init; } = 640;
    public int spo_prompts_per_round { get; init; } = 4;
    public double spo_learning_rate { get; init; } = 6e-5;
    public int spo_lora_rank { get; init; } = 4;
    public double spo_threshold { get; init; } = 0.1;
    /// <summary>Scorer: clean PickScore-loss steps, then step-aware steps on x̂₀ at random t (as SPO's step-aware model).</summary>
    public int scorer_steps { get; init; } = 600;
    /// <summary>Extra scorer pairs rendered by the world (correct render vs one attribute corrupted), 0 for none.</summary>
    public int scorer_render_pairs { get; init; } = 2000;
    /// <summary>Held-out validation pairs (noiseless judge labels) on which scorer agreement is measured.</summary>
    public int scorer_eval_pairs { get; init; } = 150;
    /// <summary>Train the next run (one thread, its own process) while the previous one is judged (the other thread):
    /// on 2 cores the tiny models use a second thread poorly, so overlapping is faster than running one after the other.</summary>
    public bool overlap { get; init; } = true;
    /// <summary>Training precision: "auto" (bf16 autocast on a CPU with native, faster bf16; fp32 elsewhere —
    /// <see cref="MixedPrecision.ForMachine"/>), "fp32" or "bf16". Printed and stated in the report.</summary>
    public string precision { get; init; } = "auto";
    /// <summary>Markdown lines added under the report's title.</summary>
    public string? report_note { get; init; }
    /// <summary>Seconds spent before the study by the launcher (system packages; build), reported in the timing line.</summary>
    public double? setup_seconds { get; init; }
    public double? build_seconds { get; init; }
    /// <summary>Folder holding recipes/ and scripts/; found from the working directory upwards when null.</summary>
    public string? repo_root { get; init; }
}

/// <summary>A sampler setting the study judges every model with besides its main one (DDIM, CFG guidance_scale, η eta).</summary>
public sealed record StudySampler(string name, double guidance_scale, double eta = 0)
{
    public string Describe() => $"CFG {guidance_scale.ToString(CultureInfo.InvariantCulture)}" + (eta != 0 ? $", DDIM η = {eta.ToString(CultureInfo.InvariantCulture)}" : "");
}

/// <summary>One method of the comparison: the recipe a GPU user runs, with its extra arguments.</summary>
public sealed record WorldMethod(string name, string label, string recipe, string[] extra_args, string note);

/// <summary>The shapes-world comparison: reuses (or builds) the base, makes judge-labelled pairs, fine-tunes each
/// method by running its recipe (`dotnet fsi recipes/….fsx`, the same script and flags a GPU user runs), evaluates
/// every model on held-out prompts with fixed seeds, and writes report.md, grid.png, curve.png and results.json.</summary>
public static partial class WorldStudy
{
    public static readonly IReadOnlyDictionary<string, WorldMethod> Methods = new Dictionary<string, WorldMethod>
    {
        ["sft"] = new("sft", "SFT", "recipes/sft.fsx", [], "denoising loss on the winners (baseline and control)"),
        ["dpo"] = new("dpo", "Diffusion-DPO", "recipes/diffusion_dpo.fsx", [], "DPO on the judge-labelled pairs, frozen reference"),
        ["sudo"] = new("sudo", "SUDO", "recipes/sudo.fsx", [], "self-pairs from the winners, 0.5·DPO + 0.5·MSE"),
        ["dpo_shuffled"] = new("dpo_shuffled", "DPO (shuffled labels)", "recipes/diffusion_dpo.fsx", [], "negative control: labels permuted across pairs, must not gain"),
        ["sft_truth"] = new("sft_truth", "SFT on renders", "recipes/sft.fsx", [], "positive control: denoising loss on the ground-truth renders of the pair prompts (an upper bound), must gain"),
        ["dpo_snr"] = new("dpo_snr", "DPO + SNR weight", "recipes/dpo_timestep_weighted.fsx", ["--gamma", "0.5"], "inline-variant recipe: w(t) = SNR(t)^0.5 / mean"),
        ["spo"] = new("spo", "SPO", "recipes/spo.fsx", [], "online step-wise pairs chosen by the learned step-aware scorer, LoRA"),
    };

    /// <summary>One training run's judge results: the held-out splits with the study's sampler, and in
    /// <paramref name="extra"/> the same splits with each extra sampler (keys "validation@name", "test@name").</summary>
    public sealed record RunResult(string method, int seed, string folder, List<Judge.Result> validation, List<Judge.Result> test,
        List<(int step, double score)> curve, double train_seconds, double peak_rss_mb, string command,
        IReadOnlyDictionary<string, List<Judge.Result>>? extra = null);

    public sealed record Report(string folder, List<Judge.Result> base_validation, List<Judge.Result> base_test, List<RunResult> runs, string markdown,
        IReadOnlyDictionary<string, List<Judge.Result>>? base_extra = null);

    public static string FindRepoRoot(string? hint = null)
    {
        for (var d = new DirectoryInfo(hint ?? Directory.GetCurrentDirectory()); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "recipes", "diffusion_dpo.fsx")) && File.Exists(Path.Combine(d.FullName, "scripts", "_load.fsx")))
                return d.FullName;
        throw new DirectoryNotFoundException($"no Sudo repository (recipes/ and scripts/_load.fsx) at or above {hint ?? Directory.GetCurrentDirectory()}");
    }

    public static Report Run(WorldStudyConfig c, Action<string>? log = null)
    {
        log ??= Console.WriteLine;
        foreach (var m in c.methods)
            if (!Methods.ContainsKey(m)) throw new ArgumentException($"unknown method '{m}' (expected one of: {string.Join(", ", Methods.Keys)})");
        if (c.seeds.Length == 0) throw new ArgumentException("seeds: give at least one training seed");
        foreach (var x in c.extra_samplers)
            if (x.name.Length == 0 || !x.name.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '_' or '-'))
                throw new ArgumentException($"extra_samplers: name '{x.name}' must be letters, digits, '_' or '-' (it names splits and cache files)");
        if (c.extra_samplers.Select(x => x.name).Distinct().Count() != c.extra_samplers.Length)
            throw new ArgumentException($"extra_samplers: names must be unique (got {string.Join(", ", c.extra_samplers.Select(x => x.name))})");
        var root = FindRepoRoot(c.repo_root);
        var (precision, precisionWhy) = MixedPrecision.ForMachine(c.precision);
        log($"world study: precision {precisionWhy}");
        var outDir = Path.GetFullPath(c.output_dir);
        Directory.CreateDirectory(outDir);
        var sw = Stopwatch.StartNew();

        // 1. Base: the shipped/cached folder, or a fresh build with the default settings.
        var baseDir = Path.GetFullPath(Path.IsPathRooted(c.base_model) ? c.base_model : Path.Combine(root, c.base_model));
        if (!File.Exists(Path.Combine(baseDir, "model_index.json"))) WorldBase.Build(baseDir, new WorldBaseConfig(), log);
        else log($"world study: base {baseDir}");
        using var pipe = StableDiffusionPipeline.from_pretrained(baseDir, "ddim");
        var baseWeights = pipe.unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

        // 2. Pairs (shipped, or made and cached by their settings), the shuffled-label and the ground-truth controls.
        var (pairsDir, pairsOrigin) = EnsurePairs(c, root, outDir, baseDir, pipe, log, sw);
        if (c.methods.Contains("dpo_shuffled")) WriteShuffled(pairsDir, Path.Combine(outDir, "pairs_shuffled"));
        if (c.methods.Contains("sft_truth")) WriteTruth(pairsDir, Path.Combine(outDir, "pairs_truth"), pipe.unet.config.sample_size * pipe.vae_scale_factor);

        // 3. Evaluation prompts: held-out validation (seen combinations) and test (unseen combinations).
        var valPrompts = World.Prompts("validation", c.eval_prompts, 0);
        var testPrompts = World.Prompts("test", c.eval_prompts, 0);
        List<Judge.Result> Eval(IReadOnlyList<string> prompts, List<RgbImage>? images = null, StudySampler? sampler = null) =>
            Enumerable.Range(0, c.eval_seeds).SelectMany(s => WorldBase.Evaluate(pipe, prompts, s, c.sample_steps, sampler?.guidance_scale ?? c.guidance_scale,
                s == 0 ? images : null, sampler?.eta ?? 0)).ToList();
        // The extra samplers: both splits each, cached next to the main evaluation (<prefix>_<name>.json) under their own
        // key; unet is loaded only when something has to be sampled.
        IReadOnlyDictionary<string, List<Judge.Result>> Extra(string folder, string cachePrefix, string key, string? unet = null)
        {
            var d = new Dictionary<string, List<Judge.Result>>();
            var loaded = false;
            foreach (var x in c.extra_samplers)
            {
                var (v, t, _) = CachedEval(Path.Combine(folder, $"{cachePrefix}_{x.name}.json"), string.Create(CultureInfo.InvariantCulture, $"{key}|{x.name} CFG {x.guidance_scale:R} eta {x.eta:R}"), () =>
                {
                    if (unet != null && !loaded) LoadUnet(pipe, unet);
                    loaded = true;
                    return (Eval(valPrompts, sampler: x), Eval(testPrompts, sampler: x), []);
                });
                d[$"validation@{x.name}"] = v;
                d[$"test@{x.name}"] = t;
            }
            return d;
        }
        var gridPrompts = valPrompts.Take(c.grid_prompts / 2).Concat(testPrompts.Take(c.grid_prompts - c.grid_prompts / 2)).ToList();
        List<(RgbImage img, double score)> GridRow()
        {
            var imgs = new List<RgbImage>();
            var rs = WorldBase.Evaluate(pipe, gridPrompts, 0, c.sample_steps, c.guidance_scale, imgs);
            return imgs.Zip(rs, (i, r) => (i, r.score)).ToList();
        }
        double CurvePoint() => WorldBase.Evaluate(pipe, valPrompts.Take(c.curve_prompts).ToList(), 0, c.sample_steps, c.guidance_scale).Average(r => r.score);

        // 4. Each method × seed through its recipe, then judged with the same prompts and seeds. With overlap, the next run
        // trains in its own process on one thread while this process judges the previous one (or the base) on the other.
        var mixed = precision == "no" ? null : precision;
        var jobs = new List<Job>();
        foreach (var seed in c.seeds)
            foreach (var m in c.methods)
            {
                var spec = Methods[m];
                var runDir = Path.Combine(outDir, "runs", $"{m}-seed{seed}");
                var data = m switch { "dpo_shuffled" => Path.Combine(outDir, "pairs_shuffled"), "sft_truth" => Path.Combine(outDir, "pairs_truth"), _ => pairsDir };
                // The recipe's flags are the binder's (Flags.ToArgs): every setting that differs from train.py's default.
                var args = m == "spo" ? SpoArgs(c, baseDir, EnsureScorer(pipe, outDir, pairsDir, c, log), Path.Combine(pairsDir, "prompts.txt"), runDir, seed, mixed) : Flags.ToArgs(new TrainConfig
                {
                    mixed_precision = mixed,
                    pretrained_model_name_or_path = baseDir,
                    dataset_name = data,
                    output_dir = runDir,
                    max_train_steps = c.max_train_steps,
                    train_batch_size = c.train_batch_size,
                    learning_rate = c.learning_rate,
                    lr_warmup_steps = c.lr_warmup_steps,
                    beta_dpo = c.beta_dpo,
                    checkpointing_steps = c.checkpointing_steps,
                    resolution = 32,
                    no_hflip = true,
                    proportion_empty_prompts = 0.1,
                    seed = seed,
                });
                args.AddRange(spec.extra_args);
                jobs.Add(new Job(m, seed, spec, runDir, args, $"dotnet fsi {spec.recipe} -- {string.Join(" ", args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a))}"));
            }
        var overlap = c.overlap && Environment.ProcessorCount >= 2;
        // Scheduling. With overlap (≥ 2 cores) every run trains in its own process on one thread, and up to `slots` (the
        // core count) tasks work at once: trainings, and this process judging (the base first, then each run as its
        // training ends) on one thread fewer than it has. A run's judging is shorter than a training, so two runs train
        // side by side whenever nothing waits to be judged. Without overlap: train, judge, one after another.
        var slots = overlap ? Environment.ProcessorCount : 1;
        var mainThreads = (torch: get_num_threads(), blas: get_blas_threads());
        var judgeThreads = overlap ? (torch: Math.Max(1, mainThreads.torch - 1), blas: Math.Max(1, mainThreads.blas - 1)) : mainThreads;
        var running = new Dictionary<int, Task>();
        var ready = new Queue<int>();
        var next = 0;
        void Fill(int reserve)
        {
            while (overlap && next < jobs.Count && running.Count < slots - reserve)
            {
                var k = next++;
                var j = jobs[k];
                if (j.Done)
                {
                    log($"world study: reusing {j.runDir}");
                    ready.Enqueue(k);
                    continue;
                }
                log($"world study: {j.spec.label}, seed {j.seed}: training in the background on one thread (log {Path.Combine(j.runDir, "train.log")}): {j.command}");
                running[k] = Task.Run(() => Train(root, j, background: true));
            }
        }
        var t1 = sw.Elapsed.TotalSeconds;
        var evalKey = $"{c.eval_prompts}|{c.eval_seeds}|{c.curve_prompts}|{c.sample_steps}|{c.guidance_scale}";
        List<Judge.Result> baseVal, baseTest;
        List<(int step, double score)> baseCurvePts;
        IReadOnlyDictionary<string, List<Judge.Result>> baseExtra;
        var grid = new List<(string label, List<(RgbImage img, double score)> row)>();
        var gridRows = new (string label, List<(RgbImage img, double score)> row)?[jobs.Count];
        var results = new RunResult?[jobs.Count];
        double baseCurve = double.NaN;
        try
        {
            Fill(reserve: 1);
            set_num_threads(judgeThreads.torch);
            set_blas_threads(judgeThreads.blas);
            (baseVal, baseTest, baseCurvePts) = CachedEval(Path.Combine(outDir, "base_eval.json"), evalKey, () => (Eval(valPrompts), Eval(testPrompts), [(0, CurvePoint())]));
            baseExtra = Extra(outDir, "base_eval", evalKey);
            grid.Add(("base", GridRow()));
            baseCurve = baseCurvePts[0].score;
            log($"world study: base judged on {valPrompts.Count}+{testPrompts.Count} held-out prompts × {c.eval_seeds} seeds: validation {baseVal.Average(r => r.score):F4}, test {baseTest.Average(r => r.score):F4} ({sw.Elapsed.TotalSeconds - t1:F0} s)");
            var judged = 0;
            while (judged < jobs.Count)
            {
                foreach (var (k, task) in running.Where(kv => kv.Value.IsCompleted).OrderBy(kv => kv.Key).ToList())
                {
                    running.Remove(k);
                    task.GetAwaiter().GetResult();
                    log($"world study: {jobs[k].spec.label}, seed {jobs[k].seed}: trained in the background ({JsonNode.Parse(File.ReadAllText(jobs[k].SummaryPath))!["seconds"]} s)");
                    ready.Enqueue(k);
                }
                Fill(reserve: ready.Count > 0 ? 1 : 0);
                if (ready.Count > 0)
                {
                    var k = ready.Dequeue();
                    (results[k], gridRows[k]) = Judged(jobs[k]);
                    judged++;
                }
                else if (running.Count > 0) Task.WaitAny([.. running.Values]);
                else
                {
                    // Without overlap: the next run in the foreground, with every thread.
                    var j = jobs[next];
                    if (j.Done) log($"world study: reusing {j.runDir}");
                    else
                    {
                        log($"world study: {j.spec.label}, seed {j.seed}: {j.command}");
                        Train(root, j, background: false);
                    }
                    ready.Enqueue(next++);
                }
            }
        }
        finally
        {
            set_num_threads(mainThreads.torch);
            set_blas_threads(mainThreads.blas);
            // A failure while judging still waits for the background runs (each process owns a run folder).
            foreach (var task in running.Values)
                try { task.GetAwaiter().GetResult(); } catch (Exception e) { log($"world study: background training failed: {e.Message}"); }
        }
        // Runs and grid rows in the order of the methods and seeds, whatever order they finished in.
        var runs = results.Select(r => r!).ToList();
        grid.AddRange(gridRows.Where(g => g != null).Select(g => g!.Value));

        (RunResult run, (string label, List<(RgbImage img, double score)> row)? gridRow) Judged(Job j)
        {
            var summary = JsonNode.Parse(File.ReadAllText(j.SummaryPath))!;
            var (val, test, curve) = CachedEval(Path.Combine(j.runDir, "study_eval.json"), evalKey + "|" + j.command, () =>
            {
                var pts = new List<(int, double)> { (0, baseCurve) };
                if (c.curve_prompts > 0)
                {
                    foreach (var ck in Directory.GetDirectories(j.runDir, "checkpoint-*").Select(d => (d, n: int.Parse(Path.GetFileName(d)["checkpoint-".Length..]))).OrderBy(x => x.n))
                    {
                        LoadUnet(pipe, Path.Combine(ck.d, "unet"));
                        pts.Add((ck.n, CurvePoint()));
                    }
                }
                LoadUnet(pipe, Path.Combine(j.runDir, "unet"));
                var v = Eval(valPrompts);
                // The final point of the curve: the first curve_prompts validation prompts at seed 0 are already judged.
                if (pts[^1].Item1 != c.max_train_steps && c.curve_prompts > 0)
                    pts.Add((c.max_train_steps, c.curve_prompts <= c.eval_prompts ? v.Take(c.curve_prompts).Average(r => r.score) : CurvePoint()));
                return (v, Eval(testPrompts), pts);
            });
            (string, List<(RgbImage, double)>)? gridRow = null;
            if (j.seed == c.seeds[0])
            {
                LoadUnet(pipe, Path.Combine(j.runDir, "unet"));
                gridRow = (j.spec.label, GridRow());
            }
            var extra = Extra(j.runDir, "study_eval", evalKey + "|" + j.command, Path.Combine(j.runDir, "unet"));
            log($"world study: {j.spec.label}, seed {j.seed}: validation {val.Average(r => r.score):F4}, test {test.Average(r => r.score):F4}");
            using (no_grad()) pipe.unet.load_state_dict(baseWeights);
            return (new RunResult(j.method, j.seed, j.runDir, val, test, curve, summary["seconds"]!.GetValue<double>(), summary["peak_rss_mb"]!.GetValue<double>(), j.command, extra), gridRow);
        }
        foreach (var t in baseWeights.Values) t.Dispose();

        // 5. Report.
        var md = Markdown(c, root, baseDir, pairsDir, pairsOrigin, precisionWhy, new Report(outDir, baseVal, baseTest, runs, "", baseExtra), sw.Elapsed.TotalSeconds);
        var truth = ("target (rendered)", gridPrompts.Select((p, i) => (World.Render(p, 32, i), double.NaN)).ToList());
        ImageCodecs.Save(Figures.Grid(gridPrompts, grid.Prepend(truth).ToList()), Path.Combine(outDir, "grid.png"));
        Figures.LearningCurves(c.methods.Select(m => (Methods[m].label, (IReadOnlyList<List<(int step, double score)>>)runs.Where(r => r.method == m).Select(r => r.curve).ToList())).ToList(),
            $"mean judge score ({c.curve_prompts} validation prompts)", Path.Combine(outDir, "curve.png"),
            c.seeds.Length >= 2 ? $"Learning curves: mean over {c.seeds.Length} training seeds, 95% Student-t band" : "Learning curves (one training seed: no interval)");
        AtomicFile.WriteAllText(Path.Combine(outDir, "report.md"), md);
        AtomicFile.WriteAllText(Path.Combine(outDir, "results.json"), ResultsJson(c, baseVal, baseTest, runs, baseExtra).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        log($"world study: report {Path.Combine(outDir, "report.md")} (grid.png, curve.png, results.json) after {sw.Elapsed.TotalSeconds:F0} s");
        return new Report(outDir, baseVal, baseTest, runs, md, baseExtra);
    }

    /// <summary>One training run of the study: its recipe, flags and folder.</summary>
    sealed record Job(string method, int seed, WorldMethod spec, string runDir, List<string> args, string command)
    {
        public string SummaryPath => Path.Combine(runDir, "train_summary.json");
        public string CommandPath => Path.Combine(runDir, "study_command.txt");
        /// <summary>Trained before with the same command (cached).</summary>
        public bool Done => File.Exists(SummaryPath) && File.Exists(CommandPath) && File.ReadAllText(CommandPath) == command;
    }

    /// <summary>Runs a job's recipe in a fresh folder: in the foreground (progress on the console) or in the background
    /// on one thread with its output in runDir/train.log; records the command once the run has finished.</summary>
    static void Train(string root, Job j, bool background)
    {
        if (Directory.Exists(j.runDir)) Directory.Delete(j.runDir, true);
        Directory.CreateDirectory(j.runDir);
        if (background)
            RunRecipe(root, j.spec.recipe, j.args, new Dictionary<string, string> { ["SUDO_TORCH_THREADS"] = "1", ["SUDO_BLAS_THREADS"] = "1" }, Path.Combine(j.runDir, "train.log"));
        else RunRecipe(root, j.spec.recipe, j.args);
        File.WriteAllText(j.CommandPath, j.command);
    }

    static List<string> SpoArgs(WorldStudyConfig c, string baseDir, string scorer, string prompts, string runDir, int seed, string? mixed) => Flags.ToArgs(new SpoTrainConfig
    {
        mixed_precision = mixed,
        pretrained_model_name_or_path = baseDir,
        scorer = scorer,
        prompts_file = prompts,
        output_dir = runDir,
        max_train_steps = c.spo_max_train_steps,
        prompts_per_round = c.spo_prompts_per_round,
        train_batch_size = 4,
        learning_rate = c.spo_learning_rate,
        lora_rank = c.spo_lora_rank,
        spo_threshold = c.spo_threshold,
        guidance_scale = c.guidance_scale,
        checkpointing_steps = Math.Max(1, c.spo_max_train_steps / 3),
        save_merged_unet = true,
        // The sweep the recorded paper-repro SPO rows were made with; see WorldMethodTests for how much the order matters here.
        prompt_order = "cycle",
        resolution = 32,
        seed = seed,
    });

    /// <summary>The learned scorer for SPO, cached in output_dir/scorer: a tiny CLIPModel (world vocabulary) trained with
    /// PickScore's loss on the study's pairs (plus rendered correct-vs-corrupted pairs when scorer_render_pairs &gt; 0),
    /// then made step-aware on the base's x̂₀ at random t. Agreement with the judge on held-out validation pairs
    /// (noiseless labels) goes to scorer/agreement.json.</summary>
    public static string EnsureScorer(StableDiffusionPipeline pipe, string outDir, string pairsDir, WorldStudyConfig c, Action<string> log)
    {
        var dir = Path.Combine(outDir, "scorer");
        var pairsHash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(pairsDir, "pairs.jsonl"))))[..16];
        var key = $"{pairsHash}|{c.scorer_steps}|{c.scorer_render_pairs}|{c.scorer_eval_pairs}|{c.sample_steps}|{c.guidance_scale}";
        var keyFile = Path.Combine(dir, "study_key.txt");
        if (File.Exists(keyFile) && File.ReadAllText(keyFile) == key) return dir;
        var sw = Stopwatch.StartNew();
        var held = Path.Combine(outDir, "pairs_validation");
        WorldPairs.Make(pipe, World.Prompts("validation", c.scorer_eval_pairs, 1), held, new WorldPairsConfig { label_noise = 0, tie_margin = c.tie_margin, seed = 7, steps = c.sample_steps, guidance_scale = c.guidance_scale });
        var trainDir = c.scorer_render_pairs > 0 ? WriteRenderAugmented(pairsDir, Path.Combine(outDir, "pairs_scorer"), c.scorer_render_pairs) : pairsDir;
        var train = PairDataset.Load(trainDir);
        var test = PairDataset.Load(held);
        var tok = pipe.components.tokenizer;
        var all = Enumerable.Range(0, train.Pairs.Count).ToList();
        var heldIdx = Enumerable.Range(0, test.Pairs.Count).ToList();
        using var spm = new Sudo.Preference.StepAwarePreferenceModel(WorldScorer.NewClip(tok, pipe.unet.config.sample_size * pipe.vae_scale_factor));
        var before = WorldScorer.Agreement(spm, tok, test, heldIdx);
        WorldScorer.Train(spm, tok, train, all, c.scorer_steps, batch_size: 32, learning_rate: 3e-4, log_every: 100);
        var plain = WorldScorer.Agreement(spm, tok, test, heldIdx);
        WorldScorer.Train(spm, tok, train, all, c.scorer_steps / 3, batch_size: 16, learning_rate: 1e-4, basePipe: pipe, log_every: 100, seed: 1);
        var stepAware = WorldScorer.Agreement(spm, tok, test, heldIdx);
        var atT = new JsonObject();
        foreach (var t in new[] { 250, 500, 750 }) atT[$"{t}"] = Math.Round(WorldScorer.AgreementAt(spm, tok, test, heldIdx, pipe, t), 4);
        spm.save_pretrained(dir);
        AtomicFile.WriteAllText(Path.Combine(dir, "agreement.json"), new JsonObject
        {
            ["held_out_pairs"] = test.Pairs.Count,
            ["train_pairs"] = train.Pairs.Count,
            ["untrained"] = Math.Round(before, 4),
            ["plain_scorer_clean"] = Math.Round(plain, 4),
            ["step_aware_clean"] = Math.Round(stepAware, 4),
            ["step_aware_x0_at_t"] = atT,
            ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(keyFile, key);
        log($"world study: scorer agreement with the judge on {test.Pairs.Count} held-out pairs: untrained {before:F3}, plain {plain:F3}, step-aware {stepAware:F3} (x̂₀ at t=250/500/750: {atT["250"]}/{atT["500"]}/{atT["750"]}); {sw.Elapsed.TotalSeconds:F0} s");
        return dir;
    }

    /// <summary>The study's pairs plus n rendered pairs (a correct render preferred to a render with one attribute
    /// corrupted), as one pair folder (the original images copied in).</summary>
    static string WriteRenderAugmented(string pairsDir, string folder, int n)
    {
        var rng = new Random(2024);
        Directory.CreateDirectory(Path.Combine(folder, "renders"));
        var lines = File.ReadAllLines(Path.Combine(pairsDir, "pairs.jsonl")).Where(l => l.Length > 0).Select(l =>
        {
            var o = JsonNode.Parse(l)!.AsObject();
            CopyImages(pairsDir, folder, o);
            return o.ToJsonString();
        }).ToList();
        var prompts = World.Prompts("train", n, 5);
        string[] kinds = ["color", "shape", "size", "background", "count", "relation"];
        for (var i = 0; i < n; i++)
        {
            var spec = World.Parse(prompts[i]);
            var kind = kinds[rng.Next(kinds.Length)];
            if (kind == "relation" && !spec.IsRelation) kind = "count";
            if (kind == "count" && spec.IsRelation) kind = "color";
            var (bad, _) = JudgeEvaluation.Corrupt(spec, kind, rng);
            var good = $"renders/{i:D5}_good.png";
            var worse = $"renders/{i:D5}_bad.png";
            ImageCodecs.Save(World.Render(spec.background, World.Layout(spec, 32, rng), 32), Path.Combine(folder, good));
            ImageCodecs.Save(World.Render(bad.background, World.Layout(bad, 32, rng), 32), Path.Combine(folder, worse));
            var swap = rng.Next(2) == 0;
            lines.Add(new JsonObject
            {
                ["caption"] = prompts[i],
                ["image_0"] = swap ? worse : good,
                ["image_1"] = swap ? good : worse,
                ["label_0"] = swap ? 0.0 : 1.0,
            }.ToJsonString());
        }
        AtomicFile.WriteAllText(Path.Combine(folder, "pairs.jsonl"), string.Join("\n", lines) + "\n");
        return folder;
    }

    /// <summary>Judge results (validation, test, learning curve) from a cache file written with the same key, or computed and saved.</summary>
    static (List<Judge.Result> val, List<Judge.Result> test, List<(int step, double score)> curve) CachedEval(string path, string key,
        Func<(List<Judge.Result>, List<Judge.Result>, List<(int, double)>)> compute)
    {
        static JsonArray Save(List<Judge.Result> rs) => new(rs.Select(r => (JsonNode)new JsonObject
        {
            ["score"] = r.score,
            ["quality"] = r.quality,
            ["background"] = r.background,
            ["attributes"] = new JsonObject(r.attributes.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        }).ToArray());
        static List<Judge.Result> Load(JsonNode a) => a.AsArray().Select(o => new Judge.Result(
            o!["attributes"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<double>()),
            o["quality"]!.GetValue<double>(), o["score"]!.GetValue<double>(), [], (string)o["background"]!)).ToList();
        if (File.Exists(path) && JsonNode.Parse(File.ReadAllText(path)) is JsonObject cached && (string?)cached["key"] == key)
            return (Load(cached["validation"]!), Load(cached["test"]!),
                cached["curve"]!.AsArray().Select(p => (p![0]!.GetValue<int>(), p[1]!.GetValue<double>())).ToList());
        var (val, test, curve) = compute();
        AtomicFile.WriteAllText(path, new JsonObject
        {
            ["key"] = key,
            ["validation"] = Save(val),
            ["test"] = Save(test),
            ["curve"] = new JsonArray(curve.Select(p => (JsonNode)new JsonArray(p.Item1, p.Item2)).ToArray()),
        }.ToJsonString());
        return (val, test, curve);
    }

    /// <summary>Runs `dotnet fsi recipe -- args` from the repository root, with the console inherited (progress bars
    /// show) or, given <paramref name="logFile"/>, its output written there (for runs side by side); extra
    /// <paramref name="environment"/> variables (e.g. SUDO_TORCH_THREADS) are set for the child only.</summary>
    public static void RunRecipe(string root, string recipe, IReadOnlyList<string> args, IReadOnlyDictionary<string, string>? environment = null, string? logFile = null)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = root, UseShellExecute = false, RedirectStandardOutput = logFile != null, RedirectStandardError = logFile != null };
        psi.ArgumentList.Add("fsi");
        psi.ArgumentList.Add(recipe);
        psi.ArgumentList.Add("--");
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start dotnet fsi");
        if (logFile != null)
        {
            using var log = new StreamWriter(logFile);
            var gate = new object();
            p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (gate) log.WriteLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (gate) log.WriteLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            p.WaitForExit();
        }
        else p.WaitForExit();
        if (p.ExitCode != 0)
        {
            var tail = logFile != null && File.Exists(logFile) ? "\n" + string.Join("\n", File.ReadLines(logFile).TakeLast(30)) : "";
            throw new InvalidOperationException($"{recipe} exited with code {p.ExitCode} (dotnet fsi {recipe} -- {string.Join(" ", args)}){tail}");
        }
    }

    /// <summary>Loads a diffusers UNet folder's weights into the pipeline's UNet (same config).</summary>
    public static void LoadUnet(StableDiffusionPipeline pipe, string folder)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        pipe.unet.load_state_dict(Checkpoints.ReadWeights(Checkpoints.FindWeights(folder, "diffusion_pytorch_model")));
    }

    /// <summary>The study's pair folder and a sentence on where it came from: the shipped population when its settings and
    /// base match, else made in output_dir/pairs (reused while its settings are unchanged).</summary>
    static (string dir, string origin) EnsurePairs(WorldStudyConfig c, string root, string outDir, string baseDir, StableDiffusionPipeline pipe, Action<string> log, Stopwatch sw)
    {
        var inv = CultureInfo.InvariantCulture;
        var pairsDir = Path.Combine(outDir, "pairs");
        var marker = Path.Combine(pairsDir, "study_key.txt");
        var t0 = sw.Elapsed.TotalSeconds;
        if (c.pair_source == "base")
        {
            var key = $"base|{baseDir}|{c.pair_prompts}|{c.label_noise}|{c.tie_margin}|{c.sample_steps}|{c.guidance_scale}";
            if (!File.Exists(marker) || File.ReadAllText(marker) != key)
            {
                var s = WorldPairs.Make(pipe, World.Prompts("train", c.pair_prompts, 0), pairsDir,
                    new WorldPairsConfig { label_noise = c.label_noise, tie_margin = c.tie_margin, steps = c.sample_steps, guidance_scale = c.guidance_scale });
                File.WriteAllText(marker, key);
                log($"world study: {s.pairs} pairs ({s.ties} ties, {s.flipped} flipped labels, mean judge gap {s.mean_gap:F3}) in {sw.Elapsed.TotalSeconds - t0:F0} s");
                return (pairsDir, $"made in this run: {c.pair_prompts} train prompts × 2 base samples (DDIM {c.sample_steps}, CFG {c.guidance_scale.ToString(inv)}), label noise {c.label_noise.ToString(inv)}, tie margin {c.tie_margin.ToString(inv)}, {sw.Elapsed.TotalSeconds - t0:F0} s");
            }
            return (pairsDir, $"reused from an earlier run with the same settings: {c.pair_prompts} train prompts × 2 base samples, label noise {c.label_noise.ToString(inv)}");
        }
        if (c.pair_source != "population") throw new ArgumentException($"pair_source '{c.pair_source}': expected population or base");
        var pop = new PopulationConfig { pairs = c.pair_prompts, label_noise = c.label_noise, tie_margin = c.tie_margin, generators = c.population ?? PopulationConfig.DefaultGenerators };
        var baseKey = WorldPopulation.BaseKey(baseDir);
        bool Matches(string dir)
        {
            var f = Path.Combine(dir, "population.json");
            if (!File.Exists(f) || !File.Exists(Path.Combine(dir, "pairs.jsonl"))) return false;
            var o = JsonNode.Parse(File.ReadAllText(f));
            return (string?)o?["key"] == pop.Key && (string?)o?["base_key"] == baseKey;
        }
        string Describe(string dir)
        {
            var o = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "population.json")))!;
            return $"{o["pairs"]} prompts, two of {pop.generators.Length} generators each ({string.Join(", ", pop.generators.Select(g => g.name))}), label noise {c.label_noise.ToString(inv)}, "
                + $"{o["ties"]} ties, {o["flipped"]} flipped labels; made by `{o["command"]}` in {o["seconds"]} s";
        }
        if (c.shipped_pairs is { } rel && Path.GetFullPath(Path.Combine(root, rel)) is var shipped && Matches(shipped))
        {
            log($"world study: pairs {shipped} (shipped population, settings {pop.Key})");
            return (shipped, $"shipped with the repository (`{rel}`, its README.md says how it was made; a test replays its first pairs): {Describe(shipped)}");
        }
        if (Matches(pairsDir)) return (pairsDir, $"reused from an earlier run: {Describe(pairsDir)}");
        var cmd = $"sudoml world pairs --population --model {Path.GetRelativePath(root, baseDir)} --n {c.pair_prompts} --label-noise {c.label_noise.ToString(inv)} --tie-margin {c.tie_margin.ToString(inv)} --out {Path.GetRelativePath(root, pairsDir)}";
        WorldPopulation.Make(pipe, baseDir, pairsDir, pop, cmd, log);
        return (pairsDir, $"made in this run: {Describe(pairsDir)}");
    }

    /// <summary>The positive control's data: each pair prompt's ground-truth render as the winner (layout seed = the pair
    /// index) against a render with one attribute corrupted, as a pair folder (SFT trains on the winners).</summary>
    static void WriteTruth(string pairsDir, string folder, int resolution)
    {
        var prompts = File.ReadAllLines(Path.Combine(pairsDir, "pairs.jsonl")).Where(l => l.Length > 0).Select(l => (string)JsonNode.Parse(l)!["caption"]!).ToList();
        var key = $"{resolution}|" + string.Join("\n", prompts);
        var keyFile = Path.Combine(folder, "study_key.txt");
        if (File.Exists(keyFile) && File.ReadAllText(keyFile) == key) return;
        var tmp = folder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(Path.Combine(tmp, "images"));
        var lines = prompts.Select((p, i) =>
        {
            var good = $"images/{i:D5}_render.png";
            var bad = $"images/{i:D5}_corrupted.png";
            ImageCodecs.Save(WorldPopulation.RenderFor(p, resolution, i, corrupted: false), Path.Combine(tmp, good));
            ImageCodecs.Save(WorldPopulation.RenderFor(p, resolution, i, corrupted: true), Path.Combine(tmp, bad));
            return new JsonObject { ["caption"] = p, ["image_0"] = good, ["image_1"] = bad, ["label_0"] = 1.0 }.ToJsonString();
        });
        File.WriteAllText(Path.Combine(tmp, "pairs.jsonl"), string.Join("\n", lines) + "\n");
        File.WriteAllText(Path.Combine(tmp, "study_key.txt"), key);
        AtomicFile.PublishDirectory(tmp, folder);
    }

    /// <summary>The pair folder with label_0 permuted across pairs (a fixed seed), the images copied in.</summary>
    static void WriteShuffled(string pairsDir, string folder)
    {
        var lines = File.ReadAllLines(Path.Combine(pairsDir, "pairs.jsonl")).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var labels = lines.Select(o => o["label_0"]!.GetValue<double>()).ToArray();
        new Random(12345).Shuffle(labels);
        var tmp = folder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        var outLines = lines.Select((o, i) =>
        {
            o["label_0"] = labels[i];
            CopyImages(pairsDir, tmp, o);
            return o.ToJsonString();
        }).ToList();
        File.WriteAllText(Path.Combine(tmp, "pairs.jsonl"), string.Join("\n", outLines) + "\n");
        AtomicFile.PublishDirectory(tmp, folder);
    }

    /// <summary>Copies the images a pair record names from <paramref name="from"/> into <paramref name="to"/> under the same
    /// relative names: a pair file may only name images inside its own folder (<see cref="PairDataset.Load"/> refuses
    /// <c>../</c>), and the world's pair folders are a few MB.</summary>
    static void CopyImages(string from, string to, JsonObject record)
    {
        foreach (var key in new[] { "image_0", "image_1", "winner", "loser" })
        {
            if (record[key] is not JsonValue v) continue;
            var name = v.GetValue<string>();
            var dest = Path.Combine(to, name);
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(Path.Combine(from, name), dest, overwrite: true);
        }
    }
}
