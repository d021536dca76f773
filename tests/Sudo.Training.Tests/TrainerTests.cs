using NUnit.Framework;
using Sudo.Data;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
using Sudo.Torch.Tests;
using static Sudo.Torch.torch;

namespace Sudo.Training.Tests;

public class TrainerTests
{
    private static string _pairs = "";
    private string _out = "";

    [OneTimeSetUp]
    public static void MakePairs()
    {
        _pairs = Path.Combine(Path.GetTempPath(), $"sudo-pairs-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_pairs);
        var rng = new Random(0);
        var lines = new List<string>();
        for (var i = 0; i < 8; i++)
        {
            RgbImage Img(int v) => new(40, 36, Enumerable.Range(0, 40 * 36 * 3).Select(_ => (byte)Math.Clamp(v + rng.Next(-40, 40), 0, 255)).ToArray());
            ImageCodecs.Save(Img(200), Path.Combine(_pairs, $"w{i}.png"));
            ImageCodecs.Save(Img(50), Path.Combine(_pairs, $"l{i}.png"));
            lines.Add($$"""{"caption": "a bright picture {{i}}", "winner": "w{{i}}.png", "loser": "l{{i}}.png"}""");
        }
        lines.Add("""{"caption": "a tie", "image_0": "w0.png", "image_1": "l0.png", "label_0": 0.5}""");
        File.WriteAllLines(Path.Combine(_pairs, "pairs.jsonl"), lines);
    }

    [OneTimeTearDown]
    public static void Cleanup() => Directory.Delete(_pairs, true);

    [SetUp]
    public void SetUp() => _out = Path.Combine(Path.GetTempPath(), $"sudo-train-{Guid.NewGuid():N}");

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(_out)) Directory.Delete(_out, true);
    }

    private TrainConfig Config(string method = "dpo", int steps = 6, int lora = 0) => new()
    {
        method = method,
        pretrained_model_name_or_path = Shared.Require("golden", "pipe_sd15"),
        dataset_name = _pairs,
        output_dir = _out,
        train_batch_size = 2,
        max_train_steps = steps,
        learning_rate = 1e-4,
        lr_warmup_steps = 2,
        checkpointing_steps = 3,
        resume_from_checkpoint = "latest",
        lora_rank = lora,
        log_every = 100,
        seed = 3,
    };

    private static Dictionary<string, float[]> Weights(nn.Module m)
    {
        using var scope = NewDisposeScope();
        return m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.ToArray<float>());
    }

    [Test]
    public void DatasetDropsTiesAndChecksFiles()
    {
        var d = PairDataset.Load(_pairs);
        Assert.That((d.Pairs.Count, d.DroppedTies), Is.EqualTo((8, 1)));
        var bad = Path.Combine(_out, "bad");
        Directory.CreateDirectory(bad);
        File.WriteAllText(Path.Combine(bad, "pairs.jsonl"), """{"caption": "x", "winner": "nope.png", "loser": "nope2.png"}""");
        Assert.That(Assert.Throws<FileNotFoundException>(() => PairDataset.Load(bad))!.Message, Does.Contain("nope.png"));
        Assert.Throws<DirectoryNotFoundException>(() => PairDataset.Load(Path.Combine(_out, "absent")));
    }

    [TestCase("dpo", 0)]
    [TestCase("sudo", 0)]
    [TestCase("dpo", 2)]
    public void ResumeIsExact(string method, int lora)
    {
        Dictionary<string, float[]> straight, resumed;
        using (var t = new Trainer(Config(method, 6, lora) with { resume_from_checkpoint = null, checkpointing_steps = 0, output_dir = _out + "-a" }))
        {
            t.Train(_ => { });
            straight = lora > 0 ? LoraWeights(t.lora!) : Weights(t.unet);
        }
        Directory.Delete(_out + "-a", true);
        using (var t = new Trainer(Config(method, 3, lora)))
            t.Train(_ => { });
        Assert.That(Directory.Exists(Path.Combine(_out, "checkpoint-3")), Is.True);
        using (var t = new Trainer(Config(method, 6, lora) with { resume_allow_changes = "max_train_steps" }))
        {
            var log = new List<string>();
            t.Train(log.Add);
            Assert.That(log[0], Does.Contain("resumed from").And.Contain("checkpoint-3"));
            resumed = lora > 0 ? LoraWeights(t.lora!) : Weights(t.unet);
        }
        Assert.That(resumed.Keys, Is.EqualTo(straight.Keys));
        foreach (var k in straight.Keys) Assert.That(resumed[k], Is.EqualTo(straight[k]), k);
        var metrics = File.ReadAllLines(Path.Combine(_out, "metrics.jsonl"));
        Assert.That(metrics.Length, Is.EqualTo(6));
    }

    private static Dictionary<string, float[]> LoraWeights(Lora l)
    {
        using var scope = NewDisposeScope();
        return l.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.ToArray<float>());
    }

    [Test]
    public void FrozenModulesTakeTheMixedPrecisionDtypeAsTrainPyDoes()
    {
        // train.py L913-939: vae, text encoder and ref_unet .to(weight_dtype); the trained UNet keeps fp32 weights.
        // bf16 runs on every CPU here (allow_slow_bf16: the modules are tiny).
        var bf16 = Config("dpo", 1) with { mixed_precision = "bf16", allow_slow_bf16 = true, train_batch_size = 1 };
        using (var t = new Trainer(bf16))
        {
            Assert.That(t.pipe.vae.encoder.conv_in.weight.dtype, Is.EqualTo(ScalarType.BFloat16));
            Assert.That(t.pipe.components.text_encoder.parameters().Select(p => p.dtype), Is.All.EqualTo(ScalarType.BFloat16));
            Assert.That(t.reference!.conv_in.weight.dtype, Is.EqualTo(ScalarType.BFloat16));
            Assert.That(t.unet.parameters().Select(p => p.dtype), Is.All.EqualTo(ScalarType.Float32));
            var m = t.Step()!;
            Assert.That(double.IsFinite(m["loss"]), m["loss"].ToString());
            Assert.That(t.Describe(), Does.Contain("VAE and text encoders in torch.bfloat16"));
        }
        using (var t = new Trainer(bf16 with { frozen_precision = "fp32" }))
        {
            Assert.That(t.pipe.vae.encoder.conv_in.weight.dtype, Is.EqualTo(ScalarType.Float32));
            Assert.That(t.reference!.conv_in.weight.dtype, Is.EqualTo(ScalarType.Float32));
        }
        using (var t = new Trainer(Config("dpo", 1)))
            Assert.That(t.reference!.conv_in.weight.dtype, Is.EqualTo(ScalarType.Float32), "no mixed precision: fp32 as train.py");
        Assert.Throws<ArgumentException>(() => (bf16 with { frozen_precision = "fp16" }).Validate());
    }

    [Test]
    public void OffloadDefaultsToTrainPysSdxlChoiceOnCudaOnly()
    {
        var cfg = new TrainConfig { pretrained_model_name_or_path = "m", dataset_name = "d" };
        Assert.That((cfg with { sdxl = true, device = "cuda" }).Offload, Is.True, "train.py offloads for --sdxl");
        Assert.That((cfg with { sdxl = true, device = "cuda:1", offload = false }).Offload, Is.False);
        Assert.That((cfg with { device = "cuda" }).Offload, Is.False);
        Assert.That((cfg with { device = "cuda", offload = true }).Offload, Is.True);
        Assert.That((cfg with { sdxl = true, offload = true }).Offload, Is.False, "a CPU device has nothing to offload to");
        Assert.That(Flags.Bind<TrainConfig>(["--offload", "false"]).value.offload, Is.False);
        Assert.That(Flags.Bind<TrainConfig>(["--offload"]).value.offload, Is.True);
    }

    [Test]
    public void OneDpoStepRaisesTheImplicitRewardMarginOfItsPair()
    {
        using var t = new Trainer(Config("dpo", 1) with { train_batch_size = 1, learning_rate = 1e-5, lr_warmup_steps = 0, proportion_empty_prompts = 0 });
        // The same pair, noise and t before and after: replay the RNG.
        using var state = new Generator(0);
        double Margin(bool step)
        {
            var rng = typeof(Trainer).GetField("_rng", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!.GetValue(t) as Generator;
            using var scope = NewDisposeScope();
            var saved = rng!.get_state();
            var inputs = t.Forward([0]);
            var o = Losses.diffusion_dpo(inputs.model_mse, inputs.ref_mse!, t.config.beta_dpo);
            var z = o.diagnostics["z"].item();
            if (step)
            {
                t.optimizer.zero_grad();
                o.loss.backward();
                t.optimizer.step();
            }
            rng.set_state(saved);
            return z;
        }
        var before = Margin(true);
        var after = Margin(false);
        TestContext.Out.WriteLine($"z before {before:G4}, after {after:G4}");
        Assert.That(before, Is.EqualTo(0).Within(1e-6), "policy = reference at the start");
        Assert.That(after, Is.GreaterThan(before));
    }

    [Test]
    public void NonFiniteLossesAreSkippedThenStop()
    {
        var nanLoss = Methods.dpo().WithLoss(new LossFn(s =>
        {
            var o = Losses.diffusion_dpo(s.model_mse, s.ref_mse!);
            return o with { loss = o.loss * double.NaN };
        }));
        using var t = new Trainer(Config("dpo", 10) with { max_nonfinite_steps = 3 }, nanLoss);
        var before = Weights(t.unet);
        Assert.That(t.Step(), Is.Null);
        Assert.That(t.Step(), Is.Null);
        Assert.That(t.global_step, Is.EqualTo(0));
        foreach (var (k, v) in Weights(t.unet)) Assert.That(v, Is.EqualTo(before[k]), k);
        var e = Assert.Throws<InvalidOperationException>(() => t.Step());
        Assert.That(e!.Message, Does.Contain("not finite for 3 steps"));
    }

    [Test]
    public void ResumeWithChangedSettingsIsRefusedNamingEachField()
    {
        using (var t = new Trainer(Config("dpo", 3)))
            t.Train(_ => { });
        var record = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_out, "checkpoint-3", RunRecord.FileName)))!;
        Assert.That((double)record["config"]!["beta_dpo"]!, Is.EqualTo(5000));
        Assert.That((string)record["config"]!["mixed_precision"]!, Is.EqualTo("no"), "the resolved default is recorded");
        Assert.That((string)record["environment"]!["libtorch"]!, Is.Not.Empty);
        Assert.That(File.Exists(Path.Combine(_out, RunRecord.FileName)), Is.True);

        // β and the step count differ: both are named; the step count alone may be allowed explicitly.
        using (var t = new Trainer(Config("dpo", 6) with { beta_dpo = 2500 }))
        {
            var e = Assert.Throws<InvalidDataException>(() => t.Train(_ => { }))!;
            Assert.That(e.Message, Does.Contain("beta_dpo: checkpoint 5000, now 2500").And.Contain("max_train_steps: checkpoint 3, now 6"));
            Assert.That(e.Message, Does.Contain("--resume_allow_changes beta_dpo,max_train_steps"));
            Assert.That(t.global_step, Is.EqualTo(0), "nothing was loaded");
        }
        using (var t = new Trainer(Config("dpo", 6) with { beta_dpo = 2500, resume_allow_changes = "max_train_steps" }))
            Assert.That(Assert.Throws<InvalidDataException>(() => t.Train(_ => { }))!.Message, Does.Contain("beta_dpo").And.Not.Contain("max_train_steps:"));
        using (var t = new Trainer(Config("dpo", 6) with { resume_allow_changes = "max_train_step" }))
            Assert.That(Assert.Throws<ArgumentException>(() => t.Train(_ => { }))!.Message, Does.Contain("'max_train_step', which is not a setting"));
        using (var t = new Trainer(Config("dpo", 4) with { resume_allow_changes = "max_train_steps", output_dir = _out, log_every = 1 }))
        {
            t.Train(_ => { });
            Assert.That(t.global_step, Is.EqualTo(4));
        }
    }

    [Test]
    public void InterruptedCheckpointLeavesThePreviousOneIntact()
    {
        using (var t = new Trainer(Config("sft", 3)))
            t.Train(_ => { });
        // A crash mid-write leaves a temporary folder and maybe a half-made checkpoint without its state file.
        Directory.CreateDirectory(Path.Combine(_out, ".tmp-checkpoint-6-deadbeef", "unet"));
        Directory.CreateDirectory(Path.Combine(_out, "checkpoint-6"));
        Assert.That(TrainingRun.Latest(_out), Is.EqualTo(Path.Combine(_out, "checkpoint-3")));
        using var t2 = new Trainer(Config("sft", 4) with { resume_allow_changes = "max_train_steps" });
        var log = new List<string>();
        t2.Train(log.Add);
        Assert.That(log[0], Does.Contain("checkpoint-3"));
        Assert.That(t2.global_step, Is.EqualTo(4));
    }

    /// <summary>--prediction_type v_prediction: the trainer's noise schedule regresses on v = √ᾱ·ε − √(1−ᾱ)·x₀ (diffusers'
    /// train_text_to_image.py registers it on the noise scheduler); an unknown value is refused before anything loads.</summary>
    [Test]
    public void PredictionTypeOverridesTheTrainingTarget()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => (Config() with { prediction_type = "x0" }).Validate())!.Message, Does.Contain("--prediction_type x0"));
        using var t = new Trainer(Config("sft", 1) with { prediction_type = "v_prediction" });
        Assert.That(t.noise_schedule.config.prediction_type, Is.EqualTo("v_prediction"));
        using var scope = NewDisposeScope();
        using var g = new Generator(4);
        var x0 = randn([1, 4, 2, 2], g);
        var eps = randn([1, 4, 2, 2], g);
        var steps = tensor(new long[] { 700 });
        var ab = t.noise_schedule.alphas_cumprod[700].item();
        var v = eps * Math.Sqrt(ab) - x0 * Math.Sqrt(1 - ab);
        Assert.That((t.noise_schedule.target(x0, eps, steps) - v).abs().max().item(), Is.LessThan(1e-5));
    }

    /// <summary>--lora_weights: training starts from an existing LoRA (here a kohya file of mixed ranks with a convolution
    /// module): the adapters begin as the file's tensors with its ranks and α, train, save with rank_pattern, and a run
    /// stopped at its checkpoint and resumed ends bit-identical to a straight run.</summary>
    [Test]
    public void LoraWeightsStartTrainingFromAKohyaFileAndResumeExactly()
    {
        using var scope = NewDisposeScope();
        var file = Path.Combine(Path.GetTempPath(), $"sudo-kohya-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var g = new Generator(9);
            var kohya = new Dictionary<string, Tensor>();
            using (var p = PipelineComponents.from_pretrained(Shared.Require("golden", "pipe_sd15")))
            {
                var m = p.unet.named_modules().ToDictionary(x => x.name, x => x.module);
                var q = ((nn.Linear)m["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]).weight.shape;
                kohya["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = randn([2, q[1]], g) * 0.2;
                kohya["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = randn([q[0], 2], g) * 0.2;
                kohya["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"] = scalar_tensor(1.0, ScalarType.Float32);
                var pin = ((nn.Conv2d)m["down_blocks.0.attentions.0.proj_in"]).weight.shape;
                kohya["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] = randn([4, pin[1], 1, 1], g) * 0.2;
                kohya["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"] = randn([pin[0], 4, 1, 1], g) * 0.2;
            }
            safetensors.save_file(kohya, file);
            Assert.That(() => Config() with { lora_weights = file, lora_rank = 2 }, Throws.Nothing);
            Assert.That(Assert.Throws<ArgumentException>(() => (Config() with { lora_weights = file, lora_rank = 2 }).Validate())!.Message, Does.Contain("--lora_weights"));

            Dictionary<string, float[]> straight, resumed;
            using (var t = new Trainer(Config("dpo", 4) with { lora_weights = file, resume_from_checkpoint = null, checkpointing_steps = 0, output_dir = _out + "-a" }))
            {
                var q = t.lora!.adapters["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"];
                var pin = t.lora.adapters["down_blocks.0.attentions.0.proj_in"];
                Assert.That(t.lora.adapters, Has.Count.EqualTo(2));
                Assert.That((q.rank, q.alpha, pin.rank, pin.alpha), Is.EqualTo((2, 1.0, 4, 4.0)));
                Assert.That(pin.lora_B.equal(kohya["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]), Is.True, "starts from the file");
                t.Train(_ => { });
                Assert.That(pin.lora_B.equal(kohya["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]), Is.False, "trained");
                straight = LoraWeights(t.lora);
            }
            var saved = Lora.ReadConfig(Path.Combine(_out + "-a", "lora"));
            Assert.That(saved.RankFor("down_blocks.0.attentions.0.proj_in"), Is.EqualTo(4));
            Assert.That(saved.RankFor("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), Is.EqualTo(2));
            Directory.Delete(_out + "-a", true);
            using (var t = new Trainer(Config("dpo", 2) with { lora_weights = file, checkpointing_steps = 2 }))
                t.Train(_ => { });
            using (var t = new Trainer(Config("dpo", 4) with { lora_weights = file, checkpointing_steps = 2, resume_allow_changes = "max_train_steps" }))
            {
                var log = new List<string>();
                t.Train(log.Add);
                Assert.That(log[0], Does.Contain("resumed from"));
                resumed = LoraWeights(t.lora!);
            }
            foreach (var k in straight.Keys) Assert.That(resumed[k], Is.EqualTo(straight[k]), k);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Test]
    public void LoraSavesDiffusersKeysAndMergesExactly()
    {
        using var unet = UNet2DConditionModel.from_pretrained(Path.Combine(Shared.Require("golden", "pipe_sd15"), "unet"));
        using var g = new Generator(1);
        using var lora = Lora.Attach(unet, new LoraConfig(r: 2, lora_alpha: 4), g);
        using (no_grad()) foreach (var p in lora.parameters()) p.normal_(0, 0.05, g);
        using var scope = NewDisposeScope();
        var x = randn([2, 4, 8, 8], g);
        var ctx = randn([2, 77, 6], g);
        var t = tensor(new long[] { 10, 500 });
        Tensor Run() { using (no_grad()) return unet.forward(x, t, ctx); }
        var adapted = Run();
        Tensor baseOut;
        using (lora.disabled()) baseOut = Run();
        Assert.That((adapted - baseOut).abs().max().item(), Is.GreaterThan(1e-4), "the adapters change the output");
        var dir = Path.Combine(_out, "lora");
        lora.save(dir);
        var keys = safetensors.load_file(Path.Combine(dir, "pytorch_lora_weights.safetensors")).Keys.ToList();
        Assert.That(keys, Does.Contain("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"));
        Assert.That(keys, Does.Contain("unet.up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_B.weight"));
        Assert.That(keys.Count, Is.EqualTo(lora.adapters.Count * 2));
        var cfg = File.ReadAllText(Path.Combine(dir, "adapter_config.json"));
        Assert.That(cfg, Does.Contain("\"peft_type\": \"LORA\"").And.Contain("\"r\": 2").And.Contain("\"lora_alpha\": 4"));
        // load into fresh adapters on a fresh UNet → same outputs
        using var unet2 = UNet2DConditionModel.from_pretrained(Path.Combine(Shared.Require("golden", "pipe_sd15"), "unet"));
        using var lora2 = Lora.Attach(unet2, Lora.ReadConfig(dir));
        lora2.load_state_dict(safetensors.load_file(Path.Combine(dir, "pytorch_lora_weights.safetensors"), mmap: false));
        Tensor out2;
        using (no_grad()) out2 = unet2.forward(x, t, ctx);
        Check.Close(out2, adapted, 1e-6, "reloaded LoRA");
        // merge: W ← W + (α/r)BA, adapters off → same function; unmerge restores the base
        lora.merge();
        Check.Close(Run(), adapted, 1e-5, "merged");
        lora.unmerge();
        using (lora.disabled()) Check.Close(Run(), baseOut, 1e-5, "unmerged base");
    }
}

public class TensorBoardTests
{
    [Test]
    public void Crc32CKnownVectorAndEventFraming()
    {
        Assert.That(Crc32C.Compute("123456789"u8), Is.EqualTo(0xE3069283u));
        Assert.That(Crc32C.Compute([]), Is.EqualTo(0u));
        var dir = Path.Combine(Path.GetTempPath(), $"sudo-tb-{Guid.NewGuid():N}");
        try
        {
            string path;
            using (var w = new TensorBoardWriter(dir))
            {
                w.AddScalars(1, new Dictionary<string, double> { ["train/loss"] = 0.69, ["train/lr"] = 1e-5 });
                w.AddScalars(2, new Dictionary<string, double> { ["train/loss"] = 0.5, ["train/nan"] = double.NaN });
                path = w.Path;
            }
            Assert.That(Path.GetFileName(path), Does.StartWith("events.out.tfevents."));
            var scalars = TensorBoardWriter.ReadScalars(path);
            Assert.That(scalars, Is.EqualTo(new[] { ("train/loss", 1L, 0.69f), ("train/lr", 1L, 1e-5f), ("train/loss", 2L, 0.5f) }));
            // a flipped byte is detected by the framing CRCs
            var bytes = File.ReadAllBytes(path);
            bytes[^3] ^= 0xFF;
            File.WriteAllBytes(path, bytes);
            Assert.Throws<InvalidDataException>(() => TensorBoardWriter.ReadScalars(path));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}

public class CacheAndEmaTests
{
    [Test]
    public void CachedLatentsTrainResumeExactlyAndKeepAnEma()
    {
        var pairs = Path.Combine(Path.GetTempPath(), $"sudo-cpairs-{Guid.NewGuid():N}");
        var outDir = pairs + "-out";
        Directory.CreateDirectory(pairs);
        try
        {
            var rng = new Random(1);
            var lines = new List<string>();
            for (var i = 0; i < 4; i++)
            {
                RgbImage Img(int v) => new(32, 32, Enumerable.Range(0, 32 * 32 * 3).Select(_ => (byte)Math.Clamp(v + rng.Next(-20, 20), 0, 255)).ToArray());
                ImageCodecs.Save(Img(180), Path.Combine(pairs, $"w{i}.png"));
                ImageCodecs.Save(Img(70), Path.Combine(pairs, $"l{i}.png"));
                lines.Add($$"""{"caption": "picture {{i}}", "winner": "w{{i}}.png", "loser": "l{{i}}.png"}""");
            }
            File.WriteAllLines(Path.Combine(pairs, "pairs.jsonl"), lines);
            TrainConfig Cfg(int steps, string dir) => new()
            {
                method = "sudo",
                pretrained_model_name_or_path = Shared.Require("golden", "pipe_sd15"),
                dataset_name = pairs,
                output_dir = dir,
                train_batch_size = 2,
                max_train_steps = steps,
                learning_rate = 1e-4,
                lr_warmup_steps = 0,
                checkpointing_steps = 2,
                cache_latents = true,
                no_hflip = true,
                ema_decay = 0.9,
                log_every = 100,
                seed = 5,
            };
            Assert.Throws<ArgumentException>(() => new Trainer(Cfg(2, outDir) with { random_crop = true }));
            float[] Run(string dir, params int[] stops)
            {
                foreach (var s in stops) using (var t = new Trainer(Cfg(s, dir) with { resume_allow_changes = "max_train_steps" })) t.Train(_ => { });
                using var m = UNet2DConditionModel.from_pretrained(Path.Combine(dir, "unet_ema"));
                return m.conv_out.weight.ToArray<float>();
            }
            var straight = Run(outDir + "-a", 4);
            var resumed = Run(outDir + "-b", 2, 4);
            Assert.That(resumed, Is.EqualTo(straight), "EMA weights after resume");
            Assert.That(File.Exists(Path.Combine(outDir + "-b", "checkpoint-2", "ema.safetensors")), Is.True);
        }
        finally
        {
            foreach (var d in new[] { pairs, outDir + "-a", outDir + "-b" }) if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }
    /// <summary>A bf16 request reaches the CPU check before anything loads: refused on a CPU whose probe measures bf16
    /// slower than fp32 by more than Precision.SlowBf16Factor, let through (to the next error: the dataset is missing)
    /// where bf16 is fast or --allow_slow_bf16 is given. Holds on both kinds of machine because it reads the probe.</summary>
    [Test]
    public void Bf16RequestsAreCheckedAgainstTheCpuBeforeLoading()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"sudo-no-such-pairs-{Guid.NewGuid():N}");
        var unusable = Precision.ProbeBf16().bf16_error != null;
        var slow = unusable || Precision.ProbeBf16().slowdown > Precision.SlowBf16Factor;
        TestContext.Out.WriteLine($"{CpuFeatures.Detect().Model}: bf16/fp32 time {Precision.ProbeBf16().slowdown:0.00} → {(slow ? "refused" : "allowed")}");
        foreach (var cfg in new[]
        {
            new TrainConfig { pretrained_model_name_or_path = "unused", dataset_name = missing, mixed_precision = "bf16" },
            new TrainConfig { pretrained_model_name_or_path = "unused", dataset_name = missing, reference_bf16 = true },
        })
        {
            var what = cfg.reference_bf16 ? "--reference_bf16" : "--mixed_precision bf16";
            var e = Assert.Catch(() => new Trainer(cfg).Dispose())!;
            if (slow) Assert.That(e, Is.InstanceOf<NotSupportedException>().And.Message.Contains(what).And.Message.Contains(unusable ? "cannot run" : "--allow_slow_bf16"));
            else Assert.That(e, Is.Not.InstanceOf<NotSupportedException>(), e.Message);
            var allowed = Assert.Catch(() => new Trainer(cfg with { allow_slow_bf16 = true }).Dispose())!;
            if (unusable) Assert.That(allowed, Is.InstanceOf<NotSupportedException>(), "bf16 that cannot run is refused even when allowed");
            else Assert.That(allowed, Is.Not.InstanceOf<NotSupportedException>(), allowed.Message);
        }
    }
}
