using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Torch;
using static Sudo.Torch.torch;
namespace Sudo.Worlds.Shapes;

/// <summary>One member of the pair population. Kinds: "base" (the base pipeline sampled with its own CFG scale and
/// DDIM step count), "checkpoint" (the base's own pre-training replayed to <see cref="pretrain_steps"/> of its
/// schedule: a weaker model of the same family), "render" (the prompt's ground-truth render passed through the base's
/// VAE: a generator stronger than the base, in the base's output space), "corrupted" (a render with one attribute
/// wrong, through the VAE: well-formed but unfaithful).</summary>
public sealed record PairGenerator(string name, string kind, double guidance_scale = 3.0, int steps = 20, int pretrain_steps = 0, double weight = 1.0);

/// <summary>Settings of a Pick-a-Pic-like pair population: for each prompt two different generators are drawn from
/// <see cref="generators"/> (by weight), each makes one image, the judge labels the pair with noise and ties.</summary>
public sealed record PopulationConfig
{
    public PairGenerator[] generators { get; init; } = DefaultGenerators;
    public int pairs { get; init; } = 300;
    /// <summary>Share of the pair prompts taken from the base's pre-training prompts; the rest are new prompts of the
    /// train split (seen colour–shape combinations, texts the base never saw).</summary>
    public double seen_fraction { get; init; } = 0.5;
    public double label_noise { get; init; } = 0.1;
    /// <summary>Judge-score gaps below this are ties (label_0 = 0.5; the loader drops them, as Diffusion-DPO's).</summary>
    public double tie_margin { get; init; } = 0.02;
    public int seed { get; init; }

    /// <summary>The population of Pick-a-Pic's shape: the base at three guidance scales and with few steps, a weaker and
    /// a stronger checkpoint of its pre-training (steps 200 and 1500 of the schedule the base left at step 600), the
    /// strongest generator (renders) and degraded renders.</summary>
    public static readonly PairGenerator[] DefaultGenerators =
    [
        new("base-cfg3", "base", 3.0, 20),
        new("base-cfg1", "base", 1.0, 20),
        new("base-cfg7.5", "base", 7.5, 20),
        new("base-cfg3-6steps", "base", 3.0, 6),
        new("pretrain-step200", "checkpoint", 3.0, 20, pretrain_steps: 200),
        new("pretrain-step1500", "checkpoint", 3.0, 20, pretrain_steps: 1500),
        new("render", "render"),
        new("corrupted-render", "corrupted"),
    ];

    [System.Text.Json.Serialization.JsonIgnore]
    public string Key => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(JsonSerializer.Serialize(this))))[..12].ToLowerInvariant();

    public void Validate()
    {
        if (generators.Length < 2) throw new ArgumentException("population: at least two generators (a pair needs two different ones)");
        if (generators.Select(g => g.name).Distinct().Count() != generators.Length) throw new ArgumentException("population: generator names must be unique");
        foreach (var g in generators)
        {
            if (g.kind is not ("base" or "checkpoint" or "render" or "corrupted"))
                throw new ArgumentException($"population: generator '{g.name}' has kind '{g.kind}' (expected base, checkpoint, render or corrupted)");
            if (!(g.weight > 0)) throw new ArgumentException($"population: generator '{g.name}' needs a positive weight (got {g.weight})");
            if (g.kind is "base" or "checkpoint" && g.steps < 1) throw new ArgumentException($"population: generator '{g.name}' needs steps ≥ 1");
            if (g.kind == "checkpoint" && g.pretrain_steps < 1) throw new ArgumentException($"population: checkpoint '{g.name}' needs pretrain_steps ≥ 1");
        }
        if (pairs < 1) throw new ArgumentException($"population: pairs must be ≥ 1 (got {pairs})");
        if (seen_fraction is < 0 or > 1) throw new ArgumentException($"population: seen_fraction must lie in [0, 1] (got {seen_fraction})");
        if (label_noise is < 0 or > 0.5) throw new ArgumentException($"population: label_noise must lie in [0, 0.5] (got {label_noise})");
    }
}

/// <summary>Pick-a-Pic-shaped preference pairs from a population of generators of varied quality (see
/// <see cref="PopulationConfig.DefaultGenerators"/>), the regime of the papers' data: Pick-a-Pic v2's pairs come from
/// several models and settings, many better than any one base. Every pair is a pure function of (settings, index):
/// its prompt, its two generators, their sampling seeds and its label-noise draw, so any pair can be regenerated
/// alone (<see cref="Generate"/>; the shipped folder's first pairs are replayed by a test).</summary>
public static class WorldPopulation
{
    /// <summary>The plan of pair <c>i</c>: prompt, generators (indices into the config's list), per-image seeds,
    /// whether the prompt was seen in pre-training, and the label-noise draw.</summary>
    public sealed record PairPlan(int index, string prompt, bool seen, int generator_0, int generator_1, long seed_0, long seed_1, double noise_draw);

    public sealed record Generated(PairPlan plan, RgbImage image_0, RgbImage image_1, double judge_0, double judge_1)
    {
        /// <summary>1 if image_0 wins, 0 if image_1, 0.5 for a tie; flipped when the pair's noise draw falls under the noise rate.</summary>
        public double Label(PopulationConfig c)
        {
            var gap = judge_0 - judge_1;
            if (Math.Abs(gap) < c.tie_margin) return 0.5;
            var label = gap > 0 ? 1.0 : 0.0;
            return plan.noise_draw < c.label_noise ? 1 - label : label;
        }
    }

    /// <summary>The pair prompts: the first round(seen_fraction·n) of the base's pre-training prompts (in the order
    /// the base drew them), then new train-split prompts that are not among them; interleaved so any prefix mixes both.</summary>
    public static List<(string prompt, bool seen)> Prompts(PopulationConfig c, WorldBaseConfig baseConfig)
    {
        var pretrain = World.Prompts("train", baseConfig.train_prompts, (int)baseConfig.seed);
        var nSeen = (int)Math.Round(c.seen_fraction * c.pairs);
        if (nSeen > pretrain.Count) throw new ArgumentException($"population: {nSeen} seen prompts asked, the base saw {pretrain.Count}");
        var seenSet = pretrain.ToHashSet();
        var seen = pretrain.Take(nSeen).ToList();
        var fresh = new List<string>();
        var taken = new HashSet<string>();
        for (var s = 1; fresh.Count < c.pairs - nSeen; s++)
        {
            if (s > 50) throw new InvalidOperationException($"population: only {fresh.Count} train-split prompts outside the base's pre-training set");
            foreach (var p in World.Prompts("train", 4 * (c.pairs - nSeen) + 40, 1000 + s))
                if (!seenSet.Contains(p) && fresh.Count < c.pairs - nSeen && taken.Add(p)) fresh.Add(p);
        }
        var list = new List<(string, bool)>(c.pairs);
        int a = 0, b = 0;
        // Spread evenly: pair i is a seen prompt when ⌊(i+1)·n_seen/n⌋ steps up, so every prefix holds its share of both.
        for (var i = 0; i < c.pairs; i++)
            if ((long)(i + 1) * nSeen / c.pairs > (long)i * nSeen / c.pairs) list.Add((seen[a++], true));
            else list.Add((fresh[b++], false));
        return list;
    }

    /// <summary>Every pair's plan (prompts from <see cref="Prompts"/>, generators by weight without replacement).</summary>
    public static List<PairPlan> Plan(PopulationConfig c, WorldBaseConfig baseConfig)
    {
        c.Validate();
        var prompts = Prompts(c, baseConfig);
        var w = c.generators.Select(g => g.weight).ToArray();
        int Draw(Random r, int exclude)
        {
            var total = w.Where((_, k) => k != exclude).Sum();
            var u = r.NextDouble() * total;
            for (var k = 0; k < w.Length; k++)
            {
                if (k == exclude) continue;
                if ((u -= w[k]) < 0) return k;
            }
            return Enumerable.Range(0, w.Length).Last(k => k != exclude);
        }
        return prompts.Select((p, i) =>
        {
            var r = new Random(unchecked(c.seed * 1_000_003 + i));
            var g0 = Draw(r, -1);
            var g1 = Draw(r, g0);
            var noise = r.NextDouble();
            long s0 = (long)c.seed * 10_000_019L + 2L * i, s1 = s0 + 1;
            return new PairPlan(i, p.prompt, p.seen, g0, g1, s0, s1, noise);
        }).ToList();
    }

    /// <summary>Generates the pairs of <paramref name="plans"/> with the base pipeline <paramref name="pipe"/> (the
    /// base folder <paramref name="baseDir"/> gives its pre-training settings for checkpoint members). Images of one
    /// generator are made in batches; each image depends only on its own seed.</summary>
    public static List<Generated> Generate(StableDiffusionPipeline pipe, string baseDir, PopulationConfig c, IReadOnlyList<PairPlan> plans, Action<string>? log = null)
    {
        log ??= Console.WriteLine;
        var res = pipe.unet.config.sample_size * pipe.vae_scale_factor;
        var images = new RgbImage?[plans.Count, 2];
        for (var gi = 0; gi < c.generators.Length; gi++)
        {
            var g = c.generators[gi];
            var slots = new List<(int pair, int side, string prompt, long seed)>();
            for (var i = 0; i < plans.Count; i++)
            {
                if (plans[i].generator_0 == gi) slots.Add((i, 0, plans[i].prompt, plans[i].seed_0));
                if (plans[i].generator_1 == gi) slots.Add((i, 1, plans[i].prompt, plans[i].seed_1));
            }
            if (slots.Count == 0) continue;
            var sw = Stopwatch.StartNew();
            List<RgbImage> made;
            switch (g.kind)
            {
                case "base":
                    made = WorldBase.Sample(pipe, slots.Select(s => s.prompt).ToList(), slots.Select(s => s.seed).ToList(), g.steps, g.guidance_scale);
                    break;
                case "checkpoint":
                    using (var early = PretrainCheckpoint(baseDir, g.pretrain_steps, log))
                        made = WorldBase.Sample(early, slots.Select(s => s.prompt).ToList(), slots.Select(s => s.seed).ToList(), g.steps, g.guidance_scale);
                    break;
                default:
                    made = slots.Select(s => RenderFor(s.prompt, res, s.seed, g.kind == "corrupted")).ToList();
                    made = ThroughVae(pipe.vae, made);
                    break;
            }
            for (var k = 0; k < slots.Count; k++) images[slots[k].pair, slots[k].side] = made[k];
            log($"world pairs: {g.name}: {slots.Count} images in {sw.Elapsed.TotalSeconds:F1} s");
        }
        return plans.Select((p, i) =>
        {
            var a = images[i, 0]!;
            var b = images[i, 1]!;
            return new Generated(p, a, b, Judge.Score(a, p.prompt).score, Judge.Score(b, p.prompt).score);
        }).ToList();
    }

    /// <summary>The target render of <paramref name="prompt"/> (layout drawn from <paramref name="seed"/>), or with one
    /// attribute corrupted (the attribute drawn from the same stream).</summary>
    public static RgbImage RenderFor(string prompt, int res, long seed, bool corrupted)
    {
        var rng = new Random(unchecked((int)(seed % int.MaxValue)));
        var spec = World.Parse(prompt);
        if (corrupted)
        {
            string[] kinds = spec.IsRelation ? ["color", "shape", "size", "background", "relation"] : ["color", "shape", "size", "background", "count"];
            var kind = kinds[rng.Next(kinds.Length)];
            if (kind == "size" && spec.count == 3) kind = "shape";   // three large objects do not fit (as JudgeEvaluation)
            spec = JudgeEvaluation.Corrupt(spec, kind, rng).spec;
        }
        return World.Render(spec.background, World.Layout(spec, res, rng), res);
    }

    /// <summary>Images encoded (posterior mode) and decoded by <paramref name="vae"/>: what a generator whose latents were
    /// exactly the image's would output.</summary>
    public static List<RgbImage> ThroughVae(AutoencoderKL vae, IReadOnlyList<RgbImage> imgs)
    {
        var result = new List<RgbImage>(imgs.Count);
        using var _ = no_grad();
        var dev = vae.encoder.conv_in.weight.device;
        var dt = vae.encoder.conv_in.weight.dtype;
        for (var i = 0; i < imgs.Count; i += 32)
        {
            using var scope = NewDisposeScope();
            var x = stack(imgs.Skip(i).Take(32).Select(Images.ToTensor).ToArray()).to(dev, dt);
            using var post = vae.encode(x);
            var y = vae.decode(post.mode());
            for (var k = 0; k < y.size(0); k++) result.Add(Images.FromTensor(y.select(0, k)));
        }
        return result;
    }

    /// <summary>A checkpoint of the base's own pre-training: the UNet phase of <see cref="WorldBase"/> replayed with the
    /// base's settings (world_base.json) for <paramref name="steps"/> of its schedule, with the shipped VAE and
    /// tokenizer. Steps before the base's release step give weaker models, steps after it (up to the schedule's
    /// unet_steps) stronger ones.</summary>
    public static StableDiffusionPipeline PretrainCheckpoint(string baseDir, int steps, Action<string>? log = null)
    {
        var cfg = BaseConfig(baseDir);
        if (steps > cfg.unet_steps) throw new ArgumentException($"population: a pre-training checkpoint at step {steps} is past the end of the base's schedule ({cfg.unet_steps} steps)");
        var pipe = StableDiffusionPipeline.from_pretrained(baseDir, "ddim");
        try
        {
            var sw = Stopwatch.StartNew();
            var prompts = World.Prompts("train", cfg.train_prompts, (int)cfg.seed);
            var (unet, te) = WorldBase.TrainUnet(cfg, prompts, pipe.components.tokenizer, pipe.vae, steps, pipe.device, (_, _) => { });
            using (unet)
            using (te)
            using (no_grad())
            {
                pipe.unet.load_state_dict(unet.state_dict());
                pipe.components.text_encoder.load_state_dict(te.state_dict());
            }
            log?.Invoke($"world pairs: pre-training replayed to step {steps} of {cfg.unet_steps} (the base is step {cfg.ReleaseStep}) in {sw.Elapsed.TotalSeconds:F0} s");
            return pipe;
        }
        catch
        {
            pipe.Dispose();
            throw;
        }
    }

    /// <summary>The settings key in the base's world_base.json (null for a base without one): which base a population was made from.</summary>
    public static string? BaseKey(string baseDir)
    {
        var marker = Path.Combine(baseDir, "world_base.json");
        return File.Exists(marker) ? (string?)JsonNode.Parse(File.ReadAllText(marker))?["key"] : null;
    }

    /// <summary>The settings the base was built with (its world_base.json), or the defaults when it has none.</summary>
    public static WorldBaseConfig BaseConfig(string baseDir)
    {
        var marker = Path.Combine(baseDir, "world_base.json");
        if (!File.Exists(marker)) return new WorldBaseConfig();
        var node = JsonNode.Parse(File.ReadAllText(marker))?["config"]
            ?? throw new InvalidDataException($"{marker}: no \"config\" object (expected the settings `sudoml world base` writes)");
        return JsonSerializer.Deserialize<WorldBaseConfig>(node.ToJsonString())
            ?? throw new InvalidDataException($"{marker}: \"config\" is not a WorldBaseConfig");
    }

    public sealed record Summary(int pairs, int ties, int flipped, string folder, IReadOnlyDictionary<string, (int n, double mean)> by_generator);

    /// <summary>Generates the whole population and writes it as a pair folder (images/, pairs.jsonl with caption,
    /// image_0, image_1, label_0 and per image the judge score, generator and seed; population.json with the settings;
    /// README.md), published atomically.</summary>
    public static Summary Make(StableDiffusionPipeline pipe, string baseDir, string folder, PopulationConfig c, string command, Action<string>? log = null)
    {
        log ??= Console.WriteLine;
        var sw = Stopwatch.StartNew();
        var plans = Plan(c, BaseConfig(baseDir));
        var made = Generate(pipe, baseDir, c, plans, log);
        var tmp = folder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(Path.Combine(tmp, "images"));
        var lines = new List<string>();
        int ties = 0, flipped = 0;
        var byGen = c.generators.ToDictionary(g => g.name, _ => (n: 0, sum: 0.0));
        foreach (var m in made)
        {
            var i = m.plan.index;
            var f0 = $"images/{i:D5}_0.png";
            var f1 = $"images/{i:D5}_1.png";
            ImageCodecs.Save(m.image_0, Path.Combine(tmp, f0));
            ImageCodecs.Save(m.image_1, Path.Combine(tmp, f1));
            var label = m.Label(c);
            if (label == 0.5) ties++;
            else if (m.plan.noise_draw < c.label_noise) flipped++;
            string n0 = c.generators[m.plan.generator_0].name, n1 = c.generators[m.plan.generator_1].name;
            byGen[n0] = (byGen[n0].n + 1, byGen[n0].sum + m.judge_0);
            byGen[n1] = (byGen[n1].n + 1, byGen[n1].sum + m.judge_1);
            lines.Add(new JsonObject
            {
                ["caption"] = m.plan.prompt,
                ["image_0"] = f0,
                ["image_1"] = f1,
                ["label_0"] = label,
                ["judge_0"] = Math.Round(m.judge_0, 6),
                ["judge_1"] = Math.Round(m.judge_1, 6),
                ["generator_0"] = n0,
                ["generator_1"] = n1,
                ["seed_0"] = m.plan.seed_0,
                ["seed_1"] = m.plan.seed_1,
                ["seen_in_pretraining"] = m.plan.seen,
            }.ToJsonString());
        }
        File.WriteAllText(Path.Combine(tmp, "pairs.jsonl"), string.Join("\n", lines) + "\n");
        File.WriteAllText(Path.Combine(tmp, "prompts.txt"), string.Join("\n", plans.Select(p => p.prompt)) + "\n");
        var stats = byGen.ToDictionary(kv => kv.Key, kv => (kv.Value.n, kv.Value.n > 0 ? kv.Value.sum / kv.Value.n : double.NaN));
        File.WriteAllText(Path.Combine(tmp, "population.json"), new JsonObject
        {
            ["key"] = c.Key,
            ["config"] = JsonNode.Parse(JsonSerializer.Serialize(c)),
            ["base"] = Path.GetFileName(Path.GetFullPath(baseDir).TrimEnd('/')),
            ["base_key"] = BaseKey(baseDir),
            ["command"] = command,
            ["pairs"] = made.Count,
            ["ties"] = ties,
            ["flipped"] = flipped,
            ["judge_by_generator"] = new JsonObject(stats.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)new JsonObject { ["images"] = kv.Value.Item1, ["mean"] = Math.Round(kv.Value.Item2, 4) }))),
            ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 1),
            ["torch_threads"] = get_num_threads(),
        }.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var table = string.Join("\n", c.generators.Select(g => string.Create(CultureInfo.InvariantCulture,
            $"| {g.name} | {g.kind} | {(g.kind is "base" or "checkpoint" ? $"CFG {g.guidance_scale}, DDIM {g.steps}" : "VAE round trip")}{(g.kind == "checkpoint" ? $", pre-training step {g.pretrain_steps}" : "")} | {stats[g.name].Item1} | {stats[g.name].Item2:F3} |")));
        File.WriteAllText(Path.Combine(tmp, "README.md"),
            $"# Shapes-world preference pairs from a population of generators\n\n"
            + $"{made.Count} prompts ({plans.Count(p => p.seen)} seen in the base's pre-training, {plans.Count(p => !p.seen)} new), each judged on two images from two "
            + $"different generators drawn from the population below; label noise {c.label_noise.ToString(CultureInfo.InvariantCulture)}, tie margin "
            + $"{c.tie_margin.ToString(CultureInfo.InvariantCulture)}: {ties} ties, {flipped} flipped labels.\n\n"
            + "| generator | kind | settings | images | mean judge score |\n|---|---|---|---|---|\n" + table + "\n\n"
            + $"Regenerate: `{command}` ({sw.Elapsed.TotalSeconds:F0} s with {get_num_threads()} torch threads). Each pair is a function of the settings "
            + "(population.json) and its index: `WorldPopulation.Generate` remakes any subset.\n");
        AtomicFile.PublishDirectory(tmp, folder);
        log($"world pairs: {made.Count} population pairs ({ties} ties, {flipped} flipped labels) in {sw.Elapsed.TotalSeconds:F0} s → {folder}");
        return new Summary(made.Count, ties, flipped, folder, stats);
    }

    /// <summary>The population settings of a folder written by <see cref="Make"/>, or null for a folder without population.json.</summary>
    public static PopulationConfig? ReadConfig(string folder)
    {
        var path = Path.Combine(folder, "population.json");
        if (!File.Exists(path)) return null;
        var node = JsonNode.Parse(File.ReadAllText(path))?["config"] ?? throw new InvalidDataException($"{path}: no \"config\" object");
        return JsonSerializer.Deserialize<PopulationConfig>(node.ToJsonString()) ?? throw new InvalidDataException($"{path}: \"config\" is not a population config");
    }
}
