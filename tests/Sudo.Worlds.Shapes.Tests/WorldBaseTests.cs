using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Training;
using Sudo.Worlds.Shapes;
namespace Sudo.Training.Tests;

public class WorldBaseTests
{
    [Test]
    public void BuildsALoadablePipelineFolderAndReusesItsCache()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-world-{Guid.NewGuid():N}");
        try
        {
            var cfg = new WorldBaseConfig { vae_steps = 6, unet_steps = 6, release_step = 4, batch_size = 4, train_prompts = 200, bpe_merges = 200 };
            Assert.Throws<ArgumentException>(() => WorldBase.Build(dir, cfg with { release_step = 7 }), "a release step past the schedule");
            var log = new List<string>();
            WorldBase.Build(dir, cfg, log.Add);
            Assert.That(log.Any(l => l.Contains("built")), Is.True);
            Assert.That(File.ReadLines(Path.Combine(dir, "train_log.jsonl")).Count(l => l.Contains("\"unet\"")), Is.EqualTo(4), "the UNet is saved at the release step");
            var tok = CLIPTokenizer.from_pretrained(Path.Combine(dir, "tokenizer"));
            Assert.That(tok.model_max_length, Is.EqualTo(20));
            Assert.That(tok.eos_token_id, Is.EqualTo(tok.vocab_size - 1));
            using (var pipe = StableDiffusionPipeline.from_pretrained(dir, "ddim"))
            {
                Assert.That(pipe.vae_scale_factor, Is.EqualTo(4));
                Assert.That(pipe.vae.config.scaling_factor, Is.Not.EqualTo(0.18215), "scaling_factor measured from the latents");
                var imgs = new List<RgbImage>();
                var results = WorldBase.Evaluate(pipe, World.Prompts("validation", 3), steps: 3, images: imgs);
                Assert.That(results, Has.Count.EqualTo(3));
                Assert.That(imgs.All(i => i.Width == 32 && i.Height == 32), Is.True);
                Assert.That(results.All(r => r.score is >= 0 and <= 1), Is.True);

                // Judge-labelled pairs: noiseless labels put the higher judge score first; full noise flips all.
                var prompts = World.Prompts("train", 4, seed: 9);
                var pairsDir = Path.Combine(dir + "-pairs");
                var sum = WorldPairs.Make(pipe, prompts, pairsDir, new WorldPairsConfig { label_noise = 0, tie_margin = 1e-9, steps = 2 });
                var data = PairDataset.Load(pairsDir);
                Assert.That((sum.pairs, sum.flipped, data.Pairs.Count + data.DroppedTies), Is.EqualTo((4, 0, 4)));
                Assert.That(data.DroppedTies, Is.EqualTo(sum.ties));
                double Judged(string caption, string file) => Judge.Score(ImageCodecs.Load(Path.Combine(pairsDir, file)), caption).score;
                foreach (var p in data.Pairs) Assert.That(Judged(p.caption, p.winner), Is.GreaterThan(Judged(p.caption, p.loser)), p.caption);
                WorldPairs.Make(pipe, prompts, pairsDir, new WorldPairsConfig { label_noise = 1, tie_margin = 1e-9, steps = 2 });
                foreach (var p in PairDataset.Load(pairsDir).Pairs) Assert.That(Judged(p.caption, p.winner), Is.LessThan(Judged(p.caption, p.loser)));
                var allTies = WorldPairs.Make(pipe, prompts, pairsDir, new WorldPairsConfig { tie_margin = 2, steps = 2 });
                Assert.That(allTies.ties, Is.EqualTo(4));
                Assert.Throws<InvalidDataException>(() => PairDataset.Load(pairsDir), "ties only: nothing to train on");
                // The learned scorer (world vocabulary, PickScore loss on clean images) fits its pairs.
                WorldPairs.Make(pipe, World.Prompts("train", 12, seed: 4), pairsDir, new WorldPairsConfig { label_noise = 0, tie_margin = 1e-9, steps = 2 });
                var train = PairDataset.Load(pairsDir);
                using var spm = new Sudo.Preference.StepAwarePreferenceModel(WorldScorer.NewClip(tok, 32));
                var all = Enumerable.Range(0, train.Pairs.Count).ToList();
                var before = WorldScorer.Agreement(spm, tok, train, all);
                var curve = WorldScorer.Train(spm, tok, train, all, steps: 40, batch_size: 8, learning_rate: 1e-3, log_every: 20);
                Assert.That(curve.Select(c => c.step), Is.EqualTo(new[] { 20, 40 }));
                Assert.That(curve[^1].loss, Is.LessThan(curve[0].loss));
                Assert.That(WorldScorer.Agreement(spm, tok, train, all), Is.EqualTo(1.0), $"memorises {train.Pairs.Count} pairs (agreement before: {before:F2})");
                Directory.Delete(pairsDir, true);
            }
            // Same settings: reused; different settings: rebuilt (atomically replacing the folder).
            log.Clear();
            WorldBase.Build(dir, cfg, log.Add);
            Assert.That(log, Has.Count.EqualTo(1).And.Some.Contains("reusing"));
            Assert.That(cfg with { seed = 1 }, Is.Not.EqualTo(cfg));
            Assert.That((cfg with { seed = 1 }).Key, Is.Not.EqualTo(cfg.Key));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    /// <summary>The shipped base (assets/world/base) was trained by `sudoml world base` with the settings in its
    /// world_base.json; re-running the first steps of both phases must land on its recorded train_log.jsonl.</summary>
    [Test]
    public void ShippedBaseFirstStepsReproduceTheRecordedCurve()
    {
        var folder = Path.Combine(WorldStudy.FindRepoRoot(TestContext.CurrentContext.TestDirectory), "assets", "world", "base");
        var meta = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "world_base.json")))!;
        var cfg = System.Text.Json.JsonSerializer.Deserialize<WorldBaseConfig>(meta["config"]!.ToJsonString())!;
        Assert.That(cfg.Key, Is.EqualTo((string)meta["key"]!), "world_base.json's settings give its key");
        var log = File.ReadAllLines(Path.Combine(folder, "train_log.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).ToList();
        double[] Recorded(string phase, int n) => log.Where(o => (string)o["phase"]! == phase).Take(n).Select(o => o["loss"]!.GetValue<double>()).ToArray();
        Assert.That(log.Count(o => (string)o["phase"]! == "unet"), Is.EqualTo(cfg.ReleaseStep), "the UNet curve runs to the release step");

        var threads = Sudo.Torch.torch.get_num_threads();
        Sudo.Torch.torch.set_num_threads((int)meta["torch_threads"]!);
        try
        {
            const int n = 6;
            var prompts = World.Prompts("train", cfg.train_prompts, (int)cfg.seed);
            var vaeLosses = new List<double>();
            var (vae, _) = WorldBase.TrainVae(cfg, prompts, n, Sudo.Torch.Device.CPU, (_, l) => vaeLosses.Add(l));
            vae.Dispose();
            Assert.That(vaeLosses, Is.EqualTo(Recorded("vae", n)).Within(0.5).Percent, "VAE reconstruction MSE, steps 1–6");

            // The UNet phase starts from the shipped VAE (stored in fp16, so its latents differ from training's in the 4th digit).
            var tok = CLIPTokenizer.from_pretrained(Path.Combine(folder, "tokenizer"));
            using var shippedVae = AutoencoderKL.from_pretrained(Path.Combine(folder, "vae"));
            var unetLosses = new List<double>();
            var (unet, te) = WorldBase.TrainUnet(cfg, prompts, tok, shippedVae, n, Sudo.Torch.Device.CPU, (_, l) => unetLosses.Add(l));
            unet.Dispose();
            te.Dispose();
            Assert.That(unetLosses, Is.EqualTo(Recorded("unet", n)).Within(2).Percent, "UNet ε-loss, steps 1–6");
        }
        finally
        {
            Sudo.Torch.torch.set_num_threads(threads);
        }
    }
}
