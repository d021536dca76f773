using NUnit.Framework;
using Sudo.Data;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;

namespace Sudo.Training.Tests;

public class SpoTests
{
    /// <summary>A tiny random CLIPModel that reads the real CLIP vocabulary (for the resampler tests).</summary>
    internal static CLIPModel TinyScorer(long seed = 0)
    {
        manual_seed(seed);
        return new CLIPModel(new CLIPConfig
        {
            text_config = new CLIPTextConfig { vocab_size = 49408, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, hidden_act = "gelu", eos_token_id = 2 },
            vision_config = new CLIPVisionConfig { hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2, image_size = 16, patch_size = 8, hidden_act = "gelu" },
            projection_dim = 8,
        });
    }

    [Test]
    public void StepAwareModelStartsExactlyAtItsBaseScorer()
    {
        var folder = Shared.Require("golden", "clip_full");
        using var scope = NewDisposeScope();
        using var spm = new StepAwarePreferenceModel(CLIPModel.from_pretrained(folder));
        using var io = safetensors.safe_open(Path.Combine(folder, "io.safetensors"));
        var pixels = io.get("in_pixel_values");
        using var _ = no_grad();
        var baseFeatures = spm.clip.get_image_features(pixels);
        foreach (var t in new[] { 0.0, 251, 951 })
        {
            var f = spm.get_image_features(pixels, full([2], t));
            Assert.That(f.equal(baseFeatures), Is.True, $"t = {t}: time-conditioned features equal the base scorer's");
        }
        Check.Close(spm.get_image_features(pixels, full([2], 500.0)), io.get("out_image_features"), 1e-4, "vs transformers");
        // Once the adaLN weights move, the timestep matters.
        using (no_grad()) spm.adaLN_modulation[0].weight.normal_(0, 0.1);
        Assert.That(spm.get_image_features(pixels, full([2], 0.0)).equal(spm.get_image_features(pixels, full([2], 900.0))), Is.False);
    }

    [Test]
    public void ResamplerInvariants()
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), "ddim");
        using var spm = new StepAwarePreferenceModel(TinyScorer());
        var cfg = new SpoConfig { num_inference_steps = 6, divert_start_step = 2, num_sample_each_step = 2, threshold = -1, resolution = 32 };
        var sampler = new SpoSampler(pipe, spm, pipe.components.tokenizer, cfg);
        string[] prompts = ["a red fox", "a blue bird"];
        var pairs = sampler.Sample(prompts, [new Generator(1), new Generator(2)]);
        try
        {
            // every trained transition (t = ts[2..5]) of both chains is kept with threshold −1
            Assert.That(pairs.Count, Is.EqualTo(2 * 4));
            var ts = ((DDIMScheduler)pipe.scheduler).TimestepValues;
            foreach (var prompt in prompts)
            {
                var chain = pairs.Where(p => p.prompt == prompt).ToList();
                Assert.That(chain.Select(p => (double)p.t), Is.EqualTo(ts[2..6]));
                for (var i = 0; i < chain.Count; i++)
                {
                    Assert.That(chain[i].x_t_w.equal(chain[i].x_t_l), Is.True, "both candidates branch from one x_t");
                    Assert.That(chain[i].x_w.equal(chain[i].x_l), Is.False);
                    if (i + 1 < chain.Count)
                        Assert.That(chain[i + 1].x_t_w.equal(chain[i].x_w) || chain[i + 1].x_t_w.equal(chain[i].x_l), Is.True,
                            "the chain continues from one of the candidates (k = 2: best or worst)");
                }
            }
            Assert.That(sampler.candidates_scored, Is.EqualTo(2 * 2 * 4));
            // at θ = ref (LoRA B = 0) the SPO loss is log 2 and the ratios are 1
            using var lora = Lora.Attach(pipe.unet, new LoraConfig(2, 2));
            using var scope = NewDisposeScope();
            var o = SpoLoss.Compute(pipe, lora, pairs.Take(3).ToList(), cfg);
            Assert.That(o.loss.item(), Is.EqualTo(Math.Log(2)).Within(1e-6));
            Check.Close(o.diagnostics["ratio_w"], new[] { 1.0, 1, 1 }, 1e-6, "ratios");
        }
        finally
        {
            foreach (var p in pairs) p.Dispose();
        }
        var strict = new SpoSampler(pipe, spm, pipe.components.tokenizer, cfg with { threshold = 1.0 });
        Assert.That(strict.Sample(prompts, [new Generator(1), new Generator(2)]), Is.Empty, "a gap of 1 is never passed");
    }

    [Test]
    public void StepRewardPicksBestAndWorstAndSeesPromptsInPoolOrder()
    {
        // A plugged-in reward (brightness of the decoded x̂₀) replaces the preference model: the kept final-step pair's
        // winner decodes brighter than its loser, and the reward sees the pool's prompts in row order [candidate j of prompt p].
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), "ddim");
        var cfg = new SpoConfig { num_inference_steps = 4, divert_start_step = 1, num_sample_each_step = 3, threshold = -1, resolution = 32 };
        var calls = new List<(string[] prompts, double t)>();
        var sampler = new SpoSampler(pipe, cfg, (images, ps, t) =>
        {
            calls.Add((ps.ToArray(), t));
            return images.mean([1, 2, 3]) * 1000.0;
        });
        string[] prompts = ["a red fox", "a blue bird"];
        var pairs = sampler.Sample(prompts, [new Generator(1), new Generator(2)]);
        try
        {
            var ts = ((DDIMScheduler)pipe.scheduler).TimestepValues;
            Assert.That(calls.Select(c => c.t), Is.EqualTo(new[] { ts[2], ts[3], 0.0 }), "x̂₀ at the next step's t, final samples at 0");
            foreach (var c in calls) Assert.That(c.prompts, Is.EqualTo(prompts.Concat(prompts).Concat(prompts)));
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            foreach (var last in pairs.Where(p => p.t == (long)ts[^1]))
            {
                double Bright(Tensor z) => pipe.vae.decode(pipe.vae.unscale_latents(z)).mean().to(ScalarType.Float64).item<double>();
                Assert.That(Bright(last.x_w), Is.GreaterThan(Bright(last.x_l)), last.prompt);
            }
            Assert.That(pairs.Count(p => p.t == (long)ts[^1]), Is.EqualTo(2));
        }
        finally
        {
            foreach (var p in pairs) p.Dispose();
        }
        var bad = new SpoSampler(pipe, cfg, (images, ps, t) => zeros([2]));
        var e = Assert.Throws<InvalidOperationException>(() => bad.Sample(prompts, [new Generator(1), new Generator(2)]));
        Assert.That(e!.Message, Does.Contain("expected [6]"));
    }

    [Test]
    public void MspoSegmentsOnSdxl()
    {
        // SDXL preset's MSPO: after branching, each candidate runs num_inner_step more single steps before scoring;
        // every transition in a kept segment becomes a pair.
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sdxl"), "ddim");
        using var spm = new StepAwarePreferenceModel(TinyScorer());
        var cfg = new SpoConfig { num_inference_steps = 6, divert_start_step = 1, num_sample_each_step = 2, num_inner_step = 1, threshold = -1, resolution = 32 };
        var sampler = new SpoSampler(pipe, spm, pipe.components.tokenizer, cfg);
        var pairs = sampler.Sample(["a red fox"], [new Generator(3)]);
        try
        {
            var ts = ((DDIMScheduler)pipe.scheduler).TimestepValues;
            Assert.That(pairs.Select(p => (double)p.t), Is.EqualTo(ts[1..6]), "segments (1,2), (3,4), (5)");
            foreach (var i in new[] { 0, 2, 4 })
                Assert.That(pairs[i].x_t_w.equal(pairs[i].x_t_l), Is.True, "a segment starts from one shared x_t");
            foreach (var i in new[] { 1, 3 })
            {
                Assert.That(pairs[i].x_t_w.equal(pairs[i].x_t_l), Is.False, "inner steps follow each candidate");
                Assert.That(pairs[i].x_t_w.equal(pairs[i - 1].x_w) && pairs[i].x_t_l.equal(pairs[i - 1].x_l), Is.True);
            }
            Assert.That(pairs[0].pooled, Is.Not.Null, "SDXL pairs carry pooled embeddings");
            Assert.That(sampler.candidates_scored, Is.EqualTo(2 * 3));
            using var lora = Lora.Attach(pipe.unet, new LoraConfig(2, 2));
            using var scope = NewDisposeScope();
            var o = SpoLoss.Compute(pipe, lora, pairs.Take(2).ToList(), cfg);
            Assert.That(o.loss.item(), Is.EqualTo(Math.Log(2)).Within(1e-6), "θ = ref on SDXL");
        }
        finally
        {
            foreach (var p in pairs) p.Dispose();
        }
    }

    [Test]
    public void SpoRoundsTrain()
    {
        using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), "ddim");
        using var spm = new StepAwarePreferenceModel(TinyScorer());
        var cfg = new SpoConfig { num_inference_steps = 6, divert_start_step = 2, num_sample_each_step = 3, threshold = -1, resolution = 32 };
        using var trainer = new SpoTrainer(pipe, spm, pipe.components.tokenizer, cfg, lora_rank: 2, learning_rate: 1e-2);
        var m1 = trainer.Round(["a red fox", "a blue bird"], train_batch_size: 2);
        var m2 = trainer.Round(["a red fox", "a blue bird"], train_batch_size: 2);
        Assert.That(m1.Count, Is.EqualTo(4));
        Assert.That(m1[0]["loss"], Is.EqualTo(Math.Log(2)).Within(1e-6), "first step: policy = reference");
        Assert.That(m2.Any(m => Math.Abs(m["loss"] - Math.Log(2)) > 1e-6), Is.True, "the policy moved");
        Assert.That(trainer.global_step, Is.EqualTo(8));
    }

    [Test]
    public void SpoResumeIsExact()
    {
        var cfg = new SpoConfig { num_inference_steps = 5, divert_start_step = 2, num_sample_each_step = 2, threshold = -1, resolution = 32 };
        string[] prompts = ["a red fox", "a blue bird", "a green frog"];
        var root = Path.Combine(Path.GetTempPath(), $"sudo-spo-{Guid.NewGuid():N}");
        Dictionary<string, float[]> Run(string dir, params int[] stops)
        {
            Dictionary<string, float[]> w = [];
            foreach (var s in stops)
            {
                using var pipe = StableDiffusionPipeline.from_pretrained(Shared.Require("golden", "pipe_sd15"), "ddim");
                using var spm = new StepAwarePreferenceModel(TinyScorer());
                using var t = new SpoTrainer(pipe, spm, pipe.components.tokenizer, cfg, lora_rank: 2, learning_rate: 1e-2, seed: 7);
                t.Train(prompts, s, dir, train_batch_size: 2, checkpointing_steps: 2, log: _ => { }, resume_allow_changes: "max_train_steps");
                using var scope = NewDisposeScope();
                w = t.lora.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.ToArray<float>());
            }
            return w;
        }
        try
        {
            var straight = Run(Path.Combine(root, "a"), 6);
            var resumed = Run(Path.Combine(root, "b"), 2, 6);
            Assert.That(resumed.Keys, Is.EqualTo(straight.Keys));
            foreach (var k in straight.Keys) Assert.That(resumed[k], Is.EqualTo(straight[k]), k);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
    }

    [Test]
    public void PreferenceModelLearnsItsLabels()
    {
        // Preferred: the left half brighter; rejected: the same image mirrored (colour statistics identical,
        // so a random scorer is at chance). Clean images (t = 0) for evaluation; the agreement rises.
        manual_seed(0);
        using var spm = new StepAwarePreferenceModel(TinyScorer(3));
        var tok = CLIPTokenizer.from_pretrained(Shared.Require("clip_tokenizer", "sd15_tokenizer"));
        using var opt = new optim.AdamW(spm.parameters(), 3e-3);
        using var g = new Generator(0);
        const int n = 32;
        (Tensor w, Tensor l) Batch()
        {
            var x = rand([n, 3, 16, 16], g) * 1.2 - 0.6;
            var left = cat([full([1, 1, 16, 8], 0.4), full([1, 1, 16, 8], -0.4)], 3);
            var w = (x + left).clamp(-1, 1);
            return (w, Images.HorizontalFlip(w));
        }
        var captions = Enumerable.Repeat("a picture lit from the left", n).ToList();
        double Accuracy()
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var (w, l) = Batch();
            return SpmTraining.Loss(spm, null, w, l, captions, tok, zeros([n], int64)).accuracy.item();
        }
        var before = Accuracy();
        for (var i = 0; i < 60; i++)
        {
            using var scope = NewDisposeScope();
            var (w, l) = Batch();
            var ts = randint(0, 1000, [n], g);
            var (loss, _) = SpmTraining.Loss(spm, null, w, l, captions, tok, ts);
            opt.zero_grad();
            loss.backward();
            opt.step();
        }
        var after = Accuracy();
        TestContext.Out.WriteLine($"agreement with labels: {before:F2} → {after:F2}");
        Assert.That(after, Is.GreaterThan(0.9));
        Assert.That(after, Is.GreaterThan(before));
    }
}

public class AiFeedbackTests
{
    [Test]
    public void RelabellingFollowsTheScorer()
    {
        var folder = Path.Combine(Path.GetTempPath(), $"sudo-ai-{Guid.NewGuid():N}");
        Directory.CreateDirectory(folder);
        try
        {
            var lines = new List<string>();
            for (var i = 0; i < 6; i++)
            {
                ImageCodecs.Save(new RgbImage(20, 20, Enumerable.Repeat((byte)(30 * i), 1200).ToArray()), Path.Combine(folder, $"a{i}.png"));
                ImageCodecs.Save(new RgbImage(20, 20, Enumerable.Repeat((byte)(255 - 30 * i), 1200).ToArray()), Path.Combine(folder, $"b{i}.png"));
                lines.Add($$"""{"caption": "c{{i}}", "winner": "a{{i}}.png", "loser": "b{{i}}.png"}""");
            }
            File.WriteAllLines(Path.Combine(folder, "pairs.jsonl"), lines);
            var d = PairDataset.Load(folder);
            using var scorer = new ClipScorer(SpoTests.TinyScorer(4), CLIPTokenizer.from_pretrained(Shared.Require("clip_tokenizer", "sd15_tokenizer")));
            var relabeled = d.Relabeled(scorer.Score);
            Assert.That(relabeled.Pairs.Count + relabeled.DroppedTies, Is.EqualTo(6));
            foreach (var p in relabeled.Pairs)
                Assert.That(scorer.Score(Path.Combine(folder, p.winner), p.caption), Is.GreaterThan(scorer.Score(Path.Combine(folder, p.loser), p.caption)));
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }
}

/// <summary>SPO's released step-aware preference model format (golden/spm: the .bin as SPO saves it).</summary>
public class SpoCheckpointTests
{
    [Test]
    public void LoadsSposBinWithTheExactKeyMappingAndSavesItBack()
    {
        var folder = Shared.Require("golden", "spm");
        var bin = StepAwarePreferenceModel.FindSpoCheckpoint(folder)!;
        using var spm = StepAwarePreferenceModel.from_pretrained(folder);
        using var scope = NewDisposeScope();
        var raw = Checkpoints.ReadPickle(bin);
        var ours = spm.state_dict();
        // Every SPO key maps to one of ours with the same values (position_ids buffers are ignored), and back.
        var mapped = raw.Keys.Where(k => StepAwarePreferenceModel.FromSpoKey(k) is not null).ToList();
        Assert.That(mapped.Select(k => StepAwarePreferenceModel.FromSpoKey(k)), Is.EquivalentTo(ours.Keys));
        foreach (var k in mapped)
        {
            Assert.That(ours[StepAwarePreferenceModel.FromSpoKey(k)!].equal(raw[k]), k);
            Assert.That(StepAwarePreferenceModel.ToSpoKey(StepAwarePreferenceModel.FromSpoKey(k)!), Is.EqualTo(k));
        }
        Assert.That(spm.shortest_edge, Is.EqualTo(32), "read from preprocessor_config.json");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-spm-{Guid.NewGuid():N}");
        try
        {
            spm.save_spo(dir);
            var back = Checkpoints.ReadPickle(Path.Combine(dir, "step_aware_preference_model.bin"));
            Assert.That(back.Keys, Is.EquivalentTo(raw.Keys), "SPO's layout, position_ids included");
            foreach (var (k, t) in raw) Assert.That(back[k].equal(t), k);
            using var again = StepAwarePreferenceModel.from_pretrained(dir);
            foreach (var (k, t) in again.state_dict()) Assert.That(t.equal(ours[k]), k);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Test]
    public void PlainClipIsRefusedAsAStepAwareScorerUnlessAskedFor()
    {
        var clip = Shared.Require("golden", "clip_full");
        var e = Assert.Throws<InvalidDataException>(() => StepAwarePreferenceModel.from_pretrained(clip).Dispose())!;
        Assert.That(e.Message, Does.Contain("plain CLIPModel"));
        using var wrapped = StepAwarePreferenceModel.from_pretrained(clip, wrapPlainClip: true);
        Assert.That(wrapped.adaLN_modulation.Count, Is.GreaterThan(0));
    }

    /// <summary>sudoml train --method spo --scorer &lt;SPO .bin folder&gt;: the run scores with the released model's weights.</summary>
    [Test]
    public void SpoRunScoresWithTheReleasedStepAwareModel()
    {
        var spmFolder = Shared.Require("golden", "spm");
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-spo-bin-{Guid.NewGuid():N}");
        try
        {
            var settings = new SpoTrainConfig
            {
                pretrained_model_name_or_path = Shared.Require("golden", "pipe_sd15"),
                scorer = StepAwarePreferenceModel.FindSpoCheckpoint(spmFolder),
                output_dir = dir,
                max_train_steps = 2,
                num_inference_steps = 4,
                divert_start_step = 1,
                num_sample_each_step = 2,
                spo_threshold = -1,
                resolution = 32,
                checkpointing_steps = 0,
                lora_rank = 2,
            };
            using var trainer = SpoTrainer.Open(settings);
            using var reference = StepAwarePreferenceModel.from_pretrained(spmFolder);
            using var scope = NewDisposeScope();
            var used = trainer.sampler.spm!.state_dict();
            foreach (var (k, t) in reference.state_dict()) Assert.That(used[k].equal(t), k);
            trainer.Train(["a red fox", "a blue bird"], _ => { });
            Assert.That(trainer.global_step, Is.GreaterThanOrEqualTo(2), "a round trains on all its pairs");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
