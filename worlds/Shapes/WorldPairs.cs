using System.Globalization;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Torch;

using Sudo.Training;
namespace Sudo.Worlds.Shapes;

/// <summary>Settings of the shapes world's "human-like" preference data.</summary>
public sealed record WorldPairsConfig
{
    /// <summary>Probability that a label is flipped (annotator noise).</summary>
    public double label_noise { get; init; } = 0.1;
    /// <summary>Judge-score gaps below this are labelled ties (label_0 = 0.5; the loader drops them, as Diffusion-DPO).</summary>
    public double tie_margin { get; init; } = 0.02;
    public int steps { get; init; } = 20;
    public double guidance_scale { get; init; } = 3.0;
    public int seed { get; init; }
}

/// <summary>Pick-a-Pic-style pairs from a base pipeline: two samples per prompt (different seeds), labelled by
/// the judge with configurable label noise and ties, written as a local pair folder (PNG images and
/// pairs.jsonl with caption, image_0, image_1, label_0, plus both judge scores) published atomically.</summary>
public static class WorldPairs
{
    public sealed record Summary(int pairs, int ties, int flipped, double mean_gap, string folder);

    public static Summary Make(StableDiffusionPipeline pipe, IReadOnlyList<string> prompts, string folder, WorldPairsConfig c)
    {
        var tmp = folder.TrimEnd('/') + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(Path.Combine(tmp, "images"));
        var rng = new Random(c.seed);
        var a = new List<RgbImage>();
        var b = new List<RgbImage>();
        // Sample A uses seeds 2c.seed·…, sample B a disjoint seed range, both fixed per prompt index.
        var ra = WorldBase.Evaluate(pipe, prompts, 2 * c.seed, c.steps, c.guidance_scale, a);
        var rb = WorldBase.Evaluate(pipe, prompts, 2 * c.seed + 1, c.steps, c.guidance_scale, b);
        var lines = new List<string>();
        int ties = 0, flipped = 0;
        var gaps = 0.0;
        for (var i = 0; i < prompts.Count; i++)
        {
            var f0 = $"images/{i:D5}_0.png";
            var f1 = $"images/{i:D5}_1.png";
            ImageCodecs.Save(a[i], Path.Combine(tmp, f0));
            ImageCodecs.Save(b[i], Path.Combine(tmp, f1));
            var gap = ra[i].score - rb[i].score;
            gaps += Math.Abs(gap);
            double label;
            if (Math.Abs(gap) < c.tie_margin)
            {
                label = 0.5;
                ties++;
            }
            else
            {
                label = gap > 0 ? 1 : 0;
                if (rng.NextDouble() < c.label_noise)
                {
                    label = 1 - label;
                    flipped++;
                }
            }
            lines.Add(new JsonObject
            {
                ["caption"] = prompts[i],
                ["image_0"] = f0,
                ["image_1"] = f1,
                ["label_0"] = label,
                ["judge_0"] = Math.Round(ra[i].score, 6),
                ["judge_1"] = Math.Round(rb[i].score, 6),
            }.ToJsonString());
        }
        File.WriteAllText(Path.Combine(tmp, "pairs.jsonl"), string.Join("\n", lines) + "\n");
        File.WriteAllText(Path.Combine(tmp, "prompts.txt"), string.Join("\n", prompts) + "\n");
        File.WriteAllText(Path.Combine(tmp, "README.md"),
            $"Shapes-world pairs: {prompts.Count} prompts × 2 samples (DDIM {c.steps}, CFG {c.guidance_scale.ToString(CultureInfo.InvariantCulture)}), "
            + $"labelled by the judge; label noise {c.label_noise.ToString(CultureInfo.InvariantCulture)}, tie margin {c.tie_margin.ToString(CultureInfo.InvariantCulture)}; "
            + $"{ties} ties, {flipped} flipped labels.\n");
        AtomicFile.PublishDirectory(tmp, folder);
        return new Summary(prompts.Count, ties, flipped, gaps / Math.Max(1, prompts.Count), folder);
    }
}
