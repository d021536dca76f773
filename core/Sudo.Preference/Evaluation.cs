// `sudoml eval` as a library call: models (a base and tuned ones) × a prompt set × fixed seeds × reward models.
// Images are cached (one PNG per model, prompt and seed, written atomically), scores are cached per scorer, so a run
// resumes after an interruption and adding a scorer re-scores without re-sampling. Output: per-scorer means with 95%
// bootstrap intervals over prompts, paired win rates against the base (same prompt and seed; ties count ½) with a
// bootstrap interval over prompts, per-prompt JSONL, report.md and a self-contained report.html (side-by-side grids,
// one plot per scorer), and the exact command.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Preference;

/// <summary>A model under evaluation: a short name and what to load.</summary>
public sealed record EvalModel(string name, PipelineSpec spec)
{
    /// <summary>"name=PIPELINE[,unet=PATH][,lora=PATH][,lora_scale=S][,vae=PATH][,scheduler=NAME][,prediction_type=P]"; an empty PIPELINE
    /// means <paramref name="basePipeline"/> (the first model's), e.g. "dpo=,unet=mhdang/dpo-sd1.5-text2image-v1".</summary>
    public static EvalModel Parse(string text, string? basePipeline = null)
    {
        var eq = text.IndexOf('=');
        if (eq <= 0) throw new ArgumentException($"model '{text}': expected name=PIPELINE[,unet=PATH][,lora=PATH][,lora_scale=S][,vae=PATH][,scheduler=NAME][,prediction_type=P]");
        var name = text[..eq];
        var parts = text[(eq + 1)..].Split(',');
        var pipeline = parts[0].Length > 0 ? parts[0] : basePipeline ?? throw new ArgumentException($"model '{name}': no pipeline (and no base model to take it from)");
        var spec = new PipelineSpec { model = pipeline };
        foreach (var kv in parts.Skip(1))
        {
            var e = kv.IndexOf('=');
            if (e <= 0) throw new ArgumentException($"model '{name}': '{kv}' is not key=value");
            var (k, v) = (kv[..e], kv[(e + 1)..]);
            spec = k switch
            {
                "unet" => spec with { unet = v },
                "lora" => spec with { lora = v },
                "lora_scale" => spec with { lora_scale = double.Parse(v, CultureInfo.InvariantCulture) },
                "vae" => spec with { vae = v },
                "scheduler" => spec with { scheduler = v },
                "variant" => spec with { variant = v },
                "prediction_type" => spec with { prediction_type = v },
                _ => throw new ArgumentException($"model '{name}': unknown key '{k}' (unet, lora, lora_scale, vae, scheduler, prediction_type, variant)"),
            };
        }
        return new EvalModel(name, spec);
    }
}

/// <summary>A reward model: one of <see cref="RewardModels.Names"/> and its path.</summary>
public sealed record EvalScorer(string name, string path)
{
    /// <summary>"name=PATH" with name one of <see cref="RewardModels.Names"/>.</summary>
    public static EvalScorer Parse(string text)
    {
        var (n, p) = RewardModels.ParseSpec(text);
        return new EvalScorer(n, p);
    }
}

public sealed record EvalSettings
{
    /// <summary>The first model is the base the win rates are measured against.</summary>
    public required IReadOnlyList<EvalModel> models { get; init; }
    public required IReadOnlyList<string> prompts { get; init; }
    public required IReadOnlyList<EvalScorer> scorers { get; init; }
    public required string out_dir { get; init; }
    public IReadOnlyList<long> seeds { get; init; } = [0];
    public int steps { get; init; } = 50;
    public double guidance { get; init; } = 7.5;
    public string? negative_prompt { get; init; }
    public int? height { get; init; }
    public int? width { get; init; }
    public string dtype { get; init; } = "float32";
    public string device { get; init; } = "cpu";
    public int batch_size { get; init; } = 4;
    /// <summary>Prompts shown in the HTML grid (all are scored).</summary>
    public int grid_prompts { get; init; } = 12;
    /// <summary>Bootstrap resamples for every interval.</summary>
    public int bootstrap { get; init; } = 2000;
    public int bootstrap_seed { get; init; } = 0;
    /// <summary>The command that produced the run, recorded in the report.</summary>
    public string? command { get; init; }
    /// <summary>CLIP BPE tokenizer folder for PickScore / HPS / CLIP-score models that ship none (default: the base
    /// pipeline's tokenizer/, the same vocabulary).</summary>
    public string? clip_tokenizer { get; init; }
}

/// <summary>A mean with its 95% interval.</summary>
public sealed record Interval(double mean, double lo, double hi)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{mean:G4} [{lo:G4}, {hi:G4}]");
}

public sealed record EvalReport(
    IReadOnlyList<string> models,
    IReadOnlyList<string> scorers,
    /// <summary>[model][scorer] mean score with a bootstrap interval over prompts.</summary>
    IReadOnlyDictionary<string, IReadOnlyDictionary<string, Interval>> means,
    /// <summary>[tuned model][scorer] paired win rate against the base.</summary>
    IReadOnlyDictionary<string, IReadOnlyDictionary<string, Interval>> win_rates,
    string report_md, string report_html, string per_prompt_jsonl);

public static class Evaluation
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static string ImagePath(string outDir, string model, int prompt, long seed) =>
        Path.Combine(outDir, "images", model, $"p{prompt:D5}_s{seed}.png");

    /// <summary>Runs (or resumes) an evaluation; <paramref name="log"/> receives progress lines.</summary>
    public static EvalReport Run(EvalSettings s, Action<string>? log = null)
    {
        log ??= Console.WriteLine;
        Validate(s);
        Directory.CreateDirectory(s.out_dir);
        CheckRunRecord(s);
        foreach (var m in s.models) Sample(s, m, log);
        var scores = new Dictionary<string, Dictionary<string, double>>();   // scorer → key → score
        foreach (var sc in s.scorers) scores[sc.name] = Score(s, sc, log);
        return Report(s, scores, log);
    }

    private static void Validate(EvalSettings s)
    {
        if (s.models.Count == 0) throw new ArgumentException("eval needs at least one model (the first is the base)");
        if (s.prompts.Count == 0) throw new ArgumentException("eval needs prompts");
        if (s.scorers.Count == 0) throw new ArgumentException($"eval needs at least one scorer ({string.Join(", ", RewardModels.Names)})");
        if (s.seeds.Count == 0) throw new ArgumentException("eval needs at least one seed");
        var dupModel = s.models.GroupBy(m => m.name).FirstOrDefault(g => g.Count() > 1);
        if (dupModel is not null) throw new ArgumentException($"two models are named '{dupModel.Key}'");
        foreach (var m in s.models)
            if (m.name.Length == 0 || m.name.Any(c => !(char.IsLetterOrDigit(c) || c is '-' or '_' or '.')))
                throw new ArgumentException($"model name '{m.name}': use letters, digits, '-', '_' or '.' (it names a folder)");
        foreach (var sc in s.scorers)
            if (!RewardModels.Names.Contains(sc.name)) throw new ArgumentException($"unknown scorer '{sc.name}' (expected {string.Join(", ", RewardModels.Names)})");
        if (s.scorers.GroupBy(x => x.name).Any(g => g.Count() > 1)) throw new ArgumentException("each scorer may be given once");
    }

    /// <summary>run.json records what the cached images depend on; a resumed run must agree on it.</summary>
    private static void CheckRunRecord(EvalSettings s)
    {
        var record = new JsonObject
        {
            ["prompts"] = new JsonArray(s.prompts.Select(p => (JsonNode)p).ToArray()),
            ["seeds"] = new JsonArray(s.seeds.Select(x => (JsonNode)x).ToArray()),
            ["steps"] = s.steps,
            ["guidance"] = s.guidance,
            ["negative_prompt"] = s.negative_prompt,
            ["height"] = s.height,
            ["width"] = s.width,
            ["dtype"] = s.dtype,
        };
        var path = Path.Combine(s.out_dir, "run.json");
        if (File.Exists(path))
        {
            var old = JsonNode.Parse(File.ReadAllText(path)) as JsonObject;
            var changed = record.Where(kv => !JsonNode.DeepEquals(kv.Value, old?[kv.Key])).Select(kv => kv.Key).ToList();
            if (changed.Count > 0)
                throw new InvalidOperationException($"{s.out_dir} holds an evaluation with other {string.Join(", ", changed)}: its cached images would not match; use another --out");
        }
        else AtomicFile.WriteAllText(path, record.ToJsonString(Indented));
        foreach (var m in s.models)
        {
            var mp = Path.Combine(s.out_dir, "images", m.name, "model.json");
            var spec = new JsonObject { ["spec"] = m.spec.Describe(), ["scheduler"] = m.spec.scheduler };
            if (File.Exists(mp))
            {
                var old = JsonNode.Parse(File.ReadAllText(mp));
                if (!JsonNode.DeepEquals(old?["spec"], spec["spec"]))
                    throw new InvalidOperationException($"{mp}: model '{m.name}' was sampled from {old?["spec"]}, now {m.spec.Describe()}; give it another name or use another --out");
            }
            else AtomicFile.WriteAllText(mp, spec.ToJsonString(Indented));
        }
    }

    private static void Sample(EvalSettings s, EvalModel m, Action<string> log)
    {
        var todo = new List<(int p, long seed)>();
        for (var p = 0; p < s.prompts.Count; p++)
            foreach (var seed in s.seeds)
                if (!File.Exists(ImagePath(s.out_dir, m.name, p, seed))) todo.Add((p, seed));
        if (todo.Count == 0)
        {
            log($"{m.name}: all {s.prompts.Count * s.seeds.Count} images cached");
            return;
        }
        var device = Device.Parse(s.device);
        var dtype = Sampling.ParseDtype(s.dtype, device);
        log($"{m.name}: sampling {todo.Count} images ({m.spec.Describe()})");
        using var pipe = PipelineLoading.Load(m.spec, dtype, device);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var done = 0;
        foreach (var chunk in todo.Chunk(Math.Max(1, s.batch_size)))
        {
            using var scope = NewDisposeScope();
            // The same seed gives the same initial noise to every model: the comparisons are paired.
            var gens = chunk.Select(j => new Generator(j.seed)).ToArray();
            try
            {
                using var result = pipe.call(new GenerationOptions
                {
                    prompt = chunk.Select(j => s.prompts[j.p]).ToList(),
                    negative_prompt = s.negative_prompt is null ? null : chunk.Select(_ => s.negative_prompt).ToList(),
                    height = s.height,
                    width = s.width,
                    num_inference_steps = s.steps,
                    guidance_scale = s.guidance,
                    generators = gens,
                });
                for (var k = 0; k < chunk.Length; k++)
                    ImageCodecs.Save(Images.FromTensor01(result.images!.select(0, k)), ImagePath(s.out_dir, m.name, chunk[k].p, chunk[k].seed));
            }
            finally
            {
                foreach (var g in gens) g.Dispose();
            }
            done += chunk.Length;
            log(string.Create(CultureInfo.InvariantCulture, $"{m.name}: {done}/{todo.Count} images, {sw.Elapsed.TotalSeconds:F0} s"));
        }
    }

    private static string Key(string model, int prompt, long seed) => $"{model}|{prompt}|{seed}";

    /// <summary>SHA-256 of an image file (hex, 16 bytes): a cached score is reused only for the same image.</summary>
    private static string ImageHash(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)), 0, 16);

    /// <summary>Scores every image with one reward model; scores/&lt;name&gt;.jsonl caches them (appended per batch).</summary>
    private static Dictionary<string, double> Score(EvalSettings s, EvalScorer sc, Action<string> log)
    {
        var path = Path.Combine(s.out_dir, "scores", sc.name + ".jsonl");
        var cache = new Dictionary<string, double>();
        var hashes = new Dictionary<string, string>();
        string Hash(string image) => hashes.TryGetValue(image, out var h) ? h : hashes[image] = ImageHash(image);
        if (File.Exists(path))
            foreach (var line in File.ReadLines(path))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonObject? o;
                try
                {
                    o = JsonNode.Parse(line) as JsonObject;
                }
                catch (JsonException)
                {
                    continue;   // a line cut by an interruption: re-scored below
                }
                if (o is null || (string?)o["scorer_path"] != sc.path) continue;
                var (model, prompt, seed) = ((string)o["model"]!, (int)o["prompt_index"]!, (long)o["seed"]!);
                var image = ImagePath(s.out_dir, model, prompt, seed);
                // A score of an image that was since replaced (or removed) is not reused.
                if (!File.Exists(image) || (string?)o["image_sha256"] != Hash(image)) continue;
                cache[Key(model, prompt, seed)] = (double)o["score"]!;
            }
        var todo = (from m in s.models
                    from p in Enumerable.Range(0, s.prompts.Count)
                    from seed in s.seeds
                    where !cache.ContainsKey(Key(m.name, p, seed))
                    select (m: m.name, p, seed)).ToList();
        if (todo.Count == 0)
        {
            log($"{sc.name}: all scores cached");
            return cache;
        }
        log($"{sc.name}: scoring {todo.Count} images with {sc.path}");
        using var reward = LoadScorer(s, sc);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var writer = new StreamWriter(path, append: true, new UTF8Encoding(false));
        // One image per call: a score must not depend on which other images share its batch (BLAS blocking changes
        // the last bits), or identical images of two models would not tie.
        foreach (var chunk in todo.Chunk(16))
        {
            var values = chunk.Select(j => reward.Score([ImageCodecs.Load(ImagePath(s.out_dir, j.m, j.p, j.seed))], [s.prompts[j.p]])[0]).ToArray();
            var files = chunk.Select(j => ImagePath(s.out_dir, j.m, j.p, j.seed)).ToArray();
            for (var i = 0; i < chunk.Length; i++)
            {
                var j = chunk[i];
                if (!double.IsFinite(values[i])) throw new InvalidDataException($"{sc.name} gave {values[i]} for {ImagePath(s.out_dir, j.m, j.p, j.seed)}");
                cache[Key(j.m, j.p, j.seed)] = values[i];
                writer.WriteLine(new JsonObject
                {
                    ["model"] = j.m,
                    ["prompt_index"] = j.p,
                    ["seed"] = j.seed,
                    ["score"] = values[i],
                    ["scorer_path"] = sc.path,
                    ["image_sha256"] = Hash(files[i]),
                }.ToJsonString());
            }
            writer.Flush();
        }
        return cache;
    }

    private static IRewardModel LoadScorer(EvalSettings s, EvalScorer sc)
    {
        var tok = s.clip_tokenizer ?? Path.Combine(Sudo.Models.Hub.Resolve(s.models[0].spec.model, s.models[0].spec.cache_dir), "tokenizer");
        return RewardModels.Load(sc.name, sc.path, tok);
    }

    /// <summary>Percentile bootstrap of the mean of per-prompt values (resampling prompts).</summary>
    public static Interval Bootstrap(IReadOnlyList<double> perPrompt, int resamples, int seed)
    {
        var n = perPrompt.Count;
        var mean = perPrompt.Average();
        if (n < 2) return new Interval(mean, mean, mean);
        var rng = new Random(seed);
        var stats = new double[resamples];
        for (var b = 0; b < resamples; b++)
        {
            double sum = 0;
            for (var i = 0; i < n; i++) sum += perPrompt[rng.Next(n)];
            stats[b] = sum / n;
        }
        Array.Sort(stats);
        double Q(double q) => stats[Math.Clamp((int)Math.Floor(q * (resamples - 1)), 0, resamples - 1)];
        return new Interval(mean, Q(0.025), Q(0.975));
    }

    private static EvalReport Report(EvalSettings s, Dictionary<string, Dictionary<string, double>> scores, Action<string> log)
    {
        var models = s.models.Select(m => m.name).ToList();
        var scorerNames = s.scorers.Select(x => x.name).ToList();
        var baseName = models[0];
        double Val(string sc, string m, int p, long seed) => scores[sc][Key(m, p, seed)];
        var means = new Dictionary<string, IReadOnlyDictionary<string, Interval>>();
        var wins = new Dictionary<string, IReadOnlyDictionary<string, Interval>>();
        foreach (var m in models)
        {
            var row = new Dictionary<string, Interval>();
            foreach (var sc in scorerNames)
                row[sc] = Bootstrap(Enumerable.Range(0, s.prompts.Count).Select(p => s.seeds.Average(seed => Val(sc, m, p, seed))).ToList(), s.bootstrap, s.bootstrap_seed);
            means[m] = row;
            if (m == baseName) continue;
            var wr = new Dictionary<string, Interval>();
            foreach (var sc in scorerNames)
                wr[sc] = Bootstrap(Enumerable.Range(0, s.prompts.Count).Select(p => s.seeds.Average(seed =>
                {
                    var (a, b) = (Val(sc, m, p, seed), Val(sc, baseName, p, seed));
                    return a > b ? 1.0 : a < b ? 0.0 : 0.5;
                })).ToList(), s.bootstrap, s.bootstrap_seed);
            wins[m] = wr;
        }

        // Per-prompt JSONL: one line per (prompt, seed) with every model's scores.
        var jsonl = new StringBuilder();
        for (var p = 0; p < s.prompts.Count; p++)
            foreach (var seed in s.seeds)
            {
                var o = new JsonObject { ["prompt_index"] = p, ["prompt"] = s.prompts[p], ["seed"] = seed };
                foreach (var m in models)
                {
                    var mo = new JsonObject { ["image"] = Path.GetRelativePath(s.out_dir, ImagePath(s.out_dir, m, p, seed)) };
                    foreach (var sc in scorerNames) mo[sc] = Val(sc, m, p, seed);
                    o[m] = mo;
                }
                jsonl.AppendLine(o.ToJsonString());
            }
        var jsonlPath = Path.Combine(s.out_dir, "per_prompt.jsonl");
        AtomicFile.WriteAllText(jsonlPath, jsonl.ToString());

        var scales = s.scorers.ToDictionary(x => x.name, x => ScaleOf(x.name));
        var md = new StringBuilder();
        md.AppendLine("# Evaluation").AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{s.prompts.Count} prompts × {s.seeds.Count} seed(s) ({string.Join(", ", s.seeds)}), {s.steps} steps, guidance {s.guidance:G3}, {s.dtype} on {s.device}; base: **{baseName}**."));
        md.AppendLine("Means with 95% percentile-bootstrap intervals over prompts; win rate = share of (prompt, seed) where the model's score beats the base's on the same prompt and seed (ties ½), with a bootstrap interval over prompts.").AppendLine();
        md.AppendLine("## Models").AppendLine();
        foreach (var m in s.models) md.AppendLine($"- **{m.name}**: {m.spec.Describe()}");
        md.AppendLine().AppendLine("## Mean scores").AppendLine();
        md.AppendLine("| model | " + string.Join(" | ", scorerNames) + " |");
        md.AppendLine("|---|" + string.Concat(scorerNames.Select(_ => "---|")));
        foreach (var m in models) md.AppendLine($"| {m} | " + string.Join(" | ", scorerNames.Select(sc => means[m][sc].ToString())) + " |");
        if (wins.Count > 0)
        {
            md.AppendLine().AppendLine($"## Win rate against {baseName}").AppendLine();
            md.AppendLine("| model | " + string.Join(" | ", scorerNames) + " |");
            md.AppendLine("|---|" + string.Concat(scorerNames.Select(_ => "---|")));
            foreach (var (m, row) in wins) md.AppendLine($"| {m} | " + string.Join(" | ", scorerNames.Select(sc => Pct(row[sc]))) + " |");
        }
        md.AppendLine().AppendLine("## Scales").AppendLine();
        foreach (var sc in s.scorers) md.AppendLine($"- **{sc.name}** ({sc.path}): {scales[sc.name]}");
        md.AppendLine().AppendLine("## Command").AppendLine().AppendLine("```").AppendLine(s.command ?? "(library call: Sudo.Preference.Evaluation.Run)").AppendLine("```");
        md.AppendLine().AppendLine("Files: `per_prompt.jsonl` (every score), `images/<model>/p<prompt>_s<seed>.png`, `scores/<scorer>.jsonl`, `report.html`.");
        var mdPath = Path.Combine(s.out_dir, "report.md");
        AtomicFile.WriteAllText(mdPath, md.ToString());

        var htmlPath = Path.Combine(s.out_dir, "report.html");
        AtomicFile.WriteAllText(htmlPath, Html(s, models, scorerNames, means, wins, Val, md.ToString()));
        log($"wrote {mdPath}, {htmlPath}, {jsonlPath}");
        return new EvalReport(models, scorerNames, means, wins, mdPath, htmlPath, jsonlPath);
    }

    private static string Pct(Interval i) => string.Create(CultureInfo.InvariantCulture, $"{100 * i.mean:F1}% [{100 * i.lo:F1}, {100 * i.hi:F1}]");

    private static string ScaleOf(string scorer) => scorer switch
    {
        "pickscore" => "exp(logit_scale)·cos (PickScore_v1: 100·cos, the papers' 21.x)",
        "hps" => "cosine ⟨img, txt⟩ (HPSv2's img_score.py; ≈ 0.27 for SD1.5)",
        "clip" => "cosine ⟨img, txt⟩ of an open_clip model (Diffusion-DPO's CLIP score with laion ViT-H-14)",
        "aes" => "LAION aesthetic v2 MLP output (~1–10)",
        "imagereward" => "ImageReward's standardised reward ((mlp − 0.1672) / 1.0333)",
        _ => "",
    };

    private static string Esc(string s) => System.Net.WebUtility.HtmlEncode(s);

    private static string Html(EvalSettings s, List<string> models, List<string> scorers,
        Dictionary<string, IReadOnlyDictionary<string, Interval>> means, Dictionary<string, IReadOnlyDictionary<string, Interval>> wins,
        Func<string, string, int, long, double> val, string markdown)
    {
        var h = new StringBuilder();
        h.Append("<!doctype html><html><head><meta charset=\"utf-8\"><title>Sudo evaluation</title><style>")
         .Append("body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}")
         .Append(".grid td{vertical-align:top}.grid img{width:192px;height:auto;display:block}.prompt{font-size:13px;text-align:left;max-width:800px}.s{font-size:11px;color:#333}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}")
         .Append("</style></head><body><h1>Evaluation</h1>");
        h.Append("<p>").Append(Esc(string.Create(CultureInfo.InvariantCulture, $"{s.prompts.Count} prompts × {s.seeds.Count} seed(s), {s.steps} steps, guidance {s.guidance:G3}; base: {models[0]}."))).Append("</p>");
        h.Append("<h2>Mean scores (95% bootstrap intervals over prompts)</h2><table><tr><th>model</th>");
        foreach (var sc in scorers) h.Append("<th>").Append(Esc(sc)).Append("</th>");
        h.Append("</tr>");
        foreach (var m in models)
        {
            h.Append("<tr><td>").Append(Esc(m)).Append("</td>");
            foreach (var sc in scorers) h.Append("<td>").Append(Esc(means[m][sc].ToString())).Append("</td>");
            h.Append("</tr>");
        }
        h.Append("</table>");
        if (wins.Count > 0)
        {
            h.Append("<h2>Win rate against ").Append(Esc(models[0])).Append(" (same prompt and seed; ties ½)</h2><table><tr><th>model</th>");
            foreach (var sc in scorers) h.Append("<th>").Append(Esc(sc)).Append("</th>");
            h.Append("</tr>");
            foreach (var (m, row) in wins)
            {
                h.Append("<tr><td>").Append(Esc(m)).Append("</td>");
                foreach (var sc in scorers) h.Append("<td>").Append(Esc(Pct(row[sc]))).Append("</td>");
                h.Append("</tr>");
            }
            h.Append("</table>");
        }
        h.Append("<h2>Scores per model</h2>");
        foreach (var sc in scorers) h.Append(BarPlot(sc, models, means));
        h.Append("<h2>Side by side</h2><table class=\"grid\"><tr>");
        foreach (var m in models) h.Append("<th>").Append(Esc(m)).Append("</th>");
        h.Append("</tr>");
        var seed0 = s.seeds[0];
        for (var p = 0; p < Math.Min(s.grid_prompts, s.prompts.Count); p++)
        {
            h.Append("<tr>");
            foreach (var m in models)
            {
                var bytes = File.ReadAllBytes(ImagePath(s.out_dir, m, p, seed0));
                h.Append("<td><img src=\"data:image/png;base64,").Append(Convert.ToBase64String(bytes)).Append("\"><div class=\"s\">");
                h.Append(Esc(string.Join(" · ", scorers.Select(sc => string.Create(CultureInfo.InvariantCulture, $"{sc} {val(sc, m, p, seed0):G4}")))));
                h.Append("</div></td>");
            }
            h.Append("</tr><tr><td class=\"prompt\" colspan=\"").Append(models.Count).Append("\">").Append(Esc($"#{p} (seed {seed0}): {s.prompts[p]}")).Append("</td></tr>");
        }
        h.Append("</table><h2>Report</h2><pre>").Append(Esc(markdown)).Append("</pre></body></html>");
        return h.ToString();
    }

    /// <summary>An inline SVG bar chart of one scorer's means with their intervals.</summary>
    private static string BarPlot(string scorer, List<string> models, Dictionary<string, IReadOnlyDictionary<string, Interval>> means)
    {
        const int w = 560, barH = 26, left = 140, right = 20, top = 28;
        var rows = models.Select(m => (m, i: means[m][scorer])).ToList();
        var lo = Math.Min(0, rows.Min(r => r.i.lo));
        var hi = Math.Max(0, rows.Max(r => r.i.hi));
        if (hi - lo < 1e-12) hi = lo + 1;
        double X(double v) => left + (v - lo) / (hi - lo) * (w - left - right);
        var height = top + rows.Count * barH + 24;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" style=\"display:block;margin:8px 0\">");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"4\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{Esc(scorer)}</text>");
        for (var k = 0; k < rows.Count; k++)
        {
            var (m, i) = rows[k];
            var y = top + k * barH;
            var x0 = X(Math.Min(0, i.mean));
            var x1 = X(Math.Max(0, i.mean));
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{left - 6}\" y=\"{y + 16}\" font-size=\"12\" text-anchor=\"end\">{Esc(m)}</text>");
            sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{x0:F1}\" y=\"{y + 4}\" width=\"{Math.Max(1, x1 - x0):F1}\" height=\"{barH - 8}\" fill=\"{(k == 0 ? "#999" : "#4a7fc1")}\"/>");
            sb.Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(i.lo):F1}\" x2=\"{X(i.hi):F1}\" y1=\"{y + barH / 2}\" y2=\"{y + barH / 2}\" stroke=\"black\"/>");
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{Math.Min(w - right, X(i.hi) + 4):F1}\" y=\"{y + 16}\" font-size=\"11\">{i.mean:G4}</text>");
        }
        sb.Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(0):F1}\" x2=\"{X(0):F1}\" y1=\"{top}\" y2=\"{top + rows.Count * barH}\" stroke=\"#555\"/>");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{left}\" y=\"{height - 6}\" font-size=\"10\">{lo:G3}</text><text x=\"{w - right}\" y=\"{height - 6}\" font-size=\"10\" text-anchor=\"end\">{hi:G3}</text>");
        return sb.Append("</svg>").ToString();
    }
}
