using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Training;
using Sudo.Worlds.Shapes;
namespace Sudo.Training.Tests;

public class WorldStudyTests
{
    static string Root() => WorldStudy.FindRepoRoot(TestContext.CurrentContext.TestDirectory);

    [Test]
    public void IntervalsAndWinRatesMatchHandComputedValues()
    {
        var (m, h) = Statistics.MeanCi([1.0, 2.0, 3.0]);
        Assert.That(m, Is.EqualTo(2.0).Within(1e-12));
        // For 2 degrees of freedom the quantile has a closed form: t_p = (2p − 1) / √(2p(1 − p)) = 4.30265 at p = 0.975.
        var t2 = (2 * 0.975 - 1) / Math.Sqrt(2 * 0.975 * 0.025);
        Assert.That(h, Is.EqualTo(t2 * 1.0 / Math.Sqrt(3)).Within(1e-9), "t(0.975, 2) · sd / √n with sd = 1");
        Assert.That(double.IsNaN(Statistics.MeanCi([0.7]).half), Is.True, "no interval from one seed");
        // t(0.975) from MathNet, against printed tables (3 decimals) and the normal limit.
        Assert.That(Statistics.StudentT975(1), Is.EqualTo(12.706).Within(5e-4));
        Assert.That(Statistics.StudentT975(15), Is.EqualTo(2.131).Within(5e-4));
        Assert.That(Statistics.StudentT975(100000), Is.EqualTo(1.95996).Within(1e-4));
        static Judge.Result R(double s) => new(new Dictionary<string, double>(), 1, s, [], "white");
        Assert.That(WorldStudy.WinRate([R(0.9), R(0.5), R(0.4), R(0.3)], [R(0.8), R(0.5), R(0.6), R(0.2)]), Is.EqualTo((1 + 0.5 + 0 + 1) / 4.0), "ties count ½");
        Assert.Throws<ArgumentException>(() => WorldStudy.WinRate([R(1)], [R(1), R(0)]));
        Assert.That(WorldStudy.Cell((0.625, 0.05), percent: true), Is.EqualTo("62.5 ± 5.0%"));
        Assert.That(WorldStudy.Cell((0.6251, double.NaN)), Is.EqualTo("0.625"));
    }

    [Test]
    public void CaptionsAndGridsHaveRealText()
    {
        // A caption in DejaVu Sans: dark pixels where the glyphs are, none in an empty caption.
        static int Dark(RgbImage img) => Enumerable.Range(0, img.Width * img.Height).Count(i => img.Pixels[3 * i] < 128);
        Assert.That(Dark(Figures.Caption("", 200)), Is.EqualTo(0));
        var text = Dark(Figures.Caption("a small red circle", 200));
        Assert.That(text, Is.GreaterThan(60), "glyph pixels drawn");
        Assert.That(Dark(Figures.Caption("a small red circle left of a blue square", 400)), Is.GreaterThan(text), "longer text, more ink");
        Assert.That(Figures.Wrap("a small red circle on a white background", 80, 13), Has.Count.GreaterThan(1).And.All.Not.Empty);
        // A grid: the image cell is copied scaled (nearest), captions leave ink above it.
        var dot = new RgbImage(2, 2, [10, 20, 30, 10, 20, 30, 10, 20, 30, 10, 20, 30]);
        var grid = Figures.Grid(["a red circle"], [("base", [(dot, 0.9)])], scale: 8);
        var found = Enumerable.Range(0, grid.Width * grid.Height).Count(i => grid.Pixels[3 * i] == 10 && grid.Pixels[3 * i + 1] == 20 && grid.Pixels[3 * i + 2] == 30);
        Assert.That(found, Is.EqualTo(16 * 16), "the 2×2 image scaled ×8");
        Assert.That(Dark(grid), Is.GreaterThan(16 * 16 + 60), "captions and labels drawn");
    }

    [Test]
    public void LearningCurvesHaveBandsAndLabels()
    {
        var path = Path.Combine(Path.GetTempPath(), $"sudo-curve-{Guid.NewGuid():N}.png");
        try
        {
            List<(int, double)> S(double a, double b) => [(0, 0.5), (10, a), (20, b)];
            Figures.LearningCurves([("DPO", [S(0.55, 0.6), S(0.57, 0.62), S(0.53, 0.61)]), ("SFT", [S(0.5, 0.5)])], "judge score", path, "test");
            var img = ImageCodecs.Load(path);
            Assert.That((img.Width, img.Height), Is.EqualTo((800, 480)));
            // The band is a translucent fill: pixels that are neither white nor a line colour exist.
            var tinted = Enumerable.Range(0, img.Width * img.Height).Count(i => img.Pixels[3 * i + 2] > 200 && img.Pixels[3 * i] is > 150 and < 245);
            Assert.That(tinted, Is.GreaterThan(200), "a 95% band is drawn");
        }
        finally
        {
            if (File.Exists(path)) File.Delete(path);
        }
    }

    /// <summary>The whole study at micro scale, through the real recipes under dotnet fsi: the report's table, figures and
    /// results.json exist and parse, the learning curve has the base at step 0 and every checkpoint.</summary>
    [Test]
    public void MicroStudyWritesReportGridCurveAndResults()
    {
        var root = Root();
        Assume.That(File.Exists(Path.Combine(root, "artifacts", "bin", "Sudo.Training", "release", "Sudo.Training.dll")), "needs the Release build (scripts/test.sh builds it)");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-study-{Guid.NewGuid():N}");
        try
        {
            var cfg = new WorldStudyConfig
            {
                output_dir = dir,
                repo_root = root,
                methods = ["dpo", "dpo_shuffled", "sft_truth"],
                seeds = [0],
                pair_prompts = 12,
                // The population without its pre-training checkpoint (400 replayed steps: minutes, tested in WorldPopulationTests).
                population = PopulationConfig.DefaultGenerators.Where(g => g.kind != "checkpoint").ToArray(),
                max_train_steps = 4,
                train_batch_size = 2,
                checkpointing_steps = 2,
                lr_warmup_steps = 0,
                eval_prompts = 3,
                eval_seeds = 1,
                grid_prompts = 4,
                curve_prompts = 3,
                sample_steps = 3,
                extra_samplers = [new("cfg1", 1.0), new("eta1", 3.0, eta: 1.0)],
            };
            var log = new List<string>();
            var rep = WorldStudy.Run(cfg, log.Add);
            Assert.That(rep.runs.Select(r => r.method), Is.EqualTo(new[] { "dpo", "dpo_shuffled", "sft_truth" }));
            Assert.That(rep.runs.All(r => r.validation.Count == 3 && r.test.Count == 3), Is.True);
            Assert.That(rep.runs[0].curve.Select(p => p.step), Is.EqualTo(new[] { 0, 2, 4 }), "base, checkpoint-2, checkpoint-4");
            // The pairs come from the population (two different generators per prompt), made in this run.
            var pairLines = File.ReadAllLines(Path.Combine(dir, "pairs", "pairs.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
            Assert.That(pairLines, Has.Count.EqualTo(12));
            Assert.That(pairLines.All(o => (string)o["generator_0"]! != (string)o["generator_1"]!), Is.True);
            Assert.That(pairLines.SelectMany(o => new[] { (string)o["generator_0"]!, (string)o["generator_1"]! }), Has.None.StartsWith("pretrain-step"));
            // The positive control's data: every pair prompt's render wins against a corrupted render, and the judge agrees.
            var truth = File.ReadAllLines(Path.Combine(dir, "pairs_truth", "pairs.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
            Assert.That(truth.Select(o => (string)o["caption"]!), Is.EqualTo(pairLines.Select(o => (string)o["caption"]!)));
            Assert.That(truth.All(o => o["label_0"]!.GetValue<double>() == 1.0), Is.True);
            var judged = truth.Select(o => (Judge.Score(ImageCodecs.Load(Path.Combine(dir, "pairs_truth", (string)o["image_0"]!)), (string)o["caption"]!).score,
                Judge.Score(ImageCodecs.Load(Path.Combine(dir, "pairs_truth", (string)o["image_1"]!)), (string)o["caption"]!).score)).ToList();
            Assert.That(judged.Count(j => j.Item1 > j.Item2), Is.GreaterThanOrEqualTo(10), "renders beat their corrupted versions on the judge");
            // Δ vs base = mean paired difference; the controls' verdicts are in the report.
            var d = WorldStudy.GainVsBase(rep, "dpo", "all").mean;
            Assert.That(d, Is.EqualTo(rep.runs[0].validation.Concat(rep.runs[0].test).Zip(rep.base_validation.Concat(rep.base_test), (a, b) => a.score - b.score).Average()).Within(1e-12));

            // The extra samplers (CFG 1; CFG 3 with DDIM η = 1): the same prompts and seeds, sampled with each.
            Assert.That(rep.base_extra!.Keys, Is.EquivalentTo(new[] { "validation@cfg1", "test@cfg1", "validation@eta1", "test@eta1" }));
            Assert.That(rep.runs.All(r => r.extra!.Values.All(v => v.Count == 3)), Is.True);
            // With overlap (≥ 2 cores) the study judged the base on one thread fewer while the first run trained: the
            // direct samples use the same thread count (reductions, and so the last digits, depend on it).
            var threads = (torch: Sudo.Torch.torch.get_num_threads(), blas: Sudo.Torch.torch.get_blas_threads());
            if (Environment.ProcessorCount >= 2)
            {
                Sudo.Torch.torch.set_num_threads(Math.Max(1, threads.torch - 1));
                Sudo.Torch.torch.set_blas_threads(Math.Max(1, threads.blas - 1));
            }
            try
            {
                using (var basePipe = StableDiffusionPipeline.from_pretrained(Path.Combine(root, "assets", "world", "base"), "ddim"))
                {
                    var val = World.Prompts("validation", 3, 0);
                    var direct = WorldBase.Evaluate(basePipe, val, 0, 3, 1.0).Select(r => r.score);
                    Assert.That(rep.base_extra["validation@cfg1"].Select(r => r.score), Is.EqualTo(direct).Within(1e-9), "base at CFG 1 = direct sampling at guidance 1");
                    var eta1 = WorldBase.Evaluate(basePipe, val, 0, 3, 3.0, eta: 1.0).Select(r => r.score);
                    Assert.That(rep.base_extra["validation@eta1"].Select(r => r.score), Is.EqualTo(eta1).Within(1e-9), "base with η = 1 = direct sampling with η = 1");
                    var cfg3 = WorldBase.Evaluate(basePipe, val, 0, 3, 3.0).Select(r => r.score);
                    Assert.That(rep.base_validation.Select(r => r.score), Is.EqualTo(cfg3).Within(1e-9), "main split at the study's CFG 3");
                    Assert.That(eta1, Is.Not.EqualTo(cfg3), "η = 1 injects noise: the samples differ from η = 0");
                }
            }
            finally
            {
                Sudo.Torch.torch.set_num_threads(threads.torch);
                Sudo.Torch.torch.set_blas_threads(threads.blas);
            }
            Assert.That(WorldStudy.MeanScore(rep, "dpo", "test@cfg1").mean, Is.EqualTo(rep.runs[0].extra!["test@cfg1"].Average(r => r.score)).Within(1e-12));
            Assert.That(() => WorldStudy.MeanScore(rep, "dpo", "test@cfg2"), Throws.ArgumentException.With.Message.Contains("unknown split 'test@cfg2'").And.Message.Contains("\"test@cfg1\""));

            var md = File.ReadAllText(Path.Combine(dir, "report.md"));
            Assert.That(md, Does.Contain("| base |").And.Contain("| Diffusion-DPO |").And.Contain("| DPO (shuffled labels) |").And.Contain("| SFT on renders |").And.Contain("![base vs methods](grid.png)"));
            Assert.That(md, Does.Contain("**Controls**: positive (SFT on the ground-truth renders) Δ").And.Contain("negative (DPO on shuffled labels) Δ"));
            Assert.That(md, Does.Contain("made in this run: 12 prompts, two of 6 generators each"));
            Assert.That(md, Does.Contain("dotnet fsi recipes/diffusion_dpo.fsx -- --pretrained_model_name_or_path"));
            var tableRows = md.Split('\n').Count(l => l.StartsWith("| ") && l.Count(ch => ch == '|') == 14);
            Assert.That(tableRows, Is.EqualTo(5), "header + base + 3 methods, 13 columns each");
            Assert.That(md, Does.Contain("judged with **CFG 1**").And.Contain("judged with **CFG 3, DDIM η = 1**"));
            Assert.That(md.Split('\n').Count(l => l.StartsWith("| ") && l.Count(ch => ch == '|') == 6), Is.EqualTo(10), "two extra-sampler tables: header + base + 3 methods, 5 columns each");

            var grid = ImageCodecs.Load(Path.Combine(dir, "grid.png"));
            Assert.That(grid.Width, Is.EqualTo(170 + 4 * (128 + 8) + 8), "label column + 4 prompts × (4×32 px + padding)");
            var curve = ImageCodecs.Load(Path.Combine(dir, "curve.png"));
            Assert.That((curve.Width, curve.Height), Is.EqualTo((800, 480)));

            var results = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "results.json")))!;
            var runs = results["runs"]!.AsArray();
            Assert.That(runs, Has.Count.EqualTo(3));
            foreach (var r in runs)
            {
                Assert.That(r!["win_rate_validation"]!.GetValue<double>(), Is.InRange(0.0, 1.0));
                Assert.That(r["peak_rss_mb"]!.GetValue<double>(), Is.GreaterThan(50));
                Assert.That(r["curve"]!.AsArray(), Has.Count.EqualTo(3));
                Assert.That(r["win_rate_test@cfg1"]!.GetValue<double>(), Is.InRange(0.0, 1.0));
                Assert.That(r["win_rate_validation@eta1"]!.GetValue<double>(), Is.InRange(0.0, 1.0));
            }
            // The shuffled control trains on the same images with permuted labels.
            var orig = File.ReadAllLines(Path.Combine(dir, "pairs", "pairs.jsonl")).Select(l => JsonNode.Parse(l)!["label_0"]!.GetValue<double>()).OrderBy(x => x);
            var shuf = File.ReadAllLines(Path.Combine(dir, "pairs_shuffled", "pairs.jsonl")).Select(l => JsonNode.Parse(l)!["label_0"]!.GetValue<double>()).OrderBy(x => x);
            Assert.That(shuf, Is.EqualTo(orig), "same label multiset");

            // A second run reuses pairs and runs (nothing retrained).
            log.Clear();
            WorldStudy.Run(cfg, log.Add);
            Assert.That(log.Count(l => l.Contains("reusing")), Is.EqualTo(3), string.Join("\n", log));
            Assert.That(() => WorldStudy.Run(cfg with { extra_samplers = [new("../x", 1.0)] }, log.Add),
                Throws.ArgumentException.With.Message.Contains("name '../x' must be letters, digits"));
            Assert.That(() => WorldStudy.Run(cfg with { extra_samplers = [new("g", 1.0), new("g", 2.0)] }, log.Add),
                Throws.ArgumentException.With.Message.Contains("names must be unique"));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
