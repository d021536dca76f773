using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Worlds.Shapes;
namespace Sudo.Training.Tests;

public class WorldPopulationTests
{
    static string Root() => WorldStudy.FindRepoRoot(TestContext.CurrentContext.TestDirectory);

    [Test]
    public void PlanMixesSeenAndNewPromptsAndDrawsTwoDifferentGeneratorsByWeight()
    {
        var baseCfg = new WorldBaseConfig();
        var c = new PopulationConfig { pairs = 2000, seen_fraction = 0.3 };
        var plan = WorldPopulation.Plan(c, baseCfg);
        Assert.That(plan, Has.Count.EqualTo(2000));
        Assert.That(WorldPopulation.Plan(c, baseCfg), Is.EqualTo(plan), "a pure function of the settings");
        var pretrain = World.Prompts("train", baseCfg.train_prompts, (int)baseCfg.seed).ToHashSet();
        Assert.That(plan.Count(p => p.seen), Is.EqualTo(600), "round(0.3 · 2000) seen prompts");
        Assert.That(plan.Where(p => p.seen).All(p => pretrain.Contains(p.prompt)), Is.True, "seen = from the base's pre-training prompts");
        Assert.That(plan.Where(p => !p.seen).Any(p => pretrain.Contains(p.prompt)), Is.False, "new = never in pre-training");
        Assert.That(plan.Select(p => p.prompt).Distinct().Count(), Is.EqualTo(2000));
        Assert.That(plan.Where(p => !p.seen).All(p => !World.IsHeldOut(World.Parse(p.prompt).a.color, World.Parse(p.prompt).a.shape)), Is.True, "train split: no held-out combination");
        // Every prefix of 10 holds its share of seen prompts (evenly spread).
        for (var k = 10; k <= 2000; k += 10) Assert.That(plan.Take(k).Count(p => p.seen), Is.EqualTo(3 * k / 10));
        Assert.That(plan.All(p => p.generator_0 != p.generator_1), Is.True);
        Assert.That(plan.Select(p => p.seed_0).Concat(plan.Select(p => p.seed_1)).Distinct().Count(), Is.EqualTo(4000), "one seed per image");
        // Equal weights: each of the n generators appears in 2/n of the pairs (binomial sd ≈ 0.01).
        var n = c.generators.Length;
        var share = Enumerable.Range(0, n).Select(g => plan.Count(p => p.generator_0 == g || p.generator_1 == g) / 2000.0).ToList();
        Assert.That(share, Has.All.InRange(2.0 / n - 0.04, 2.0 / n + 0.04));
        // A weight of 3 on the first generator: its share is 1 − P(neither) for draws without replacement.
        var w = c with { generators = c.generators.Select((g, i) => i == 0 ? g with { weight = 3 } : g).ToArray() };
        var heavy = WorldPopulation.Plan(w, baseCfg).Count(p => p.generator_0 == 0 || p.generator_1 == 0) / 2000.0;
        // Weights 3 + (n − 1)·1 = n + 2: the first draw misses it with (n − 1)/(n + 2); the second, without the drawn
        // weight-1 one, with (n − 2)/(n + 1).
        var pNeither = (n - 1.0) / (n + 2) * ((n - 2.0) / (n + 1));
        Assert.That(heavy, Is.EqualTo(1 - pNeither).Within(0.04));
        Assert.That(() => WorldPopulation.Plan(c with { generators = [c.generators[0]] }, baseCfg), Throws.ArgumentException.With.Message.Contains("at least two generators"));
        Assert.That(() => WorldPopulation.Plan(c with { generators = [c.generators[0], c.generators[1] with { kind = "oracle" }] }, baseCfg),
            Throws.ArgumentException.With.Message.Contains("kind 'oracle'"));
        Assert.That(() => WorldPopulation.Plan(c with { seen_fraction = 1.5 }, baseCfg), Throws.ArgumentException.With.Message.Contains("seen_fraction"));
    }

    [Test]
    public void LabelsFollowTheJudgeGapWithTiesAndTheNoiseDraw()
    {
        var c = new PopulationConfig { label_noise = 0.1, tie_margin = 0.02 };
        var img = new RgbImage(1, 1, [0, 0, 0]);
        WorldPopulation.Generated G(double j0, double j1, double draw) => new(new WorldPopulation.PairPlan(0, "p", true, 0, 1, 0, 1, draw), img, img, j0, j1);
        Assert.That(G(0.70, 0.60, 0.5).Label(c), Is.EqualTo(1.0));
        Assert.That(G(0.60, 0.70, 0.5).Label(c), Is.EqualTo(0.0));
        Assert.That(G(0.70, 0.60, 0.05).Label(c), Is.EqualTo(0.0), "noise draw under the rate flips");
        Assert.That(G(0.60, 0.70, 0.0999).Label(c), Is.EqualTo(1.0));
        Assert.That(G(0.700, 0.685, 0.05).Label(c), Is.EqualTo(0.5), "gap under the tie margin: a tie, never flipped");
    }

    [Test]
    public void RendersThroughTheVaeKeepTheirContentAndCorruptedOnesLoseIt()
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(Path.Combine(Root(), "assets", "world", "base"), "ddim");
        var prompts = World.Prompts("validation", 24, 3);
        var good = prompts.Select((p, i) => WorldPopulation.RenderFor(p, 32, i, corrupted: false)).ToList();
        var bad = prompts.Select((p, i) => WorldPopulation.RenderFor(p, 32, i, corrupted: true)).ToList();
        Assert.That(good[0].Pixels, Is.EqualTo(WorldPopulation.RenderFor(prompts[0], 32, 0, false).Pixels), "a function of (prompt, seed)");
        var viaVae = WorldPopulation.ThroughVae(pipe.vae, good);
        var badVae = WorldPopulation.ThroughVae(pipe.vae, bad);
        double Mean(IReadOnlyList<RgbImage> imgs) => imgs.Select((im, i) => Judge.Score(im, prompts[i]).score).Average();
        var (sGood, sVae, sBad) = (Mean(good), Mean(viaVae), Mean(badVae));
        TestContext.Out.WriteLine($"judge: renders {sGood:F3}, through the VAE {sVae:F3}, corrupted through the VAE {sBad:F3}");
        Assert.That(sVae, Is.GreaterThan(sBad + 0.1), "one wrong attribute costs the judge's attribute share");
        Assert.That(sVae, Is.GreaterThan(sGood - 0.15), "the VAE round trip keeps most of the content");
        var mad = viaVae.Zip(good, (a, b) => a.Pixels.Zip(b.Pixels, (x, y) => Math.Abs(x - y)).Average()).Average();
        Assert.That(mad, Is.InRange(0.5, 40), "decoded ≠ input, yet close (mean |Δ| in 0–255 levels)");
    }

    /// <summary>assets/world/pairs was made by the command in its population.json; its first pairs whose generators need
    /// no pre-training replay are remade here and must match the shipped images, judge scores and labels.</summary>
    [Test]
    public void ShippedPopulationFirstPairsReplay()
    {
        var root = Root();
        var folder = Path.Combine(root, "assets", "world", "pairs");
        var baseDir = Path.Combine(root, "assets", "world", "base");
        var c = WorldPopulation.ReadConfig(folder) ?? throw new AssertionException($"{folder}/population.json missing");
        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "population.json")))!;
        Assert.That((string)meta["key"]!, Is.EqualTo(c.Key), "population.json's settings give its key");
        Assert.That((string)meta["base_key"]!, Is.EqualTo((string)JsonNode.Parse(File.ReadAllText(Path.Combine(baseDir, "world_base.json")))!["key"]!), "made from the shipped base");
        var lines = File.ReadAllLines(Path.Combine(folder, "pairs.jsonl")).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(lines, Has.Count.EqualTo(c.pairs));
        var plan = WorldPopulation.Plan(c, WorldPopulation.BaseConfig(baseDir));
        for (var i = 0; i < plan.Count; i++)
        {
            Assert.That((string)lines[i]["caption"]!, Is.EqualTo(plan[i].prompt), $"pair {i}: prompt");
            Assert.That((string)lines[i]["generator_0"]!, Is.EqualTo(c.generators[plan[i].generator_0].name), $"pair {i}: generator 0");
            Assert.That((string)lines[i]["generator_1"]!, Is.EqualTo(c.generators[plan[i].generator_1].name), $"pair {i}: generator 1");
            var stored = new WorldPopulation.Generated(plan[i], new RgbImage(1, 1, [0, 0, 0]), new RgbImage(1, 1, [0, 0, 0]),
                lines[i]["judge_0"]!.GetValue<double>(), lines[i]["judge_1"]!.GetValue<double>());
            Assert.That(lines[i]["label_0"]!.GetValue<double>(), Is.EqualTo(stored.Label(c)), $"pair {i}: label from its judge scores and noise draw");
        }
        var replay = plan.Where(p => c.generators[p.generator_0].kind != "checkpoint" && c.generators[p.generator_1].kind != "checkpoint").Take(6).ToList();
        using var pipe = StableDiffusionPipeline.from_pretrained(baseDir, "ddim");
        var made = WorldPopulation.Generate(pipe, baseDir, c, replay, _ => { });
        foreach (var m in made)
        {
            var o = lines[m.plan.index];
            foreach (var (side, img, judge) in new[] { (0, m.image_0, m.judge_0), (1, m.image_1, m.judge_1) })
            {
                var shipped = ImageCodecs.Load(Path.Combine(folder, (string)o[$"image_{side}"]!));
                var diff = img.Pixels.Zip(shipped.Pixels, (x, y) => Math.Abs(x - y)).ToList();
                // Same kernels: identical; another CPU's kernels move a sample by a few 8-bit levels at most.
                Assert.That(diff.Max(), Is.LessThanOrEqualTo(6), $"pair {m.plan.index} image {side} ({o[$"generator_{side}"]}): max |Δ| levels");
                Assert.That(diff.Average(), Is.LessThanOrEqualTo(0.5), $"pair {m.plan.index} image {side}: mean |Δ| levels");
                Assert.That(judge, Is.EqualTo(o[$"judge_{side}"]!.GetValue<double>()).Within(0.02), $"pair {m.plan.index} image {side}: judge score");
            }
        }
    }
}
